"""The store's write operations on their own (gateway/store/ops.py), over an in-memory
transaction view: no LMDB, no writer process. Also the pipe codec (wire.py)."""

from __future__ import annotations

import inspect

import pytest

from edgistry.gateway.errors import Conflict, NotFound, QueueFull
from edgistry.gateway.store import keys, ops, wire
from edgistry.gateway.store.kv import MemoryKV
from edgistry.gateway.store.ops import Ctx, StaleSequence
from edgistry.gateway.store.records import CacheEntry, Contact, Device, RequestRecord, State, load_ticket
from edgistry.gateway.store.store import GatewayStore

MANIFEST = {"services": [{"type": "sensor", "methods": [{"name": "read", "cache_max_age_s": 10},
                                                       {"name": "set", "mutating": True, "cache_max_age_s": 10}]}]}
NOW = 1_800_000_000_000
RETENTION = 3_600_000
LINK, OTHER = b"L" * 16, b"O" * 16


def ctx(kv: MemoryKV | None = None) -> Ctx:
    return Ctx(kv if kv is not None else MemoryKV(), RETENTION)


def paired(*links: bytes) -> Ctx:
    c = ctx()
    for i, link in enumerate(links):
        ops.put_device(c, Device(link, bytes([i + 1]) * 16, b"root", MANIFEST, 0, 7, 1).dump())
    return c


def rec(rid: bytes, seq: int, link: bytes = LINK, method: str = "read", ttl_ms: int = 60_000,
        digest: bytes = b"d" * 32) -> RequestRecord:
    return RequestRecord(rid, link, "sensor", method, b"{}", b"token-%d" % seq, digest, State.QUEUED, NOW,
                         NOW + ttl_ms, seq=seq)


def queue(c: Ctx, link: bytes = LINK) -> list[bytes]:
    return [rid for _, rid in c.kv.scan(keys.queue(link))]


def stored(c: Ctx, rid: bytes) -> RequestRecord:
    return RequestRecord.load(c.kv.get(keys.request(rid)))


def test_the_table_names_every_handler_and_only_handlers():
    """HANDLERS maps each name to the function of that name, each taking the context first."""
    for name, fn in ops.HANDLERS.items():
        assert fn.__name__ == name and list(inspect.signature(fn).parameters)[0] == "ctx"
    with pytest.raises(ValueError, match="no store operation 'nope'"):
        ops.apply(ctx(), "nope", [])


def test_every_write_the_store_submits_is_in_the_table():
    """Each named write of GatewayStore submits an operation of the table (read from its source)."""
    import re
    names = set(re.findall(r'self\.write\("(\w+)"', inspect.getsource(GatewayStore)))
    assert names and names <= set(ops.HANDLERS)


def test_enqueue_writes_the_queue_indexes_and_counters():
    """A queued request has its record, queue entry, expiry entry, depth and last sequence."""
    c = paired(LINK)
    (out,), changed = ops.enqueue(c, [[rec(b"a" * 16, NOW).dump(), 10]])
    assert out is None and changed == [b"a" * 16]
    assert c.kv.get(keys.queue(LINK, NOW)) == b"a" * 16
    assert c.kv.get(keys.expiry(NOW + 60_000, b"a" * 16)) == b""
    assert keys.int_of(c.kv.get(keys.depth(LINK))) == 1 and keys.int_of(c.kv.get(keys.last_seq(LINK))) == NOW
    assert stored(c, b"a" * 16) == rec(b"a" * 16, NOW)


