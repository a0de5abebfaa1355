"""The gateway's durable store: queues, states, expiry, backpressure, cache, tickets, notices."""

from __future__ import annotations

import asyncio
import dataclasses

import lmdb
import pytest

from edgistry.firmware.caplets import api as cl
from edgistry.gateway.errors import Conflict, NotFound, QueueFull
from edgistry.gateway.link.backend import DeviceAnswer, Ticket
from edgistry.gateway.store.ops import StaleSequence
from edgistry.gateway.store.store import Contact, Device, GatewayStore, RequestRecord, State, new_id

MANIFEST = {"services": [{"type": "sensor", "methods": [{"name": "read", "cache_max_age_s": 10},
                                                       {"name": "set", "mutating": True, "cache_max_age_s": 10}]}]}
NOW = 1_800_000_000_000


@pytest.fixture
def store(tmp_path):
    s = GatewayStore(tmp_path / "gw")
    yield s
    s.close()


async def add_device(store: GatewayStore, link: bytes | None = None) -> Device:
    link = link or new_id()
    dev = Device(link, new_id(), cl.root(cl.new_secret()).to_bytes(), MANIFEST, 0, 7, 1, duty_cycle_s=10)
    await store.put_device(dev)
    return dev


def record(dev: Device, method: str = "read", ttl_ms: int = 60_000, rid: bytes | None = None,
           digest: bytes = b"d" * 32, args: bytes = b"", seq: int | None = None) -> RequestRecord:
    """A QUEUED record with the next sequence of ``dev`` (as the service mints it) and a stand-in token."""
    rec = RequestRecord(rid or new_id(), dev.link_id, "sensor", method, args, b"", digest, State.QUEUED, NOW,
                        NOW + ttl_ms)
    rec.seq = seq if seq is not None else next_seq(dev)
    rec.request_token = rec.seq.to_bytes(8, "big")
    return rec


_LAST: dict[bytes, int] = {}


def next_seq(dev: Device) -> int:
    _LAST[dev.link_id] = max(NOW, _LAST.get(dev.link_id, 0) + 1)
    return _LAST[dev.link_id]


async def enqueue(store: GatewayStore, dev: Device, depth: int = 10, **kw) -> RequestRecord:
    (out,) = await store.enqueue([(record(dev, **kw), depth)])
    if isinstance(out, Exception):
        raise out
    return out[0]


async def test_queue_lifecycle_and_redelivery(store):
    """Requests come out in order; delivered-but-unanswered ones are offered again; answers finish them."""
    dev = await add_device(store)
    a, b = await enqueue(store, dev), await enqueue(store, dev)
    assert a.seq < b.seq and a.request_token == a.seq.to_bytes(8, "big")
    assert store.last_sequence(dev.link_id) == b.seq
    items, more = store.pending(dev.link_id, 1 << 16, NOW)
    assert [i.request_id for i in items] == [a.request_id, b.request_id] and not more
    await store.delivered(dev.link_id, [a.request_id])
    assert store.get(a.request_id).st == State.DELIVERED
    assert len(store.pending(dev.link_id, 1 << 16, NOW)[0]) == 2  # at-least-once
    ids, changed = await store.answered(dev.link_id, [DeviceAnswer(a.request_id, 0, b'{"t":1}'),
                                                      DeviceAnswer(b.request_id, 4, error="boom")], NOW)
    assert set(ids) == {a.request_id, b.request_id}
    assert changed == [(a.request_id, State.DONE), (b.request_id, State.FAILED)]
    assert store.get(a.request_id).st == State.DONE and store.get(a.request_id).payload == b'{"t":1}'
    assert store.get(b.request_id).st == State.FAILED and store.depth(dev.link_id) == 0
    assert store.pending(dev.link_id, 1 << 16, NOW) == ([], False)


async def test_pending_respects_max_bytes(store):
    """A batch stops at max_bytes and says more are waiting."""
    dev = await add_device(store)
    for _ in range(3):
        await enqueue(store, dev, args=b'"' + b"x" * 500 + b'"')
    items, more = store.pending(dev.link_id, 700, NOW)
    assert len(items) == 1 and more


