"""Gateway-to-gateway calls: who owns a device, signing and checking forwards.

Gateway A never talks to a device of gateway B. It finds B in the registry
(device record -> owning gateway id -> peer endpoint, TLS certificate and
Ed25519 key), and sends B a :class:`Forwarded` call signed with its own key,
over mutual TLS: A pins B's registered certificate and presents its own. B's
peer port accepts only certificates of registered gateways (:class:`PeerRoots`,
refreshed from the registry); B's handler then looks A's record up, requires
the certificate of this very connection to be the one A registered (a fresh
read when it differs from the cached one), checks the signature, the freshness
of ``sent_at_ms`` and that it has not seen the same forward before, then
authorises the *client's* token itself: the peer signature only says which
gateway relays, it never adds authority.
"""

from __future__ import annotations

import asyncio
import hashlib
import struct
import time
from collections import OrderedDict
from dataclasses import dataclass

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ...chain import ChainClient, ChainError
from ..client.errors import transport_reason
from ..errors import GatewayError, NotFound, PeerNotTrusted, Unauthorized, Unavailable, from_grpc
from ..metrics import GatewayMetrics
from ..tls import Pin, PinError, TlsIdentity, channel_credentials, channel_options, fingerprint, verify_binding
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
    tls_cert: bytes = b""  # DER; empty: the gateway serves no TLS
    tls_cert_signature: bytes = b""
    peer_endpoint: str = ""  # its mutual-TLS port; empty until it has published it

    @classmethod
    def of(cls, rec: pb.GatewayRecord) -> PeerInfo:
        return cls(rec.id, rec.endpoint, rec.pubkey, rec.tls_cert, rec.tls_cert_signature, rec.peer_endpoint)


class Directory:
    """Registry lookups (owner of a pseudonym, a gateway's endpoint and key), cached briefly."""

    def __init__(self, chain: ChainClient, ttl_s: float = DIRECTORY_TTL_S) -> None:
        self.chain = chain
        self.ttl_s = ttl_s
        self._cache: dict[tuple[str, bytes | str], tuple[float, object]] = {}

    async def _cached(self, key: tuple[str, bytes | str], fetch, fresh: bool = False):
        hit = self._cache.get(key)
        if hit is not None and not fresh and time.monotonic() - hit[0] < self.ttl_s:
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

    async def gateway(self, gateway_id: str, fresh: bool = False) -> PeerInfo | None:
        """The registry record of ``gateway_id`` (``fresh``: read now, not from the cache)."""
        async def fetch():
            try:
                res = await self.chain.query("/gateway", gateway_id.encode())
            except ChainError as exc:
                raise Unavailable(f"registry unreachable: {exc}") from exc
            if res.code != 0:
                return None
            return PeerInfo.of(pb.GatewayRecord.FromString(res.value))
        return await self._cached(("gateway", gateway_id), fetch, fresh)

    def forget(self, pseudonym: bytes) -> None:
        self._cache.pop(("device", pseudonym), None)

    def forget_gateway(self, gateway_id: str) -> None:
        """Read the gateway's record afresh next time (it may have moved or rotated its certificate)."""
        self._cache.pop(("gateway", gateway_id), None)

    def forget_gateways(self) -> None:
        """Read every gateway's record afresh next time (the registry's set of gateways changed)."""
        for key in [k for k in self._cache if k[0] == "gateway"]:
            del self._cache[key]


def presented_cert(auth_context: dict[str, list[bytes]]) -> bytes | None:
    """The client certificate (DER) of a call's TLS connection, None without one."""
    pems = auth_context.get("x509_pem_cert")
    if not pems:
        return None
    return x509.load_pem_x509_certificate(pems[0]).public_bytes(serialization.Encoding.DER)


