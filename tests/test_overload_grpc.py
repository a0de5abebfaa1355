"""Admission control over the real gRPC server (in process): refusals, hints, metrics, caps.

A real store (writer process), the real service and the real grpc.aio server
with the admission interceptor; clients are real gRPC channels on loopback.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from edgistry.config import Limits
from edgistry.firmware.caplets import api as cl
from edgistry.gateway.admission import Admission, ConnectionCaps
from edgistry.gateway.api.admission_grpc import RETRY_AFTER_KEY, service_hook
from edgistry.gateway.api.grpc_server import start_grpc
from edgistry.gateway.api.service import GatewayService, Settings, owner_handle
from edgistry.gateway.discovery.core import DiscoveryService, Latency
from edgistry.gateway.discovery.grpc_service import handle_resolver
from edgistry.gateway.discovery.handles import HandleCodec, derive_key
from edgistry.gateway.discovery.index import DeviceEntry, RegistryIndex, ServiceInfo
from edgistry.gateway.errors import Unauthorized
from edgistry.gateway.link.server import LinkServer
from edgistry.gateway.link.store_backend import StoreLinkBackend
from edgistry.gateway.metrics import GatewayMetrics
from edgistry.gateway.pairing.channel import CommissionCode, Offers
from edgistry.gateway.pairing.commissioner import Commissioner
from edgistry.gateway.store.store import Device, GatewayStore, new_id
from edgistry.gateway.tokens import auth
from edgistry.gateway.tokens.app_tokens import authenticate
from edgistry.proto import gateway_pb2 as gw
from edgistry.proto import gateway_pb2_grpc as gw_grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

pytestmark = pytest.mark.timeout(120)

MANIFEST = {"duty_cycle_s": 5, "services": [{"type": "sensor", "methods": ["read", "info"]}]}
SECRET = b"s" * 32
GATEWAY = "gw-a"
CELL = 0x87283472BFFFFFF  # an H3 cell at resolution 7


class Env:
    def __init__(self, store, service, admission, metrics, server, port, devices, discovery) -> None:
        self.store, self.service, self.admission, self.metrics = store, service, admission, metrics
        self.server, self.port, self.devices, self.discovery = server, port, devices, discovery
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        self.stub = gw_grpc.GatewayStub(self.channel)

    def target(self, dev: Device, token: bytes) -> str:
        """How the token's holder names the device: a gateway application token
        through a discovery handle minted for it (the only way it reaches a
        device), any other token by the device's pseudonym (owner handle)."""
        try:
            client = authenticate(token, SECRET)
        except Unauthorized:
            return owner_handle(dev.pseudonym)
        now_ms = int(time.time() * 1000)
        return self.discovery.mint_for(client, dev.pseudonym, CELL, Latency.SECONDS, "sensor", now_ms).handle

    def request(self, dev: Device, token: bytes, **kw) -> gw.InvokeRequest:
        return gw.InvokeRequest(target=self.target(dev, token), method="read", token=token, **kw)

    async def submit(self, dev: Device, token: bytes, **kw) -> gw.Result:
        return await self.stub.Submit(self.request(dev, token, **kw), timeout=10)

    async def close(self) -> None:
        await self.channel.close()
        await self.server.stop(0)
        self.store.close()


async def make_env(tmp_path, n_devices: int = 2, commissioner=None, **limits) -> Env:
    store = GatewayStore(tmp_path / "gw")
    metrics = GatewayMetrics()
    admission = Admission(Limits(**limits))
    service = GatewayService(store, GATEWAY, SECRET, metrics, settings=Settings(max_queue_depth=10_000))
    service.admit = service_hook(admission)
    metrics.watch_admission(lambda: {"refusals": dict(admission.refusals), "in_flight": admission.in_flight,
                                     "waiting": admission.waiting})
    devices = []
    index = RegistryIndex()
    sensor = (ServiceInfo("sensor", frozenset({"read", "info"}), frozenset()),)
    for _ in range(n_devices):
        root = cl.root(cl.new_secret())
        dev = Device(new_id(), auth.pseudonym_for(root.to_bytes()), root.to_bytes(), MANIFEST, 0, 7, 1,
                     duty_cycle_s=5)
        await store.put_device(dev)
        devices.append(dev)
        index.upsert(DeviceEntry(dev.pseudonym, GATEWAY, sensor, CELL, 1, 5, int(time.time())))
    index.gateways = {GATEWAY: "127.0.0.1:1"}
    discovery = DiscoveryService(index, HandleCodec(derive_key(SECRET), GATEWAY), GATEWAY, "127.0.0.1:1")
    service.resolvers.append(handle_resolver(discovery, SECRET))
    server, port = await start_grpc("127.0.0.1:0", service, commissioner, None, metrics, admission=admission)
    return Env(store, service, admission, metrics, server, port, devices, discovery)


