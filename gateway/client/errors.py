"""The SDK's one exception tree, and the mapping from gRPC statuses into it.

Every error the SDK raises is an :class:`EdgistryError`:

* :class:`LocalError`: found before anything was sent (a bad address, an
  unreadable token or certificate file, a token that would travel in clear);
* :class:`RemoteError`: a gRPC status from the gateway or the transport,
  one subclass per kind a caller handles differently (retry, re-authorise,
  fix the input...), each carrying ``code``, ``details`` and ``target``;
* :class:`RequestFailed`: a request that finished without an answer
  (the device failed, its TTL passed, it was cancelled).

gRPC errors are turned into these in one place, :func:`from_rpc_error`,
always chained (``raise ... from exc``) so the transport's own text stays
available for debugging but is never what a user reads first.
"""

from __future__ import annotations

import re
from typing import Any

import grpc

RETRY_AFTER_KEY = "retry-after-ms"  # trailing metadata: milliseconds to wait before retrying
STATUS_DETAILS_KEY = "grpc-status-details-bin"  # a google.rpc.Status, possibly holding RetryInfo


class EdgistryError(Exception):
    """Base of every error the SDK raises."""


class LocalError(EdgistryError):
    """Found on this side, before any call was made."""


class ConfigError(LocalError, ValueError):
    """An address, TLS setting or argument that cannot be used as given."""


class InsecureTransport(ConfigError):
    """A token would be sent in clear to an address that is not loopback."""


class TokenFileError(LocalError):
    """No token, or a token file that cannot be read or is not a token (the message names it)."""


class RemoteError(EdgistryError):
    """A gRPC status from the gateway (or from the transport on the way to it)."""

    retryable = False  # worth trying again after a backoff

    def __init__(self, message: str, code: grpc.StatusCode = grpc.StatusCode.UNKNOWN, details: str = "",
                 target: str = "", request_id: str = "") -> None:
        super().__init__(message)
        self.code, self.details, self.target, self.request_id = code, details, target, request_id


class Unavailable(RemoteError):
    """The gateway cannot be reached, or one of its dependencies cannot right now."""

    retryable = True


class DeadlineExceeded(RemoteError):
    """No answer in time. ``request_id`` names the request when one was queued (it may
    still be answered: fetch it later), ``last`` is the last state seen, if any."""

    last: Any = None  # a models.Result (not imported: models imports this module)


class ResourceExhausted(RemoteError):
    """The gateway refused for load (a full device queue, a rate limit). ``retry_after``
    is the gateway's hint in seconds (None when it gave none: then it is not retried)."""

    retry_after: float | None = None

    @property
    def retryable(self) -> bool:  # type: ignore[override]
        return self.retry_after is not None


class InvalidArgument(RemoteError):
    """The gateway refused the call's input (method, arguments, ids, region)."""


class PermissionDenied(RemoteError):
    """The token does not allow this (wrong origin, too weak, revoked or expired)."""


class NotFound(RemoteError):
    """No such device, handle or request (handles expire; requests are purged)."""


class AlreadyExists(RemoteError):
    """A client-chosen request id was already used for a different call."""


class FailedPrecondition(RemoteError):
    """The call cannot be done in the current state (paired elsewhere, wrong code...)."""


class VersionConflict(FailedPrecondition):
    """A compare-and-set lost (ABORTED): what it expected changed meanwhile; read again and retry."""


class Cancelled(RemoteError):
    """The call itself was cancelled before it finished."""


class ServerError(RemoteError):
    """The gateway failed in a way it did not classify (INTERNAL, UNKNOWN, ...)."""


class RequestFailed(EdgistryError):
    """A request reached a final state without an answer; ``result`` says which and why."""

    def __init__(self, result: Any) -> None:
        why = result.error or "no detail"
        super().__init__(f"request {result.request_id} {result.state.name}: {why}")
        self.result = result


_CLASSES: dict[grpc.StatusCode, type[RemoteError]] = {
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgument,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAUTHENTICATED: PermissionDenied,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.ABORTED: VersionConflict,
    grpc.StatusCode.CANCELLED: Cancelled,
}

# What gRPC's transport says, turned into a few words a user can act on.
_TRANSPORT_REASONS = (
    (re.compile(r"Hostname Verification|Peer name .* is not in peer certificate|No match found for server name",
                re.I),
     "TLS: the gateway's certificate is for another name (check the server name)"),
    (re.compile(r"CERTIFICATE_VERIFY_FAILED|certificate verify failed|certificate signature failure|unknown ca"
                r"|self.signed", re.I),
     "TLS: the gateway's certificate is not trusted (check the root certificate)"),
    (re.compile(r"handshake|SSL_ERROR|WRONG_VERSION_NUMBER|tls", re.I),
     "TLS handshake failed (does the gateway speak TLS, and the client too?)"),
    (re.compile(r"Connection refused", re.I), "connection refused"),
    (re.compile(r"DNS resolution failed|Name or service not known|nodename nor servname", re.I),
     "the host name does not resolve"),
    (re.compile(r"Socket closed"), "the connection was closed (a TLS gateway dialled without TLS, or it went away)"),
    (re.compile(r"Connection reset|Broken pipe|GOAWAY|Connection timed out|Network is unreachable"
                r"|No route to host|failed to connect", re.I), "connection failed"),
)