def test_enqueue_refusals_write_nothing_and_the_rest_go_in():
    """Conflict, NotFound, QueueFull and a sequence not above the last refuse their item alone."""
    c = paired(LINK)
    ops.enqueue(c, [[rec(b"a" * 16, NOW).dump(), 2]])
    before = dict(c.kv.data)
    out, changed = ops.enqueue(c, [
        [rec(b"a" * 16, NOW + 5, digest=b"x" * 32).dump(), 2],  # same id, another call
        [rec(b"b" * 16, NOW + 1, link=OTHER).dump(), 2],  # unpaired device
        [rec(b"c" * 16, NOW).dump(), 2],  # sequence not above the last
        [rec(b"d" * 16, NOW + 2).dump(), 2],  # fine
        [rec(b"e" * 16, NOW + 3).dump(), 2],  # the queue is full now
        [b"\x01\xc1", 2],  # not a record
    ])
    assert [type(o) for o in out] == [Conflict, NotFound, StaleSequence, type(None), QueueFull, ValueError]
    assert out[2].last == NOW and changed == [b"d" * 16]
    after = {k: v for k, v in c.kv.data.items() if k not in before or before[k] != v}
    assert set(after) == {keys.request(b"d" * 16), keys.queue(LINK, NOW + 2), keys.expiry(NOW + 60_000, b"d" * 16),
                          keys.depth(LINK), keys.last_seq(LINK)}


def test_enqueue_of_a_known_id_returns_the_stored_record():
    """The same call again (same id, device, method, args, token) is idempotent."""
    c = paired(LINK)
    first = rec(b"a" * 16, NOW)
    ops.enqueue(c, [[first.dump(), 10]])
    (out,), changed = ops.enqueue(c, [[rec(b"a" * 16, NOW + 1).dump(), 10]])
    assert RequestRecord.load(out) == first and changed == [] and queue(c) == [b"a" * 16]


def test_enqueue_takes_only_queued_records():
    """A record in any other state is refused (it would be queued yet finished)."""
    c = paired(LINK)
    done = rec(b"a" * 16, NOW)
    done.state = State.DONE
    (out,), _ = ops.enqueue(c, [[done.dump(), 10]])
    assert isinstance(out, ValueError) and queue(c) == []


def test_cancel_finishes_and_schedules_the_purge():
    """Cancel leaves the queue and expiry index, frees the slot, keeps the record until purge."""
    c = paired(LINK)
    ops.enqueue(c, [[rec(b"a" * 16, NOW).dump(), 10]])
    raw, changed = ops.cancel(c, b"a" * 16, NOW + 7)
    r = RequestRecord.load(raw)
    assert r.st == State.CANCELLED and r.done_ms == NOW + 7 and changed == [b"a" * 16]
    assert queue(c) == [] and keys.int_of(c.kv.get(keys.depth(LINK))) == 0
    assert list(c.kv.scan(keys.EXPIRY)) == [] and c.kv.get(keys.purge(NOW + 7 + RETENTION, b"a" * 16)) == b""
    assert ops.cancel(c, b"a" * 16, NOW + 9) == (raw, [])  # finished: unchanged
    with pytest.raises(NotFound):
        ops.cancel(c, b"z" * 16, NOW)


def test_expiry_takes_due_requests_in_time_order_up_to_the_limit():
    """Only requests whose TTL passed are dead-lettered, oldest first, at most ``limit``."""
    c = paired(LINK)
    ops.enqueue(c, [[rec(bytes([i]) * 16, NOW + i, ttl_ms=1000 * (4 - i)).dump(), 10] for i in range(4)])
    raws, changed = ops.expire_due(c, NOW + 2500, limit=1)
    assert changed == [bytes([3]) * 16] and RequestRecord.load(raws[0]).st == State.EXPIRED
    raws, changed = ops.expire_due(c, NOW + 2500)
    assert changed == [bytes([2]) * 16]  # due at NOW + 2002; the others later
    assert queue(c) == [bytes([0]) * 16, bytes([1]) * 16]


def test_purge_forgets_finished_slots_after_retention():
    """A finished request's slot goes at done + retention, not before."""
    c = paired(LINK)
    ops.put_finished(c, RequestRecord(b"f" * 16, LINK, "sensor", "read", b"", b"", b"d" * 32, State.DONE, NOW, NOW,
                                      done_ms=NOW).dump())
    assert ops.purge_finished(c, NOW + RETENTION - 1) == (0, [])
    assert ops.purge_finished(c, NOW + RETENTION) == (1, [])
    assert c.kv.get(keys.request(b"f" * 16)) is None and list(c.kv.scan(keys.PURGE)) == []


