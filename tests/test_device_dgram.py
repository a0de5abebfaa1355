"""The device program's datagram wake (firmware/device/dev_dgram.py) against a real
DgramServer over real UDP on loopback: the MicroPython port's Board run on CPython, and the
core driven directly where datagrams must be lost. (tests/test_micropython_device.py runs
the same code on the real MicroPython Unix port against `edgistry up`.)"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from pathlib import Path

from runtime_helpers import GATEWAY_SECRET, SERVICES, Queue, device, make_home, repoint

from edgistry.firmware import export as ex
from edgistry.firmware.caplets import api as cl
from edgistry.firmware.device.dev_boot import ticks_ms, unix_ms
from edgistry.firmware.device.dev_dgram import DgramWake, load_context
from edgistry.firmware.device.dev_mp import Board
from edgistry.firmware.device.dev_services import Services
from edgistry.firmware.device.dev_state import DevState
from edgistry.firmware.device.dev_store import SlotStore
from edgistry.firmware.link.link_device import OK, REVOKED
from edgistry.firmware.link.link_dgram import DgramDevice
from edgistry.gateway.link.backend import MemoryBackend
from edgistry.gateway.link.dgram_server import DgramServer
from edgistry.gateway.twins import model


async def serve(backend: MemoryBackend) -> DgramServer:
    srv = DgramServer(backend, "127.0.0.1", 0, rate=1000, burst=1000)
    await srv.start()
    return srv


def board_dir(tmp_path: Path, backend: MemoryBackend, port: int) -> tuple[Path, object]:
    home = make_home(tmp_path / "home", backend, port, encrypt=True)
    board = tmp_path / "board"
    board.mkdir()
    (board / "secret").write_bytes(home.secret())
    (board / "device.json").write_text(json.dumps(dict(ex.board_config(home), link="udp")))
    return board, home


def counting_services() -> tuple[Services, list]:
    svc = Services()
    calls: list = []
    svc.register("sensor", "read", lambda args, call: calls.append(call.request_id) or {"n": len(calls)})
    return svc, calls


async def test_board_wakes_fully_then_on_the_saved_context(tmp_path: Path) -> None:
    """A full wake (WAKE/WELCOME) answers a request; a restarted board wakes on the context
    kept in its A/B slots (no new WAKE counter) and answers the next one; eight requests,
    more than one reply holds, are all answered once."""
    backend = MemoryBackend(GATEWAY_SECRET)
    srv = await serve(backend)
    try:
        board, home = board_dir(tmp_path, backend, srv.port)
        svc, calls = counting_services()
        q = Queue(backend, home)
        r1 = q.add("sensor", "read")
        first = await asyncio.to_thread(Board(str(board), svc, log=lambda t: None).wake_with_fallback)
        assert not first.resumed and first.encrypted and not first.forward_secret
        assert first.executed == 1 and first.delivered == 1 and backend.answers[r1].payload == b'{"n":1}'
        assert srv.metrics.wakes["full"] == 1
        ctx = SlotStore(str(board), home.secret()).load()["dgram"]
        assert ctx["ctr"] == 1 and ctx["master"] and ctx["lk"]
        many = [q.add("sensor", "read", json.dumps({"pad": "x" * 200}).encode()) for _ in range(8)]
        second = await asyncio.to_thread(Board(str(board), svc, log=lambda t: None).wake_with_fallback)
        assert second.resumed and srv.metrics.wakes["saved"] == 1 and srv.metrics.wakes["full"] == 1
        assert second.executed == 8 and second.delivered == 8
        assert all(backend.answers[r].status == 0 for r in many) and len(calls) == 9
        assert set(many) <= backend.acked  # every reply that carried them was acknowledged
        state = SlotStore(str(board), home.secret()).load()
        assert state["dgram"]["ctr"] == 1 and state["dgram"]["seq"] > ctx["seq"]
        assert {e["state"] for e in state["entries"].values()} == {"acked"}
    finally:
        await srv.close()


async def test_twin_change_over_udp_is_applied_and_reported(tmp_path: Path) -> None:
    """Desired changes ride in the reply; the applied version and reported properties go
    back in the DATA, and the gateway's reply to it clears the pending report."""
    backend = MemoryBackend(GATEWAY_SECRET)
    srv = await serve(backend)
    try:
        board, home = board_dir(tmp_path, backend, srv.port)
        twin = backend.twins[home.link_id()] = model.Twin()
        model.set_desired(twin, [model.Change("mode", b'"eco"')], [], 1)
        seen = []
        b = Board(str(board), Services(), on_twin=lambda k, v: seen.append((k, v)), log=lambda t: None)
        b.report("temp", 21.5)
        rep = await asyncio.to_thread(b.wake_with_fallback)
        assert seen == [("mode", '"eco"')] and rep.twin_applied == twin.applied == 1
        assert model.view(twin)["reported"]["temp"]["value"] == b"21.5"
        assert not b.state.twin["pending"] and b.state.twin["reported"] == {}
    finally:
        await srv.close()


