"""The device-link server over real loopback sockets: sessions, attacks, timeouts, push, shutdown."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path

from edgistry.firmware.caplets import api as cl
import pytest
from edgistry.firmware.link.link_wire import MAX_LINK_FRAME
from edgistry.firmware.link.link_session import NEED_DATA, Ack, Bye, Established, Requests
from edgistry.firmware.link.link_device import DeviceSession
from edgistry.firmware.link.link_errors import LinkError
from edgistry.firmware.link import link_wire as wire
from edgistry.firmware.runtime.home import DeviceHome
from edgistry.gateway.link.backend import MemoryBackend
from runtime_helpers import (
    GATEWAY_SECRET,
    Queue,
    device,
    frame_types,
    make_home,
    read_to_eof,
    start_server,
)

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def gw(tmp_path: Path):
    """A link server over a MemoryBackend with two paired devices, A and B."""
    backend = MemoryBackend(GATEWAY_SECRET)
    srv = await start_server(backend, handshake_timeout=0.5, idle_timeout=0.5)
    a = make_home(tmp_path / "a", backend, srv.port, encrypt=True)
    b = make_home(tmp_path / "b", backend, srv.port)
    try:
        yield srv, backend, a, b
    finally:
        await srv.close()


async def raw_session(port: int, home: DeviceHome, *, secret: bytes | None = None,
                      link_id: bytes | None = None, identity: bytes | None = None):
    """Open a connection and run the handshake with the core directly (attacks start here)."""
    r, w = await asyncio.open_connection("127.0.0.1", port)
    s = DeviceSession(secret or home.secret(), home.root_token(), link_id or home.link_id(),
                      identity or home.paired().identity_token, os.urandom)
    w.write(s.initiate())
    evs = []
    while not any(isinstance(e, Requests) for e in evs):
        data = await asyncio.wait_for(r.read(65536), 5)
        if not data:
            break
        s.receive_data(data)
        try:
            while (ev := s.next_event()) is not NEED_DATA:
                evs.append(ev)
                if not isinstance(ev, (Established, Requests)):
                    break
        except LinkError as exc:
            evs.append(exc)
            w.write(s.data_to_send())  # as a device does: what it owes (PROOF), then ERROR
            break
        w.write(s.data_to_send())
    return r, w, s, evs


async def test_handshake_and_resume_over_socket(gw) -> None:
    """A device runtime wakes twice: a full (forward-secret, encrypted) handshake, then a resumption."""
    srv, backend, a, _ = gw
    q = Queue(backend, a)
    rid = q.add("sensor", "read")
    dev = device(a)
    first = await dev.wake_with_fallback()
    assert (first.resumed, first.forward_secret, first.encrypted) == (False, True, True)
    assert backend.answers[rid].status == 0 and b"temperature_c" in backend.answers[rid].payload
    assert rid in backend.acked and first.delivered == 1 and first.sleep_s == 7
    second = await dev.wake_with_fallback()
    assert second.resumed and second.received == 0
    m = srv.metrics.snapshot()
    assert m["handshakes_full"] == 1 and m["handshakes_resumed"] == 1 and m["rejections"] == {}
    assert m["sessions_total"] == 2 and m["sessions_open"] == 0
    assert backend.contacts[-1][2] == 7  # BYE told the gateway the next wake


async def _attack(kind: str, srv, a: DeviceHome, b: DeviceHome) -> list[int]:
    """Run one attack; return the frame types the server sent after the handshake
    (ERROR events the handshake itself received count as ERROR frames)."""
    port = srv.port
    evs: list = []
    if kind == "wrong_secret":
        r, w, s, evs = await raw_session(port, a, secret=os.urandom(32))
    elif kind == "impersonation":  # A's valid identity token with B's link id
        r, w, s, evs = await raw_session(port, b, identity=a.paired().identity_token)
    elif kind == "unknown_link":
        r, w, s, evs = await raw_session(port, a, link_id=os.urandom(16))
    elif kind in ("replayed", "reordered", "bad_mac", "idle"):
        r, w, s, evs = await raw_session(port, a)
        assert isinstance(evs[0], Established)
        f1, f2 = s.send(Ack([b"1" * 16])), s.send(Ack([b"2" * 16]))
        if kind == "replayed":
            w.write(f1 + f1)
        elif kind == "reordered":
            w.write(f2 + f1)
        elif kind == "bad_mac":
            w.write(f1[:-1] + bytes([f1[-1] ^ 0x40]))
    else:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        if kind == "oversized":
            big = bytearray()
            wire.put_uvarint(big, MAX_LINK_FRAME + 1)
            w.write(bytes(big) + bytes(1000))
        elif kind == "malformed":
            w.write(b"\x08\x07\x07\x07\x07\x07\x07\x07\x07")
        elif kind == "dribble":  # a slow loris: one byte of HELLO every 100 ms
            s = DeviceSession(a.secret(), a.root_token(), a.link_id(), a.paired().identity_token,
                              os.urandom)
            hello = s.initiate()
            got = b""
            for i in range(len(hello)):
                try:
                    w.write(hello[i:i + 1])
                    got += await asyncio.wait_for(r.read(65536), 0.1)
                except asyncio.TimeoutError:
                    continue
                except ConnectionError:
                    break
                if got:
                    break
            w.close()
            return frame_types(got)
        # "silent": say nothing at all
    try:
        seen = [wire.ERROR for e in evs if type(e).__name__ == "Error"]
        return seen + frame_types(await read_to_eof(r, 5))
    finally:
        w.close()


@pytest.mark.parametrize("kind,reason", [
    ("wrong_secret", "bad_proof"),
    ("impersonation", "bad_identity"),
    ("unknown_link", "unknown_link"),
    ("replayed", "replayed"),
    ("reordered", "reordered"),
    ("bad_mac", "bad_mac"),
    ("oversized", "oversized"),
    ("malformed", "malformed"),
    ("silent", "timeout"),
    ("dribble", "timeout"),
    ("idle", "timeout"),
])
async def test_attacks_rejected_logged_closed_others_unaffected(gw, caplog, kind, reason) -> None:
    """Each attack is rejected (ERROR frame), logged, counted, the connection closed,
    and a device working at the same time is served normally."""
    caplog.set_level(logging.INFO, logger="edgistry.gateway.link")
    srv, backend, a, b = gw
    q = Queue(backend, b)
    rid = q.add("actuator", "toggle")
    good = device(b)
    sent, report = await asyncio.gather(_attack(kind, srv, a, b), good.wake_with_fallback())
    assert sent[-1] == wire.ERROR
    assert srv.metrics.rejections[reason] == 1
    assert f"rejected: {reason}" in caplog.text
    assert report.executed == 1 and backend.answers[rid].status == 0
    # and the victim device still connects afterwards
    assert (await device(a).wake_with_fallback()).received == 0
    for _ in range(100):  # the device's last flight (PROOF + BYE) may still be in the server's hands
        if not srv.connected():
            break
        await asyncio.sleep(0.01)
    assert srv.connected() == []


async def test_timeouts_are_bounded(gw) -> None:
    """A silent connection is closed at the handshake deadline, not later."""
    srv, *_ = gw
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    r, w = await asyncio.open_connection("127.0.0.1", srv.port)
    await read_to_eof(r, 5)
    w.close()
    assert 0.4 <= loop.time() - t0 < 2.0


async def test_notify_pushes_work_to_a_connected_device(gw) -> None:
    """A device lingering on its connection gets new work at once when the gateway notifies."""
    srv, backend, a, _ = gw
    srv.idle_timeout = 5.0
    dev = device(a, linger_s=1.0)
    task = asyncio.ensure_future(dev.wake_with_fallback())
    for _ in range(100):
        if a.link_id() in srv.connected():
            break
        await asyncio.sleep(0.02)
    assert srv.notify(a.link_id()) is True
    rid = Queue(backend, a).add("sensor", "info")
    assert srv.notify(a.link_id())
    for _ in range(100):
        if rid in backend.answers:
            break
        await asyncio.sleep(0.02)
    assert backend.answers[rid].status == 0
    assert srv.notify(os.urandom(16)) is False
    report = await asyncio.wait_for(task, 10)
    assert report.executed == 1


async def test_shutdown_tells_connected_devices(gw) -> None:
    """Closing the server ends live sessions with an ERROR and stops listening."""
    srv, backend, a, _ = gw
    srv.idle_timeout = 5.0
    r, w, s, evs = await raw_session(srv.port, a)
    assert isinstance(evs[0], Established)
    await srv.close()
    assert frame_types(await read_to_eof(r, 5))[-1] == wire.ERROR
    w.close()
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", srv.port)


async def test_backend_failure_ends_only_that_connection(gw, tmp_path) -> None:
    """An exception in the backend for one device is logged and closes only its connection."""
    srv, backend, a, b = gw
    real = backend.pending

    def pending(link_id, max_bytes):
        if link_id == a.link_id():
            raise RuntimeError("disk on fire")
        return real(link_id, max_bytes)

    backend.pending = pending
    bad, good = await asyncio.gather(device(a).wake(), device(b).wake(), return_exceptions=True)
    assert isinstance(bad, Exception) and not isinstance(good, Exception)
    assert srv.metrics.rejections["internal"] == 1


# ---- the 0.5-RTT flight, coalesced writes, commits per wake --------------------------------

async def _read_frames(r: asyncio.StreamReader, n: int) -> bytes:
    data = b""
    while len(frame_types(data)) < n:
        chunk = await asyncio.wait_for(r.read(65536), 5)
        if not chunk:
            break
        data += chunk
    return data


async def test_device_failing_proof_never_gets_its_requests_delivered(gw) -> None:
    """The encrypted early flight carries the work, but a PROOF changed in transit ends the
    session before the (genuine) ACK behind it counts: nothing delivered, no ticket stored,
    and the device gets the request on its next wake."""
    srv, backend, a, _ = gw
    rid = Queue(backend, a).add("sensor", "read", b"\"PRIVATE\"")
    r, w = await asyncio.open_connection("127.0.0.1", srv.port)
    s = DeviceSession(a.secret(), a.root_token(), a.link_id(), a.paired().identity_token, os.urandom)
    w.write(s.initiate())
    flight = await _read_frames(r, 3)
    assert frame_types(flight) == [wire.CHALLENGE, wire.ACCEPT, wire.REQUESTS]
    assert b"PRIVATE" not in flight
    s.receive_data(flight)
    est, req = s.next_event(), s.next_event()
    assert isinstance(est, Established) and req.items[0]["request_id"] == rid
    proof = bytearray(s.data_to_send())
    proof[-1] ^= 1  # the PROOF MAC, changed in transit
    w.write(bytes(proof) + s.send(Ack([rid])))
    assert frame_types(await read_to_eof(r, 5))[-1] == wire.ERROR
    w.close()
    assert srv.metrics.rejections["bad_proof"] == 1
    assert not backend.acked and not backend.tickets and rid not in backend.answers
    report = await device(a).wake_with_fallback()
    assert report.executed == 1 and rid in backend.acked and backend.answers[rid].status == 0


class _Recorder:
    """A StreamWriter proxy recording the frame types of each write."""

    def __init__(self, writer, log: list) -> None:
        self._w, self._log = writer, log

    def write(self, data: bytes) -> None:
        self._log.append(frame_types(data))
        self._w.write(data)

    def __getattr__(self, name):
        return getattr(self._w, name)


def _recording_device(home, log: list, **kw):
    async def open_connection(host, port):
        r, w = await asyncio.open_connection(host, port)
        return r, _Recorder(w, log)
    return device(home, open_connection=open_connection, **kw)


@pytest.mark.parametrize("encrypt", [True, False])
async def test_each_flight_is_one_write(tmp_path, monkeypatch, encrypt: bool) -> None:
    """Gateway: CHALLENGE + ACCEPT + REQUESTS, RESUMED + REQUESTS, each in one write; device:
    PROOF + ACK + RESPONSES (encrypted) in one write. Two round trips for a full encrypted
    handshake to its first delivered request; in clear, PROOF waits for the work (three)."""
    from edgistry.gateway.link import server as ls

    gw_log: list = []
    real_write = ls._Connection._write

    async def write(self, data):
        if data:
            gw_log.append(frame_types(data))
        await real_write(self, data)
    monkeypatch.setattr(ls._Connection, "_write", write)
    backend = MemoryBackend(GATEWAY_SECRET)
    srv = await start_server(backend)
    try:
        home = make_home(tmp_path / "d", backend, srv.port, encrypt=encrypt)
        q = Queue(backend, home)
        q.add("sensor", "read")
        dev_log: list = []
        rep = await _recording_device(home, dev_log).wake_with_fallback()
        assert rep.executed == 1 and not rep.resumed
        C, A, RQ, RS, K, P, H, B = (wire.CHALLENGE, wire.ACCEPT, wire.REQUESTS, wire.RESPONSES, wire.ACK,
                                    wire.PROOF, wire.HELLO, wire.BYE)
        if encrypt:
            assert dev_log == [[H], [P, K, RS], [B]]
            assert gw_log == [[C, A, RQ], [K]]
        else:
            assert dev_log == [[H], [P], [K, RS], [B]]
            assert gw_log == [[C, A, RQ], [RQ], [K]]
        dev_log.clear()
        gw_log.clear()
        q.add("sensor", "read")
        rep = await _recording_device(home, dev_log).wake_with_fallback()
        assert rep.resumed and rep.executed == 1
        assert dev_log == [[wire.RESUME], [K, RS], [B]] and gw_log == [[wire.RESUMED, RQ], [K]]
        dev_log.clear()
        gw_log.clear()
        await asyncio.sleep(0.1)
        rep = await _recording_device(home, dev_log, forward_secrecy=False).wake()
        assert dev_log == [[wire.RESUME], [B]]  # nothing queued: BYE at once
        home.write_paired(*_unticketed(home))
        dev_log.clear()
        rep = await _recording_device(home, dev_log).wake()
        assert not rep.resumed and dev_log == [[H], [P, B]]  # full handshake, nothing queued: 2 flights
    finally:
        await srv.close()


def _unticketed(home):
    """Forget the device's ticket (next wake: full handshake)."""
    from edgistry.firmware.runtime.state import DeviceState
    st = DeviceState(home.state_path)
    st.take_ticket(0)
    st.save()
    p = home.paired()
    return p.host + ":" + str(p.port), p.identity_token, p.pseudonym, p.gateway_id