def app_token(name: str) -> bytes:
    """A gateway-issued application token: its own identity, read rights (it reaches
    devices through discovery handles, see :meth:`Env.target`)."""
    return cl.mint(SECRET, [cl.Identity(name), cl.Resource("/svc", cl.READ)]).to_bytes()


def trailer(err: grpc.aio.AioRpcError) -> dict:
    return dict(err.trailing_metadata() or ())


async def test_source_limit_refuses_early_with_a_retry_hint_and_spares_health_checks(tmp_path):
    """Beyond the source address's burst: RESOURCE_EXHAUSTED, retry-after-ms trailer and hint in the
    message, counted by reason in /metrics; health checks are never refused by it."""
    env = await make_env(tmp_path, source_rate=1, source_burst=3, client_rate=0, device_rate=0)
    try:
        dev, token = env.devices[0], app_token("alice")
        for _ in range(3):
            await env.submit(dev, token)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await env.submit(dev, token)
        err = info.value
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "too many calls from this address" in err.details() and "retry in" in err.details()
        assert 1 <= int(trailer(err)[RETRY_AFTER_KEY]) <= 1000
        health = health_pb2_grpc.HealthStub(env.channel)
        for _ in range(5):
            assert (await health.Check(health_pb2.HealthCheckRequest())).status == health_pb2.HealthCheckResponse.SERVING
        text = env.metrics.render().decode()
        assert 'edgistry_admission_refusals_total{reason="source"} 1.0' in text
        assert 'edgistry_calls_in_flight{kind="short"} 0.0' in text
    finally:
        await env.close()


async def test_a_batch_costs_its_items_against_the_source_bucket(tmp_path):
    """A SubmitBatch of N items spends N tokens of its source: batching does not multiply the rate."""
    env = await make_env(tmp_path, source_rate=1, source_burst=10, client_rate=0, device_rate=0)
    try:
        dev, token = env.devices[0], app_token("alice")
        req = env.request(dev, token)
        out = await env.stub.SubmitBatch(gw.SubmitBatchRequest(requests=[req] * 8), timeout=10)
        assert all(not item.error for item in out.items)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await env.stub.SubmitBatch(gw.SubmitBatchRequest(requests=[req] * 8), timeout=10)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        await env.close()


async def test_client_limit_follows_the_issuer_not_the_presented_token(tmp_path):
    """Tokens a client derives offline share its issuer's bucket; another issuer keeps its own;
    forged tokens spend nobody's budget."""
    env = await make_env(tmp_path, client_rate=0.5, client_burst=3, device_rate=0)
    try:
        dev = env.devices[0]
        owner = cl.load(dev.root_token)
        for i in range(3):  # three fresh tokens, three different tags, one issuer (the device's root)
            derived = cl.derive(owner, [cl.Service("sensor", ["read"])], [cl.ExpiresAt(2_000_000_000 + i)])
            await env.submit(dev, derived.to_bytes())
        fresh = cl.derive(owner, [cl.Service("sensor", ["read", "info"])]).to_bytes()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await env.submit(dev, fresh)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "client's rate limit" in info.value.details()
        assert int(trailer(info.value)[RETRY_AFTER_KEY]) > 1000  # a token back in about 2 s
        forged = cl.Token(cl.load(app_token("bob")).frames, bytes(32)).to_bytes()
        for _ in range(5):  # refused as unauthorised: bob's bucket stays full
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await env.submit(dev, forged)
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        for _ in range(3):  # bob's gateway token, through discovery handles: a bucket of its own
            await env.submit(dev, app_token("bob"))
        # another device's root is another issuer; tokens derived from it share one bucket too
        root = cl.load(env.devices[1].root_token)
        for i in range(3):
            await env.submit(env.devices[1], auth.app_token(root.to_bytes(), {"sensor": ["read"]}).to_bytes())
        with pytest.raises(grpc.aio.AioRpcError):
            await env.submit(env.devices[1], cl.derive(root, [cl.Service("sensor", ["read", "info"])]).to_bytes())
    finally:
        await env.close()


