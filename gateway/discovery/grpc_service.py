"""The Discovery gRPC service (proto/discovery.proto): a thin adapter.

Handlers parse, authenticate the application token, call the pure
:class:`~edgistry.gateway.discovery.DiscoveryService`, and map domain errors to
status codes in one place (:func:`edgistry.gateway.errors.grpc_code`).

Invoke-any design: the client never sees even a handle. ``InvokeAny`` picks a
device with ``DiscoveryService.pick_any`` and hands the call to an
:class:`Invoker`: the gateway's own invoke path for its devices, and the
owning gateway's ``Peer.Forward`` for others (:class:`RoutingInvoker`). Both
are injected, so tests fake them; the answer is stripped of anything naming
the device. Gateway.Invoke with a *discovery handle* as target resolves it in
process with ``DiscoveryService.resolve`` (the Resolve RPC only checks a handle).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Protocol

import grpc
from ...firmware.caplets.cap_token import Token
from ...firmware.caplets.cap_errors import TokenError
from ...firmware.caplets.mint import MAX_TOKEN_TEXT, from_text
from ..api.service import HandleGrant
from ..tokens.app_tokens import AppClient, authenticate
from .core import DiscoveryService, Filters, Latency, Target, WatchSession
from ..errors import Unavailable, BadRequest, GatewayError, grpc_code
from .handles import HandleCodec, derive_key
from .regions import Region, RegionError
from ...proto import discovery_pb2 as dpb
from ...proto import discovery_pb2_grpc as dgrpc
from ...proto import gateway_pb2 as gpb

WATCH_TICK_S = 60.0  # re-evaluate a watch at least this often (latency classes age)
WATCH_TOKEN_S = 5.0  # check a watch's token again at least this often (revocation, expiry)


class PeerForward(Protocol):
    """Gateway-to-gateway forwarding (the Peer.Forward client of gateway/api/peer.py)."""

    async def forward(self, gateway_id: str, endpoint: str, request: gpb.InvokeRequest) -> gpb.Result: ...


LocalInvoke = Callable[[bytes, gpb.InvokeRequest], Awaitable[gpb.Result]]  # (pseudonym, request)


class Invoker(Protocol):
    async def invoke(self, target: Target, request: gpb.InvokeRequest) -> gpb.Result: ...


class RoutingInvoker:
    """Local devices through the gateway's invoke path, others through their owning gateway."""

    def __init__(self, gateway_id: str, local: LocalInvoke, peer: PeerForward | None) -> None:
        self.gateway_id, self.local, self.peer = gateway_id, local, peer

    async def invoke(self, target: Target, request: gpb.InvokeRequest) -> gpb.Result:
        if target.gateway_id == self.gateway_id:
            return await self.local(target.pseudonym, request)
        if self.peer is None:
            raise GatewayError("this gateway cannot forward to other gateways")
        return await self.peer.forward(target.gateway_id, target.endpoint, request)


class GatewayInvoker:
    """The production invoker: the gateway's own invoke path (GatewayService.invoke), which
    serves its devices locally and forwards others to their owner with Peer.Forward."""

    def __init__(self, gateway_service) -> None:
        self.gateway_service = gateway_service

    async def invoke(self, target: Target, request: gpb.InvokeRequest) -> gpb.Result:
        from ..api.convert import to_call, to_pb
        from ..api.service import owner_handle

        request.target = owner_handle(target.pseudonym)
        # discovery has authenticated the client with this gateway's own token:
        # vouch for it (read-only) if the device lives at another gateway
        return to_pb(await self.gateway_service.invoke(to_call(request), attested=True))


def anonymous(result: gpb.Result) -> gpb.Result:
    """The result without anything that could name the device."""
    out = gpb.Result()
    out.CopyFrom(result)
    out.device_status = 0
    return out


