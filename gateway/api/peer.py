"""Gateway-to-gateway calls: who owns a device, signing and checking forwards.

Gateway A never talks to a device of gateway B. It finds B in the registry
(device record -> owning gateway id -> endpoint and Ed25519 key), and sends
B a :class:`Forwarded` call signed with its own key. B looks A's key up in
the registry, checks the signature, the freshness of ``sent_at_ms`` and that
it has not seen the same forward before, then authorises the *client's*
token itself: the peer signature only says which gateway relays, it never
adds authority.
"""

from __future__ import annotations

import asyncio
import hashlib
import struct
import time
from collections import OrderedDict
from dataclasses import dataclass

import grpc
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ...chain import ChainClient, ChainError
from ..client.errors import transport_reason
from ..errors import GatewayError, NotFound, Unauthorized, Unavailable, from_grpc
from ..metrics import GatewayMetrics
from ...proto import gateway_pb2 as gw
from ...proto import gateway_pb2_grpc as gw_grpc
from ...proto import registry_pb2 as pb

FORWARD_DOMAIN = b"edgistry/fwd/v1\0"
MAX_SKEW_MS = 30_000  # forwards older or newer than this are refused (replay window)
SEEN_LIMIT = 100_000  # forwards remembered inside the window (bounded memory)
DIRECTORY_TTL_S = 30.0  # how long registry lookups are reused
CALLS = ("invoke", "submit", "result", "cancel", "watch", "revoke")
# gRPC's default reconnect backoff grows to 120 s while a peer is down, and a call in
# backoff fails at once without dialling: a peer gateway back from a crash would stay
# UNAVAILABLE for up to two minutes. Redial a down peer at most every 2 s instead.
PEER_CHANNEL_OPTIONS = (("grpc.max_reconnect_backoff_ms", 2000),)


def signed_bytes(call: str, request: gw.InvokeRequest | None, result: gw.ResultRequest | None,
                 from_id: str, sent_at_ms: int) -> bytes:
    """Exactly what A signs: domain, call, the (deterministic) messages, A's id and the time."""
    req = request.SerializeToString(deterministic=True) if request is not None else b""
    res = result.SerializeToString(deterministic=True) if result is not None else b""
    parts = [call.encode(), req, res, from_id.encode()]
    return FORWARD_DOMAIN + b"".join(struct.pack(">I", len(p)) + p for p in parts) + struct.pack(">q", sent_at_ms)


def sign_forward(key: Ed25519PrivateKey, from_id: str, call: str, request: gw.InvokeRequest | None = None,
                 result: gw.ResultRequest | None = None, now_ms: int | None = None) -> gw.Forwarded:
    sent = int(time.time() * 1000) if now_ms is None else now_ms
    msg = gw.Forwarded(from_id=from_id, sent_at_ms=sent, call=call)
    if request is not None:
        msg.request.CopyFrom(request)
    if result is not None:
        msg.result.CopyFrom(result)
    msg.signature = key.sign(signed_bytes(call, request, result, from_id, sent))
    return msg


@dataclass(frozen=True)
class PeerInfo:
    gateway_id: str
    endpoint: str
    pubkey: bytes


class Directory:
    """Registry lookups (owner of a pseudonym, a gateway's endpoint and key), cached briefly."""

    def __init__(self, chain: ChainClient, ttl_s: float = DIRECTORY_TTL_S) -> None:
        self.chain = chain
        self.ttl_s = ttl_s
        self._cache: dict[tuple[str, bytes | str], tuple[float, object]] = {}

    async def _cached(self, key: tuple[str, bytes | str], fetch):
        hit = self._cache.get(key)
        if hit is not None and time.monotonic() - hit[0] < self.ttl_s:
            return hit[1]
        value = await fetch()
        if value is None:
            return None  # not cached: a device paired a moment ago must be found at once
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[key] = (time.monotonic(), value)
        return value

    async def device(self, pseudonym: bytes) -> pb.DeviceRecord | None:
        async def fetch():
            try:
                res = await self.chain.query("/device", pb.DeviceQuery(pseudonym=pseudonym).SerializeToString())
            except ChainError as exc:
                raise Unavailable(f"registry unreachable: {exc}") from exc
            return pb.DeviceRecord.FromString(res.value) if res.code == 0 else None
        return await self._cached(("device", pseudonym), fetch)

    async def gateway(self, gateway_id: str) -> PeerInfo | None:
        async def fetch():
            try:
                res = await self.chain.query("/gateway", gateway_id.encode())
            except ChainError as exc:
                raise Unavailable(f"registry unreachable: {exc}") from exc
            if res.code != 0:
                return None
            rec = pb.GatewayRecord.FromString(res.value)
            return PeerInfo(rec.id, rec.endpoint, rec.pubkey)
        return await self._cached(("gateway", gateway_id), fetch)

    def forget(self, pseudonym: bytes) -> None:
        self._cache.pop(("device", pseudonym), None)


