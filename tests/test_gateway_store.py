"""The gateway's durable store: queues, states, expiry, backpressure, cache, tickets, notices."""

from __future__ import annotations

import dataclasses

import pytest

from edgistry.firmware.caplets import api as cl
from edgistry.gateway.errors import Conflict, QueueFull
from edgistry.gateway.link.backend import DeviceAnswer, Ticket
from edgistry.gateway.store.store import Contact, Device, GatewayStore, RequestRecord, State, new_id

MANIFEST = {"services": [{"type": "sensor", "methods": [{"name": "read", "cache_max_age_s": 10},
                                                       {"name": "set", "mutating": True, "cache_max_age_s": 10}]}]}
NOW = 1_800_000_000_000


@pytest.fixture
def store(tmp_path):
    s = GatewayStore(tmp_path / "gw")
    yield s
    s.close()


def add_device(store: GatewayStore, link: bytes | None = None) -> Device:
    link = link or new_id()
    dev = Device(link, new_id(), cl.root(cl.new_secret()).to_bytes(), MANIFEST, 0, 7, 1, duty_cycle_s=10)
    store.put_device(dev)
    return dev


def enqueue(store: GatewayStore, dev: Device, method: str = "read", ttl_ms: int = 60_000, depth: int = 10,
            rid: bytes | None = None, digest: bytes = b"d" * 32, args: bytes = b"") -> RequestRecord:
    rec = RequestRecord(rid or new_id(), dev.link_id, "sensor", method, args, b"", digest, State.QUEUED, NOW,
                        NOW + ttl_ms)
    return store.enqueue(rec, depth, NOW, lambda seq: seq.to_bytes(8, "big"))[0]


def test_queue_lifecycle_and_redelivery(store):
    """Requests come out in order; delivered-but-unanswered ones are offered again; answers finish them."""
    dev = add_device(store)
    a, b = enqueue(store, dev), enqueue(store, dev)
    assert a.seq < b.seq and a.request_token == a.seq.to_bytes(8, "big")
    items, more = store.pending(dev.link_id, 1 << 16, NOW)
    assert [i.request_id for i in items] == [a.request_id, b.request_id] and not more
    store.delivered(dev.link_id, [a.request_id], NOW)
    assert store.get(a.request_id).st == State.DELIVERED
    assert len(store.pending(dev.link_id, 1 << 16, NOW)[0]) == 2  # at-least-once
    ids, changed = store.answered(dev.link_id, [DeviceAnswer(a.request_id, 0, b'{"t":1}'),
                                                DeviceAnswer(b.request_id, 4, error="boom")], NOW)
    assert set(ids) == {a.request_id, b.request_id}
    assert changed == [(a.request_id, State.DONE), (b.request_id, State.FAILED)]
    assert store.get(a.request_id).st == State.DONE and store.get(a.request_id).payload == b'{"t":1}'
    assert store.get(b.request_id).st == State.FAILED and store.depth(dev.link_id) == 0
    assert store.pending(dev.link_id, 1 << 16, NOW) == ([], False)


def test_pending_respects_max_bytes(store):
    """A batch stops at max_bytes and says more are waiting."""
    dev = add_device(store)
    for _ in range(3):
        enqueue(store, dev, args=b'"' + b"x" * 500 + b'"')
    items, more = store.pending(dev.link_id, 700, NOW)
    assert len(items) == 1 and more


def test_overflow_is_an_immediate_error(store):
    """Beyond the maximum depth the store refuses at once; finishing one frees a slot."""
    dev = add_device(store)
    first = enqueue(store, dev, depth=2)
    enqueue(store, dev, depth=2)
    with pytest.raises(QueueFull):
        enqueue(store, dev, depth=2)
    store.cancel(first.request_id, NOW)
    enqueue(store, dev, depth=2)


def test_expiry_dead_letters_and_reports(store):
    """Expired requests leave the queue and stay readable as EXPIRED with a reason."""
    dev = add_device(store)
    short, long = enqueue(store, dev, ttl_ms=1000), enqueue(store, dev, ttl_ms=100_000)
    assert [i.request_id for i in store.pending(dev.link_id, 1 << 16, NOW + 2000)[0]] == [long.request_id]
    expired = store.expire_due(NOW + 2000)
    assert [r.request_id for r in expired] == [short.request_id]
    rec = store.get(short.request_id)
    assert rec.st == State.EXPIRED and "dead-lettered" in rec.error and store.depth(dev.link_id) == 1
    # a late answer for the expired request is acknowledged and dropped
    ids, changed = store.answered(dev.link_id, [DeviceAnswer(short.request_id, 0, b"1")], NOW + 3000)
    assert ids == [short.request_id] and changed == [] and store.get(short.request_id).st == State.EXPIRED


