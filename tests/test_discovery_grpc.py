"""The Discovery gRPC service on loopback, its CLI, and `edgistry token app`."""

from __future__ import annotations

import asyncio
import json
import random
import threading

import grpc
import pytest
from click.testing import CliRunner
from discovery_helpers import GW, GW2, NOW_MS, World, entry
from edgistry.cli import main
from edgistry.firmware.caplets.mint import from_text, verify
from edgistry.gateway.tokens.app_tokens import mint_app_token
from edgistry.gateway.discovery.grpc_service import DiscoveryServicer, RoutingInvoker, add_to_server
from edgistry.proto import discovery_pb2 as dpb
from edgistry.proto import discovery_pb2_grpc as dgrpc
from edgistry.proto import gateway_pb2 as gpb
from proc_helpers import free_port

pytestmark = pytest.mark.timeout(60)


class FakePeer:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, gpb.InvokeRequest]] = []

    async def forward(self, gateway_id, endpoint, request):
        self.calls.append((gateway_id, endpoint, request))
        return gpb.Result(request_id="r2", state=gpb.DONE, payload=b'{"from": "peer"}', device_status=7)


class FakeFollower:
    def __init__(self, index) -> None:
        self.index = index

    async def wait_changed(self, version, timeout=None):
        while self.index.version == version:
            await asyncio.sleep(0.01)
        return self.index.version