def region_of(msg: dpb.Region) -> Region:
    try:
        if msg.cells:
            return Region.of_cells(msg.cells)
        if msg.radius_km > 0:
            return Region.disk(msg.lat, msg.lon, msg.radius_km)
    except RegionError as exc:
        raise BadRequest(str(exc)) from exc
    raise BadRequest("a region needs cells, or a centre and a positive radius")


def filters_of(msg: dpb.Filters) -> Filters:
    try:
        return Filters(Latency(msg.max_latency), msg.seen_within_s)
    except ValueError as exc:
        raise BadRequest(f"unknown latency class {msg.max_latency}") from exc


def _token(raw: bytes) -> bytes | Token:
    """Tokens arrive as binary or as their text form (what `--token FILE` holds)."""
    if len(raw) > MAX_TOKEN_TEXT:
        return raw[:MAX_TOKEN_TEXT + 1]  # refused as it is verified, without decoding 4 MB of text first
    try:
        return from_text(raw.decode("ascii"))
    except (UnicodeDecodeError, TokenError):
        return raw


def _handle_pb(h) -> dpb.Handle:
    return dpb.Handle(handle=h.handle, cell=h.cell, latency=int(h.latency), gateway=h.gateway,
                      expires_at_ms=h.expires_at_ms)


class DiscoveryServicer(dgrpc.DiscoveryServicer):
    """gRPC handlers over one DiscoveryService."""

    def __init__(self, service: DiscoveryService, secret: bytes, invoker: Invoker | None = None,
                 follower=None, clock: Callable[[], float] = time.time, revoked: object = None,
                 watch_tick_s: float = WATCH_TICK_S) -> None:
        self.service, self.secret, self.invoker, self.follower = service, secret, invoker, follower
        self.clock, self.revoked, self.watch_tick_s = clock, revoked, watch_tick_s

    def _client(self, token: bytes) -> AppClient:
        return authenticate(_token(token), self.secret, now=int(self.clock()), revoked=self.revoked)

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    async def _fail(self, context: grpc.aio.ServicerContext, err: GatewayError) -> None:
        await context.abort(grpc_code(err), str(err))

    async def Discover(self, request: dpb.DiscoverRequest, context) -> dpb.DiscoverResponse:
        try:
            ans = self.service.discover(self._client(request.token), request.service_type,
                                        region_of(request.region), filters_of(request.filters),
                                        request.page_size, request.page_token, self._now_ms())
        except GatewayError as err:
            await self._fail(context, err)
        context.set_trailing_metadata(self._freshness())
        return dpb.DiscoverResponse(handles=[_handle_pb(h) for h in ans.handles], next_page_token=ans.next_page)

    def _freshness(self) -> tuple[tuple[str, str], ...]:
        """Trailers saying how stale the answer may be: the replica's height and the
        milliseconds since it last caught up with the chain (discovery answers from
        the replica while the chain is away)."""
        if self.follower is None or not hasattr(self.follower, "age_s"):
            return ()
        age = self.follower.age_s()
        out = (("replica-height", str(self.follower.index.height)),)
        return out + ((("replica-age-ms", str(int(age * 1000))),) if age is not None else ())

    async def Resolve(self, request: dpb.ResolveRequest, context) -> dpb.ResolveResponse:
        try:
            client = self._client(request.token)
        except GatewayError as err:
            await self._fail(context, err)
        try:
            t = self.service.resolve(client, request.handle, self._now_ms())
        except GatewayError:
            return dpb.ResolveResponse(valid=False)
        exp = self.service.codec.open(client.client_id, request.handle, self._now_ms()).expires_at_ms
        return dpb.ResolveResponse(valid=True, cell=t.cell, service_type=t.service_type,
                                   gateway=self.service.endpoint, expires_at_ms=exp)

    async def InvokeAny(self, request: dpb.InvokeAnyRequest, context) -> gpb.Result:
        try:
            if self.invoker is None:
                raise GatewayError("invoke-any is not available at this gateway")
            client = self._client(request.token)
            target = self.service.pick_any(client, request.service_type, region_of(request.region),
                                           request.method, filters_of(request.filters), self._now_ms())
            fwd = gpb.InvokeRequest(target="", method=request.method, args=request.args, token=request.token,
                                    timeout_ms=request.timeout_ms, ttl_s=request.ttl_s,
                                    service=request.service_type)
            result = await self.invoker.invoke(target, fwd)
        except GatewayError as err:
            await self._fail(context, err)
        return anonymous(result)

    async def Watch(self, request: dpb.WatchRequest, context) -> AsyncIterator[dpb.WatchEvent]:
        """Events as the index changes, and at least every ``watch_tick_s``; the token is
        checked again before each step and at least every WATCH_TOKEN_S, so a watch ends
        (Unauthorized) soon after its token is revoked or expires."""
        try:
            client = self._client(request.token)
            session = WatchSession(self.service, client, request.service_type, region_of(request.region),
                                   filters_of(request.filters))
            index = self.service.index
            loop = asyncio.get_running_loop()
            while True:
                version = index.version
                for kind, info in session.step(self._now_ms()):
                    k = dpb.WatchEvent.APPEAR if kind == WatchSession.APPEAR else dpb.WatchEvent.LEAVE
                    yield dpb.WatchEvent(kind=k, handle=_handle_pb(info), height=index.height)
                if self.follower is None:
                    return
                step_at = loop.time() + self.watch_tick_s
                while True:
                    left = step_at - loop.time()
                    if left <= 0 or await self.follower.wait_changed(version, min(left, WATCH_TOKEN_S)) != version:
                        break
                    self._client(request.token)  # revoked or expired meanwhile: the watch ends here
                self._client(request.token)
        except GatewayError as err:
            await self._fail(context, err)