async def test_device_limit_is_shared_by_every_client_of_the_device(tmp_path):
    """All clients together cannot queue more than the device's rate; another device is unaffected."""
    env = await make_env(tmp_path, client_rate=0, device_rate=0.5, device_burst=4)
    try:
        a, b = env.devices
        for name in ("c1", "c2", "c3", "c4"):
            await env.submit(a, app_token(name))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await env.submit(a, app_token("c5"))
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "device" in info.value.details()
        await env.submit(b, app_token("c5"))
        assert env.store.depth(a.link_id) == 4  # the refused call wrote nothing
    finally:
        await env.close()


async def test_calls_waiting_on_devices_are_bounded_and_the_core_caps_concurrency(tmp_path):
    """Invokes waiting on a sleeping device beyond max_waiting are refused at once with a hint;
    beyond grpc_max_concurrent_rpcs the gRPC core refuses before any Python runs."""
    env = await make_env(tmp_path, max_waiting=2, client_rate=0, device_rate=0, grpc_max_concurrent_rpcs=64)
    try:
        dev, token = env.devices[0], app_token("alice")
        req = env.request(dev, token, timeout_ms=1500)
        waiting = [asyncio.ensure_future(env.stub.Invoke(req, timeout=10)) for _ in range(2)]
        await asyncio.sleep(0.3)
        assert env.admission.waiting == 2
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await env.stub.Invoke(req, timeout=10)
        assert time.monotonic() - started < 1.0  # refused early, not queued
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert trailer(info.value)[RETRY_AFTER_KEY] == "1000"
        await env.submit(dev, token)  # short calls have their own bound
        for fut in waiting:
            with pytest.raises(grpc.aio.AioRpcError):
                await fut  # DEADLINE_EXCEEDED: the device sleeps
        for _ in range(50):  # the handlers leave just after the client has its status
            if env.admission.waiting == 0:
                break
            await asyncio.sleep(0.02)
        assert env.admission.waiting == 0 and env.admission.in_flight == 0
    finally:
        await env.close()
    env = await make_env(tmp_path / "core", max_waiting=100, client_rate=0, device_rate=0,
                         grpc_max_concurrent_rpcs=2)
    try:
        dev = env.devices[0]
        req = env.request(dev, app_token("a"), timeout_ms=1000)
        results = await asyncio.gather(*[env.stub.Invoke(req, timeout=10) for _ in range(4)],
                                       return_exceptions=True)
        codes = [r.code() for r in results]
        assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == 2
        assert any("Concurrent RPC limit" in r.details() for r in results)
    finally:
        await env.close()


async def test_commissioning_attempts_are_limited_and_the_code_rotates_after_wrong_guesses(tmp_path):
    """Begin beyond the per-source burst is refused; five wrong codes replace the code, and the owner
    reads the fresh one from the node home (the file is the code in force)."""
    code = CommissionCode(tmp_path / "commission.code")
    store_for = GatewayStore(tmp_path / "c")
    store_for.close()
    key = Ed25519PrivateKey.generate()
    commissioner = Commissioner(None, Offers(key, "test"), code, None, key, SECRET, "127.0.0.1:1")
    env = await make_env(tmp_path, commissioner=commissioner, commission_source_burst=3,
                         commission_source_rate=0.01)
    try:
        stub = gw_grpc.CommissioningStub(env.channel)
        begin = gw.PairBegin(client_x25519=bytes(32))
        for _ in range(3):
            await stub.Begin(begin, timeout=5)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Begin(begin, timeout=5)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "commissioning" in info.value.details()
    finally:
        await env.close()
    first = code.code
    for _ in range(5):
        with pytest.raises(Exception, match="wrong commissioning code"):
            code.check("AAAA-BBBB-CCCC-DDDD")
    assert code.code != first
    assert (tmp_path / "commission.code").read_text().strip() == code.code
    code.check((tmp_path / "commission.code").read_text())  # the owner's way back in


