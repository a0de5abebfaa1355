"""What :class:`~.sync.Client` and :class:`~.aio.AsyncClient` share, none of it I/O:
settings, the token, deadlines, and every request built from plain arguments.

Adding an operation (device twins, say) is a request builder here, a stub
name in :data:`STUBS` when it is a new gRPC service, and one short method in
each client calling ``unary`` or a stream.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Sequence
from typing import Any

import grpc

from .errors import ConfigError, RemoteError, TokenFileError, from_status
from .models import Call, Filters, Handle, Latency, Region, Result
from .retry import RetryPolicy
from .tokens import TokenLike, load_token
from ..ids import time_ordered_id
from ..tls import Pin
from .pins import choose_tls
from .transport import TLS, Target, Transport, parse_target
from ...proto import discovery_pb2 as dpb
from ...proto import discovery_pb2_grpc as dgrpc
from ...proto import gateway_pb2 as gpb
from ...proto import gateway_pb2_grpc as ggrpc
from ...proto import twin_pb2_grpc as tgrpc

DEFAULT_TARGET = "127.0.0.1:26670"
DEFAULT_TIMEOUT_S = 30.0
INVOKE_SLACK_S = 10.0  # the call's gRPC deadline runs this much past the gateway's own wait
MAX_BATCH = 256  # SubmitBatch items per call (the gateway's default limit); larger batches are split
# service name -> stub class (the same generated stubs serve blocking and asyncio channels)
STUBS: dict[str, type] = {"gateway": ggrpc.GatewayStub, "discovery": dgrpc.DiscoveryStub,
                          "commissioning": ggrpc.CommissioningStub, "twins": tgrpc.TwinsStub}
_CODES = {c.value[0]: c for c in grpc.StatusCode}

NearLike = Region | tuple[float, float]


def _ms(seconds: float) -> int:
    """A wait in whole milliseconds for the gateway, at least 1 when any (0 means "your default")."""
    return max(1, int(seconds * 1000)) if seconds > 0 else 0


def new_request_id() -> str:
    """A fresh client-chosen request id (32 hex): retries of a call that carries it are
    idempotent. The clock comes first, as in the gateway's own ids (ids.py: the store
    keys requests by id, and ids that rise with time make cheaper commits)."""
    return time_ordered_id().hex()


def encode_args(args: Any) -> bytes:
    """Call arguments as JSON bytes: ``bytes`` are taken as JSON already, anything else is encoded."""
    if args is None:
        return b""
    if isinstance(args, (bytes, bytearray)):
        return bytes(args)
    try:
        return json.dumps(args, separators=(",", ":")).encode()
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"arguments must be JSON-serialisable: {exc}") from exc


def split_method(method: str, service: str = "") -> tuple[str, str]:
    """``"sensor.read"`` -> ``("sensor", "read")``; an explicit ``service`` wins."""
    if not method:
        raise ConfigError("give a method name (e.g. sensor.read)")
    if not service and "." in method:
        service, _, method = method.rpartition(".")
    return service, method


def region_of(near: NearLike | None, radius_km: float) -> Region:
    if isinstance(near, Region):
        return near
    if near is None:
        raise ConfigError("give near=(lat, lon) or a Region")
    try:
        lat, lon = near
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"near is (lat, lon) or a Region, got {near!r}") from exc
    return Region(float(lat), float(lon), float(radius_km))


def filters_of(max_latency: Latency | str | None, seen_within_s: int) -> dpb.Filters:
    if isinstance(max_latency, str):
        try:
            max_latency = Latency[max_latency.upper()]
        except KeyError as exc:
            names = ", ".join(m.name.lower() for m in Latency if m)
            raise ConfigError(f"max_latency is one of {names}, got {max_latency!r}") from exc
    return Filters(max_latency or Latency.ANY, int(seen_within_s)).to_pb()


def next_page(token: str, seen: set[str], target: str) -> str:
    """A Discover answer's next page token, refused when it came before: a gateway that
    repeats one would keep a client paging (and collecting handles) for ever."""
    if token in seen:
        raise RemoteError(f"the gateway at {target} answered a page token it gave before: stopped paging",
                          target=target)
    seen.add(token)
    return token


class ClientBase:
    """Settings and request building shared by both clients."""

    def __init__(self, target: str = DEFAULT_TARGET, *, token: TokenLike | None = None, tls: TLS | None = None,
                 pin: str | os.PathLike | Pin | None = None, tls_from_registry: str | Sequence[str] | None = None,
                 gateway_id: str | None = None, insecure: bool = False, timeout: float = DEFAULT_TIMEOUT_S,
                 retry: RetryPolicy = RetryPolicy()) -> None:
        where = target if isinstance(target, Target) else parse_target(target)
        self.transport = Transport.of(where, choose_tls(tls=tls, pin=pin, tls_from_registry=tls_from_registry,
                                                        gateway_id=gateway_id, insecure=insecure), insecure)
        self.token = None if token is None else load_token(token)  # read now: a bad file fails here
        self.timeout = timeout
        self.retry = retry
        self._channel: Any = None  # opened at the first call (an asyncio one inside its loop)
        self._stubs: dict[str, Any] = {}

    @property
    def target(self) -> str:
        """The gateway's address, HOST:PORT."""
        return str(self.transport.target)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.target!r}, tls={self.transport.tls is not None})"

    # ---- pieces of every call ----

    def _token(self, override: TokenLike | None) -> bytes:
        token = load_token(override) if override is not None else self.token
        if token is None:
            raise TokenFileError("no token: pass token= (an application token, or a file holding one)")
        self.transport.check_token_may_be_sent()
        return token

    def _deadline(self, timeout: float | None) -> float:
        return time.monotonic() + (self.timeout if timeout is None else timeout)

    # ---- requests ----

    def _invoke_req(self, target: str | Handle, method: str, args: Any, token: TokenLike | None, timeout_s: float,
                    ttl_s: int, service: str, request_id: str | None) -> gpb.InvokeRequest:
        service, method = split_method(method, service)
        return gpb.InvokeRequest(target=str(target), method=method, args=encode_args(args), token=self._token(token),
                                 timeout_ms=_ms(timeout_s), ttl_s=ttl_s, service=service,
                                 request_id=request_id or new_request_id())

    def _result_req(self, request_id: str, token: TokenLike | None) -> gpb.ResultRequest:
        if not request_id:
            raise ConfigError("give a request id (32 hex, as returned by submit)")
        return gpb.ResultRequest(request_id=request_id, token=self._token(token))

    def _discover_req(self, service_type: str, near: NearLike | None, radius_km: float,
                      max_latency: Latency | str | None, seen_within_s: int, page_size: int,
                      token: TokenLike | None) -> dpb.DiscoverRequest:
        return dpb.DiscoverRequest(token=self._token(token), service_type=service_type,
                                   region=region_of(near, radius_km).to_pb(),
                                   filters=filters_of(max_latency, seen_within_s), page_size=page_size)

    def _watch_req(self, service_type: str, near: NearLike | None, radius_km: float,
                   max_latency: Latency | str | None, seen_within_s: int, token: TokenLike | None) -> dpb.WatchRequest:
        return dpb.WatchRequest(token=self._token(token), service_type=service_type,
                                region=region_of(near, radius_km).to_pb(),
                                filters=filters_of(max_latency, seen_within_s))

    def _any_req(self, service_type: str, method: str, args: Any, near: NearLike | None, radius_km: float,
                 max_latency: Latency | str | None, seen_within_s: int, timeout_s: float, ttl_s: int,
                 token: TokenLike | None) -> dpb.InvokeAnyRequest:
        if method.startswith(service_type + "."):  # "sensor.read" as with a handle, or just "read"
            method = method[len(service_type) + 1:]
        return dpb.InvokeAnyRequest(token=self._token(token), service_type=service_type, method=method,
                                    args=encode_args(args), region=region_of(near, radius_km).to_pb(),
                                    filters=filters_of(max_latency, seen_within_s),
                                    timeout_ms=_ms(timeout_s), ttl_s=ttl_s)

    def _batch_reqs(self, calls: Iterable[Call], token: TokenLike | None) -> list[gpb.InvokeRequest]:
        return [self._invoke_req(c.target, c.method, c.args, c.token if c.token is not None else token, 0, c.ttl_s,
                                 c.service, c.request_id) for c in calls]

    def _batch_items(self, resp: gpb.SubmitBatchResponse, reqs: list[gpb.InvokeRequest]) -> list[Result | RemoteError]:
        out: list[Result | RemoteError] = []
        for item, req in zip(resp.items, reqs):
            if item.code:
                code = _CODES.get(item.code, grpc.StatusCode.UNKNOWN)
                out.append(from_status(code, item.error, (), self.target, req.request_id))
            else:
                out.append(Result.from_pb(item.result))
        if len(out) != len(reqs):
            raise from_status(grpc.StatusCode.INTERNAL, f"SubmitBatch answered {len(out)} of {len(reqs)} items",
                              (), self.target)
        return out
