"""TLS on the wire, against a real ``edgistry up`` on loopback: a sniffer sees no token,
a wrong pin is refused, every TLS port handshakes and refuses plaintext, and the peer
port takes only the certificate the registry holds for the calling gateway."""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import os
import time
import ssl
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from edgistry.chain import ChainClient, call
from edgistry.config import NodeConfig
from edgistry.gateway.api.grpc_server import start_grpc
from edgistry.gateway.api.peer import Directory, PeerClient, sign_forward
from edgistry.gateway.api.service import GatewayService
from edgistry.gateway.errors import NotFound, Unavailable
from edgistry.gateway.metrics import GatewayMetrics
from edgistry.gateway.store.store import GatewayStore
from edgistry.gateway.tls import Pin, ensure_identity
from edgistry.proto import gateway_pb2 as gw
from edgistry.proto import gateway_pb2_grpc as gw_grpc
from edgistry.proto import registry_pb2 as pb
from gateway_helpers import node_home
from proc_helpers import edgistry, stop, wait_for_port
from tls_helpers import FakePeer, Recorder, add_to_genesis, pinned_channel

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]
SC = grpc.StatusCode


@dataclass
class Node:
    cfg: NodeConfig
    ports: dict[str, int]
    pin: Pin
    peers: dict[str, FakePeer]  # c, d, e, f: registered in genesis with their certificates; x: never registered
    log: Path

    def addr(self, port: str) -> str:
        return f"127.0.0.1:{self.ports[port]}"


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    root = tmp_path_factory.mktemp("tls")
    cfg, ports = node_home(root / "a")
    peers = {name: FakePeer.make(root / "peers", name) for name in "cdefx"}
    add_to_genesis(cfg, *(peers[n] for n in "cdef"))
    # the peer port's trusted certificates stay as read at start (no follower poll, no fallback re-read),
    # as in the moment between a registry change and the gateway seeing it: the tests change the registry
    # under it; token checks must not fail closed for want of the follower's polls meanwhile
    cfg.extra["gateway"].update(peer_roots_interval_s=3600, chain_poll_s=3600, revocation_max_silence_s=3600)
    cfg.save()
    log = root / "a.log"
    proc = edgistry("up", "--home", str(cfg.home), log=log)
    try:
        for name in ("grpc", "peer", "http"):
            wait_for_port(ports[name], proc=proc, timeout=30)
        yield Node(cfg, ports, Pin.from_file(cfg.tls_cert_path), peers, log)
    finally:
        stop(proc)


def health(channel: grpc.Channel) -> int:
    return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status


