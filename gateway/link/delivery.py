"""What the gateway sends a waking device, and what the device's answers change.

Pure (sans-I/O): no sockets, no asyncio, no clock of its own. The link server
(server.py) reads the device's queue and revocation list from its LinkBackend,
hands them in with the time, and carries out the :class:`Decision` that comes
back: frames through the GatewaySession, durable writes through the backend.

Theory of operation
-------------------
One :class:`Delivery` per device connection. Each trigger is one method::

    challenged(encrypt)   HELLO verified, device not yet authenticated (0.5-RTT).
                          encrypted: the first batch and the revocations, as after
                          PROOF (only the device can read them; nothing counts yet);
                          in clear: one empty REQUESTS whose ``more`` says only
                          whether anything (work or revocations) waits
    established(resumed)  PROOF or RESUME verified: revocations sent early now count
                          (cursor); else the revocations and the first batch go now
    acked(ids)            -> the ids to record as delivered
    answered(stored)      RESPONSES stored: ACK them, then the next batch
    woken()               new work queued while the device is connected

A batch is what fits in one REQUESTS frame of at most ``frame_budget`` bytes,
sized by frame_sizes.requests_frame_size (the one frame-size computation).
Revoked tags go first, all of a wake's, in as many frames as they need, each
frame but the last saying ``more``: the device runs a frame's requests as soon
as it reads it, so a revocation must never arrive behind the work it stops.
Requests follow in queue order in the last frame (or in a frame of their own
when the tags leave no room for the first) and stop at the first that does not
fit: skipping ahead would hand the device a higher token sequence first, and it
would then refuse the earlier request as a replay. A request too large for an
empty frame can never be delivered: it is refused (answered BAD_ARGUMENTS,
"request too large for the link") and skipped; when the queue read held
nothing else, the adapter asks again once the refusals are stored (their room
in the read goes to the requests behind them).

Twin changes (docs/TWINS.md): the desired changes the device has not applied,
ascending version (``Backlog.twin``), go after the revoked tags and before
the work (a request may rely on the configuration it was sent behind), each
once per connection; any prefix of them is a valid delta, so they are cut
wherever a frame is full. A change made under a token the gateway now knows
to be revoked is never handed out: the backend's read stops before it and
names the tags (``Backlog.withdraw``), which the adapter withdraws durably
(``Decision.withdraw``) before it asks again.

Window: a request goes out once per connection (the backend's queue lists
requests in flight again until they are answered: at-least-once across wakes).
When everything the queue read returned is in flight and more waits behind it,
nothing is sent until answers make room. ``force`` sends a REQUESTS even without
work, so a device told ``more`` earlier learns that nothing is left.

Revocation cursor: the backend gives one position for its whole list, so a
wake carries the whole list and records the position only once the frames
carrying it went to an authenticated device: with them after PROOF/RESUME, or,
for the encrypted 0.5-RTT flight, at established(). Revocations are read once
per wake (``wants_revocations``), at its start.

Revoked authority: a request whose client token's chain (``QueuedRequest.chain``,
revocation hashes) holds a hash the Backlog's ``barred`` set contains is never
handed out: it is answered REVOKED (durably, as refusals are) and skipped.
The gateway ends such requests as soon as it learns the revocation (store op
``revoke_requests``); this check covers a queue read that raced with that.

Deliveries: only ids sent on this connection, each once; anything else in an
ACK (unknown ids, repeats) is dropped.
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Sequence
from dataclasses import dataclass, field

from ...firmware.link import link_wire as wire
from ...firmware.link.link_device import BAD_ARGUMENTS, REVOKED
from ...firmware.link.link_session import Requests
from ...firmware.link.link_wire import MAX_LINK_FRAME
from .backend import DeviceAnswer, QueuedRequest
from . import frame_sizes as fs

TOO_LARGE = "request too large for the link"
REVOKED_ERROR = "refused: the token that made this request (or one it derives from) was revoked"
TAG_SIZE = 40  # a revocation on the link: its 32-byte hash and its be64 expiry
# The widest clock a frame can carry (a negative int64 is a 10-byte varint):
# sizes that do not know the clock yet assume it.
_WIDEST_CLOCK = -1


@dataclass(frozen=True)
class Backlog:
    """What the backend reports for a device right now: ``backend.pending()``
    (requests in queue order, whether more wait) and, when the delivery wants
    them, ``backend.revocations()`` (tags, cursor position)."""

    requests: Sequence[QueuedRequest] = ()
    more: bool = False
    revoked: Sequence[bytes] = ()
    position: int = 0
    barred: Container[bytes] = ()  # revocation hashes now in force (the gateway's set)
    twin: Sequence[tuple[str, bytes, int]] = ()  # (key, value, version): not applied, ascending
    withdraw: Sequence[bytes] = ()  # revocation hashes of a twin change the read stopped before


@dataclass
class Decision:
    """What to do now, in this order: answer ``refused`` (durably), send
    ``Ack(ack)`` when ``ack`` is not None, send ``frames``, record the
    revocation ``cursor`` (``backend.revocations_sent``) when nonzero. With
    ``recheck``, call :meth:`Delivery.woken` once the refusals are stored: the
    queue read held nothing else, and their room now goes to what waits behind.
    With ``withdraw``, withdraw the twin changes made under those tags
    (``backend.twin_withdraw``), then call :meth:`Delivery.woken`."""

    frames: list[Requests] = field(default_factory=list)
    refused: list[DeviceAnswer] = field(default_factory=list)
    cursor: int = 0
    ack: list[bytes] | None = None
    recheck: bool = False
    withdraw: list[bytes] = field(default_factory=list)

    @property
    def items(self) -> int:
        """How many requests the frames carry."""
        return sum(len(f.items) for f in self.frames)


def twin_item(change: tuple[str, bytes, int]) -> dict:
    """A twin change (key, value, version) as the TwinChange dict the link carries."""
    key, value, version = change
    return {"key": key, "value": value, "version": version}


def request_item(r: QueuedRequest) -> dict:
    """A queued request as the DeviceRequest dict the link carries."""
    return {"request_id": r.request_id, "service": r.service, "method": r.method,
            "args": r.args, "request_token": r.request_token, "expires_at_ms": r.expires_at_ms}


class Delivery:
    """The delivery state of one device connection (see the module docstring)."""

    def __init__(self, frame_budget: int = MAX_LINK_FRAME) -> None:
        smallest = fs.requests_frame_size(fs.tag_size(bytes(TAG_SIZE)), _WIDEST_CLOCK)
        if not smallest <= frame_budget <= MAX_LINK_FRAME:
            raise ValueError(f"frame budget {frame_budget} outside {smallest}..{MAX_LINK_FRAME}")
        self.frame_budget = frame_budget
        # what backend.pending() is asked for: the request bytes one frame holds
        self.queue_bytes = frame_budget - fs.requests_frame_size(0, _WIDEST_CLOCK)
        self.sent: set[bytes] = set()       # request ids sent on this connection
        self.refused: set[bytes] = set()    # ids refused as too large (answered once)
        self.delivered: set[bytes] = set()  # ids the device acknowledged
        self.told_more = False              # ``more`` of the last REQUESTS sent
        self.twin_sent = 0                  # highest twin version sent on this connection
        self._held = 0                      # cursor of tags sent before PROOF
        self._revocations_read = False      # this wake's revocations are carried

    @property
    def wants_revocations(self) -> bool:
        """Whether the next trigger takes ``backend.revocations()`` in its Backlog."""
        return not self._revocations_read

    # ---- triggers ----

    def challenged(self, encrypt: bool, backlog: Backlog, now_ms: int) -> Decision:
        """HELLO verified; ``backlog`` with the revocations."""
        if encrypt:
            d = self._batch(backlog, now_ms, force=True, revocations=True, early=True)
            if d.cursor:  # counts once PROOF verifies
                self._held, d.cursor = d.cursor, 0
                self._revocations_read = True
            return d
        # In clear nothing of the work or the tags may leave before PROOF; ``more``
        # keeps the device from saying BYE with its PROOF when tags wait for it.
        self.told_more = (bool(backlog.requests) or backlog.more or bool(backlog.revoked) or bool(backlog.twin)
                          or bool(backlog.withdraw))
        return Decision(frames=[Requests([], self.told_more, [], now_ms)])

    def established(self, resumed: bool, backlog: Backlog, now_ms: int) -> Decision:
        """PROOF or RESUME verified; ``backlog`` with the revocations when
        :attr:`wants_revocations` said so (not when they went out early)."""
        if self._held:
            held, self._held = self._held, 0
            d = self._batch(backlog, now_ms, force=self.told_more)
            d.cursor = held
            return d
        self._revocations_read = True
        return self._batch(backlog, now_ms, force=resumed or self.told_more, revocations=True)

    def acked(self, ids: Iterable[bytes]) -> list[bytes]:
        """The ids of an ACK to record as delivered: sent on this connection and
        not recorded yet, each once, in the order given."""
        out = []
        for rid in ids:
            if rid in self.sent and rid not in self.delivered:
                self.delivered.add(rid)
                out.append(rid)
        return out

    def answered(self, stored: Sequence[bytes], backlog: Backlog, now_ms: int) -> Decision:
        """A RESPONSES frame was stored (``stored``: the ids the backend kept):
        one ACK for it (even empty), then whatever the answers made room for."""
        d = self._batch(backlog, now_ms, force=self.told_more)
        d.ack = list(stored)
        return d

    def woken(self, backlog: Backlog, now_ms: int) -> Decision:
        """New work was queued while the device is connected."""
        return self._batch(backlog, now_ms, force=False)

    # ---- batches ----

    def _batch(self, backlog: Backlog, now_ms: int, force: bool, revocations: bool = False,
               early: bool = False) -> Decision:
        revoked = list(backlog.revoked) if revocations else []
        fresh = [r for r in backlog.requests
                 if r.request_id not in self.sent and r.request_id not in self.refused]
        barred = backlog.barred
        gone = [r for r in fresh if barred and any(h in barred for h in r.chain)]
        if gone:
            fresh = [r for r in fresh if r not in gone]
        twin = [twin_item(c) for c in backlog.twin if c[2] > self.twin_sent]
        frames, items, refused, trimmed = self._pack(fresh, revoked, twin, now_ms)
        self.refused.update(r.request_id for r in refused + gone)
        answers = [DeviceAnswer(r.request_id, BAD_ARGUMENTS, error=TOO_LARGE) for r in refused]
        answers += [DeviceAnswer(r.request_id, REVOKED, error=REVOKED_ERROR) for r in gone]
        refused = refused + gone
        sent_twin = [c for f in frames for c in f[2]]
        withdraw = list(backlog.withdraw) if not early else []  # (nothing durable before PROOF)
        more = backlog.more or trimmed or bool(withdraw)
        # (not before PROOF: that flight's refusals are stored before established() reads)
        recheck = bool(refused) and more and not items and not early
        if not items and not revoked and not sent_twin and (not force or (more and not early)):
            # nothing new; when more waits behind requests in flight, their answers
            # make room (an empty REQUESTS would only repeat ``more``), behind
            # refused ones, their refusals do (recheck)
            return Decision(refused=answers, recheck=recheck, withdraw=withdraw)
        self.sent.update(item["request_id"] for item in items)
        if sent_twin:
            self.twin_sent = sent_twin[-1]["version"]
        self.told_more = more
        out = [Requests(entry_items, True, tags, now_ms, changes) for tags, entry_items, changes in frames]
        out[-1].more = more
        return Decision(out, answers, backlog.position if revocations else 0, recheck=recheck, withdraw=withdraw)

    def _pack(self, fresh: list[QueuedRequest], revoked: list[bytes], twin: list[dict], now_ms: int
              ) -> tuple[list[tuple[list[bytes], list[dict], list[dict]]], list[dict], list[QueuedRequest], bool]:
        """Frames of (tags, items, twin changes), the items, the refused
        requests, and whether requests or twin changes that fit were left for a
        later batch. Order: tags, then twin changes, then requests."""
        budget = self.frame_budget
        size = fs.requests_frame_size  # (parts, clock) -> frame bytes
        frames: list[tuple[list[bytes], list[dict], list[dict]]] = []
        tags: list[bytes] = []
        changes: list[dict] = []
        parts = 0
        for tag in revoked:
            cost = fs.tag_size(tag)
            if tags and size(parts + cost, now_ms) > budget:
                frames.append((tags, [], []))
                tags, parts = [], 0
            tags.append(tag)
            parts += cost
        for c in twin:
            cost = wire.field_size(len(wire.encode("TwinChange", c)))
            if (tags or changes) and size(parts + cost, now_ms) > budget:
                frames.append((tags, [], changes))
                tags, changes, parts = [], [], 0
            changes.append(c)
            parts += cost
        items: list[dict] = []
        refused: list[QueuedRequest] = []
        trimmed = False
        for r in fresh:
            item = request_item(r)
            cost = fs.item_size(item)
            if size(cost, now_ms) > budget:
                refused.append(r)  # not even alone in a frame: never deliverable
                continue
            if size(parts + cost, now_ms) > budget:
                if items or not (tags or changes):
                    trimmed = True
                    break
                frames.append((tags, [], changes))  # tags and changes leave no room: a frame of their own
                tags, changes, parts = [], [], 0
            items.append(item)
            parts += cost
        frames.append((tags, items, changes))
        return frames, items, refused, trimmed