class Server:
    """The servicer on a grpc.aio server in its own thread and event loop."""

    def __init__(self, world: World) -> None:
        self.world, self.port = world, free_port()
        self.local_calls: list[bytes] = []
        self.peer = FakePeer()

        async def local(pseudonym, request):
            self.local_calls.append(pseudonym)
            return gpb.Result(request_id="r1", state=gpb.DONE, payload=b'{"t": 21.5}', device_status=3)

        self.servicer = DiscoveryServicer(world.service, world.secret, RoutingInvoker(GW, local, self.peer),
                                          FakeFollower(world.index), clock=lambda: NOW_MS / 1000)
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.ready.wait(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def start():
            self.server = grpc.aio.server()
            add_to_server(self.server, self.servicer)
            self.server.add_insecure_port(f"127.0.0.1:{self.port}")
            await self.server.start()
            self.ready.set()

        self.loop.run_until_complete(start())
        self.loop.run_forever()

    def call_soon(self, fn) -> None:
        done = threading.Event()
        self.loop.call_soon_threadsafe(lambda: (fn(), done.set()))
        assert done.wait(5)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(0), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture
def server():
    rng = random.Random(1)
    devices = [entry(rng, 48.85, 2.35, k=3, duty=0) for _ in range(4)]
    devices += [entry(rng, 48.85, 2.35, k=3, duty=0, gateway=GW2) for _ in range(3)]
    s = Server(World(devices))
    yield s
    s.stop()


def _token(world: World, name: str = "app") -> bytes:
    from edgistry.firmware.caplets.mint import to_text

    return to_text(mint_app_token(world.secret, name)).encode()


async def test_discover_resolve_and_errors_over_grpc(server):
    """Discover returns handles; Resolve checks them for their client only; bad tokens are refused."""
    token = _token(server.world)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        stub = dgrpc.DiscoveryStub(ch)
        region = dpb.Region(lat=48.85, lon=2.35, radius_km=2)
        resp = await stub.Discover(dpb.DiscoverRequest(token=token, service_type="sensor", region=region))
        assert len(resp.handles) == 7 and all(h.gateway == "127.0.0.1:26670" for h in resp.handles)
        ok = await stub.Resolve(dpb.ResolveRequest(token=token, handle=resp.handles[0].handle))
        assert ok.valid and ok.cell == resp.handles[0].cell and ok.service_type == "sensor"
        other = await stub.Resolve(dpb.ResolveRequest(token=_token(server.world, "x"), handle=resp.handles[0].handle))
        assert not other.valid
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Discover(dpb.DiscoverRequest(token=b"nope", service_type="sensor", region=region))
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Discover(dpb.DiscoverRequest(token=token, service_type="sensor", region=dpb.Region()))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_invoke_any_routes_locally_or_to_the_owner_and_hides_the_device(server):
    """InvokeAny reaches local devices in process and others through Peer.Forward; the answer names no device."""
    token = _token(server.world)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        stub = dgrpc.DiscoveryStub(ch)
        req = dpb.InvokeAnyRequest(token=token, service_type="sensor", method="read", args=b"{}",
                                   region=dpb.Region(lat=48.85, lon=2.35, radius_km=2))
        results = [await stub.InvokeAny(req) for _ in range(40)]
    assert all(r.state == gpb.DONE and r.device_status == 0 for r in results)
    assert server.local_calls and server.peer.calls
    gid, endpoint, fwd = server.peer.calls[0]
    assert gid == GW2 and endpoint == "127.0.0.1:26680" and fwd.method == "read" and not fwd.target


async def test_watch_streams_appear_and_leave_within_k(server):
    """Watch first shows the current groups, then a group dissolving below k as leave events."""
    token = _token(server.world)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        stream = dgrpc.DiscoveryStub(ch).Watch(dpb.WatchRequest(
            token=token, service_type="sensor", region=dpb.Region(lat=48.85, lon=2.35, radius_km=2)))
        first = [await stream.read() for _ in range(7)]
        assert {e.kind for e in first} == {dpb.WatchEvent.APPEAR}
        victims = [p for p, e in server.world.index.entries.items() if e.gateway_id == GW2]
        server.call_soon(lambda: server.world.index.remove(victims[0]))
        gone = await stream.read()
        assert gone.kind == dpb.WatchEvent.LEAVE and gone.handle.handle in {e.handle.handle for e in first}
        rest = [p for p in server.world.index.entries if p != victims[0]][:4]  # 2 devices of k=3 stay: below k
        server.call_soon(lambda: [server.world.index.remove(p) for p in rest])
        leaves = [await stream.read() for _ in range(6)]
        stream.cancel()
    assert {e.kind for e in leaves} == {dpb.WatchEvent.LEAVE}


def test_cli_discover_and_token_app(server, tmp_path):
    """`token app` prints only a token the gateway accepts; `discover --json` lists handles with it."""
    runner = CliRunner()
    home = tmp_path / "home"
    assert runner.invoke(main, ["init", "--home", str(home)]).exit_code == 0
    res = runner.invoke(main, ["token", "app", "--home", str(home), "--name", "demo", "--expires", "+1d"])
    assert res.exit_code == 0, res.output
    assert len(res.stdout.strip().splitlines()) == 1
    verify(from_text(res.stdout.strip()), (home / "keys" / "gateway.secret").read_bytes())

    tok = tmp_path / "app.token"
    tok.write_bytes(_token(server.world))
    res = runner.invoke(main, ["discover", "sensor", "--near", "48.85,2.35", "--radius-km", "2",
                               "--gateway", f"127.0.0.1:{server.port}", "--token", str(tok), "--json",
                               "--insecure"])  # this test's server is plaintext on loopback
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    assert len(rows) == 7 and {r["latency"] for r in rows} == {"immediate"}
    res = runner.invoke(main, ["discover", "sensor", "--near", "48.85,2.35", "--gateway",
                               f"127.0.0.1:{server.port}"])
    assert res.exit_code == 1 and "--token" in res.output
    res = runner.invoke(main, ["discover", "sensor", "--near", "nowhere", "--gateway", "x:1", "--token", str(tok)])
    assert res.exit_code == 2


def test_cli_invoke_any(server, tmp_path):
    """`invoke --any TYPE --near LAT,LON METHOD` returns one device's answer and nothing naming it."""
    tok = tmp_path / "app.token"
    tok.write_bytes(_token(server.world))
    args = ["invoke", "--any", "sensor", "--near", "48.85,2.35", "read", "--gateway", f"127.0.0.1:{server.port}",
            "--token", str(tok), "--insecure"]  # this test's server is plaintext on loopback
    res = CliRunner().invoke(main, [*args, "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["state"] == "DONE" and out["payload"] in ({"t": 21.5}, {"from": "peer"})
    res = CliRunner().invoke(main, ["invoke", "--any", "sensor", "read", "--gateway", "x:1"])
    assert res.exit_code == 2