async def test_store_commits_per_wake(tmp_path) -> None:
    """Over the durable store: a full encrypted handshake with one request costs ONE group
    commit (ticket + delivered + answered), a resumed wake two (ticket rotation before
    RESUMED; delivered + answered), and contact is a hint (no commit of its own)."""
    from edgistry.gateway.link.store_backend import StoreLinkBackend
    from edgistry.gateway.store.store import Device as StoredDevice
    from edgistry.gateway.store.store import GatewayStore, RequestRecord, State, new_id

    store = GatewayStore(tmp_path / "gw")
    backend = StoreLinkBackend(store, GATEWAY_SECRET)
    srv = await start_server(backend)
    try:
        home = make_home(tmp_path / "d", None, srv.port, encrypt=True)
        root = home.root_token()
        await store.put_device(StoredDevice(home.link_id(), new_id(), root, {"services": [{"type": "sensor", "methods": ["read"]}]}, 0, 7, 1,
                                            duty_cycle_s=7, encrypt=True))
        app = cl.derive(root, [cl.Service("sensor", ["*"])])

        async def enqueue() -> bytes:
            seq = max(int(time.time() * 1000), store.last_sequence(home.link_id()) + 1)
            rec = RequestRecord(new_id(), home.link_id(), "sensor", "read", b"",
                                cl.request_token(app, "sensor", "read", b"", seq).to_bytes(), b"d" * 32,
                                State.QUEUED, 0, 2**62, seq=seq)
            return (await store.enqueue([(rec, 10)]))[0][0].request_id

        counts = []
        for _ in range(3):
            rid = await enqueue()
            before = store.writer.commits
            rep = await device(home).wake_with_fallback()
            assert rep.executed == 1 and store.get(rid).st == State.DONE
            counts.append((rep.resumed, store.writer.commits - before))
        assert counts == [(False, 1), (True, 2), (True, 2)]
        assert store.last_contact(home.link_id()).sleep_s == 7  # the BYE, as a hint
    finally:
        await srv.close()
        store.close()


