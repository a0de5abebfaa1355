"""The gateway's delivery policy (gateway/link/delivery.py): batches, trimming, refusals,
the revocation list and its cursor, acknowledgements; pure first, then over a real link."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgistry.firmware.caplets import api as cl
from edgistry.firmware.link import link_wire as wire
from edgistry.firmware.link.link_device import BAD_ARGUMENTS, OK, REVOKED
from edgistry.firmware.link.link_gateway import GatewaySession
from edgistry.firmware.link.link_session import OPEN, Requests
from edgistry.firmware.runtime.state import DeviceState
from edgistry.gateway.link.backend import MemoryBackend, QueuedRequest
from edgistry.gateway.link import frame_sizes as fs
from edgistry.gateway.link.delivery import TOO_LARGE, Backlog, Decision, Delivery, request_item
from runtime_helpers import GATEWAY_SECRET, Queue, device, make_home, start_server

NOW = 1_700_000_000_000

pytestmark = pytest.mark.timeout(60)


def req(n: int, args: int = 10) -> QueuedRequest:
    """Request number ``n`` with ``args`` bytes of arguments."""
    return QueuedRequest(n.to_bytes(16, "big"), "sensor", "read", bytes(args), b"t" * 60, NOW + 60_000)


def tag(n: int) -> bytes:
    return n.to_bytes(32, "big")


def cost(*reqs: QueuedRequest, tags: tuple[bytes, ...] = ()) -> int:
    """The frame carrying exactly these requests and tags, as the delivery sizes it."""
    parts = sum(fs.item_size(request_item(r)) for r in reqs) + sum(map(fs.tag_size, tags))
    return fs.requests_frame_size(parts, NOW)


def ids(frame: Requests) -> list[int]:
    return [int.from_bytes(i["request_id"], "big") for i in frame.items]


def shape(d: Decision) -> list[tuple[list[int], bool, int]]:
    """Each frame as (request numbers, more, how many tags)."""
    return [(ids(f), f.more, len(f.revoked)) for f in d.frames]


def opened(d: Delivery, queue: list[QueuedRequest] = (), more: bool = False) -> Delivery:
    """``d`` after a resumed handshake that sent ``queue`` (so later triggers start from there)."""
    d.established(True, Backlog(list(queue), more), NOW)
    return d


# ---- triggers on an empty queue ----------------------------------------------------

@pytest.mark.parametrize("trigger,expected", [
    ("challenged encrypted", [([], False, 0)]),      # the device learns "nothing queued" early
    ("challenged in clear", [([], False, 0)]),
    ("established full", []),                        # told "nothing" already: no second frame
    ("established resumed", [([], False, 0)]),       # RESUMED always comes with a REQUESTS
    ("woken", []),
    ("answered", []),
])
def test_empty_queue(trigger: str, expected: list) -> None:
    """With nothing queued each trigger sends at most one empty REQUESTS saying ``more = false``."""
    d = Delivery()
    empty = Backlog()
    if trigger == "challenged encrypted":
        out = d.challenged(True, empty, NOW)
    elif trigger == "challenged in clear":
        out = d.challenged(False, empty, NOW)
    elif trigger == "established full":
        d.challenged(False, empty, NOW)
        out = d.established(False, empty, NOW)
    elif trigger == "established resumed":
        out = d.established(True, empty, NOW)
    elif trigger == "woken":
        out = opened(d).woken(empty, NOW)
    else:
        out = opened(d).answered([], empty, NOW)
        assert out.ack == []  # one ACK per RESPONSES, even empty
    assert shape(out) == expected and not out.refused and out.cursor == 0
    assert all(f.gateway_now_ms == NOW for f in out.frames)


# ---- batches: the frame budget -----------------------------------------------------

@pytest.mark.parametrize("slack,expected,more", [
    (0, [1, 2, 3], False),     # exactly at the limit: all three
    (-1, [1, 2], True),        # one byte short: the third waits
    (1, [1, 2, 3], False),
])
def test_batch_exactly_at_the_limit(slack: int, expected: list[int], more: bool) -> None:
    """A batch whose frame is exactly the budget goes whole; one byte less and its last request
    waits for the next batch with ``more`` set."""
    queue = [req(1, 100), req(2, 200), req(3, 300)]
    d = Delivery(frame_budget=cost(*queue) + slack)
    assert shape(d.established(True, Backlog(queue), NOW)) == [(expected, more, 0)]


def test_batch_never_skips_ahead() -> None:
    """Requests go in queue order and stop at the first that does not fit, even when a later
    one would (the device refuses a lower token sequence after a higher one)."""
    queue = [req(1, 100), req(2, 900), req(3, 1)]
    d = Delivery(frame_budget=cost(queue[0], queue[1]) - 1)
    out = d.established(True, Backlog(queue), NOW)
    assert shape(out) == [([1], True, 0)] and d.told_more


@pytest.mark.parametrize("queue,sent,refused", [
    ([9], [], [9]),                 # alone and too large
    ([9, 2, 3], [2, 3], [9]),       # the ones behind it still go
    ([1, 9, 3], [1, 3], [9]),
    ([9, 8], [], [9, 8]),
])
def test_request_larger_than_a_frame_is_refused_once(queue, sent, refused) -> None:
    """A request that cannot fit even alone in a frame is answered BAD_ARGUMENTS ("too large")
    and skipped; the rest of the batch goes as usual, and it is never refused twice."""
    d = Delivery(frame_budget=cost(req(1, 50), req(2, 50), req(3, 50)))
    backlog = Backlog([req(n, 5000 if n >= 8 else 50) for n in queue])
    out = d.established(True, backlog, NOW)
    assert shape(out) == [(sent, False, 0)]
    assert [int.from_bytes(a.request_id, "big") for a in out.refused] == refused
    assert all(a.status == BAD_ARGUMENTS and a.error == TOO_LARGE for a in out.refused)
    again = d.answered([], backlog, NOW)
    assert again.refused == [] and again.frames == []


@pytest.mark.parametrize("trigger,queue,more,recheck", [
    ("established", [9], True, True),        # only a refusal in the read, more behind it
    ("established", [9], False, False),      # nothing behind it
    ("established", [9, 1], True, False),    # work went out: its answers move things on
    ("challenged", [9], True, False),        # before PROOF: established() reads after it is stored
])
def test_refusals_alone_ask_for_a_recheck(trigger, queue, more, recheck) -> None:
    """When a queue read held only refused requests and more waits, the decision asks to be
    asked again once the refusals are stored (else nothing would ever move the device on)."""
    d = Delivery(frame_budget=cost(req(1, 50), req(2, 50)))
    backlog = Backlog([req(n, 5000 if n == 9 else 50) for n in queue], more)
    out = d.challenged(True, backlog, NOW) if trigger == "challenged" else d.established(True, backlog, NOW)
    assert len(out.refused) == 1 and out.recheck == recheck


def test_full_size_request_fits_the_default_budget() -> None:
    """With the default budget (MAX_LINK_FRAME) a request is refused only when no frame holds it."""
    d = Delivery()
    base = cost(req(1, 0))
    fits, too_big = req(1, wire.MAX_LINK_FRAME - base - 8), req(2, wire.MAX_LINK_FRAME - base + 8)
    out = d.established(True, Backlog([fits, too_big]), NOW)
    assert shape(out) == [([1], False, 0)] and [a.request_id for a in out.refused] == [too_big.request_id]


# ---- the window: once per connection, answers make room ------------------------------

def test_requests_go_once_per_connection_and_answers_make_room() -> None:
    """A request sent on this connection is not sent again; while the batch in flight fills
    what the queue read returns, nothing goes; answers let the next batch out; a device told
    ``more`` is told when nothing is left."""
    q = [req(n, 100) for n in range(1, 6)]
    d = Delivery(frame_budget=cost(*q[:2]))
    out = d.established(True, Backlog(q[:2], more=True), NOW)
    assert shape(out) == [([1, 2], True, 0)]
    assert d.woken(Backlog(q[:2], more=True), NOW).frames == []      # window full
    out = d.answered([q[0].request_id, q[1].request_id], Backlog(q[2:4], more=True), NOW)
    assert out.ack == [q[0].request_id, q[1].request_id] and shape(out) == [([3, 4], True, 0)]
    out = d.answered([q[2].request_id, q[3].request_id], Backlog(q[4:]), NOW)
    assert shape(out) == [([5], False, 0)]
    out = d.answered([q[4].request_id], Backlog(), NOW)
    assert out.frames == [] and not d.told_more
    fresh = Delivery()  # a new connection sends what is still unanswered again (at-least-once)
    assert shape(fresh.established(True, Backlog(q[4:]), NOW)) == [([5], False, 0)]


def test_woken_sends_new_work_only() -> None:
    """New work queued while connected goes out at once; work already sent does not."""
    d = opened(Delivery(), [req(1)])
    assert shape(d.woken(Backlog([req(1), req(2)]), NOW)) == [([2], False, 0)]
    assert d.woken(Backlog([req(1), req(2)]), NOW).frames == []


# ---- revocations and the cursor ------------------------------------------------------

def test_revocation_list_larger_than_a_frame_spans_frames_before_the_work() -> None:
    """A revocation list too large for one frame goes whole, in order, over several frames, each
    within the budget and each but the last saying ``more``; the work rides in the last frame,
    after every tag; the cursor is recorded with them."""
    tags = tuple(tag(n) for n in range(5000))
    d = Delivery()
    out = d.established(True, Backlog([req(1), req(2)], False, tags, 7777), NOW)
    assert len(out.frames) == 3
    assert [t for f in out.frames for t in f.revoked] == list(tags)
    assert [f.more for f in out.frames] == [True, True, False]
    assert ids(out.frames[-1]) == [1, 2] and not out.frames[0].items and not out.frames[1].items
    assert all(cost(*[r for r in (req(1), req(2)) if r.request_id in {i["request_id"] for i in f.items}],
                    tags=tuple(f.revoked)) <= d.frame_budget for f in out.frames)
    assert out.cursor == 7777 and not d.wants_revocations


def test_tags_leaving_no_room_give_the_work_a_frame_of_its_own() -> None:
    """When the last frame of tags has no room for the first request, the request goes in a
    frame of its own (it is not refused and the device is not left waiting)."""
    r = req(1, 400)
    tags = (tag(1), tag(2))
    d = Delivery(frame_budget=max(cost(r), cost(tags=tags)) + 1)
    out = d.established(True, Backlog([r], False, tags, 2), NOW)
    assert shape(out) == [([], True, 2), ([1], False, 0)] and not out.refused


def test_encrypted_early_tags_count_only_once_proof_verifies() -> None:
    """Tags sent in the encrypted 0.5-RTT flight do not move the cursor until established(),
    which then neither rereads nor resends them."""
    d = Delivery()
    early = d.challenged(True, Backlog([req(1)], False, (tag(1),), 5), NOW)
    assert shape(early) == [([1], False, 1)] and early.cursor == 0 and not d.wants_revocations
    later = d.established(False, Backlog([req(1)]), NOW)
    assert later.cursor == 5 and later.frames == []


def test_in_clear_tags_keep_the_device_waiting_for_them() -> None:
    """In clear nothing but ``more`` leaves before PROOF; pending tags alone set it, so the
    device does not say BYE before the tags reach it after PROOF."""
    d = Delivery()
    early = d.challenged(False, Backlog([], False, (tag(1),), 3), NOW)
    assert shape(early) == [([], True, 0)] and d.wants_revocations
    out = d.established(False, Backlog([], False, (tag(1),), 3), NOW)
    assert shape(out) == [([], False, 1)] and out.cursor == 3


@pytest.mark.parametrize("tags,position,cursor,frames", [
    ((), 0, 0, []),             # nothing ever revoked
    ((), 9, 0, []),             # cursor known, nothing new, nothing to send: no write
    ((tag(1),), 9, 9, [([], False, 1)]),
])
def test_cursor_moves_only_with_a_frame(tags, position, cursor, frames) -> None:
    """The revocation cursor is recorded only when a REQUESTS carrying the list went out."""
    out = Delivery().established(False, Backlog([], False, tags, position), NOW)
    assert out.cursor == cursor and shape(out) == frames


def test_revocations_are_read_once_per_wake() -> None:
    """After established() the delivery neither asks for nor sends revocations again."""
    d = opened(Delivery())
    assert not d.wants_revocations
    out = d.woken(Backlog([req(1)], False, (tag(1),), 4), NOW)
    assert shape(out) == [([1], False, 0)] and out.cursor == 0


# ---- acknowledgements ----------------------------------------------------------------

@pytest.mark.parametrize("acks,recorded", [
    ([[1, 2]], [[1, 2]]),
    ([[2, 1, 2, 2]], [[2, 1]]),              # duplicates inside one ACK
    ([[1], [1, 2], [2]], [[1], [2], []]),    # an ACK repeated
    ([[7, 1, 8]], [[1]]),                     # ids never sent on this connection
    ([[]], [[]]),
])
def test_acks_record_each_sent_request_once(acks, recorded) -> None:
    """Only ids sent on this connection are recorded as delivered, each once, in ACK order."""
    d = opened(Delivery(), [req(1), req(2)])
    got = [d.acked([n.to_bytes(16, "big") for n in ack]) for ack in acks]
    assert [[int.from_bytes(i, "big") for i in g] for g in got] == recorded


def test_memory_backend_sizes_requests_as_the_delivery_does() -> None:
    """A QueuedRequest's fields are DeviceRequest's, so MemoryBackend.pending bounds its
    read with the same wire size the delivery packs with."""
    r = req(1, 123)
    assert {k: v for k, v in vars(r).items() if k != "chain"} == request_item(r)
    backend = MemoryBackend(GATEWAY_SECRET, queues={b"L": [req(1, 100), req(2, 100), req(3, 100)]})
    two = sum(fs.item_size(request_item(x)) for x in (req(1, 100), req(2, 100)))
    assert backend.pending(b"L", two) == ([req(1, 100), req(2, 100)], True)
    assert backend.pending(b"L", two - 1) == ([req(1, 100)], True)


def test_budget_outside_what_a_frame_allows_is_refused() -> None:
    """A frame budget above MAX_LINK_FRAME or too small for one tag is a ValueError."""
    for bad in (wire.MAX_LINK_FRAME + 1, 10):
        with pytest.raises(ValueError):
            Delivery(frame_budget=bad)


# ---- every decision goes through a real session ------------------------------------

def keyed_session() -> GatewaySession:
    """A gateway session in OPEN with its sending direction keyed at the widest sequence."""
    s = GatewaySession(None, os.urandom, lambda: NOW)
    s._install_out((b"k" * 32,) * 4, True)
    s.state = OPEN
    s._seq_out = 2**64 - 1 - 1000
    return s


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(0, 30000), max_size=12), ntags=st.integers(0, 4000),
       budget=st.integers(2000, wire.MAX_LINK_FRAME))
def test_every_frame_fits_and_order_is_kept(sizes, ntags, budget) -> None:
    """Whatever the queue and the list, each frame encodes within the budget through a real
    session, tags come whole and first, and the requests sent are a queue-order prefix of the
    ones not refused."""
    queue = [req(n, a) for n, a in enumerate(sizes, 1)]
    tags = tuple(tag(n) for n in range(ntags))
    d = Delivery(frame_budget=budget)
    out = d.established(True, Backlog(queue, False, tags, ntags), NOW)
    s = keyed_session()
    for f in out.frames:
        framed = s.send(f)
        length, start = wire.get_uvarint(framed, 0, len(framed))
        assert length == len(framed) - start and length <= budget
    assert [t for f in out.frames for t in f.revoked] == list(tags)
    assert all(not f.items for f in out.frames[:-1]) and all(f.more for f in out.frames[:-1])
    refused = {a.request_id for a in out.refused}
    kept = [r.request_id for r in queue if r.request_id not in refused]
    sent = [i["request_id"] for f in out.frames for i in f.items]
    assert sent == kept[:len(sent)] and out.frames[-1].more == (len(sent) < len(kept))


# ---- over a real link server and device runtime --------------------------------------

async def test_in_clear_revocations_reach_a_device_with_nothing_queued(tmp_path: Path) -> None:
    """A device without encryption and with no work still receives the tags revoked since its
    last wake before it says BYE, and the cursor moves."""
    backend = MemoryBackend(GATEWAY_SECRET)
    srv = await start_server(backend)
    try:
        home = make_home(tmp_path / "d", backend, srv.port, encrypt=False)
        backend.revoked[home.link_id()] = [tag(1), tag(2)]
        rep = await device(home).wake_with_fallback()
        assert rep.revoked == 2 and rep.received == 0
        assert {tag(1), tag(2)} <= DeviceState(home.state_path).revoked_set()
        assert backend.revoked[home.link_id()] == []
    finally:
        await srv.close()


async def test_oversized_request_does_not_hold_up_the_rest(tmp_path: Path) -> None:
    """A request too large for any frame is answered "too large" while the request behind it
    runs on the same wake, on a full handshake and on a resumed one."""
    backend = MemoryBackend(GATEWAY_SECRET)
    srv = await start_server(backend)
    try:
        home = make_home(tmp_path / "d", backend, srv.port, encrypt=True)
        q = Queue(backend, home)
        dev = device(home)
        for resumed in (False, True):
            big = q.add("sensor", "read", b'"' + b"x" * wire.MAX_LINK_FRAME + b'"')
            small = q.add("sensor", "info")
            rep = await asyncio.wait_for(dev.wake_with_fallback(), 10)
            assert rep.resumed == resumed and rep.executed == 1
            assert backend.answers[big].status == BAD_ARGUMENTS and backend.answers[big].error == TOO_LARGE
            assert backend.answers[small].status == OK
        assert srv.metrics.rejections == {}
    finally:
        await srv.close()


async def test_revocation_list_larger_than_a_frame_over_the_link(tmp_path: Path) -> None:
    """Thousands of revoked tags (several frames) all reach the device ahead of the work: the
    request from a revoked token is refused by the device, the other runs."""
    backend = MemoryBackend(GATEWAY_SECRET)
    srv = await start_server(backend)
    try:
        home = make_home(tmp_path / "d", backend, srv.port, encrypt=True)
        q = Queue(backend, home)
        other = cl.derive(home.root_token(), [cl.Service("sensor", ["*"])])
        backend.revoked[home.link_id()] = [tag(n) for n in range(3000)] + [cl.revocation_hash(q.app.tag)]
        bad = q.add("sensor", "info")
        good = q.add("sensor", "info", token=other)
        rep = await asyncio.wait_for(device(home).wake_with_fallback(), 20)
        assert rep.revoked == 3001 and srv.metrics.rejections == {}
        assert backend.answers[bad].status == REVOKED and backend.answers[good].status == OK
        assert backend.revoked[home.link_id()] == []
    finally:
        await srv.close()
