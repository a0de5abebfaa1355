"""The store's writer process (gateway/store/child.py, driven by writer.py): group commit,
durable before acknowledged, a failing operation rolled back alone, and a crashed child
loses nothing acknowledged, fails only what was in flight, and is replaced."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from edgistry.firmware.caplets import api as cl
from edgistry.gateway.tokens import auth
from edgistry.gateway.errors import Conflict, NotFound, QueueFull
from edgistry.gateway.link.backend import DeviceAnswer, Ticket
from edgistry.gateway.store.store import Device, GatewayStore, RequestRecord, State, new_id
from edgistry.gateway.store.writer import WriterDied

MANIFEST = {"services": [{"type": "sensor", "methods": [{"name": "read", "cache_max_age_s": 10}]}]}
NOW = 1_800_000_000_000
_SEQ = itertools.count(NOW)  # rising across every test's devices, as the service mints them


async def device(store: GatewayStore) -> Device:
    dev = Device(new_id(), new_id(), cl.root(cl.new_secret()).to_bytes(), MANIFEST, 0, 7, 1, duty_cycle_s=10)
    await store.put_device(dev)
    return dev


def item(dev: Device, rid: bytes | None = None, depth: int = 10, args: bytes = b"{}") -> tuple[RequestRecord, int]:
    """An enqueue item as the service makes it: a fresh sequence and the real request token."""
    seq = next(_SEQ)
    rec = RequestRecord(rid or new_id(), dev.link_id, "sensor", "read", args,
                        auth.request_token(dev.root_token, "sensor", "read", args, seq), b"d" * 32, State.QUEUED, NOW,
                        NOW + 60_000, seq=seq)
    return rec, depth


def depth_on_reopen(path, dev: Device) -> int:
    """The device's queue depth as a fresh store on ``path`` reads it from disk."""
    again = GatewayStore(path)
    try:
        return again.depth(dev.link_id)
    finally:
        again.close()


async def test_every_kind_of_write_through_the_writer(tmp_path):
    """A life of requests through every link operation gives what a caller expects."""
    store = GatewayStore(tmp_path / "gw")
    try:
        dev = await device(store)
        first = await store.enqueue([item(dev), item(dev), item(dev, depth=2)])
        assert [type(r).__name__ if isinstance(r, Exception) else (r[0].state, r[1]) for r in first] == \
            [(State.QUEUED, True), (State.QUEUED, True), "QueueFull"]
        a, b = first[0][0], first[1][0]
        assert cl.load(a.request_token).leaf.is_leaf and a.seq < b.seq
        assert (await store.enqueue([item(dev, rid=a.request_id)]))[0][1] is False  # the same id: idempotent
        clash = await store.enqueue([item(dev, rid=a.request_id, args=b'{"x":1}')])
        ghost = Device(new_id(), new_id(), dev.root_token, MANIFEST, 0, 7, 1)
        unknown = await store.enqueue([item(ghost)])
        assert (type(clash[0]).__name__, type(unknown[0]).__name__) == ("Conflict", "NotFound")
        assert await store.delivered(dev.link_id, [a.request_id]) == [a.request_id]
        ids, finished = await store.answered(dev.link_id, [DeviceAnswer(a.request_id, 0, b"21.5")], NOW + 5)
        assert ids == [a.request_id] and finished == [(a.request_id, State.DONE)]
        assert store.get(a.request_id).payload == b"21.5"
        await store.rotate_ticket(None, b"T" * 16, Ticket(dev.link_id, b"s" * 32, NOW + 60_000))
        assert store.ticket(b"T" * 16, NOW) == Ticket(dev.link_id, b"s" * 32, NOW + 60_000)
        await store.rotate_ticket(b"T" * 16, None, None)
        assert store.ticket(b"T" * 16, NOW) is None
        store.note_contact(dev.link_id, NOW + 7, 30)
        await store.revocations_sent(dev.link_id, 0)  # any commit carries the contact hints
        with store.env.begin() as txn:
            assert txn.get(b"l/" + dev.link_id) is not None
        assert store.depth(dev.link_id) == 1
    finally:
        store.close()