async def test_overflow_is_an_immediate_error(store):
    """Beyond the maximum depth the store refuses at once; finishing one frees a slot."""
    dev = await add_device(store)
    first = await enqueue(store, dev, depth=2)
    await enqueue(store, dev, depth=2)
    with pytest.raises(QueueFull):
        await enqueue(store, dev, depth=2)
    await store.cancel(first.request_id, NOW)
    await enqueue(store, dev, depth=2)


async def test_expiry_dead_letters_and_reports(store):
    """Expired requests leave the queue and stay readable as EXPIRED with a reason."""
    dev = await add_device(store)
    short, long = await enqueue(store, dev, ttl_ms=1000), await enqueue(store, dev, ttl_ms=100_000)
    assert [i.request_id for i in store.pending(dev.link_id, 1 << 16, NOW + 2000)[0]] == [long.request_id]
    expired = await store.expire_due(NOW + 2000)
    assert [r.request_id for r in expired] == [short.request_id]
    rec = store.get(short.request_id)
    assert rec.st == State.EXPIRED and "dead-lettered" in rec.error and store.depth(dev.link_id) == 1
    # a late answer for the expired request is acknowledged and dropped
    ids, changed = await store.answered(dev.link_id, [DeviceAnswer(short.request_id, 0, b"1")], NOW + 3000)
    assert ids == [short.request_id] and changed == [] and store.get(short.request_id).st == State.EXPIRED


async def test_idempotent_request_ids(store):
    """The same request id with the same call returns the stored request; a different call conflicts."""
    dev = await add_device(store)
    rid = new_id()
    a = await enqueue(store, dev, rid=rid)
    ((again, new),) = await store.enqueue([(record(dev, rid=rid), 10)])
    assert not new and again.seq == a.seq and store.depth(dev.link_id) == 1
    with pytest.raises(Conflict):
        await enqueue(store, dev, rid=rid, digest=b"e" * 32)


async def test_answers_of_another_device_are_dropped_and_cache_only_reads(store):
    """A device cannot answer another's request; only non-mutating cacheable answers are cached."""
    dev, other = await add_device(store), await add_device(store)
    read, write = await enqueue(store, dev), await enqueue(store, dev, method="set")
    _, changed = await store.answered(other.link_id, [DeviceAnswer(read.request_id, 0, b"evil")], NOW)
    assert changed == [] and store.get(read.request_id).st == State.QUEUED
    await store.answered(dev.link_id, [DeviceAnswer(read.request_id, 0, b"21"),
                                       DeviceAnswer(write.request_id, 0, b"ok")], NOW)
    assert store.cached(dev.link_id, "sensor", "read", b"", NOW + 1000).payload == b"21"
    assert store.cached(dev.link_id, "sensor", "read", b"", NOW + 11_000) is None  # max-age passed
    assert store.cached(dev.link_id, "sensor", "set", b"", NOW + 1000) is None


async def test_tickets_are_single_use_and_expire(store):
    """A rotated ticket is gone and its successor readable; an expired one is refused."""
    t = Ticket(b"l" * 16, b"r" * 32, NOW + 1000)
    await store.rotate_ticket(None, b"t1", t)
    assert store.ticket(b"t1", NOW) == t
    await store.rotate_ticket(b"t1", None, None)  # spent
    assert store.ticket(b"t1", NOW) is None
    await store.rotate_ticket(None, b"t2", t)
    assert store.ticket(b"t2", NOW + 5000) is None
    assert await store.purge_tickets(NOW + 5000) == 1


async def test_revocation_notices_once_per_device(store):
    """Each device is told each unexpired revocation hash once, with its expiry."""
    a, b = await add_device(store), await add_device(store)

    async def told(dev):
        entries, position = store.revocations(dev.link_id, 1000)
        await store.revocations_sent(dev.link_id, position)
        assert all(e[32:] == (2**40).to_bytes(8, "big") for e in entries)
        return [e[:32] for e in entries]

    assert await store.add_revocations([(b"1" * 32, 2**40), (b"2" * 32, 10)]) == 2
    assert await store.add_revocations([(b"1" * 32, 2**40)]) == 0
    assert await told(a) == [b"1" * 32]
    assert await told(a) == []
    await store.add_revocations([(b"3" * 32, 2**40)])
    assert await told(a) == [b"3" * 32]
    assert await told(b) == [b"1" * 32, b"3" * 32]