def test_idempotent_request_ids(store):
    """The same request id with the same call returns the stored request; a different call conflicts."""
    dev = add_device(store)
    rid = new_id()
    a = enqueue(store, dev, rid=rid)
    rec = RequestRecord(rid, dev.link_id, "sensor", "read", b"", b"", b"d" * 32, State.QUEUED, NOW, NOW + 1000)
    again, new = store.enqueue(rec, 10, NOW, lambda s: b"x")
    assert not new and again.seq == a.seq and store.depth(dev.link_id) == 1
    with pytest.raises(Conflict):
        enqueue(store, dev, rid=rid, digest=b"e" * 32)


def test_answers_of_another_device_are_dropped_and_cache_only_reads(store):
    """A device cannot answer another's request; only non-mutating cacheable answers are cached."""
    dev, other = add_device(store), add_device(store)
    read, write = enqueue(store, dev), enqueue(store, dev, method="set")
    _, changed = store.answered(other.link_id, [DeviceAnswer(read.request_id, 0, b"evil")], NOW)
    assert changed == [] and store.get(read.request_id).st == State.QUEUED
    store.answered(dev.link_id, [DeviceAnswer(read.request_id, 0, b"21"), DeviceAnswer(write.request_id, 0, b"ok")], NOW)
    assert store.cached(dev.link_id, "sensor", "read", b"", NOW + 1000).payload == b"21"
    assert store.cached(dev.link_id, "sensor", "read", b"", NOW + 11_000) is None  # max-age passed
    assert store.cached(dev.link_id, "sensor", "set", b"", NOW + 1000) is None


def test_tickets_are_single_use_and_expire(store):
    """A ticket is returned once; an expired one is refused."""
    t = Ticket(b"l" * 16, b"r" * 32, NOW + 1000)
    store.store_ticket(b"t1", t)
    assert store.take_ticket(b"t1", NOW) == t
    assert store.take_ticket(b"t1", NOW) is None
    store.store_ticket(b"t2", t)
    assert store.take_ticket(b"t2", NOW + 5000) is None


def test_revocation_notices_once_per_device(store):
    """Each device is told each unexpired revoked tag once."""
    a, b = add_device(store), add_device(store)
    assert store.add_revocations([(b"1" * 32, 2**40), (b"2" * 32, 10)]) == 2
    assert store.add_revocations([(b"1" * 32, 2**40)]) == 0
    assert store.revoked_since_last_wake(a.link_id, 1000) == [b"1" * 32]
    assert store.revoked_since_last_wake(a.link_id, 1000) == []
    store.add_revocations([(b"3" * 32, 2**40)])
    assert store.revoked_since_last_wake(a.link_id, 1000) == [b"3" * 32]
    assert store.revoked_since_last_wake(b.link_id, 1000) == [b"1" * 32, b"3" * 32]