async def test_per_operation_errors_keep_their_types(tmp_path):
    """Domain errors cross the pipe as themselves; what is not plain data fails alone, unsent."""
    store = GatewayStore(tmp_path / "gw")
    try:
        dev = await device(store)
        out = await store.enqueue([item(dev, depth=0)])
        assert isinstance(out[0], QueueFull) and "queue is full" in str(out[0])
        first = (await store.enqueue([item(dev)]))[0][0]
        out = await store.enqueue([item(dev, rid=first.request_id, args=b'{"y":2}')])
        assert isinstance(out[0], Conflict)
        store.note_contact(dev.link_id, NOW + 3, 9)
        bad, good = await asyncio.gather(  # not data: refused before it is sent, alone
            store.write("delivered", dev.link_id, [lambda: first.request_id]),
            store.delivered(dev.link_id, [first.request_id]), return_exceptions=True)
        assert isinstance(bad, TypeError) and "plain data" in str(bad)
        assert good == [first.request_id]
        assert store.last_contact(dev.link_id).sleep_s == 9
        with store.env.begin() as txn:
            assert txn.get(b"l/" + dev.link_id) is not None  # the hints went with the good write
        assert store.get(first.request_id).st == State.DELIVERED
        with pytest.raises(NotFound, match="no such request"):
            await store.cancel(new_id(), NOW)
        with pytest.raises(ValueError, match="no store operation 'drop_everything'"):
            await store.write("drop_everything")
    finally:
        store.close()


async def test_writes_arriving_during_a_commit_share_the_next_transaction(tmp_path):
    """Frames that reach the writer while it is busy are merged into one transaction (one
    fsync), each caller still answered only after that commit."""
    store = GatewayStore(tmp_path / "gw")
    try:
        dev = await device(store)
        os.kill(store.writer.pid, signal.SIGSTOP)  # busy: frames pile up in its pipe
        try:
            waits = []
            for _ in range(3):  # three loop turns: three frames
                waits.append(asyncio.ensure_future(store.enqueue([item(dev)])))
                await asyncio.sleep(0.02)
            assert not any(w.done() for w in waits)
            before = store.writer.commits
        finally:
            os.kill(store.writer.pid, signal.SIGCONT)
        outs = await asyncio.wait_for(asyncio.gather(*waits), 10)
        assert all(out[0][1] for out in outs)
        assert store.writer.commits == before + 1 and store.depth(dev.link_id) == 3
    finally:
        store.close()


async def test_a_killed_writer_fails_only_what_was_in_flight_and_is_replaced(tmp_path):
    """kill -9 of the writer: the write in flight fails with WriterDied (not acknowledged),
    what was acknowledged before is on disk, and the next write starts a new writer."""
    store = GatewayStore(tmp_path / "gw")
    try:
        dev = await device(store)
        acked = (await store.enqueue([item(dev)]))[0][0]
        pid = store.writer.pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)  # hold it mid-exchange, then kill it
        pending = asyncio.ensure_future(store.enqueue([item(dev)]))
        await asyncio.sleep(0.2)
        assert not pending.done()
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(WriterDied, match="not acknowledged"):
            await asyncio.wait_for(pending, 10)
        after = (await asyncio.wait_for(store.enqueue([item(dev)]), 20))[0][0]
        assert store.writer.pid not in (None, pid)
        assert store.get(acked.request_id).st == State.QUEUED and store.get(after.request_id).st == State.QUEUED
        assert store.depth(dev.link_id) in (2, 3)  # the failed one may or may not have committed
    finally:
        store.close()
    assert depth_on_reopen(tmp_path / "gw", dev) in (2, 3)


