"""Fault injection on a whole gateway: a disk that fills up (a tmpfs mounted here), a full LMDB
map, a killed store writer, a stopped chain node. Each fault gives a mapped gRPC status with a
one-line reason, /healthz 503 naming the cause, a metric, and service resumes by itself.

The chain is a real `edgistry up` process (embedded node); the gateway under test runs in this
process against its RPC, with a device put straight into its store.
"""

from __future__ import annotations

import asyncio
import os
import signal
import ssl
import subprocess
import time
from pathlib import Path

import aiohttp
import grpc
import pytest

from edgistry.firmware.caplets import api as cl
from edgistry.gateway.api.admission_grpc import RETRY_AFTER_KEY
from edgistry.gateway.api.service import owner_handle
from edgistry.gateway.app import create_gateway
from edgistry.gateway.store.store import Device, new_id
from edgistry.gateway.tls import Pin, channel_credentials, channel_options
from edgistry.gateway.tokens import auth
from edgistry.proto import discovery_pb2 as dpb
from edgistry.proto import discovery_pb2_grpc as dgrpc
from edgistry.proto import gateway_pb2 as gw
from edgistry.proto import gateway_pb2_grpc as gw_grpc
from gateway_helpers import node_home
from proc_helpers import edgistry, in_ci, stop, wait_for_port

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]

MANIFEST = {"duty_cycle_s": 5, "services": [{"type": "sensor", "methods": ["read"]}]}
QUIET = {"sweep_interval_s": 60.0, "liveness_interval_s": 60.0, "revocation_interval_s": 60.0}


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """A real node (embedded, `edgistry up`) whose RPC the gateways under test use."""
    home = tmp_path_factory.mktemp("chain")
    cfg, ports = node_home(home / "node")
    proc = edgistry("up", "--home", str(cfg.home), log=home / "up.log")
    wait_for_port(ports["rpc"], proc=proc)
    yield cfg.rpc_url, proc
    os.kill(proc.pid, signal.SIGCONT)
    stop(proc)