def test_answers_finish_their_own_requests_and_cache_fresh_reads():
    """Answers for another device's or unknown requests are acknowledged and dropped; a read's
    answer is cached, a mutating method's never; status 5 means expired on the device."""
    c = paired(LINK, OTHER)
    ops.enqueue(c, [[rec(b"r" * 16, NOW).dump(), 10], [rec(b"w" * 16, NOW + 1, method="set").dump(), 10],
                    [rec(b"x" * 16, NOW + 2).dump(), 10]])
    (ids, finished), changed = ops.answered(c, OTHER, [[b"r" * 16, 0, b"evil", ""]], NOW)
    assert ids == [b"r" * 16] and finished == [] and changed == [] and stored(c, b"r" * 16).st == State.QUEUED
    answers = [[b"r" * 16, 0, b"21", ""], [b"w" * 16, 0, b"ok", ""], [b"x" * 16, 5, b"", "late"],
               [b"?" * 16, 0, b"", ""]]
    (ids, finished), changed = ops.answered(c, LINK, answers, NOW + 10)
    assert ids == [a[0] for a in answers] and changed == [b"r" * 16, b"w" * 16, b"x" * 16]
    assert finished == [(b"r" * 16, State.DONE), (b"w" * 16, State.DONE), (b"x" * 16, State.EXPIRED)]
    entry = CacheEntry.load(c.kv.get(keys.cache(LINK, "sensor", "read", b"{}")))
    assert entry.payload == b"21" and entry.fresh(NOW + 10 + 9_999) and not entry.fresh(NOW + 10 + 10_000)
    assert c.kv.get(keys.cache(LINK, "sensor", "set", b"{}")) is None


def test_delivered_moves_only_queued_requests_of_that_device():
    """QUEUED -> DELIVERED for the device's own requests; others and repeats are unchanged."""
    c = paired(LINK, OTHER)
    ops.enqueue(c, [[rec(b"a" * 16, NOW).dump(), 10], [rec(b"b" * 16, NOW, link=OTHER).dump(), 10]])
    assert ops.delivered(c, LINK, [b"a" * 16, b"b" * 16, b"?" * 16]) == ([b"a" * 16], [b"a" * 16])
    assert ops.delivered(c, LINK, [b"a" * 16]) == ([], [])
    assert stored(c, b"b" * 16).st == State.QUEUED


def test_unpairing_cancels_the_queue_and_clears_every_per_device_key():
    """remove_device leaves nothing of the device but its requests' (cancelled) records."""
    c = paired(LINK, OTHER)
    ops.enqueue(c, [[rec(b"a" * 16, NOW).dump(), 10], [rec(b"b" * 16, NOW, link=OTHER).dump(), 10]])
    ops.answered(c, LINK, [], NOW)
    ops.contacts(c, [[LINK, NOW, None], [OTHER, NOW, None]])
    ops.add_revocations(c, [[b"t" * 32, 2**40]])
    ops.revocations_sent(c, LINK, 1)
    c.kv.put(keys.cache(LINK, "sensor", "read", b""), CacheEntry(b"1", NOW, 10).dump())
    raw, changed = ops.remove_device(c, LINK, NOW, "gone")
    assert Device.load(raw).link_id == LINK and changed == [b"a" * 16]
    assert stored(c, b"a" * 16).error == "gone" and stored(c, b"a" * 16).st == State.CANCELLED
    left = [k for k in c.kv.data if LINK in k]
    assert left == [], left
    assert c.kv.get(keys.device(OTHER)) is not None and queue(c, OTHER) == [b"b" * 16]
    assert ops.remove_device(c, LINK, NOW, "gone") == (None, [])


def test_re_pairing_moves_the_pseudonym_index():
    """A device record written again under a new pseudonym leaves no stale index entry."""
    c = paired(LINK)
    ops.put_device(c, Device(LINK, b"N" * 16, b"root", MANIFEST, 0, 7, 1).dump())
    assert sorted(k for k, _ in c.kv.scan(keys.PSEUDONYM)) == [keys.pseudonym(b"N" * 16)]