def test_liveness_buckets_are_coarse_and_reported_once(store):
    """Contacts become 5-minute buckets; a bucket is due once."""
    dev = add_device(store)
    store.contact(dev.link_id, 1_000_123_456, None)
    due = store.liveness_due(300)
    assert due == [(dev.link_id, dev.pseudonym, 1_000_123_456 // 1000 // 300 * 300)]
    store.liveness_reported(due)
    store.contact(dev.link_id, 1_000_123_999, 5)
    assert store.liveness_due(300) == []


def test_unpair_cancels_the_queue(store):
    """Removing a device cancels its waiting requests with a reason."""
    dev = add_device(store)
    rec = enqueue(store, dev)
    store.remove_device(dev.link_id, NOW)
    assert store.get(rec.request_id).st == State.CANCELLED and store.device(dev.link_id) is None
    assert store.device_by_pseudonym(dev.pseudonym) is None


def test_enqueue_many_is_one_commit_with_per_item_outcomes(tmp_path):
    """Group commit: one transaction, each item with enqueue's own outcome; refused items write
    nothing; sequences rise in queue order; everything returned survives a reopen."""
    from edgistry.gateway.errors import NotFound

    store = GatewayStore(tmp_path / "gw")
    a, b = add_device(store), add_device(store)
    ghost = Device(new_id(), new_id(), b"", MANIFEST, 0, 7, 1)

    def rec(dev, rid=None, digest=b"d" * 32):
        return RequestRecord(rid or new_id(), dev.link_id, "sensor", "read", b"", b"", digest, State.QUEUED, NOW,
                             NOW + 60_000)

    def tok(seq):
        return seq.to_bytes(8, "big")

    def boom(seq):
        raise ValueError("no token")

    first = rec(a)
    items = [(first, 2, NOW, tok), (rec(a, first.request_id), 2, NOW, tok),
             (rec(a, first.request_id, b"x" * 32), 2, NOW, tok), (rec(b), 5, NOW, boom), (rec(a), 2, NOW, tok),
             (rec(a), 2, NOW, tok), (rec(ghost), 2, NOW, tok), (rec(b), 5, NOW, tok)]
    out = store.enqueue_many(items)
    assert out[0][1] is True and out[1][1] is False and out[1][0].request_id == first.request_id
    assert isinstance(out[2], Conflict) and isinstance(out[3], ValueError)
    assert out[4][1] is True and isinstance(out[5], QueueFull) and isinstance(out[6], NotFound)
    assert out[7][1] is True
    assert out[0][0].seq < out[4][0].seq and out[4][0].request_token == tok(out[4][0].seq)
    store.close()
    store = GatewayStore(tmp_path / "gw")  # what was returned is committed
    assert store.depth(a.link_id) == 2 and store.depth(b.link_id) == 1
    ids = [r.request_id for r in store.pending(a.link_id, 1 << 16, NOW)[0]]
    assert ids == [first.request_id, out[4][0].request_id]
    assert store.get(items[3][0].request_id) is None and store.get(items[5][0].request_id) is None
    store.close()


def test_group_committed_requests_survive_kill9(tmp_path):
    """A request acknowledged by enqueue_many survives kill -9 of the process right after."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(f"""
        import os, signal, sys
        from edgistry.firmware.caplets import api as cl
        from edgistry.gateway.store.store import Device, GatewayStore, RequestRecord, State
        s = GatewayStore({str(tmp_path / 'gw')!r})
        dev = Device(b"L" * 16, b"P" * 16, cl.root(cl.new_secret()).to_bytes(), {MANIFEST!r}, 0, 7, 1)
        s.put_device(dev)
        recs = [RequestRecord(bytes([i]) * 16, dev.link_id, "sensor", "read", b"", b"", b"d" * 32, 1, 1, 2**50)
                for i in range(1, 21)]
        out = s.enqueue_many([(r, 100, 1000, lambda q: q.to_bytes(8, "big")) for r in recs])
        print("acked", sum(1 for o in out if o[1]), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == -9 and "acked 20" in res.stdout, res.stderr
    store = GatewayStore(tmp_path / "gw")
    assert store.depth(b"L" * 16) == 20
    assert all(store.get(bytes([i]) * 16) is not None for i in range(1, 21))
    store.close()


# ---- the group-commit writer thread and contact hints ------------------------------------

async def test_writes_of_one_loop_turn_share_one_commit_off_the_loop(store, tmp_path):
    """Ticket rotation, delivered and answered started together commit in ONE transaction (on
    the writer thread), in start order; each caller resumes only once it is durable."""
    import asyncio
    import threading

    dev = add_device(store)
    a, b = enqueue(store, dev), enqueue(store, dev)
    store.store_ticket(b"old-ticket-00000", Ticket(dev.link_id, b"r" * 32, NOW + 60_000))
    heard = []
    store.listeners.append(lambda rid: heard.append((rid, threading.get_ident())))
    before = store.writer.commits
    rot, dlv, ans = await asyncio.gather(
        store.rotate_ticket_async(b"old-ticket-00000", b"new-ticket-00000",
                                  Ticket(dev.link_id, b"s" * 32, NOW + 60_000)),
        store.delivered_async(dev.link_id, [a.request_id, b.request_id], NOW),
        store.answered_async(dev.link_id, [DeviceAnswer(a.request_id, 0, b"1")], NOW))
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
    """One write of a group raising leaves no trace; the others commit."""
    import asyncio

    dev = add_device(store)
    a = enqueue(store, dev)

    def half_done(txn):
        txn.put(b"m/half-done", b"x")
        raise ValueError("boom")
    store._op_half_done = half_done  # an operation that fails after writing

    res = await asyncio.gather(store.write(("half_done", ())), store.delivered_async(dev.link_id, [a.request_id], NOW),
                               return_exceptions=True)
    assert isinstance(res[0], ValueError) and store.meta("half-done") is None
    assert store.get(a.request_id).st == State.DELIVERED


async def test_contact_is_a_hint_persisted_later_and_never_for_an_unpaired_device(tmp_path):
    """note_contact is visible at once, reaches the disk with the next group commit (or the
    periodic flush, or close), and an unpaired device's hint is dropped."""
    store = GatewayStore(tmp_path / "gw", contact_flush_s=0.05)
    try:
        dev, gone = add_device(store), add_device(store)
        store.note_contact(dev.link_id, NOW, None)
        store.note_contact(gone.link_id, NOW, 30)
        assert store.last_contact(dev.link_id).last_ms == NOW  # at once, from memory
        assert {e[0] for e in store.liveness_due(60)} == {dev.link_id, gone.link_id}
        with store.env.begin() as txn:
            assert txn.get(b"l/" + dev.link_id) is None  # not on disk yet
        store.remove_device(gone.link_id, NOW)
        store.note_contact(dev.link_id, NOW + 5, 60)
        await store.delivered_async(dev.link_id, [], NOW)  # any group commit carries the hints
        with store.env.begin() as txn:
            assert txn.get(b"l/" + dev.link_id) is not None and txn.get(b"l/" + gone.link_id) is None
        assert store.last_contact(dev.link_id).sleep_s == 60
        store.note_contact(dev.link_id, NOW + 9, 7)  # no other write: the idle flush persists it
        import asyncio
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


async def test_enqueue_many_async_matches_enqueue_many(store):
    """The writer-thread enqueue keeps the per-item semantics (order, sequences, QueueFull)."""
    dev = add_device(store)
    tok = lambda seq: seq.to_bytes(8, "big")  # noqa: E731
    recs = [RequestRecord(new_id(), dev.link_id, "sensor", "read", b"", b"", b"d" * 32, State.QUEUED, NOW,
                          NOW + 60_000) for _ in range(3)]
    out = await store.enqueue_many_async([(r, 2, NOW, tok) for r in recs])
    assert [o[1] for o in out[:2]] == [True, True] and isinstance(out[2], QueueFull)
    assert out[0][0].seq < out[1][0].seq and store.depth(dev.link_id) == 2


def _json_form(rec) -> bytes:
    """A record as stores written before the MessagePack format held it."""
    import base64
    import dataclasses
    import json
    d = {f.name: getattr(rec, f.name) for f in dataclasses.fields(rec)}
    for k in rec._bytes:
        d[k] = base64.b64encode(d[k]).decode()
    return json.dumps(d).encode()


def test_records_round_trip_and_older_json_records_still_load(tmp_path):
    """Records are MessagePack with a format byte; a store written in the older JSON
    form opens, its requests are delivered and answered, and changed records are
    rewritten in the new form."""
    store = GatewayStore(tmp_path / "gw")
    try:
        dev = add_device(store)
        rec = enqueue(store, dev)
        with store.env.begin() as txn:
            raw = txn.get(b"r/" + rec.request_id)
        assert raw[:1] == b"\x01" and RequestRecord.load(raw) == rec
        assert Device.load(dev.dump()) == dev and Contact.load(Contact(5, None, 2).dump()) == Contact(5, None, 2)
        with store.env.begin(write=True) as txn:  # turn both back into the older JSON form
            txn.put(b"r/" + rec.request_id, _json_form(rec))
            txn.put(b"d/" + dev.link_id, _json_form(dev))
            txn.put(b"t/" + b"T" * 16, json_ticket(dev.link_id, NOW + 60_000))
    finally:
        store.close()
    store = GatewayStore(tmp_path / "gw")
    try:
        assert store.device(dev.link_id) == dev
        assert store.ticket(b"T" * 16, NOW) == Ticket(dev.link_id, b"s" * 32, NOW + 60_000)
        pending, more = store.pending(dev.link_id, 65536, NOW)
        assert [r.request_id for r in pending] == [rec.request_id] and not more
        store.delivered(dev.link_id, [rec.request_id], NOW)
        store.answered(dev.link_id, [DeviceAnswer(rec.request_id, 0, b"ok")], NOW)
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
    with pytest.raises(ValueError, match="corrupt RequestRecord record"):
        RequestRecord.load(raw)
