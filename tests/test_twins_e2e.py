"""Device twins with real processes: `edgistry up`, `edgistry pair`, `edgistry twin` and the
SDK against a device that sleeps through several changes and two gateway kill -9s, then
wakes over the real link; who may read and set what; a revoked writer's change never
reaching the device; a watch seeing the device catch up."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest
from click.testing import CliRunner

from edgistry.client import AsyncClient, Client, PermissionDenied, VersionConflict
from edgistry.firmware.caplets import api as cl
from gateway_helpers import make_device_home, node_home, wait_file
from proc_helpers import edgistry, kill9, stop, wait_for_port
from twin_helpers import TwinDevice

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]


def cli(*args: str) -> tuple[int, str]:
    from edgistry.cli import main

    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout if result.exit_code == 0 else result.output


def restart(cfg, ports, old, log):
    """kill -9 the node (registry and gateway) and start it again on the same home."""
    kill9(old)
    proc = edgistry("up", "--home", str(cfg.home), log=log)
    wait_for_port(ports["grpc"], proc=proc)
    return proc


def token_file(path, token: cl.Token) -> str:
    path.write_text(cl.to_text(token))
    return str(path)


def test_a_device_asleep_through_changes_and_gateway_crashes_gets_exactly_its_delta(tmp_path):
    """Sets, a compare-and-set, a delete and two kill -9s while the device sleeps; at its wake it
    receives the latest value of each key once, applies and reports; nothing is sent again;
    reported state is read without waking it; tokens reach what they are granted only."""
    cfg, ports = node_home(tmp_path / "node")
    up = edgistry("up", "--home", str(cfg.home), log=tmp_path / "up.log")
    try:
        wait_for_port(ports["grpc"], proc=up)
        home = make_device_home(tmp_path / "dev")
        code, out = cli("pair", "--device", str(home.path), "--gateway", cfg.grpc_listen, "--code",
                        wait_file(cfg.home / "commission.code"), "--json")
        assert code == 0, out
        paired = json.loads(out)
        handle, app = paired["owner_handle"], paired["app_token_file"]
        root = cl.load(home.root_token())
        owner = token_file(tmp_path / "owner.token", root)
        gw = ("--gateway", cfg.grpc_listen, "--pin", str(cfg.tls_cert_path))

        code, out = cli("twin", "set", handle, "mode=eco", "interval:=30", "x:=1", *gw, "--token", owner, "--json")
        assert code == 0, out
        first = json.loads(out)
        interval = first["desired"]["interval"]
        assert first["pending"] == 3 and interval == {
            "value": 30, "version": interval["version"], "at_ms": interval["at_ms"], "applied": False}
        up = restart(cfg, ports, up, tmp_path / "up2.log")

        with Client(cfg.grpc_listen, token=owner, pin=cfg.tls_cert_path) as client:
            mode_v = client.get_twin(handle).desired["mode"].version
            client.set_desired(handle, {"mode": "max"}, expect={"mode": mode_v})
            with pytest.raises(VersionConflict, match="at version"):
                client.set_desired(handle, {"mode": "stale"}, expect={"mode": mode_v})
        code, out = cli("twin", "set", handle, "--delete", "x", *gw, "--token", owner)
        assert code == 0, out
        code, out = cli("twin", "set", handle, "mode=lost", "--expect", f"mode={mode_v}", *gw, "--token", owner)
        assert code == 1 and "at version" in out and "twin get" in out
        up = restart(cfg, ports, up, tmp_path / "up3.log")

        device = TwinDevice(home, paired["link_endpoint"])
        device.report(temp=21.5, fw="1.0")
        got = device.wake()
        assert sorted((c["key"], c["value"]) for c in got) == [("interval", b"30"), ("mode", b'"max"'), ("x", b"")]
        assert device.desired == {"mode": "max", "interval": 30}
        assert device.wake() == []  # applied and reported: nothing goes out twice

        waited: dict = {}  # `twin set --wait` returns once the device applied the change
        setter = threading.Thread(target=lambda: waited.update(zip(("code", "out"), cli(
            "twin", "set", handle, "channel=beta", "--wait", "20", *gw, "--token", owner, "--json"))))
        setter.start()
        deadline = time.monotonic() + 10
        while not device.wake() and time.monotonic() < deadline:  # until the set has reached the gateway
            time.sleep(0.3)
        setter.join(25)
        assert waited["code"] == 0, waited
        assert json.loads(waited["out"])["desired"]["channel"]["applied"] is True
        assert device.desired["channel"] == "beta"

        with Client(cfg.grpc_listen, token=owner, pin=cfg.tls_cert_path) as client:
            twin = client.get_twin(handle)
        assert twin.pending == 0 and twin.applied >= max(p.version for p in twin.desired.values())
        assert all(p.applied for p in twin.desired.values())
        assert twin.desired_values() == {"mode": "max", "interval": 30, "channel": "beta"}
        assert twin.reported_values() == {"temp": 21.5, "fw": "1.0"} and twin.reported_ms
        wakes = device.wakes

        code, out = cli("twin", "get", handle, *gw, "--token", app)
        assert code == 1 and "no twin access" in out and "/twin/" in out  # the pairing's read-only token
        code, out = cli("twin", "set", handle, "mode=eco", *gw, "--token", app)
        assert code == 1 and "setting desired state" in out
        reader = token_file(tmp_path / "reader.token", cl.derive(root, [cl.Resource("/twin/reported", cl.READ)]))
        code, out = cli("twin", "get", handle, *gw, "--token", reader, "--json")
        assert code == 0, out
        seen = json.loads(out)
        assert "desired" not in seen and seen["reported"]["temp"]["value"] == 21.5
        code, out = cli("twin", "set", handle, "mode=eco", *gw, "--token", reader)
        assert code == 1 and "setting desired state" in out
        assert device.wakes == wakes  # none of this woke the device
    finally:
        stop(up)


def test_a_change_by_a_token_revoked_before_delivery_never_reaches_the_device(tmp_path):
    """A delegated writer sets a key, its token is revoked while the device sleeps: the device
    gets the owner's value back (never the revoked one), and a watch sees it catch up."""
    cfg, ports = node_home(tmp_path / "node")
    up = edgistry("up", "--home", str(cfg.home), log=tmp_path / "up.log")
    try:
        wait_for_port(ports["grpc"], proc=up)
        home = make_device_home(tmp_path / "dev")
        code, out = cli("pair", "--device", str(home.path), "--gateway", cfg.grpc_listen, "--code",
                        wait_file(cfg.home / "commission.code"), "--json")
        assert code == 0, out
        paired = json.loads(out)
        handle = paired["owner_handle"]
        root = cl.load(home.root_token())
        owner = token_file(tmp_path / "owner.token", root)
        writer_token = cl.derive(root, [cl.Resource("/twin/desired", cl.READ | cl.WRITE)])
        writer = token_file(tmp_path / "writer.token", writer_token)
        device = TwinDevice(home, paired["link_endpoint"])

        with Client(cfg.grpc_listen, token=owner, pin=cfg.tls_cert_path) as client:
            client.set_desired(handle, {"mode": "eco"})
            device.wake()
            with Client(cfg.grpc_listen, token=writer, pin=cfg.tls_cert_path) as w:
                assert w.set_desired(handle, {"mode": "evil", "extra": True}).pending == 2
            code, out = cli("token", "revoke", f"@{writer}", "--list", str(cfg.home / "revoked.json"))
            assert code == 0, out
            deadline = time.monotonic() + 15  # the gateway reads its local list every second here
            while client.get_twin(handle).desired_values() != {"mode": "eco"} and time.monotonic() < deadline:
                time.sleep(0.2)
            assert client.get_twin(handle).desired_values() == {"mode": "eco"}
            with pytest.raises(PermissionDenied):
                Client(cfg.grpc_listen, token=writer, pin=cfg.tls_cert_path).set_desired(handle, {"mode": "evil"})

            states = []

            async def watch() -> None:  # the asyncio client's watch, in a thread of its own
                async with AsyncClient(cfg.grpc_listen, token=owner, pin=cfg.tls_cert_path) as aclient:
                    async for state in aclient.watch_twin(handle, timeout=8):
                        states.append(state)

            watcher = threading.Thread(target=lambda: asyncio.run(watch()))
            watcher.start()
            time.sleep(1.0)
            got = device.wake()
            watcher.join(15)
        assert all(c["value"] != b'"evil"' for c in got) and device.desired == {"mode": "eco"}
        assert states and states[0].pending > 0 and states[-1].pending == 0
    finally:
        stop(up)