def rpc_error(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value


# ---- clients ----


def test_sniffed_grpc_bytes_hold_no_token(node):
    """Between a client and the gateway's gRPC port a passive observer sees a TLS handshake
    and ciphertext: the token the client sent appears in neither direction."""
    marker = b"EDGISTRY-TOKEN-" + os.urandom(12).hex().encode()
    rec = Recorder(("127.0.0.1", node.ports["grpc"]))
    try:
        with pinned_channel(rec.address, node.pin) as chan:
            err = rpc_error(lambda: gw_grpc.GatewayStub(chan).Submit(
                gw.InvokeRequest(target="own-" + "00" * 16, method="read", token=marker), timeout=10))
    finally:
        rec.close()
    assert err.code() not in (SC.UNAVAILABLE, SC.UNIMPLEMENTED), err  # the call reached the gateway's handler
    assert len(rec.upstream) > 1000 and rec.upstream[:1] == b"\x16"  # a TLS handshake record opens it
    assert marker not in rec.upstream and marker not in rec.downstream
    assert marker[-24:] not in rec.upstream  # nor any long piece of it


async def test_the_sniffer_sees_a_token_sent_in_clear(tmp_path):
    """The same call to a plaintext server puts the token on the wire: the sniffer is not blind."""
    marker = b"EDGISTRY-TOKEN-" + os.urandom(12).hex().encode()
    store = GatewayStore(tmp_path / "gw")
    server, port = await start_grpc("127.0.0.1:0", GatewayService(store, "gw-x", b"s" * 32), None, None,
                                    GatewayMetrics())
    rec = Recorder(("127.0.0.1", port))
    try:
        async with grpc.aio.insecure_channel(rec.address) as chan:
            with pytest.raises(grpc.aio.AioRpcError):
                await gw_grpc.GatewayStub(chan).Submit(
                    gw.InvokeRequest(target="own-" + "00" * 16, method="read", token=marker), timeout=10)
    finally:
        rec.close()
        await server.stop(None)
        store.close()
    assert marker in rec.upstream


def test_a_wrong_pin_is_refused(node):
    """A client pinned to another gateway's certificate, or to this one under another name, never connects."""
    other = node.peers["c"].tls.pin
    err = rpc_error(lambda: health(pinned_channel(node.addr("grpc"), other)))
    assert err.code() == SC.UNAVAILABLE and "CERTIFICATE_VERIFY_FAILED" in err.details()
    renamed = Pin(node.pin.cert_der, other.name)
    err = rpc_error(lambda: health(pinned_channel(node.addr("grpc"), renamed)))
    assert err.code() == SC.UNAVAILABLE
    assert health(pinned_channel(node.addr("grpc"), node.pin)) == health_pb2.HealthCheckResponse.SERVING


# ---- every TLS port ----


def test_grpc_port_handshakes_and_refuses_plaintext(node):
    """The client port completes TLS with the pinned certificate; a plaintext call gets nothing."""
    assert health(pinned_channel(node.addr("grpc"), node.pin)) == health_pb2.HealthCheckResponse.SERVING
    err = rpc_error(lambda: health(grpc.insecure_channel(node.addr("grpc"))))
    assert err.code() == SC.UNAVAILABLE


def test_peer_port_handshakes_only_with_a_registered_client_certificate(node):
    """The peer port completes mutual TLS with a registered gateway's certificate; without a
    client certificate, with an unregistered one, or in plaintext, no call gets through."""
    c, x = node.peers["c"], node.peers["x"]
    assert health(pinned_channel(node.addr("peer"), node.pin, c.tls)) == health_pb2.HealthCheckResponse.SERVING
    for chan in (pinned_channel(node.addr("peer"), node.pin), pinned_channel(node.addr("peer"), node.pin, x.tls),
                 grpc.insecure_channel(node.addr("peer"))):
        assert rpc_error(lambda: health(chan)).code() == SC.UNAVAILABLE


def test_http_port_speaks_tls_only(node):
    """/healthz answers over HTTPS with the pinned certificate (and says TLS is on); plain HTTP gets no answer."""
    context = ssl.create_default_context(cafile=str(node.cfg.tls_cert_path))
    with urllib.request.urlopen(f"https://127.0.0.1:{node.ports['http']}/healthz", context=context,
                                timeout=5) as resp:
        assert resp.status == 200 and b'"tls": true' in resp.read()
    with pytest.raises((OSError, http.client.HTTPException)):
        urllib.request.urlopen(f"http://127.0.0.1:{node.ports['http']}/healthz", timeout=5).read()
    untrusted = ssl.create_default_context()  # the system's roots: no public CA vouches for a gateway
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        urllib.request.urlopen(f"https://127.0.0.1:{node.ports['http']}/healthz", context=untrusted, timeout=5)


async def test_http_and_rpc_ports_cut_silent_and_half_sent_connections(node):
    """The gateway's HTTPS port and the node's RPC port close a connection that never
    finishes its TLS handshake or its request head within the 10 s deadline, where
    aiohttp alone held it for about an hour; a well-formed request is still answered."""
    context = ssl.create_default_context(cafile=str(node.cfg.tls_cert_path))
    http_port, rpc_port = node.ports["http"], int(node.cfg.rpc_listen.rsplit(":", 1)[1])

    async def held_for(reader: asyncio.StreamReader) -> float | None:
        t0 = time.monotonic()
        try:
            while await asyncio.wait_for(reader.read(4096), 20 - (time.monotonic() - t0)):
                pass
        except (ConnectionError, ssl.SSLError):
            pass
        except asyncio.TimeoutError:
            return None
        return time.monotonic() - t0

    no_handshake = await asyncio.open_connection("127.0.0.1", http_port)
    half_https = await asyncio.open_connection("127.0.0.1", http_port, ssl=context, server_hostname="127.0.0.1")
    half_https[1].write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    half_rpc = await asyncio.open_connection("127.0.0.1", rpc_port)
    half_rpc[1].write(b"POST / HTTP/1.1\r\nHost: x\r\n")
    ok_r, ok_w = await asyncio.open_connection("127.0.0.1", rpc_port)
    body = b'{"jsonrpc":"2.0","id":1,"method":"health"}'
    ok_w.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    held = await asyncio.gather(*(held_for(r) for r, _ in (no_handshake, half_https, half_rpc)))
    assert all(t is not None and 9 < t < 14 for t in held), held
    assert b"200 OK" in await asyncio.wait_for(ok_r.read(4096), 5)
    for _, w in (no_handshake, half_https, half_rpc, (ok_r, ok_w)):
        w.close()


# ---- the peer port's handler ----


def forward(node: Node, signer: FakePeer, presented) -> gw.Result:
    """A Forward of a result call, signed by ``signer``, over a connection presenting ``presented``."""
    msg = sign_forward(signer.key, signer.gateway_id, "result", result=gw.ResultRequest(request_id="00" * 16,
                                                                                        token=b"t"))
    with pinned_channel(node.addr("peer"), node.pin, presented) as chan:
        return gw_grpc.PeerStub(chan).Forward(msg, timeout=10)


def test_a_registered_peer_passes_the_handler(node):
    """A gateway presenting its own registered certificate gets past the peer checks (to the service's answer)."""
    c = node.peers["c"]
    err = rpc_error(lambda: forward(node, c, c.tls))
    assert err.code() == SC.NOT_FOUND and "no request" in err.details()


def test_a_peer_presenting_another_gateways_certificate_is_refused_in_the_handler(node):
    """Gateway C signing its forward but presenting D's (registered) certificate is refused by the handler."""
    c, d = node.peers["c"], node.peers["d"]
    err = rpc_error(lambda: forward(node, c, d.tls))
    assert err.code() == SC.PERMISSION_DENIED
    assert f"is not the one the registry holds for gateway {c.gateway_id}" in err.details()


async def test_a_certificate_no_longer_registered_is_refused_in_the_handler(node, tmp_path):
    """Gateway E replaces its certificate on chain; its old one still opens the socket (the peer
    port's roots are as at start) but the handler reads the registry again and refuses it."""
    e = node.peers["e"]
    fresh = ensure_identity(tmp_path / "e2.key", tmp_path / "e2.crt", e.key)
    async with ChainClient(node.cfg.rpc_url) as chain:
        await chain.submit(e.key, pb.SetGatewayTls(cert=fresh.cert_der, cert_signature=fresh.signature,
                                                   peer_endpoint="127.0.0.1:9"))
    err = await asyncio.to_thread(rpc_error, lambda: forward(node, e, e.tls))
    assert err.code() == SC.PERMISSION_DENIED and "is not the one the registry holds" in err.details()
    assert fresh.pin.sha256[:16] in err.details()


def test_an_unregistered_certificate_never_completes_the_handshake(node):
    """A certificate no gateway registered is refused at the socket, whoever the forward claims to be."""
    c, x = node.peers["c"], node.peers["x"]
    for signer in (x, c):
        assert rpc_error(lambda: forward(node, signer, x.tls)).code() == SC.UNAVAILABLE


async def test_the_forwarding_client_presents_its_certificate(node):
    """PeerClient (gateway C's side) pins this gateway from the registry and presents C's certificate:
    the call passes the peer checks; to a peer that publishes no certificate it refuses to send."""
    c, f = node.peers["c"], node.peers["f"]
    async with ChainClient(node.cfg.rpc_url) as chain:
        client = PeerClient(c.key, c.gateway_id, Directory(chain), tls=c.tls)
        try:
            a_id = node.pin.gateway_id
            with pytest.raises(NotFound, match="no request"):
                await client.forward(a_id, "result", result=gw.ResultRequest(request_id="00" * 16, token=b"t"))
            await chain.submit(f.key, pb.SetGatewayTls(peer_endpoint=node.addr("peer")))  # f: --insecure
            with pytest.raises(Unavailable, match="serves no TLS"):
                await client.forward(f.gateway_id, "result", result=gw.ResultRequest(request_id="00" * 16))
        finally:
            await client.close()


# ---- --insecure ----


def test_insecure_is_explicit_loud_and_published(tmp_path):
    """`up --insecure` serves plaintext gRPC and HTTP, warns at start that tokens travel in clear,
    and publishes an empty certificate, so that no client pins it and TLS peers refuse to forward to it."""
    cfg, ports = node_home(tmp_path / "i")
    log = tmp_path / "i.log"
    proc = edgistry("up", "--home", str(cfg.home), "--insecure", log=log)
    try:
        wait_for_port(ports["grpc"], proc=proc, timeout=30)
        wait_for_port(ports["http"], proc=proc, timeout=30)
        assert health(grpc.insecure_channel(cfg.grpc_listen)) == health_pb2.HealthCheckResponse.SERVING
        with urllib.request.urlopen(f"http://127.0.0.1:{ports['http']}/healthz", timeout=5) as resp:
            assert json.loads(resp.read())["tls"] is False
        gid = Pin.from_file(cfg.tls_cert_path).gateway_id
        deadline = time.monotonic() + 20
        while True:
            res = call(cfg.rpc_url, "abci_query", path="/gateway", data=gid.encode().hex(), height="0", prove=False)
            rec = pb.GatewayRecord.FromString(base64.b64decode(res["response"]["value"]))
            if not rec.tls_cert or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert rec.tls_cert == b"" and rec.peer_endpoint == cfg.peer_listen
    finally:
        stop(proc)
    text = log.read_text()
    assert "INSECURE" in text and "TLS is OFF" in text and "in clear" in text