async def test_a_lone_ack_does_not_hold_up_the_link_and_its_write_still_lands(gw, caplog) -> None:
    """A flight of only an ACK needs no answer, so the gateway reads on while its durable
    write runs; the write lands even when the device leaves at once, and one that fails
    is logged (nothing had been promised on it)."""
    srv, backend, a, _ = gw
    srv.idle_timeout = 5.0
    real = backend.delivered
    started, release = asyncio.Event(), asyncio.Event()

    async def slow_delivered(link_id, request_ids):
        started.set()
        await release.wait()
        await real(link_id, request_ids)

    backend.delivered = slow_delivered
    rid = Queue(backend, a).add("sensor", "info")
    r, w, s, evs = await raw_session(srv.port, a)
    reqs = [e for e in evs if isinstance(e, Requests)]
    assert reqs and reqs[0].items[0]["request_id"] == rid
    w.write(s.send(Ack([rid])))
    await asyncio.wait_for(started.wait(), 5)
    w.write(s.send(Bye(42)))  # the next flight is read and handled while that write is held
    for _ in range(100):
        if (a.link_id(), 42) in [(c[0], c[2]) for c in backend.contacts]:
            break
        await asyncio.sleep(0.02)
    assert (a.link_id(), 42) in [(c[0], c[2]) for c in backend.contacts]
    assert rid not in backend.acked  # still held
    w.close()  # the device leaves; the held write must still land
    release.set()
    for _ in range(100):
        if rid in backend.acked:
            break
        await asyncio.sleep(0.02)
    assert rid in backend.acked

    async def failing(link_id, request_ids):
        raise RuntimeError("disk on fire")

    backend.delivered = failing
    rid2 = Queue(backend, a).add("sensor", "info")
    r, w, s, evs = await raw_session(srv.port, a)
    w.write(s.send(Ack([rid2])))
    await asyncio.sleep(0.1)
    w.close()
    with caplog.at_level(logging.WARNING, logger="edgistry.gateway.link"):
        for _ in range(100):
            if "durable write failed" in caplog.text:
                break
            await asyncio.sleep(0.02)
    assert "disk on fire" in caplog.text and rid2 not in backend.acked