def handle_resolver(service: DiscoveryService, secret: bytes, clock: Callable[[], float] = time.time,
                    revoked: object = None) -> Callable[[str, bytes], HandleGrant | None]:
    """For GatewayService.resolvers: (target, client token) -> the handle's grant (device,
    service type, the client's rights), or None when the target is not a valid discovery
    handle of this client (the caller then reports NotFound). A revoked token resolves
    nothing; a stale revocation list raises Unavailable."""

    def resolve(target: str, token: bytes) -> HandleGrant | None:
        try:
            client = authenticate(_token(token), secret, now=int(clock()), revoked=revoked)
            found = service.resolve(client, target, int(clock() * 1000))
        except Unavailable:
            raise
        except GatewayError:
            return None
        return HandleGrant(found.pseudonym, found.service_type, client.may_invoke)

    return resolve


def discovery_servicer(service: DiscoveryService, secret: bytes, invoker: Invoker | None = None,
                       follower=None, **kw) -> DiscoveryServicer:
    """The servicer to register on the gateway's gRPC server (see :func:`add_to_server`)."""
    return DiscoveryServicer(service, secret, invoker, follower, **kw)


def add_to_server(server: grpc.aio.Server, servicer: DiscoveryServicer) -> str:
    """Register discovery on ``server``; its full service name (for reflection and health)."""
    dgrpc.add_DiscoveryServicer_to_server(servicer, server)
    return dpb.DESCRIPTOR.services_by_name["Discovery"].full_name


def create_discovery(home: Path, chain, gateway_id: str, endpoint: str, keeper=None):
    """(DiscoveryService, ReplicaFollower, secret) for a node home: the gateway app's one call.

    Start ``follower.run()`` as a background task; register
    ``discovery_servicer(service, secret, invoker, follower)`` on the server.
    """
    from .replica import ReplicaFollower

    secret = (Path(home) / "keys" / "gateway.secret").read_bytes()
    follower = ReplicaFollower(chain, keeper=keeper)  # the keeper's keyring opens sealed records
    service = DiscoveryService(follower.index, HandleCodec(derive_key(secret), gateway_id), gateway_id, endpoint)
    return service, follower, secret
