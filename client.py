"""The Edgistry Python SDK: ``from edgistry.client import Client, AsyncClient``.

A client talks to one gateway's gRPC front end: discovery (pages of opaque
handles, a watch of changes, invoke-any), calls to devices (invoke, submit,
result, watch-result, cancel, batch), device twins (get, set desired, watch), with
deadlines, retries with jittered backoff, and one exception tree (:class:`EdgistryError`),
over TLS pinned to the gateway's own certificate (a file, or its registry record). See
docs/SDK.md.

    with Client("127.0.0.1:26670", token="app.token", pin="gateway.pem") as client:
        for page in client.discover("sensor", near=(52.52, 13.405), radius_km=5):
            for handle in page:
                print(client.invoke(handle, "sensor.read").value)
"""

from .gateway.client.aio import AsyncClient
from .gateway.client.base import DEFAULT_TARGET, new_request_id
from .gateway.client.errors import (
    AlreadyExists, Cancelled, ConfigError, DeadlineExceeded, EdgistryError, FailedPrecondition, InsecureTransport,
    InvalidArgument, LocalError, NotFound, PermissionDenied, RemoteError, RequestFailed, ResourceExhausted,
    ServerError, TokenFileError, Unavailable, VersionConflict,
)
from .gateway.client.pins import PinMismatch, pin_from_file, pin_from_registry
from .gateway.client.models import Call, Filters, Handle, Latency, Page, Region, Resolved, Result, State, WatchEvent
from .gateway.client.retry import Backoff, RetryPolicy
from .gateway.client.sync import Client
from .gateway.client.tokens import load_token
from .gateway.client.transport import DEFAULT_PORT, TLS, Target, parse_target
from .gateway.tls import Pin
from .gateway.client.twins import Twin, TwinProperty


def connect(target: str = DEFAULT_TARGET, **options) -> Client:
    """A :class:`Client` of the gateway at ``target`` (HOST[:PORT]); ``options`` as for Client
    (``token``, ``pin``, ``tls_from_registry``, ``gateway_id``, ``tls``, ``insecure``, ``timeout``, ``retry``)."""
    return Client(target, **options)


def connect_async(target: str = DEFAULT_TARGET, **options) -> AsyncClient:
    """An :class:`AsyncClient` (its channel opens at the first call, inside your event loop)."""
    return AsyncClient(target, **options)


__all__ = [
    "AlreadyExists", "AsyncClient", "Backoff", "Call", "Cancelled", "Client", "ConfigError", "DEFAULT_PORT",
    "DEFAULT_TARGET", "DeadlineExceeded", "EdgistryError", "FailedPrecondition", "Filters", "Handle",
    "InsecureTransport", "InvalidArgument", "Latency", "LocalError", "NotFound", "Page", "PermissionDenied",
    "Pin", "PinMismatch", "Region", "RemoteError", "RequestFailed", "Resolved", "ResourceExhausted", "Result",
    "RetryPolicy", "ServerError", "State", "TLS", "Target", "TokenFileError", "Twin", "TwinProperty", "Unavailable",
    "VersionConflict", "WatchEvent", "connect", "connect_async", "load_token", "new_request_id", "parse_target",
    "pin_from_file", "pin_from_registry",
]