class ForwardChecker:
    """B's side: the connection's certificate, the signature from the registry key,
    freshness, and no repeats. ``require_tls`` False (a gateway run with
    ``--insecure``) accepts forwards that arrive without a certificate."""

    def __init__(self, directory: Directory, require_tls: bool = True) -> None:
        self.directory = directory
        self.require_tls = require_tls
        self._seen: OrderedDict[bytes, int] = OrderedDict()

    async def check(self, msg: gw.Forwarded, now_ms: int | None = None, peer_cert: bytes | None = None) -> PeerInfo:
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
        if self.require_tls or peer_cert is not None:
            peer = await self._check_certificate(peer, peer_cert)
        digest = hashlib.sha256(msg.signature).digest()
        while self._seen and (next(iter(self._seen.values())) < now - MAX_SKEW_MS or len(self._seen) > SEEN_LIMIT):
            self._seen.popitem(last=False)
        if digest in self._seen:
            raise Unauthorized("forward replayed")
        self._seen[digest] = now
        return peer

    async def _check_certificate(self, peer: PeerInfo, cert: bytes | None) -> PeerInfo:
        """The connection's certificate must be the one ``peer`` registered, bound to its key."""
        gid = peer.gateway_id
        if cert is None:
            raise PeerNotTrusted("gateway-to-gateway calls need mutual TLS: this connection presented no "
                                 "certificate (forward to the gateway's peer endpoint, with your own certificate)")
        if cert != peer.tls_cert:  # rotated a moment ago? read the registry again before refusing
            peer = await self.directory.gateway(gid, fresh=True) or peer
        if cert != peer.tls_cert:
            held = f"SHA-256 {fingerprint(peer.tls_cert)[:16]}..." if peer.tls_cert else "none"
            raise PeerNotTrusted(f"the TLS certificate presented (SHA-256 {fingerprint(cert)[:16]}...) is not the one "
                                 f"the registry holds for gateway {gid} ({held})")
        try:
            verify_binding(peer.pubkey, cert, peer.tls_cert_signature)
        except PinError as exc:
            raise PeerNotTrusted(f"gateway {gid}'s registered certificate is not signed by its key") from exc
        return peer


class PeerRoots:
    """The peer port's trusted client certificates: every registered gateway's, bound to its key.

    gRPC asks :meth:`fetch` before every handshake on the peer port (grpcio's
    dynamic credentials) and gets a new configuration only when the set
    changed, so a gateway registered a moment ago is accepted from the next
    :meth:`update` on. The socket's check says "some registered gateway"; the
    handler (:class:`ForwardChecker`) says which one, from a fresh read.
    """

    def __init__(self, identity: TlsIdentity) -> None:
        self.identity = identity
        self.certs: tuple[bytes, ...] = (identity.cert_der,)
        self._bound: set[tuple[bytes, bytes, bytes]] = set()  # (pubkey, cert, signature) already verified
        self._pending: grpc.ServerCertificateConfiguration | None = None

    def _config(self) -> grpc.ServerCertificateConfiguration:
        roots = b"".join(Pin.from_der(c).cert_pem for c in self.certs)
        return grpc.ssl_server_certificate_configuration([(self.identity.key_pem, self.identity.cert_pem)],
                                                         root_certificates=roots)

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(self._config(), self.fetch, require_client_authentication=True)

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """gRPC's hook, before each handshake: a new configuration, or None to keep the current one."""
        config, self._pending = self._pending, None
        return config

    def update(self, records: list[pb.GatewayRecord]) -> bool:
        """Trust the certificates of ``records`` (those bound to their gateway's key); True if the set changed."""
        certs = {self.identity.cert_der}
        for rec in records:
            entry = (rec.pubkey, rec.tls_cert, rec.tls_cert_signature)
            if rec.tls_cert and entry not in self._bound:
                try:
                    Pin.from_record(rec.id, *entry)
                except PinError:
                    continue
                self._bound.add(entry)
            if rec.tls_cert:
                certs.add(rec.tls_cert)
        if len(self._bound) > 4 * len(records) + 64:
            self._bound = {(r.pubkey, r.tls_cert, r.tls_cert_signature) for r in records} & self._bound
        new = tuple(sorted(certs))
        if new == self.certs:
            return False
        self.certs = new
        self._pending = self._config()
        return True