async def test_lost_datagrams_are_sent_again_and_a_lost_context_means_a_full_wake(tmp_path: Path) -> None:
    """Datagrams lost on the way out are sent again as new ones (the gateway drops none as a
    replay) and the request runs once; when the gateway has lost the context, the saved wake
    gets no answer and the device wakes fully."""
    backend = MemoryBackend(GATEWAY_SECRET)
    srv = await serve(backend)
    try:
        board, home = board_dir(tmp_path, backend, srv.port)
        svc, calls = counting_services()
        q = Queue(backend, home)
        st = DevState(SlotStore(str(board), home.secret()))
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.connect(("127.0.0.1", srv.port))
        lose = {"n": 0}

        def send(data: bytes) -> None:
            if lose["n"]:
                lose["n"] -= 1
                return
            sock.send(data)

        def recv(timeout_ms: int) -> bytes | None:
            sock.settimeout(timeout_ms / 1000)
            try:
                return sock.recv(2048)
            except TimeoutError:
                return None

        def wake() -> DgramWake:
            dev = DgramDevice(home.root_token(), home.link_id(), load_context(st.dgram), os.urandom)
            w = DgramWake(st, svc, dev, home.secret(), unix_ms, ticks_ms, 5, send, recv, 3, 100)
            w.run()
            return w

        rid = q.add("sensor", "read")
        lose["n"] = 2  # the WAKE and its first resend
        w = await asyncio.to_thread(wake)
        assert w.full and st.dgram["ctr"] == 3 and w.report.executed == 1 and backend.answers[rid].status == 0
        rid2 = q.add("sensor", "read")
        lose["n"] = 1  # the saved wake's DATA
        w = await asyncio.to_thread(wake)
        assert not w.full and w.report.resumed and backend.answers[rid2].status == 0 and len(calls) == 2
        assert srv.metrics.drops.get("replayed", 0) == 0

        for key in [k for k in backend.tickets if k.startswith(b"dgC")]:  # the gateway forgets the context
            del backend.tickets[key]
        rid3 = q.add("sensor", "read")
        ctr = st.dgram["ctr"]
        t0 = time.monotonic()
        w = await asyncio.to_thread(wake)
        assert w.full and not w.report.resumed and backend.answers[rid3].status == 0 and len(calls) == 3
        assert st.dgram["ctr"] == ctr + 1 and time.monotonic() - t0 < 5  # 0.1 + 0.2 + 0.4 + 0.8 s of waiting
        sock.close()
    finally:
        await srv.close()


async def test_cpython_device_over_udp_revocations_backoff_and_gateway_restart(tmp_path: Path) -> None:
    """`edgistry device run`'s Device with link udp: a forward-secret full wake enforcing a
    pushed revocation, then a saved-context wake; while the gateway is down, wakes fail and
    back off; a restarted gateway (same store) is woken on the same context."""
    backend = MemoryBackend(GATEWAY_SECRET)
    srv = await serve(backend)
    home = make_home(tmp_path / "d", backend, srv.port, manifest=dict(SERVICES, link="udp"))
    q = Queue(backend, home)
    other = cl.derive(home.root_token(), [cl.Service("sensor", ["*"])])
    backend.revoked[home.link_id()] = [cl.revocation_hash(q.app.tag)]
    r1, r2 = q.add("sensor", "info"), q.add("sensor", "info", token=other)
    sleeps: list[float] = []
    stop = asyncio.Event()
    restarted: list[DgramServer] = []

    async def fake_sleep(s: float) -> None:
        sleeps.append(s)
        if len(sleeps) == 3:  # the gateway comes back on another port, same store
            restarted.append(await serve(backend))
            repoint(home, restarted[0].port)
        if len(sleeps) == 4:
            stop.set()
        await asyncio.sleep(0)

    dev = device(home, sleep=fake_sleep, udp_timeout_ms=50, udp_retries=1, backoff_base=1.0, backoff_cap=8.0)
    try:
        first = await dev.wake_with_fallback()
        assert not first.resumed and first.forward_secret and first.revoked == 1
        assert backend.answers[r1].status == REVOKED and backend.answers[r2].status == OK
        assert not backend.revoked[home.link_id()]  # the reply carrying it was acknowledged
        r3, r3b = q.add("sensor", "read"), q.add("sensor", "read", token=other)
        second = await dev.wake_with_fallback()  # the revocation is kept: not pushed again
        assert second.resumed and second.revoked == 0
        assert backend.answers[r3].status == REVOKED and backend.answers[r3b].status == OK
        await srv.close()
        r4 = q.add("sensor", "read", token=other)
        await asyncio.wait_for(dev.run(stop=stop), 30)
        assert all(0 <= s <= 8.0 for s in sleeps[:3]) and sleeps[3] == 7, sleeps
        assert backend.answers[r4].status == OK and dev.failures == 0
        # the saved context outlived both the outage (each failed wake also tried two full
        # WAKEs, spending counters 2-7, never answered) and the gateway's restart
        assert dict(restarted[0].metrics.wakes) == {"saved": 1} and dev.state.dgram["ctr"] == 7
    finally:
        for s in restarted:
            await s.close()
