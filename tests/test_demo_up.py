"""`edgistry up --demo-devices N` then `edgistry invoke`: the whole flow in one node."""

from __future__ import annotations

import json
import re
import time

import pytest
from click.testing import CliRunner

from edgistry.cli import main
from proc_helpers import edgistry, free_port, kill9, stop, wait_for_port

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]


def test_demo_devices_answer_invokes(tmp_path):
    """Demo devices pair themselves, sleep on a duty cycle, and answer invokes through the gateway."""
    ports = {name: free_port() for name in ("rpc", "grpc", "link", "http")}
    args = ["up", "--home", str(tmp_path / "home"), "--demo-devices", "3"]
    args += [f"--{name}-listen=127.0.0.1:{port}" for name, port in ports.items()]
    log = tmp_path / "up.log"
    proc = edgistry(*args, log=log)
    try:
        wait_for_port(ports["grpc"], proc=proc, timeout=30)
        deadline = time.monotonic() + 40
        while "edgistry invoke" not in log.read_text():
            assert time.monotonic() < deadline, log.read_text()
            assert proc.poll() is None, log.read_text()
            time.sleep(0.2)
        time.sleep(0.5)
        commands = re.findall(r"edgistry (invoke \S+ \S+ --gateway \S+ --token \S+)", log.read_text())
        assert len(commands) == 3
        runner = CliRunner()
        for command in commands:
            result = runner.invoke(main, command.split() + ["--timeout", "30"], catch_exceptions=False)
            assert result.exit_code == 0, result.output
            answer = json.loads(result.stdout)  # progress lines, if any, go to stderr
            assert "temperature_c" in answer or "on" in answer
        devices = runner.invoke(main, ["registry", "ls", "devices", "--rpc", f"http://127.0.0.1:{ports['rpc']}", "--json"])
        listed = json.loads(devices.stdout)
        assert len(listed) == 3 and all(d["policy"]["resolution"] == 6 for d in listed)

        # an application: a gateway token, discovery by region, invoke-any
        app_token = tmp_path / "app.token"
        minted = runner.invoke(main, ["token", "app", "--home", str(tmp_path / "home"), "--name", "demo-app"])
        assert minted.exit_code == 0
        app_token.write_text(minted.output.strip() + "\n")
        near = ["--near", "52.52,13.405", "--radius-km", "8", "--gateway", f"127.0.0.1:{ports['grpc']}",
                "--token", str(app_token)]
        found = runner.invoke(main, ["discover", "sensor", *near, "--json"])
        assert found.exit_code == 0, found.output
        assert "52.52" not in found.output and "13.40" not in found.output  # no coordinates leave
        any_read = runner.invoke(main, ["invoke", "--any", "sensor", *near, "sensor.read", "--timeout", "30", "--json"])
        assert any_read.exit_code == 0, any_read.output
        assert json.loads(any_read.stdout)["state"] == "DONE"  # progress lines go to stderr
        assert stop(proc) == 0
    finally:
        kill9(proc)