class PeerClient:
    """A's side: one channel per peer, mutual TLS pinned to its registered certificate
    (presenting ``tls``, this gateway's own); statuses mapped back to domain errors.
    A peer that publishes no certificate is reached in clear only when
    ``allow_plaintext`` (this gateway itself runs ``--insecure``). With ``metrics``,
    every forward is counted (direction "out", outcome "ok" or the error's reason),
    as B counts what it receives."""

    def __init__(self, key: Ed25519PrivateKey, gateway_id: str, directory: Directory,
                 metrics: GatewayMetrics | None = None, *, tls: TlsIdentity | None = None,
                 allow_plaintext: bool = False) -> None:
        self.key, self.gateway_id, self.directory = key, gateway_id, directory
        self.metrics = metrics
        self.tls, self.allow_plaintext = tls, allow_plaintext
        self._channels: dict[str, tuple[tuple[str, bytes], grpc.aio.Channel]] = {}  # gateway id -> (how, channel)

    def _count(self, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.forwards.labels("out", outcome).inc()

    async def _stub(self, gateway_id: str) -> gw_grpc.PeerStub:
        peer = await self.directory.gateway(gateway_id)
        if peer is None:
            raise NotFound(f"the device's gateway {gateway_id} is not in the registry")
        if not peer.peer_endpoint:
            raise Unavailable(f"the device's gateway {gateway_id} has not published its peer endpoint yet "
                              "(it does at start)")
        how = (peer.peer_endpoint, peer.tls_cert)
        held = self._channels.get(gateway_id)
        if held is not None and held[0] == how:
            return gw_grpc.PeerStub(held[1])
        chan = self._channel(peer)
        self._channels[gateway_id] = (how, chan)
        if held is not None:
            asyncio.ensure_future(held[1].close())  # the peer moved or rotated its certificate
        return gw_grpc.PeerStub(chan)

    def _channel(self, peer: PeerInfo) -> grpc.aio.Channel:
        if not peer.tls_cert:
            if not self.allow_plaintext:
                raise Unavailable(f"the device's gateway {peer.gateway_id} serves no TLS (--insecure): refusing to "
                                  "forward a client's token in clear")
            return grpc.aio.insecure_channel(peer.peer_endpoint, options=PEER_CHANNEL_OPTIONS)
        if self.tls is None:
            raise Unavailable(f"the device's gateway {peer.gateway_id} needs mutual TLS and this gateway has no "
                              "TLS identity")
        try:
            pin = Pin.from_record(peer.gateway_id, peer.pubkey, peer.tls_cert, peer.tls_cert_signature)
        except PinError as exc:
            raise Unavailable(f"the device's gateway {peer.gateway_id} cannot be trusted: {exc}") from exc
        return grpc.aio.secure_channel(peer.peer_endpoint, channel_credentials(pin, self.tls),
                                       options=[*PEER_CHANNEL_OPTIONS, *channel_options(pin)])

    async def forward(self, gateway_id: str, call: str, request: gw.InvokeRequest | None = None,
                      result: gw.ResultRequest | None = None, timeout: float = 30.0) -> gw.Result:
        try:
            stub = await self._stub(gateway_id)
            msg = sign_forward(self.key, self.gateway_id, call, request, result)
            try:
                res = await stub.Forward(msg, timeout=timeout)
            except grpc.aio.AioRpcError as exc:
                raise self._failed(exc, gateway_id) from exc
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
                raise self._failed(exc, gateway_id) from exc
        except GatewayError as err:
            self._count(err.reason)
            raise
        self._count("ok")

    def _failed(self, exc: grpc.aio.AioRpcError, gateway_id: str) -> GatewayError:
        if exc.code() == grpc.StatusCode.UNAVAILABLE:  # moved, or a new certificate: look it up again
            self.directory.forget_gateway(gateway_id)
        return _mapped(exc, gateway_id)

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for _, c in self._channels.values()), return_exceptions=True)
        self._channels.clear()


def _mapped(exc: grpc.aio.AioRpcError, gateway_id: str) -> GatewayError:
    if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
        why = transport_reason(exc.details() or "") or exc.details()
        return Unavailable(f"the device's gateway {gateway_id} cannot be reached now ({why})")
    return from_grpc(exc.code(), exc.details() or "")