# How gRPC's own transport failures begin (a gateway's UNAVAILABLE has its own words).
_TRANSPORT_PREFIX = re.compile(
    r"^(failed to connect|DNS resolution failed|Socket closed|Connection reset|Connection refused|Broken pipe"
    r"|connections to all backends failing|GOAWAY|empty address list|keepalive|Endpoint read failed"
    r"|recvmsg|sendmsg|Ssl handshake|Handshake)", re.I)


def transport_reason(details: str) -> str | None:
    """A short reason when ``details`` describes a transport failure (None otherwise)."""
    for pattern, reason in _TRANSPORT_REASONS:
        if pattern.search(details):
            return reason
    return None


def _message(code: grpc.StatusCode, details: str, target: str) -> str:
    if code == grpc.StatusCode.UNAVAILABLE:
        if not details or _TRANSPORT_PREFIX.match(details):
            return f"cannot reach the gateway at {target}: {transport_reason(details) or 'connection failed'}"
        return f"the gateway at {target} is unavailable: {details}"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED and details.strip().lower() in ("", "deadline exceeded"):
        return f"no answer from the gateway at {target} in time"
    if code == grpc.StatusCode.CANCELLED and not details:
        return "the call was cancelled"
    if code in _CLASSES:
        return details or code.name.lower().replace("_", " ")
    return f"the gateway at {target} failed: {code.name}: {details or 'no detail'}"


def from_status(code: grpc.StatusCode, details: str, metadata: Any = (), target: str = "",
                request_id: str = "") -> RemoteError:
    """The SDK error for a status (``metadata``: the call's trailing metadata)."""
    details = details or ""
    cls = _CLASSES.get(code, ServerError)
    err = cls(_message(code, details, target), code, details, target, request_id)
    if isinstance(err, ResourceExhausted):
        err.retry_after = retry_after(metadata)
    return err


def from_rpc_error(exc: grpc.RpcError, target: str, request_id: str = "") -> RemoteError:
    """The SDK error for a failed gRPC call (sync ``grpc.RpcError`` or ``grpc.aio.AioRpcError``)."""
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = exc.details() if hasattr(exc, "details") else str(exc)
    try:
        metadata = exc.trailing_metadata() if hasattr(exc, "trailing_metadata") else ()
    except Exception:  # noqa: BLE001 - a call that never started may have none to give
        metadata = ()
    return from_status(code or grpc.StatusCode.UNKNOWN, details or "", metadata or (), target, request_id)


def watch_timeout(err: RemoteError, last: Any, timeout: float) -> DeadlineExceeded:
    """The error of a watch whose time ran out before a final state (``last``: the state it saw)."""
    state = last.state.name if last is not None else "unknown"
    out = DeadlineExceeded(f"request {err.request_id} not finished within {timeout:g} s (last state {state})",
                           err.code, err.details, err.target, err.request_id)
    out.last = last
    return out


# ---- the retry-after hint ----

def retry_after(metadata: Any) -> float | None:
    """Seconds to wait, from trailing metadata ``retry-after-ms`` or a ``google.rpc.RetryInfo``
    in the status details; None when neither is there (or either is malformed)."""
    hint: float | None = None
    for key, value in _pairs(metadata):
        if key == RETRY_AFTER_KEY:
            try:
                ms = int(value.decode() if isinstance(value, bytes) else value)
            except ValueError:
                continue
            if 0 <= ms <= 24 * 3600 * 1000:
                hint = ms / 1000
        elif key == STATUS_DETAILS_KEY and hint is None and isinstance(value, bytes):
            hint = _retry_info(value)
    return hint


def _pairs(metadata: Any) -> list[tuple[str, Any]]:
    out = []
    for item in metadata or ():
        if isinstance(item, tuple) and len(item) == 2:
            out.append((str(item[0]).lower(), item[1]))
        elif hasattr(item, "key"):  # grpc's _Metadatum
            out.append((str(item.key).lower(), item.value))
    return out


def _retry_info(status_bytes: bytes) -> float | None:
    from . import rich_status

    delay = rich_status.retry_delay(status_bytes)
    if delay is None or not 0 <= delay <= 24 * 3600:
        return None
    return delay