class Gw:
    """A gateway under test in this process, with one device and a client token."""

    def __init__(self, gateway, dev: Device, token: bytes) -> None:
        self.g, self.dev, self.token = gateway, dev, token
        self.app_token = b""
        pin = Pin.from_file(gateway.cfg.tls_cert_path)  # the gateway's own certificate, as its clients pin it
        self.channel = grpc.aio.secure_channel(f"127.0.0.1:{gateway.ports['grpc']}", channel_credentials(pin),
                                               options=channel_options(pin))
        self.ssl = ssl.create_default_context(cafile=str(gateway.cfg.tls_cert_path))
        self.stub = gw_grpc.GatewayStub(self.channel)
        self.acked: list[str] = []

    async def submit(self, args: bytes = b"", ttl_s: int = 0) -> gw.Result:
        res = await self.stub.Submit(gw.InvokeRequest(target=owner_handle(self.dev.pseudonym), method="read",
                                                      token=self.token, args=args, ttl_s=ttl_s), timeout=20)
        self.acked.append(res.request_id)
        return res

    async def health(self, operator: bool = False) -> tuple[int, dict]:
        headers = {"Authorization": "Bearer " + self.operator_secret()} if operator else {}
        async with aiohttp.ClientSession() as s:
            async with s.get(f"https://127.0.0.1:{self.g.ports['http']}/healthz", ssl=self.ssl,
                             headers=headers) as resp:
                return resp.status, await resp.json()

    def operator_secret(self) -> str:
        """/metrics is for the node's operators: the secret the gateway made at its first start."""
        return (self.g.cfg.keys_dir / "operator.secret").read_text().strip()

    async def metrics(self) -> str:
        async with aiohttp.ClientSession() as s:
            async with s.get(f"https://127.0.0.1:{self.g.ports['http']}/metrics", ssl=self.ssl,
                             headers={"Authorization": "Bearer " + self.operator_secret()}) as resp:
                return await resp.text()

    async def until_healthy(self, timeout: float = 20.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            status, body = await self.health()
            if status == 200 or time.monotonic() > deadline:
                assert status == 200, body
                return body
            await asyncio.sleep(0.2)

    async def close(self) -> None:
        await self.channel.close()
        await self.g.stop()


async def start_gateway(home: Path, rpc_url: str, **opts) -> Gw:
    cfg, _ = node_home(home)
    cfg.extra["gateway"].update(QUIET | opts)
    cfg.save()
    g = create_gateway(cfg, rpc_url=rpc_url, announce=lambda msg: None)
    await g.start()
    root = cl.root(cl.new_secret())
    dev = Device(new_id(), auth.pseudonym_for(root.to_bytes()), root.to_bytes(), MANIFEST, 0, 7, 1, duty_cycle_s=5)
    await g.store.put_device(dev)
    # calls by pseudonym need a token from the device's root; discovery takes the gateway's app token
    token = cl.derive(root, [cl.Resource("/svc", cl.READ)]).to_bytes()
    out = Gw(g, dev, token)
    out.app_token = cl.mint(g.secret, [cl.Identity("app"), cl.Resource("/svc", cl.READ)]).to_bytes()
    await out.until_healthy()
    return out


def mount_tmpfs(path: Path, size: str) -> bool:
    """Mount a small tmpfs at ``path``; False (skip) where mounting is impossible, a failure under CI."""
    path.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        if in_ci():
            pytest.fail(f"cannot mount a tmpfs for the disk-full test: {proc.stderr.strip()}")
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    return True


def fill(path: Path) -> Path:
    """Fill the filesystem holding ``path`` to the last byte with one file; returns it."""
    filler = path / "filler"
    chunk = b"\0" * (1 << 16)
    with open(filler, "wb", buffering=0) as f:
        for piece in (chunk, b"\0" * 512):  # then the last partial chunk
            try:
                while f.write(piece):
                    pass
            except OSError:
                pass
    return filler


def stored(g: Gw, request_ids: list[str]) -> bool:
    return all(g.g.store.get(bytes.fromhex(rid)) is not None for rid in request_ids)


async def test_disk_full_is_resource_exhausted_then_recovers(tmp_path, chain):
    """A full disk: Submit answers RESOURCE_EXHAUSTED naming the disk (nothing acknowledged falsely),
    /healthz 503 names disk_full, the fault is counted; freeing space brings service back alone."""
    rpc_url, _ = chain
    store_dir = tmp_path / "node" / "data" / "gateway"
    mount_tmpfs(store_dir, "16m")
    g = None
    try:
        g = await start_gateway(tmp_path / "node", rpc_url)
        for _ in range(5):
            await g.submit(b'{"x": 1}')
        filler = fill(store_dir)
        err = None
        for _ in range(200):  # LMDB reuses freed pages first: write until a commit needs a new one
            try:
                await g.submit(b'{"pad": "' + b"p" * 8000 + b'"}')
            except grpc.aio.AioRpcError as exc:
                err = exc
                break
        assert err is not None, "the disk never filled"
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "disk" in err.details() and "\n" not in err.details() and "lmdb" not in err.details().lower()
        assert int(dict(err.trailing_metadata())[RETRY_AFTER_KEY]) > 0
        status, body = await g.health()
        assert status == 503 and [f["cause"] for f in body["faults"]] == ["disk_full"]
        assert "disk_full" in body["status"]
        text = await g.metrics()
        assert 'edgistry_faults_total{cause="disk_full"} 1.0' in text
        assert 'edgistry_fault_active{cause="disk_full"} 1.0' in text
        filler.unlink()
        await g.submit(b'{"x": 2}')
        await g.until_healthy(timeout=5)
        assert stored(g, g.acked)  # every acknowledged request is in the store
    finally:
        if g is not None:
            await g.close()
        subprocess.run(["umount", "-l", str(store_dir)], check=False)


async def test_map_full_is_resource_exhausted_and_clears_as_old_requests_go(tmp_path, chain):
    """A full LMDB map (tiny map_size; new requests stop at the reserve kept for the queued
    ones): RESOURCE_EXHAUSTED naming the map, /healthz 503 map_full; once the short-lived
    requests expire and are purged, writes succeed and health returns."""
    rpc_url, _ = chain
    g = await start_gateway(tmp_path / "node", rpc_url, store_map_size=1 << 20, result_retention_s=0.5,
                            sweep_interval_s=0.3, max_queue_depth=100_000)
    try:
        err = None
        for _ in range(500):
            try:
                await g.submit(b'{"pad": "' + b"p" * 8000 + b'"}', ttl_s=1)
            except grpc.aio.AioRpcError as exc:
                err = exc
                break
        assert err is not None, "the map never filled"
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "map is nearly full" in err.details()
        status, body = await g.health()
        assert status == 503 and "map_full" in [f["cause"] for f in body["faults"]]
        assert 'edgistry_faults_total{cause="map_full"} 1.0' in await g.metrics()
        body = await g.until_healthy(timeout=30)  # the sweeper expires, then purges, then commits again
        assert body["faults"] == []
        await g.submit(b'{"x": 1}')
    finally:
        await g.close()


async def test_killed_writer_is_unavailable_then_a_new_writer_takes_over(tmp_path, chain):
    """The writer process killed mid-write: that Submit is UNAVAILABLE (not acknowledged),
    /healthz 503 names store_writer; the next write starts a new writer and health returns."""
    rpc_url, _ = chain
    g = await start_gateway(tmp_path / "node", rpc_url)
    try:
        await g.submit()
        pid = g.g.store.writer.pid
        os.kill(pid, signal.SIGSTOP)  # hung: the next write waits on it...
        pending = asyncio.ensure_future(g.submit())
        await asyncio.sleep(0.3)
        os.kill(pid, signal.SIGKILL)  # ...and dies under it
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await pending
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE and "not acknowledged" in info.value.details()
        status, body = await g.health()
        assert status == 503 and [f["cause"] for f in body["faults"]] == ["store_writer"]
        assert 'edgistry_faults_total{cause="store_writer"} 1.0' in await g.metrics()
        res = await g.submit()
        assert res.request_id and g.g.store.writer.pid not in (None, pid)
        await g.until_healthy(timeout=5)
        assert stored(g, g.acked)
    finally:
        await g.close()


async def test_stopped_chain_node_is_named_discovery_answers_stale_and_it_recovers(tmp_path, chain):
    """The chain node stopped (SIGSTOP): /healthz 503 names chain_unreachable and the metric counts
    it; discovery still answers from its replica with its age in the trailers; client calls that
    need no chain go on; on SIGCONT health returns by itself."""
    rpc_url, proc = chain
    g = await start_gateway(tmp_path / "node", rpc_url)
    disco = dgrpc.DiscoveryStub(g.channel)
    req = dpb.DiscoverRequest(token=g.app_token, service_type="sensor",
                              region=dpb.Region(lat=46.5, lon=6.6, radius_km=50))
    try:
        os.kill(proc.pid, signal.SIGSTOP)
        deadline = time.monotonic() + 30
        while True:
            status, body = await g.health()
            if status == 503 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        assert status == 503 and [f["cause"] for f in body["faults"]] == ["chain_unreachable"]
        assert "reason" not in body["faults"][0]  # public: the cause, never internals such as the RPC URL
        status, body = await g.health(operator=True)
        assert "chain node does not answer" in body["faults"][0]["reason"]
        assert 'edgistry_faults_total{cause="chain_unreachable"} 1.0' in await g.metrics()
        call = disco.Discover(req, timeout=10)
        await call
        trailers = dict(await call.trailing_metadata())
        assert int(trailers["replica-age-ms"]) >= 4000 and "replica-height" in trailers
        await g.submit()  # queueing for a device needs no chain
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    try:
        await g.until_healthy(timeout=30)
        call = disco.Discover(req, timeout=10)
        await call
        await asyncio.sleep(0)
    finally:
        await g.close()