def test_tickets_rotate_in_one_step_and_expired_ones_are_purged():
    """rotate_ticket deletes the spent one and stores the new; purge drops only expired ones."""
    c = ctx()
    ops.rotate_ticket(c, None, b"t1", [LINK, b"s" * 32, NOW + 10])
    ops.rotate_ticket(c, b"t1", b"t2", [LINK, b"u" * 32, NOW + 20])
    assert c.kv.get(keys.ticket(b"t1")) is None
    assert load_ticket(c.kv.get(keys.ticket(b"t2"))).resumption_secret == b"u" * 32
    assert ops.purge_tickets(c, NOW + 19) == (0, []) and ops.purge_tickets(c, NOW + 20) == (1, [])


def test_contact_hints_never_go_back_in_time_nor_to_unpaired_devices():
    """An older hint does not overwrite a newer contact; a hint of an unpaired device is dropped."""
    c = paired(LINK)
    ops.contacts(c, [[LINK, NOW + 5, None], [OTHER, NOW, 3]])
    ops.contacts(c, [[LINK, NOW, 30]])
    assert Contact.load(c.kv.get(keys.contact(LINK))) == Contact(NOW + 5, None, 0)
    assert c.kv.get(keys.contact(OTHER)) is None
    ops.liveness_reported(c, [[LINK, 600], [LINK, 300], [OTHER, 900]])
    assert Contact.load(c.kv.get(keys.contact(LINK))).reported_s == 600 and c.kv.get(keys.contact(OTHER)) is None


def test_the_revocation_log_appends_new_tags_once_and_cursors_only_advance():
    """A tag enters the log once, in arrival order; a device's cursor never moves back."""
    c = paired(LINK)
    assert ops.add_revocations(c, [[b"a" * 32, 100], [b"b" * 32, -5], [b"a" * 32, 100]]) == (2, [])
    assert ops.add_revocations(c, [[b"a" * 32, 100]]) == (0, [])
    assert [(keys.revlog_position(k), v[:32], keys.int_of(v[32:])) for k, v in c.kv.scan(keys.REVLOG)] == \
        [(1, b"a" * 32, 100), (2, b"b" * 32, 0)]
    ops.revocations_sent(c, LINK, 2)
    ops.revocations_sent(c, LINK, 1)
    ops.revocations_sent(c, OTHER, 2)  # not paired: no cursor
    assert keys.int_of(c.kv.get(keys.revcursor(LINK))) == 2 and c.kv.get(keys.revcursor(OTHER)) is None


# ---- the pipe codec ----

@pytest.mark.parametrize("exc", [QueueFull("full"), Conflict("again"), NotFound("gone"), ValueError("bad"),
                                 StaleSequence("behind", 42)])
def test_known_errors_cross_the_pipe_as_themselves(exc):
    """A refusal decodes to its own class with its arguments."""
    back = wire.decode(wire.encode([False, exc]))[1]
    assert type(back) is type(exc) and back.args == exc.args and str(back) == str(exc)


def test_other_errors_and_non_plain_data():
    """An error of a class unknown here keeps its name and message; a closure cannot be encoded."""
    class Odd(Exception):
        pass
    back = wire.decode(wire.encode(Odd("strange", object())))
    assert isinstance(back, wire.StoreOpError) and "Odd" in str(back) and "strange" in str(back)
    with pytest.raises(TypeError, match="not plain data"):
        wire.part(["delivered", [LINK, [lambda: 1]]])


def test_frames_reassemble_from_any_split_and_refuse_oversized_ones():
    """Frames come out whole whatever the read sizes; a length beyond the limit is a protocol error."""
    data = wire.frame_of([wire.part(["a", [1]]), wire.part(["b", [b"x" * 300]])]) + wire.frame_of([True, []])
    frames = wire.Frames()
    got = []
    for i in range(len(data)):
        frames.feed(data[i:i + 1])
        while (body := frames.next()) is not None:
            got.append(wire.decode(body))
    assert got == [[["a", [1]], ["b", [b"x" * 300]]], [True, []]]
    frames.feed(wire.LEN.pack(wire.MAX_MESSAGE + 1))
    with pytest.raises(wire.ProtocolError):
        frames.next()