class ForwardChecker:
    """B's side: signature from the registry key, freshness, and no repeats."""

    def __init__(self, directory: Directory) -> None:
        self.directory = directory
        self._seen: OrderedDict[bytes, int] = OrderedDict()

    async def check(self, msg: gw.Forwarded, now_ms: int | None = None) -> PeerInfo:
        now = int(time.time() * 1000) if now_ms is None else now_ms
        if msg.call not in CALLS:
            raise Unauthorized(f"unknown forwarded call {msg.call!r}")
        if abs(now - msg.sent_at_ms) > MAX_SKEW_MS:
            raise Unauthorized("forward is stale or from the future (clock skew above 30 s)")
        peer = await self.directory.gateway(msg.from_id)
        if peer is None:
            raise Unauthorized(f"forwarding gateway {msg.from_id!r} is not in the registry")
        request = msg.request if msg.HasField("request") else None
        result = msg.result if msg.HasField("result") else None
        try:
            Ed25519PublicKey.from_public_bytes(peer.pubkey).verify(
                msg.signature, signed_bytes(msg.call, request, result, msg.from_id, msg.sent_at_ms))
        except (InvalidSignature, ValueError) as exc:
            raise Unauthorized(f"forward signature does not verify for gateway {msg.from_id}") from exc
        digest = hashlib.sha256(msg.signature).digest()
        while self._seen and (next(iter(self._seen.values())) < now - MAX_SKEW_MS or len(self._seen) > SEEN_LIMIT):
            self._seen.popitem(last=False)
        if digest in self._seen:
            raise Unauthorized("forward replayed")
        self._seen[digest] = now
        return peer


class PeerClient:
    """A's side: one channel per peer endpoint; statuses mapped back to domain errors.
    With ``metrics``, every forward is counted (direction "out", outcome "ok" or the
    error's reason), as B counts what it receives."""

    def __init__(self, key: Ed25519PrivateKey, gateway_id: str, directory: Directory,
                 metrics: GatewayMetrics | None = None) -> None:
        self.key, self.gateway_id, self.directory = key, gateway_id, directory
        self.metrics = metrics
        self._channels: dict[str, grpc.aio.Channel] = {}

    def _count(self, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.forwards.labels("out", outcome).inc()

    async def _stub(self, gateway_id: str) -> gw_grpc.PeerStub:
        peer = await self.directory.gateway(gateway_id)
        if peer is None:
            raise NotFound(f"the device's gateway {gateway_id} is not in the registry")
        chan = self._channels.get(peer.endpoint)
        if chan is None:
            chan = self._channels[peer.endpoint] = grpc.aio.insecure_channel(peer.endpoint,
                                                                             options=PEER_CHANNEL_OPTIONS)
        return gw_grpc.PeerStub(chan)

    async def forward(self, gateway_id: str, call: str, request: gw.InvokeRequest | None = None,
                      result: gw.ResultRequest | None = None, timeout: float = 30.0) -> gw.Result:
        try:
            stub = await self._stub(gateway_id)
            msg = sign_forward(self.key, self.gateway_id, call, request, result)
            try:
                res = await stub.Forward(msg, timeout=timeout)
            except grpc.aio.AioRpcError as exc:
                raise _mapped(exc, gateway_id) from exc
        except GatewayError as err:
            self._count(err.reason)
            raise
        self._count("ok")
        return res

    async def watch(self, gateway_id: str, result: gw.ResultRequest):
        try:
            stub = await self._stub(gateway_id)
            msg = sign_forward(self.key, self.gateway_id, "watch", None, result)
            try:
                async for item in stub.ForwardWatch(msg):
                    yield item
            except grpc.aio.AioRpcError as exc:
                raise _mapped(exc, gateway_id) from exc
        except GatewayError as err:
            self._count(err.reason)
            raise
        self._count("ok")

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self._channels.values()), return_exceptions=True)
        self._channels.clear()


def _mapped(exc: grpc.aio.AioRpcError, gateway_id: str) -> GatewayError:
    if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
        why = transport_reason(exc.details() or "") or exc.details()
        return Unavailable(f"the device's gateway {gateway_id} cannot be reached now ({why})")
    return from_grpc(exc.code(), exc.details() or "")
