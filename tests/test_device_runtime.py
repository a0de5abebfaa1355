"""The device runtime: dedupe, revocations, backoff, gateway restarts, crashes, and its CLI."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from runtime_helpers import GATEWAY_SECRET, Queue, device, make_home, repoint, start_server

from edgistry.firmware.caplets import api as cl
from edgistry.cli import main
from edgistry.firmware.link.link_device import EXPIRED, OK, REVOKED
from edgistry.firmware.runtime.device import WakeFailed
from edgistry.firmware.runtime.home import DeviceHome
from edgistry.firmware.runtime.services import ServiceRegistry, sensor_reading
from edgistry.firmware.runtime.state import DeviceState
from edgistry.gateway.link.backend import MemoryBackend
from edgistry.gateway.link.server import LinkServer, LinkServerThread

pytestmark = pytest.mark.timeout(60)


class ForgetfulBackend(MemoryBackend):
    """Loses the first batch of answers (as if the gateway died before storing them)."""

    dropped = 0

    async def answered(self, link_id, answers):
        if not self.dropped:
            self.dropped = len(answers)
            return []
        return await super().answered(link_id, answers)


async def test_redelivery_answered_from_store_without_rerun(tmp_path: Path) -> None:
    """A request whose answer the gateway lost is redelivered and answered from the device's
    store: the service function runs once."""
    backend = ForgetfulBackend(GATEWAY_SECRET)
    srv = await start_server(backend)
    try:
        home = make_home(tmp_path / "d", backend, srv.port)
        calls = []
        reg = ServiceRegistry()
        reg.register("sensor", "read", lambda args, call: calls.append(call.request_id) or len(calls))
        rid = Queue(backend, home).add("sensor", "read")
        dev = device(home, registry=reg)
        first = await dev.wake_with_fallback()
        assert first.executed == 1 and backend.dropped == 1 and rid not in backend.answers
        assert DeviceState(home.state_path).entries[rid.hex()]["state"] == "done"
        second = await dev.wake_with_fallback()
        assert second.executed == 0 and second.deduplicated == 1
        assert backend.answers[rid].payload == b"1" and calls == [rid]
        assert DeviceState(home.state_path).entries[rid.hex()]["state"] == "acked"
    finally:
        await srv.close()


async def test_revocations_pushed_on_wake_are_enforced_and_kept(tmp_path: Path) -> None:
    """Tags revoked at the gateway reach the device on its next wake; it refuses tokens
    derived from them then and on later wakes."""
    backend = MemoryBackend(GATEWAY_SECRET)
    srv = await start_server(backend)
    try:
        home = make_home(tmp_path / "d", backend, srv.port)
        q = Queue(backend, home)
        other = cl.derive(home.root_token(), [cl.Service("sensor", ["*"])])
        backend.revoked[home.link_id()] = [cl.revocation_hash(q.app.tag)]  # hashes travel, never tags
        r1 = q.add("sensor", "info")                 # from the revoked app token
        r2 = q.add("sensor", "info", token=other)    # an unrelated token still works
        dev = device(home)
        rep = await dev.wake_with_fallback()
        assert rep.revoked == 1
        assert backend.answers[r1].status == REVOKED and "Revoked" in backend.answers[r1].error
        assert backend.answers[r2].status == OK
        r3 = q.add("sensor", "info")                 # next wake: the gateway does not resend it
        await dev.wake_with_fallback()
        assert backend.answers[r3].status == REVOKED
        r4 = q.add("sensor", "info", ttl_ms=-1)      # and expired work is not run
        backend.queues[home.link_id()][-1] = backend.queues[home.link_id()][-1].__class__(
            **{**backend.queues[home.link_id()][-1].__dict__, "expires_at_ms": 1})
        await dev.wake_with_fallback()
        assert backend.answers[r4].status == EXPIRED
    finally:
        await srv.close()


async def test_gateway_restart_backoff_and_ticket_fallback(tmp_path: Path) -> None:
    """While the gateway is down the device backs off with full jitter; after a restart that
    lost its tickets the device falls back to a full handshake at once."""
    backend = MemoryBackend(GATEWAY_SECRET)
    srv = await start_server(backend)
    home = make_home(tmp_path / "d", backend, srv.port)
    sleeps: list[float] = []
    stop = asyncio.Event()
    restarted: list[LinkServer] = []

    async def fake_sleep(s: float) -> None:
        sleeps.append(s)
        if len(sleeps) == 5:  # the gateway comes back (new process: tickets gone)
            fresh = MemoryBackend(GATEWAY_SECRET, devices=dict(backend.devices))
            restarted.append(await start_server(fresh))
            repoint(home, restarted[0].port)
        if len(sleeps) == 6:
            stop.set()
        await asyncio.sleep(0)

    dev = device(home, sleep=fake_sleep, rng=random.Random(7), backoff_base=1.0, backoff_cap=8.0)
    first = await dev.wake_with_fallback()
    assert not first.resumed and dev.state.ticket is not None
    await srv.close()
    try:
        await asyncio.wait_for(dev.run(stop=stop), 20)
        backoff = sleeps[:5]
        assert all(0 <= s <= min(8.0, 2 ** i) for i, s in enumerate(backoff)), backoff
        assert len(set(backoff)) == 5  # jittered
        assert sleeps[5] == 7  # back to the duty cycle after a successful wake
        m = restarted[0].metrics.snapshot()
        assert m["rejections"] == {"bad_ticket": 1} and m["handshakes_full"] == 1
        assert dev.failures == 0
    finally:
        for s in restarted:
            await s.close()


async def test_once_raises_when_the_gateway_is_down(tmp_path: Path) -> None:
    """A single wake against a closed port fails with WakeFailed (no hang)."""
    home = make_home(tmp_path / "d", None, 1)
    with pytest.raises(WakeFailed):
        await device(home).run(once=True)


def test_sensor_is_deterministic() -> None:
    """Same device and time, same reading; different devices differ."""
    assert sensor_reading(b"a", 1000.5) == sensor_reading(b"a", 1000.5)
    assert sensor_reading(b"a", 1000) != sensor_reading(b"b", 1000)


# ---- a device process killed mid-request ----

def _wait(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _state(home: DeviceHome) -> dict:
    try:
        return json.loads(home.state_path.read_text())
    except (FileNotFoundError, ValueError):
        return {}


@pytest.mark.slow
def test_device_crash_mid_request(tmp_path: Path) -> None:
    """kill -9 of `edgistry device run` while a request runs: on restart the finished
    toggle is delivered from the store (not toggled twice) and the interrupted read re-runs."""
    backend = MemoryBackend(GATEWAY_SECRET)
    server = LinkServerThread(LinkServer(backend, port=0))
    srv = server.start()
    home = make_home(tmp_path / "d", backend, srv.port)
    q = Queue(backend, home)
    r_toggle = q.add("actuator", "toggle")
    r_read = q.add("sensor", "read", b'{"settle_s": 2}')
    log = open(tmp_path / "device.log", "wb")
    argv = [sys.executable, "-m", "edgistry", "-v", "device", "run", "--home", str(home.path)]
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def running() -> bool:
            e = _state(home).get("entries", {})
            return e.get(r_read.hex(), {}).get("state") == "running"
        _wait(running, 20, "the read to start")
        assert _state(home)["entries"][r_toggle.hex()]["state"] == "done"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        assert not backend.answers  # nothing was delivered before the crash
        proc2 = subprocess.run(argv + ["--once"], stdout=log, stderr=subprocess.STDOUT, timeout=40)
        assert proc2.returncode == 0
        assert backend.answers[r_toggle].status == OK
        assert json.loads(backend.answers[r_toggle].payload) == {"changes": 1, "on": True}
        assert backend.answers[r_read].status == OK
        assert json.loads((home.path / "actuator.json").read_text())["changes"] == 1
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        log.close()
        server.stop()


# ---- CLI ----

def test_device_init_cli(tmp_path: Path) -> None:
    """`device init` writes the home (secret 0600) and a manifest the gateway can parse."""
    home = tmp_path / "dev"
    res = CliRunner().invoke(main, ["device", "init", "--home", str(home), "--service", "sensor:read",
                                    "--service", "actuator", "--location", "34.41,-119.85",
                                    "--duty-cycle", "30", "--encrypt", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["services"] == {"sensor": ["read"], "actuator": ["get", "set", "toggle"]}
    assert stat.S_IMODE((home / "secret").stat().st_mode) == 0o600
    h = DeviceHome(home)
    assert cl.root(h.secret()).to_bytes() == h.root_token() and out["link_id"] == h.link_id().hex()
    m = h.manifest()
    assert m["duty_cycle_s"] == 30 and m["encrypt"] and m["location"] == {"lat": 34.41, "lon": -119.85}
    assert m["link"] == out["link"] == "tcp"  # the default link
    try:
        from edgistry.gateway.manifest import Manifest
    except ImportError:
        return
    parsed = Manifest.parse(json.dumps(m))
    assert parsed.method("actuator", "toggle").mutating and parsed.method("sensor", "read").cache_max_age_s == 5


@pytest.mark.parametrize("args,code,msg", [
    (["--service", "toaster"], 1, "unknown service type"),
    (["--service", "sensor:fly"], 1, "no method"),
    (["--service", "sensor", "--location", "north"], 2, "LAT,LON"),
    (["--service", "sensor", "--link", "sctp"], 2, "'tcp', 'udp'"),
])
def test_device_init_errors(tmp_path: Path, args, code, msg) -> None:
    """Bad service types, methods and locations are refused with a clear message."""
    res = CliRunner().invoke(main, ["device", "init", "--home", str(tmp_path / "d"), *args])
    assert res.exit_code == code and msg in res.output


def test_device_run_refuses_an_unknown_link(tmp_path: Path) -> None:
    """A manifest edited to an unknown link is refused at start, naming the choices."""
    runner = CliRunner()
    assert runner.invoke(main, ["device", "init", "--home", str(tmp_path / "d"), "--service", "sensor",
                                "--link", "udp"]).exit_code == 0
    h = DeviceHome(tmp_path / "d")
    assert h.manifest()["link"] == "udp"
    h.manifest_path.write_text(json.dumps(dict(h.manifest(), link="quic")))
    res = runner.invoke(main, ["device", "run", "--home", str(tmp_path / "d"), "--once"])
    assert res.exit_code == 1 and "link is one of tcp, udp" in res.output, res.output


def test_device_run_needs_pairing(tmp_path: Path) -> None:
    """`device run` on an unpaired home exits 1 and says how to pair."""
    runner = CliRunner()
    assert runner.invoke(main, ["device", "init", "--home", str(tmp_path / "d"),
                                "--service", "sensor"]).exit_code == 0
    res = runner.invoke(main, ["device", "run", "--home", str(tmp_path / "d"), "--once"])
    assert res.exit_code == 1 and "edgistry pair" in res.output


def test_backoff_cap_follows_the_duty_cycle(tmp_path: Path) -> None:
    """After many failures a fast-cycling device retries within seconds; a slow one within its cap."""
    import random as _random

    from edgistry.firmware.runtime import device as device_mod

    for duty, expect_cap in ((2, device_mod.BACKOFF_MIN_CAP_S), (60, 120.0), (3600, device_mod.BACKOFF_CAP_S)):
        dev = device_mod.Device.__new__(device_mod.Device)
        dev.backoff_cap, dev.backoff_base, dev.duty_cycle_s = device_mod.BACKOFF_CAP_S, 1.0, duty
        dev.rng, dev.failures = _random.Random(1), 30
        delays = [dev.backoff_delay() for _ in range(200)]
        assert max(delays) <= expect_cap and max(delays) > expect_cap * 0.8