async def test_link_caps_hold_under_hundreds_of_connections(tmp_path, caplog):
    """Hundreds of connections from one source: the per-source cap holds, the excess is closed at once
    and counted, the log gets a line a second at most, and the server still serves afterwards."""
    store = GatewayStore(tmp_path / "gw")
    link = LinkServer(StoreLinkBackend(store, SECRET), "127.0.0.1", 0, caps=ConnectionCaps(50, 1000),
                      handshake_timeout=60)
    await link.start()
    socks = []
    try:
        caplog.set_level(logging.WARNING, logger="edgistry.gateway.link")
        for _ in range(300):
            s = socket.socket()
            s.setblocking(False)
            try:
                s.connect(("127.0.0.1", link.port))
            except BlockingIOError:
                pass
            socks.append(s)
        deadline = time.monotonic() + 20  # the listen backlog lets them in a hundred at a time
        while link.caps.count + link.metrics.rejections["link_source"] < 300 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert link.caps.count == 50 and link.caps.open["127.0.0.1"] == 50
        assert link.metrics.rejections["link_source"] == 250
        lines = [r for r in caplog.records if "refused" in r.getMessage()]
        assert 1 <= len(lines) <= 2 + (time.monotonic() - deadline + 20) and not any(r.exc_info for r in caplog.records)
    finally:
        for s in socks:
            s.close()
    for _ in range(100):  # closed connections end their tasks and release their slots
        if link.caps.count == 0:
            break
        await asyncio.sleep(0.05)
    assert link.caps.count == 0
    r, w = await asyncio.open_connection("127.0.0.1", link.port)
    await asyncio.sleep(0.1)
    assert link.caps.count == 1
    w.close()
    await link.close()
    store.close()


async def test_garbage_on_the_grpc_port_is_refused_quietly(tmp_path, caplog):
    """HTTP/1.1, TLS and random bytes on the gRPC port: the core answers with GOAWAY, nothing is
    logged, and the server goes on serving."""
    env = await make_env(tmp_path)
    try:
        caplog.set_level(logging.DEBUG)
        for data in (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\x16\x03\x01\x00\x05hello", bytes(range(256))):
            r, w = await asyncio.open_connection("127.0.0.1", env.port)
            w.write(data)
            await w.drain()
            await asyncio.wait_for(r.read(100), 5)
            w.close()
        assert not [rec for rec in caplog.records if rec.levelno >= logging.WARNING or rec.exc_info]
        await env.submit(env.devices[0], app_token("alice"))
    finally:
        await env.close()


async def test_rate_refusals_are_held_within_a_bound_and_known_clients_are_refused_before_verification(tmp_path):
    """A rate refusal is answered after refusal_hold_ms (the client's stream stays busy), at most
    max_held at once (the rest at once); a client already known to be over its rate is refused by
    the interceptor, before its call reaches the service."""
    env = await make_env(tmp_path, client_rate=0.1, client_burst=1, device_rate=0, refusal_hold_ms=400, max_held=1)
    try:
        dev, token = env.devices[0], app_token("alice")
        await env.submit(dev, token)  # verified once: the gateway now knows this token's issuer
        calls = []
        started = time.monotonic()
        for _ in range(2):
            calls.append(asyncio.ensure_future(env.submit(dev, token)))
        done = []
        for fut in asyncio.as_completed(calls):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await fut
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            done.append(time.monotonic() - started)
        assert done[0] < 0.3 and 0.35 < done[1] < 2.0  # one answered at once, one held
        assert env.admission.held == 0
        assert env.admission.refusals["client"] == 2
        prepared = []
        real = env.service._prepare
        env.service._prepare = lambda *a, **kw: prepared.append(1) or real(*a, **kw)
        with pytest.raises(grpc.aio.AioRpcError):
            await env.submit(dev, token)
        assert prepared == []  # refused in the interceptor: no lookup, no verification
    finally:
        await env.close()


async def test_a_grpc_client_on_the_http_port_is_one_warning_line(caplog):
    """A gRPC client (an HTTP/2 preface) and TLS bytes on the HTTP port: each is one WARNING line
    naming the peer, with no traceback; the port goes on answering HTTP."""
    from aiohttp import ClientSession, web

    from edgistry.gateway.quiet import quiet_http_garbage

    quiet_http_garbage()
    async def healthz(request):
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        caplog.set_level(logging.WARNING, logger="aiohttp.server")
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            with pytest.raises(grpc.aio.AioRpcError):
                await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=3)
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"\x16\x03\x01\x00\x05hello\r\n\r\n")
        await w.drain()
        assert (await asyncio.wait_for(r.read(100), 5)).startswith(b"HTTP/1.")
        w.close()
        records = [rec for rec in caplog.records if rec.name == "aiohttp.server"]
        assert records and all(rec.levelno == logging.WARNING and rec.exc_info is None for rec in records)
        assert all("refused a malformed request from 127.0.0.1" in rec.getMessage() for rec in records)
        assert "Traceback" not in caplog.text
        async with ClientSession() as s:
            async with s.get(f"http://127.0.0.1:{port}/healthz") as resp:
                assert resp.status == 200
    finally:
        await runner.cleanup()