async def test_an_unknown_ticket_costs_no_write_and_leaves_nothing_behind(tmp_path) -> None:
    """Anyone can send RESUME with a made-up ticket id: the gateway looks it up and falls
    back to a full handshake, with no fsync'd deletion to make and no id kept in memory (each
    one used to cost a rotate_ticket write, and an id stayed for ever when that write failed).
    A real ticket is still held against reuse until its deletion is durable."""
    from edgistry.gateway.link.server import LinkServer, _ConnKeys
    from edgistry.gateway.link.backend import Ticket, root_fingerprint

    backend = MemoryBackend(GATEWAY_SECRET)
    srv = LinkServer(backend, port=0)
    home = make_home(tmp_path / "d", backend, 1)
    keys = _ConnKeys(srv)
    for _ in range(20):
        assert keys.take_ticket(os.urandom(16)) is None
    assert keys.spent is None and srv.spending == set() and backend.commits == 0
    tid, link = os.urandom(16), home.link_id()
    await backend.rotate_ticket(None, tid, Ticket(link, b"s" * 32, 2**62, root_fingerprint(home.root_token())))
    assert keys.take_ticket(tid) == (link, b"s" * 32, 2**62)
    assert keys.spent == tid and srv.spending == {tid}
    assert _ConnKeys(srv).take_ticket(tid) is None  # presented on another connection meanwhile