async def test_liveness_buckets_are_coarse_and_reported_once(store):
    """Contacts become 5-minute buckets; a bucket is due once."""
    dev = await add_device(store)
    store.note_contact(dev.link_id, 1_000_123_456, None)
    due = store.liveness_due(300)
    assert due == [(dev.link_id, dev.pseudonym, 1_000_123_456 // 1000 // 300 * 300)]
    await store.liveness_reported(due)
    store.note_contact(dev.link_id, 1_000_123_999, 5)
    assert store.liveness_due(300) == []


async def test_unpair_cancels_the_queue(store):
    """Removing a device cancels its waiting requests with a reason."""
    dev = await add_device(store)
    rec = await enqueue(store, dev)
    assert (await store.remove_device(dev.link_id, NOW)) == dev
    assert store.get(rec.request_id).st == State.CANCELLED and store.device(dev.link_id) is None
    assert store.device_by_pseudonym(dev.pseudonym) is None and store.last_sequence(dev.link_id) == 0


async def test_enqueue_is_one_commit_with_per_item_outcomes(tmp_path):
    """Group commit: one transaction, each item with its own outcome; refused items write
    nothing; sequences rise in queue order; everything returned survives a reopen."""
    store = GatewayStore(tmp_path / "gw")
    a, b = await add_device(store), await add_device(store)
    ghost = Device(new_id(), new_id(), b"", MANIFEST, 0, 7, 1)
    first = record(a)
    stale = record(b, seq=1)  # not above b's last once the item before it is queued
    items = [(first, 2), (record(a, rid=first.request_id), 2), (record(a, rid=first.request_id, digest=b"x" * 32), 2),
             (record(b), 5), (stale, 5), (record(a), 2), (record(a), 2), (record(ghost), 2), (record(b), 5)]
    before = store.writer.commits
    out = await store.enqueue(items)
    assert store.writer.commits == before + 1
    assert out[0][1] is True and out[1][1] is False and out[1][0].request_id == first.request_id
    assert isinstance(out[2], Conflict) and out[3][1] is True and isinstance(out[4], StaleSequence)
    assert out[5][1] is True and isinstance(out[6], QueueFull) and isinstance(out[7], NotFound)
    assert out[8][1] is True and out[4].last == out[3][0].seq
    store.close()
    store = GatewayStore(tmp_path / "gw")  # what was returned is committed
    assert store.depth(a.link_id) == 2 and store.depth(b.link_id) == 2
    ids = [r.request_id for r in store.pending(a.link_id, 1 << 16, NOW)[0]]
    assert ids == [first.request_id, out[5][0].request_id]
    assert store.get(stale.request_id) is None and store.get(items[6][0].request_id) is None
    store.close()


def test_group_committed_requests_survive_kill9(tmp_path):
    """A request acknowledged by enqueue survives kill -9 of the process right after."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(f"""
        import asyncio, os, signal
        from edgistry.firmware.caplets import api as cl
        from edgistry.gateway.store.store import Device, GatewayStore, RequestRecord, State
        async def main():
            s = GatewayStore({str(tmp_path / 'gw')!r})
            dev = Device(b"L" * 16, b"P" * 16, cl.root(cl.new_secret()).to_bytes(), {MANIFEST!r}, 0, 7, 1)
            await s.put_device(dev)
            recs = [RequestRecord(bytes([i]) * 16, dev.link_id, "sensor", "read", b"", i.to_bytes(8, "big"),
                                  b"d" * 32, 1, 1, 2**50, seq=i) for i in range(1, 21)]
            out = await s.enqueue([(r, 100) for r in recs])
            print("acked", sum(1 for o in out if o[1]), flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        asyncio.run(main())
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == -9 and "acked 20" in res.stdout, res.stderr
    store = GatewayStore(tmp_path / "gw")
    assert store.depth(b"L" * 16) == 20
    assert all(store.get(bytes([i]) * 16) is not None for i in range(1, 21))
    store.close()


# ---- group commit and contact hints ------------------------------------------------------

async def test_writes_of_one_loop_turn_share_one_commit_off_the_loop(store, tmp_path):
    """Ticket rotation, delivered and answered started together commit in ONE transaction (in
    the writer process), in start order; each caller resumes only once it is durable."""
    import threading

    dev = await add_device(store)
    a, b = await enqueue(store, dev), await enqueue(store, dev)
    await store.rotate_ticket(None, b"old-ticket-00000", Ticket(dev.link_id, b"r" * 32, NOW + 60_000))
    heard = []
    store.listeners.append(lambda rid: heard.append((rid, threading.get_ident())))
    before = store.writer.commits
    rot, dlv, ans = await asyncio.gather(
        store.rotate_ticket(b"old-ticket-00000", b"new-ticket-00000", Ticket(dev.link_id, b"s" * 32, NOW + 60_000)),
        store.delivered(dev.link_id, [a.request_id, b.request_id]),
        store.answered(dev.link_id, [DeviceAnswer(a.request_id, 0, b"1")], NOW))
    assert store.writer.commits == before + 1 and store.writer.writes >= 3
    assert dlv == [a.request_id, b.request_id]  # delivered ran first
    assert ans[1] == [(a.request_id, State.DONE)]
    assert [rid for rid, _ in heard] == [a.request_id, b.request_id, a.request_id]  # each change, in order
    assert ans[0] == [a.request_id] and store.get(a.request_id).st == State.DONE
    assert store.get(b.request_id).st == State.DELIVERED
    assert store.ticket(b"old-ticket-00000", NOW) is None
    assert store.ticket(b"new-ticket-00000", NOW).resumption_secret == b"s" * 32
    assert {t for _, t in heard} == {threading.get_ident()}  # listeners hear on the caller's thread
    # durable: a fresh environment sees it all
    store.close()
    again = GatewayStore(tmp_path / "gw")
    try:
        assert again.get(a.request_id).st == State.DONE and again.ticket(b"new-ticket-00000", NOW)
    finally:
        again.close()


async def test_a_failing_write_is_rolled_back_alone(store):
    """One write of a group raising leaves no trace, even what it wrote before raising;
    the others of its transaction commit."""
    dev = await add_device(store)
    a, b = await enqueue(store, dev), await enqueue(store, dev)
    before = store.writer.commits
    # the first answer is applied, then the malformed second one raises: the operation is undone
    half = store.write("answered", dev.link_id, [[a.request_id, 0, b"1", ""], ["not an answer"]], NOW)
    res = await asyncio.gather(half, store.delivered(dev.link_id, [b.request_id]), return_exceptions=True)
    assert isinstance(res[0], ValueError) and res[1] == [b.request_id]
    assert store.writer.commits == before + 1
    assert store.get(a.request_id).st == State.QUEUED and store.depth(dev.link_id) == 2
    assert store.get(b.request_id).st == State.DELIVERED


async def test_the_event_loop_cannot_write(store):
    """The store's own environment is read-only: every write goes through the writer."""
    with pytest.raises(lmdb.ReadonlyError):
        store.env.begin(write=True)


async def test_contact_is_a_hint_persisted_later_and_never_for_an_unpaired_device(tmp_path):
    """note_contact is visible at once, reaches the disk with the next group commit (or the
    periodic flush, or close), and an unpaired device's hint is dropped."""
    store = GatewayStore(tmp_path / "gw", contact_flush_s=0.05)
    try:
        dev, gone = await add_device(store), await add_device(store)
        store.note_contact(dev.link_id, NOW, None)
        store.note_contact(gone.link_id, NOW, 30)
        assert store.last_contact(dev.link_id).last_ms == NOW  # at once, from memory
        assert {e[0] for e in store.liveness_due(60)} == {dev.link_id, gone.link_id}
        with store.env.begin() as txn:
            assert txn.get(b"l/" + dev.link_id) is None  # not on disk yet
        await store.remove_device(gone.link_id, NOW)
        store.note_contact(dev.link_id, NOW + 5, 60)
        await store.delivered(dev.link_id, [])  # any group commit carries the hints
        with store.env.begin() as txn:
            assert txn.get(b"l/" + dev.link_id) is not None and txn.get(b"l/" + gone.link_id) is None
        assert store.last_contact(dev.link_id).sleep_s == 60
        store.note_contact(dev.link_id, NOW + 9, 7)  # no other write: the idle flush persists it
        for _ in range(100):
            await asyncio.sleep(0.05)
            with store.env.begin() as txn:
                raw = txn.get(b"l/" + dev.link_id)
            if Contact.load(raw).sleep_s == 7:
                break
        assert Contact.load(raw).sleep_s == 7
        store.note_contact(dev.link_id, NOW + 10, 8)
    finally:
        store.close()
    again = GatewayStore(tmp_path / "gw")
    try:
        assert again.last_contact(dev.link_id).sleep_s == 8  # close() flushed the last hint
    finally:
        again.close()


def _json_form(rec) -> bytes:
    """A record as stores written before the MessagePack format held it."""
    import base64
    import json
    d = {f.name: getattr(rec, f.name) for f in dataclasses.fields(rec)}
    for k in rec._bytes:
        d[k] = base64.b64encode(d[k]).decode()
    return json.dumps(d).encode()


async def test_records_round_trip_and_older_json_records_still_load(tmp_path):
    """Records are MessagePack with a format byte; a store written in the older JSON
    form opens, its requests are delivered and answered, and changed records are
    rewritten in the new form."""
    store = GatewayStore(tmp_path / "gw")
    try:
        dev = await add_device(store)
        rec = await enqueue(store, dev)
        with store.env.begin() as txn:
            raw = txn.get(b"r/" + rec.request_id)
        assert raw[:1] == b"\x01" and RequestRecord.load(raw) == rec
        assert Device.load(dev.dump()) == dev and Contact.load(Contact(5, None, 2).dump()) == Contact(5, None, 2)
    finally:
        store.close()
    env = lmdb.open(str(tmp_path / "gw"), subdir=True, max_dbs=0)  # turn both back into the older JSON form
    with env.begin(write=True) as txn:
        txn.put(b"r/" + rec.request_id, _json_form(rec))
        txn.put(b"d/" + dev.link_id, _json_form(dev))
        txn.put(b"t/" + b"T" * 16, json_ticket(dev.link_id, NOW + 60_000))
    env.close()
    store = GatewayStore(tmp_path / "gw")
    try:
        assert store.device(dev.link_id) == dev
        assert store.ticket(b"T" * 16, NOW) == Ticket(dev.link_id, b"s" * 32, NOW + 60_000)
        pending, more = store.pending(dev.link_id, 65536, NOW)
        assert [r.request_id for r in pending] == [rec.request_id] and not more
        await store.delivered(dev.link_id, [rec.request_id])
        await store.answered(dev.link_id, [DeviceAnswer(rec.request_id, 0, b"ok")], NOW)
        with store.env.begin() as txn:
            raw = txn.get(b"r/" + rec.request_id)
        assert raw[:1] == b"\x01" and RequestRecord.load(raw).payload == b"ok"
    finally:
        store.close()


def json_ticket(link_id: bytes, exp: int) -> bytes:
    import base64
    import json
    return json.dumps({"link_id": base64.b64encode(link_id).decode(), "r": base64.b64encode(b"s" * 32).decode(),
                       "exp": exp}).encode()


_TOO_MANY = len(dataclasses.fields(RequestRecord)) + 1  # one field more than the record has


@pytest.mark.parametrize("raw", [b"\x01", b"\x01\xc1", b"\x01\x93\x01\x02",
                                 b"\x01\xdc" + _TOO_MANY.to_bytes(2, "big") + b"\x00" * _TOO_MANY])
def test_a_corrupt_record_is_a_clear_error(raw):
    """A record that does not decode, or has the wrong fields, raises ValueError naming its type."""
    with pytest.raises(ValueError, match="corrupt RequestRecord record"):
        RequestRecord.load(raw)
