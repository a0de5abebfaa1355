"""The whole flow with real processes: `edgistry up` (registry + gateway), `edgistry device
init|run` (the device runtime, duty cycle 2 s), `edgistry pair`, `edgistry invoke` waiting for
a sleeping device, an owner token for a mutating method, and a gateway kill -9 the device
survives."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from edgistry.firmware.caplets import api as cl
from gateway_helpers import node_home, wait_file
from proc_helpers import edgistry, kill9, stop, wait_for_port

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]


def cli(*args: str) -> tuple[int, str]:
    from edgistry.cli import main

    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout if result.exit_code == 0 else result.output  # progress: stderr


def device_cli(*args: str) -> tuple[int, str]:
    from edgistry.firmware.cli import device_group

    result = CliRunner().invoke(device_group, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def device_run(home, log):
    """``edgistry device run`` as its own process (works whether or not `device` is in COMMANDS)."""
    code = ("import sys; from edgistry.firmware.cli import device_group; "
            "device_group(['run', '--home', sys.argv[1]], prog_name='edgistry device')")
    out = open(log, "ab")
    return subprocess.Popen([sys.executable, "-c", code, str(home)], stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)


def test_device_runtime_end_to_end_and_gateway_restart(tmp_path):
    """pair -> device runs on its duty cycle -> invoke waits for it -> owner sets the actuator ->
    gateway kill -9 and restart -> the device reconnects and answers again."""
    cfg, ports = node_home(tmp_path / "node")
    up = edgistry("up", "--home", str(cfg.home), log=tmp_path / "up.log")
    dev_proc = None
    try:
        wait_for_port(ports["grpc"], proc=up)
        dev = tmp_path / "dev"
        code, out = device_cli("init", "--home", str(dev), "--service", "sensor", "--service", "actuator",
                               "--location", "46.52,6.57", "--duty-cycle", "2")
        assert code == 0, out
        code, out = cli("pair", "--device", str(dev), "--gateway", cfg.grpc_listen, "--code",
                        wait_file(cfg.home / "commission.code"), "--json")
        assert code == 0, out
        paired = json.loads(out)
        handle, token = paired["owner_handle"], paired["app_token_file"]
        dev_proc = device_run(dev, tmp_path / "device.log")

        def invoke(method: str, *extra: str, token_file: str = token) -> dict:
            code, out = cli("invoke", handle, method, "--timeout", "15", "--gateway", cfg.grpc_listen,
                            "--token", token_file, "--json", *extra)
            assert code == 0, out + (tmp_path / "device.log").read_text()[-2000:]
            return json.loads(out)

        reading = invoke("sensor.read")
        assert reading["state"] == "DONE" and "temperature_c" in reading["payload"]
        assert invoke("sensor.read")["from_cache"]  # within max-age: the device is not woken
        code, out = cli("invoke", handle, "actuator.set", "--arg", '{"on": true}', "--gateway", cfg.grpc_listen,
                        "--token", token)
        assert code == 1 and "check --token" in out
        root = cl.load((dev / "root.token").read_text())
        owner = tmp_path / "owner.token"
        owner.write_text(cl.to_text(cl.derive(root, [cl.Service("actuator", ["*"])])))
        done = invoke("actuator.set", "--arg", '{"on": true}', token_file=str(owner))
        assert done["payload"]["on"] is True

        kill9(up)
        up = edgistry("up", "--home", str(cfg.home), log=tmp_path / "up2.log")
        wait_for_port(ports["grpc"], proc=up)
        assert invoke("actuator.get")["payload"]["on"] is True
        assert dev_proc.poll() is None  # the device rode out the gateway's death

        app = cl.from_text(open(token).read())
        asyncio.run(_revoke_on_chain(cfg, app.tag))  # any gateway or admin may revoke
        deadline = time.monotonic() + 10
        while True:  # the gateway follows the registry block by block (revoke --home would wait for it)
            code, out = cli("invoke", handle, "sensor.info", "--gateway", cfg.grpc_listen, "--token", token)
            if code == 1 and "Revoked" in out or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert code == 1 and "Revoked" in out and "check --token" in out
    finally:
        if dev_proc is not None:
            stop(dev_proc)
        stop(up)


async def _revoke_on_chain(cfg, tag: bytes) -> None:
    from edgistry.cluster.home import admin_key
    from edgistry.chain import ChainClient
    from edgistry.proto import registry_pb2 as pb

    async with ChainClient(cfg.rpc_url) as chain:
        await chain.submit(admin_key(cfg), pb.RevokeToken(tag_hash=cl.revocation_hash(tag), expires_at=int(time.time()) + 3600))