async def test_close_gives_up_on_a_hung_child_in_bounded_time(tmp_path, monkeypatch):
    """A child that stopped answering: close() fails what it held (not acknowledged),
    kills it and returns within CLOSE_TIMEOUT_S."""
    from edgistry.gateway.store import writer
    monkeypatch.setattr(writer, "CLOSE_TIMEOUT_S", 0.5)
    store = GatewayStore(tmp_path / "gw")
    dev = await device(store)
    await store.enqueue([item(dev)])
    pid = store.writer.pid
    os.kill(pid, signal.SIGSTOP)
    pending = asyncio.ensure_future(store.enqueue([item(dev)]))
    await asyncio.sleep(0.1)
    t = time.monotonic()
    store.close()
    assert time.monotonic() - t < 5
    with pytest.raises(WriterDied, match="not acknowledged"):
        await asyncio.wait_for(pending, 5)
    assert not _alive(pid)


async def test_close_stops_the_child(tmp_path):
    """close() lets the writer finish and reaps it."""
    store = GatewayStore(tmp_path / "gw")
    dev = await device(store)
    await store.enqueue([item(dev)])
    pid = store.writer.pid
    store.close()
    assert store.writer.pid is None
    assert not _alive(pid)


def test_the_child_exits_when_the_gateway_dies(tmp_path):
    """kill -9 of the gateway: its writer sees EOF and exits; what was acknowledged is on disk."""
    code = textwrap.dedent(f"""
        import asyncio, os, sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from test_store_process import device, item
        from edgistry.gateway.store.store import GatewayStore
        async def main():
            store = GatewayStore({str(tmp_path / "gw")!r})
            rec = (await store.enqueue([item(await device(store))]))[0][0]
            print(store.writer.pid, rec.request_id.hex(), flush=True)
            await asyncio.sleep(60)
        asyncio.run(main())
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline().split()
        assert line, "the gateway stand-in did not start"
        child, rid = int(line[0]), bytes.fromhex(line[1])
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        deadline = time.monotonic() + 10
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(child)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        proc.stdout.close()
    store = GatewayStore(tmp_path / "gw")
    try:
        assert store.get(rid).st == State.QUEUED
    finally:
        store.close()


def _alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


async def test_close_with_large_writes_both_ways_does_not_deadlock(tmp_path, monkeypatch):
    """close() while the child sends a reply larger than a pipe and more than a pipe's worth
    waits to be sent: it writes and reads at once, and every write is acknowledged."""
    from edgistry.gateway.store import writer
    monkeypatch.setattr(writer, "CLOSE_TIMEOUT_S", 20.0)
    store = GatewayStore(tmp_path / "gw")
    dev = await device(store)
    big = b'{"blob":"' + b"x" * 16_000 + b'"}'
    queued = await store.enqueue([item(dev, depth=1000, args=big) for _ in range(40)])
    # a small message whose reply is large (the 40 records, ~650 KB) ...
    expired = asyncio.ensure_future(store.expire_due(NOW + 10**9))
    await asyncio.sleep(0)
    await asyncio.sleep(0)  # sent
    time.sleep(0.5)  # (the loop is not reading: the child is blocked writing its reply)
    # ... and a large message (~650 KB) staged when close() is called
    more = asyncio.ensure_future(store.enqueue([item(dev, depth=1000, args=big) for _ in range(40)]))
    await asyncio.sleep(0)
    t = time.monotonic()
    store.close()
    assert time.monotonic() - t < 15
    e, m = await asyncio.wait_for(asyncio.gather(expired, more), 5)
    assert len(e) == 40 and all(r[1] for r in m) and {r.request_id for r in e} == {r[0].request_id for r in queued}
    assert depth_on_reopen(tmp_path / "gw", dev) == 40


async def test_nothing_starts_a_writer_after_close(tmp_path):
    """close() sends what was staged and the waiting hints; later hints and writes start nothing."""
    store = GatewayStore(tmp_path / "gw")
    dev = await device(store)
    await store.enqueue([item(dev)])  # the child runs
    pending = asyncio.ensure_future(store.enqueue([item(dev)]))
    await asyncio.sleep(0)  # staged, its hand-over scheduled: close() sends it
    store.note_contact(dev.link_id, NOW, 4)  # a hint waiting when close() runs
    store.close()
    store.note_contact(dev.link_id, NOW + 1, 5)  # a late one, before the scheduled hand-over runs
    assert (await asyncio.wait_for(pending, 5))[0][1]
    await asyncio.sleep(0.05)  # the hand-over scheduled before close() runs: nothing to send
    assert store.writer.pid is None and store.writer._child is None
    with pytest.raises(RuntimeError, match="closed"):
        await store.enqueue([item(dev)])
    again = GatewayStore(tmp_path / "gw")
    try:
        assert again.last_contact(dev.link_id).sleep_s == 4 and again.depth(dev.link_id) == 2
    finally:
        again.close()


async def test_close_persists_hints_with_no_writer_running(tmp_path):
    """Contact hints noted before any write still reach the disk at close (a writer starts for them)."""
    store = GatewayStore(tmp_path / "gw")
    dev = await device(store)
    store.close()
    store = GatewayStore(tmp_path / "gw")  # a fresh store: no writer process until something is written
    store.note_contact(dev.link_id, NOW, 6)
    assert store.writer.pid is None
    store.close()
    again = GatewayStore(tmp_path / "gw")
    try:
        assert again.last_contact(dev.link_id).sleep_s == 6
    finally:
        again.close()


def test_closing_after_the_event_loop_is_closed(tmp_path):
    """A loop closed with a write still awaited: close() still commits what it was
    given, stops the child and closes the store."""
    store = GatewayStore(tmp_path / "gw")
    loop = asyncio.new_event_loop()
    try:
        dev = loop.run_until_complete(device(store))
        loop.run_until_complete(store.enqueue([item(dev)]))
        pid = store.writer.pid
        loop.create_task(store.enqueue([item(dev)]))  # left in flight when the loop closes
        loop.run_until_complete(asyncio.sleep(0))
    finally:
        loop.close()
    store.close()
    assert not _alive(pid) and not store._open
    assert depth_on_reopen(tmp_path / "gw", dev) == 2


async def test_the_writer_commits_what_was_staged_when_closed(tmp_path):
    """A write staged this loop turn (not handed over yet) is committed by close()."""
    store = GatewayStore(tmp_path / "gw")
    dev = await device(store)
    await store.enqueue([item(dev)])  # the writer runs
    pending = asyncio.ensure_future(store.enqueue([item(dev)]))
    await asyncio.sleep(0)  # staged this turn, not handed over yet
    store.close()
    assert (await asyncio.wait_for(pending, 5))[0][1]


async def test_an_urgent_write_is_handed_over_at_once_and_in_order(tmp_path):
    """``urgent``: the writer gets the operation (and what was staged before it) when it is
    submitted, not at the end of the loop turn; order is kept; results are the same."""
    store = GatewayStore(tmp_path / "gw")
    try:
        dev = await device(store)
        await store.enqueue([item(dev)])  # the writer runs
        w = store.writer
        ops = [[[rec.dump(), depth]] for rec, depth in (item(dev), item(dev), item(dev))]
        first = w.submit("enqueue", (ops[0],))  # staged for the end of this turn
        second = w.submit("enqueue", (ops[1],), urgent=True)
        assert not w._staged  # handed over already, both, before this coroutine yields once
        third = w.submit("enqueue", (ops[2],))  # a later turn's hand-over still works
        outs = await asyncio.wait_for(asyncio.gather(first, second, third), 10)
        assert [result for result, _ in outs] == [[None]] * 3  # each queued as given
        assert store.depth(dev.link_id) == 4
    finally:
        store.close()


async def test_a_write_that_does_not_fit_fails_alone_not_its_group(tmp_path):
    """A batch that does not fit the map and a small enqueue from another client, started
    in one loop turn, share one group commit. The large one fails with MapFull; the small
    one is committed (before, the whole group failed, the small one with it, on every retry)."""
    from edgistry.gateway.errors import MapFull

    store = GatewayStore(tmp_path / "gw", map_size=1 << 20)
    try:
        dev = await device(store)
        commits = store.writer.commits
        big = store.enqueue([item(dev, depth=10**9, args=b'{"a":"' + b"y" * (2 << 20) + b'"}')])
        small = store.enqueue([item(dev, depth=10**9)])
        big_out, small_out = await asyncio.gather(big, small, return_exceptions=True)
        assert store.writer.commits == commits + 1  # one group
        assert isinstance(big_out, MapFull) or all(isinstance(o, MapFull) for o in big_out), big_out
        assert not isinstance(small_out, Exception) and not isinstance(small_out[0], Exception), small_out
        assert store.depth(dev.link_id) == 1
    finally:
        store.close()


async def test_a_full_map_of_expired_requests_drains_by_itself(tmp_path):
    """The map filled with small requests (up to the reserve kept for work already
    accepted) that then expire: dead-lettering them needs new pages before old ones are
    free, so a sweep step of EXPIRE_LIMIT fails with MapFull every time (the gateway
    stayed full for good). sweep_expired halves the step until it fits; the queue
    drains and new requests are taken again."""
    from edgistry.gateway.errors import MapFull

    store = GatewayStore(tmp_path / "gw", map_size=1 << 20)
    try:
        dev = await device(store)
        queued = 0
        try:
            while True:
                out = await store.enqueue([item(dev, depth=10**9, args=b'{"a":"' + b"x" * 60 + b'"}')
                                           for _ in range(20)])
                queued += sum(1 for o in out if not isinstance(o, Exception))
        except MapFull:
            pass
        later = NOW + 120_000  # every TTL has passed
        with pytest.raises(MapFull):
            await store.expire_due(later)  # one step of EXPIRE_LIMIT does not fit
        expired = 0
        for _ in range(200):
            expired += len(await store.sweep_expired(later))
            if expired == queued:
                break
        assert expired == queued and store.depth(dev.link_id) == 0
        for _ in range(5):  # dead letters are purged after the retention period
            await store.purge_finished(later + store.retention_ms + 1)
        out = await store.enqueue([item(dev)])
        assert not isinstance(out[0], Exception), out
    finally:
        store.close()


async def test_at_the_reserve_new_requests_wait_and_queued_ones_still_finish(tmp_path):
    """New requests stop at the store's reserve (MapFull naming it) while the map still
    has room, because LMDB copies every page a write touches: what is queued is still
    delivered, answered and cancelled, a revocation is still logged, and a request the
    device answered is readable with its answer."""
    from edgistry.gateway.errors import MapFull

    store = GatewayStore(tmp_path / "gw", map_size=1 << 20)
    try:
        dev = await device(store)
        queued: list[RequestRecord] = []
        with pytest.raises(MapFull, match="nearly full"):
            for _ in range(1000):
                out = await store.enqueue([item(dev, depth=10**9, args=b'{"a":"' + b"x" * 60 + b'"}')
                                           for _ in range(20)])
                queued += [o[0] for o in out if not isinstance(o, Exception)]
        assert len(queued) > 500
        assert await store.add_revocations([(os.urandom(32), NOW // 1000 + 3600)]) == 1
        answered = queued[:300]
        for i in range(0, len(answered), 10):  # a device's flights: a few answers per commit
            ids = [r.request_id for r in answered[i:i + 10]]
            assert await store.delivered(dev.link_id, ids) == ids
            _, finished = await store.answered(dev.link_id, [DeviceAnswer(r, 0, b'{"t":21.5}') for r in ids],
                                               NOW + 1)
            assert finished == [(r, State.DONE) for r in ids]
        assert (await store.cancel(queued[300].request_id, NOW + 2)).state == State.CANCELLED
        assert store.depth(dev.link_id) == len(queued) - 301
        assert store.get(answered[-1].request_id).payload == b'{"t":21.5}'
    finally:
        store.close()
