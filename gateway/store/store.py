"""The gateway's durable store: paired devices, request queues, response slots.

Why LMDB: it is already the registry's store (one dependency, one set of
operational habits); a write transaction is atomic and, with ``sync=True``,
fsync'd before ``commit()`` returns, so "acknowledged" can mean "on disk" at
the price of one fsync per acknowledged write; it is a copy-on-write B+tree,
so a kill -9 at any instant leaves the last committed state with no recovery
pass; reads never block the single writer, and ordered keys give per-device
queues and expiry indexes as plain prefix scans.

Every method that changes state runs in one write transaction and returns
only after the commit, so when the gateway acknowledges a request, a device
ACK or a response, it survives kill -9.

Two ways to write: the plain methods commit inline (one fsync each, on the
caller's thread), and the ``*_async`` methods (the service's enqueue and the
link server's path) hand the write, as data (an operation, see
:meth:`GatewayStore.apply`), to a single group-commit writer: writes submitted
while a commit is in progress (or in the same event-loop turn) share the next
transaction, each in a nested transaction of its own (a write that raises is
rolled back alone), and each caller's future resolves only after the commit
holding its write is durable. So the event loop never waits for an fsync, and
one fsync serves many writes. The writer is a thread (:class:`GroupWriter`,
gateway/group_writer.py) or, as the gateway runs it, a child process
(gateway/store_process.py) whose Python runs off the gateway's GIL. LMDB
serialises all writers, across processes too (one write transaction at a time).

Last contact is a hint (:meth:`GatewayStore.note_contact`): kept in memory,
seen by every read at once, persisted with the next group commit or at most
``contact_flush_s`` later, and at close. A crash loses at most that much of
it; nothing acknowledged depends on it.

Key prefixes (all of them, here only)::

    d/<link16>                      Device (record)
    p/<pseudonym16>                 link16                      device by pseudonym
    q/<link16><be64 seq>            request id                  active queue (QUEUED, DELIVERED), in order
    n/<link16>                      be64                        queue depth (active requests)
    s/<link16>                      be64                        last request sequence (monotonic)
    r/<rid16>                       RequestRecord (record)      request state and response slot
    x/<be64 expires_ms><rid16>      b""                         active requests by expiry (sweeper)
    g/<be64 purge_ms><rid16>        b""                         finished requests by purge time
    c/<link16><sha256(svc, m, args)>  CacheEntry (record)       cacheable responses
    t/<ticket id>                   Ticket (record)             resumption tickets (single use)
    l/<link16>                      Contact (record)            last contact, announced sleep, liveness sent
    v/<be64 n>                      tag32 + be64 expiry         revocation log, in arrival order
    vt/<tag32>                      b""                         tags already in the log
    vc/<link16>                     be64                        last log entry the device was told about
    m/<name>                        bytes                       metadata

A "record" is a format byte (0x01) and a MessagePack array of the dataclass's
fields in declaration order (new fields are only ever appended, with defaults,
so an older record still loads). Stores written before this format hold JSON
objects (bytes as base64), which still load; they are rewritten as records
when next changed.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import hashlib
import json
import os
import logging
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

import lmdb
import msgspec

from ..errors import Conflict, NotFound, QueueFull
from .thread_writer import GroupWriter
from .process_writer import ProcessWriter
from ..link.backend import DeviceAnswer, QueuedRequest, Ticket
from ..manifest import Manifest

log = logging.getLogger("edgistry.gateway.store")

DEFAULT_MAP_SIZE = 1 << 30  # 1 GiB of address space; LMDB only uses what it writes
_BE64 = struct.Struct(">Q")
ACTIVE_WINDOW_MS = 30_000  # a device seen this recently with no BYE is in a session
CONTACT_FLUSH_S = 5.0  # contact hints reach the disk at most this late (when no other write carries them)


class State(IntEnum):
    """Request states; the numbers are gateway.proto's RequestState."""

    QUEUED = 1
    DELIVERED = 2
    DONE = 3
    EXPIRED = 4
    CANCELLED = 5
    FAILED = 6

    @property
    def active(self) -> bool:
        return self in (State.QUEUED, State.DELIVERED)


Op = tuple[str, tuple]  # a writer operation: ("name", args), see GatewayStore.apply
DEVICE_CACHE_SIZE = 4096  # parsed device records kept (a few MB at most)
DEVICE_EXPIRED_STATUS = 5  # docs/LINK_PROTOCOL.md: "expired before it ran"


def be64(n: int) -> bytes:
    return _BE64.pack(n)


def _unb(text: str) -> bytes:
    return base64.b64decode(text)


# MessagePack via msgspec: binary (no base64), and ~5x cheaper than JSON per record,
# which matters because a request's record is rewritten at every step of its life
RECORD_FORMAT = b"\x01"
_PACK = msgspec.msgpack.Encoder().encode
_UNPACK = msgspec.msgpack.Decoder().decode
_FIELDS: dict[type, tuple[str, ...]] = {}


def _field_names(cls: type) -> tuple[str, ...]:
    names = _FIELDS.get(cls)
    if names is None:
        names = _FIELDS[cls] = tuple(f.name for f in dataclasses.fields(cls))
    return names


class _Record:
    """(De)serialisation of the flat dataclasses below as records (see the
    module docstring); the JSON of older stores (bytes as base64) still loads.

    Fields are read directly (not with ``dataclasses.asdict``, which deep-copies
    every value): a record is dumped on every durable queue change."""

    _bytes: tuple[str, ...] = ()  # the fields that were base64 in the JSON form

    def dump(self) -> bytes:
        return RECORD_FORMAT + _PACK([getattr(self, f) for f in _field_names(type(self))])

    @classmethod
    def load(cls, raw: bytes):
        if raw[:1] == RECORD_FORMAT:
            try:
                return cls(*_UNPACK(raw[1:]))
            except (msgspec.DecodeError, TypeError) as exc:
                raise ValueError(f"corrupt {cls.__name__} record: {exc}") from exc
        d = json.loads(raw)
        for k in cls._bytes:
            d[k] = _unb(d[k])
        return cls(**d)


@dataclass
class Device(_Record):
    """A paired device as the gateway keeps it (never on chain: root token, exact cell)."""

    link_id: bytes
    pseudonym: bytes
    root_token: bytes
    manifest: dict
    cell: int  # coarse, at policy resolution: what the chain sees
    resolution: int
    k: int
    duty_cycle_s: int = 0
    encrypt: bool = False
    owner: str = ""  # owner handle
    exact_cell: int = 0  # as given at pairing; stays here
    paired_at_ms: int = 0
    _bytes = ("link_id", "pseudonym", "root_token")

    @functools.cached_property
    def parsed_manifest(self) -> Manifest:
        return Manifest.parse(self.manifest)  # once per loaded record (it is read on every call)


@dataclass
class RequestRecord(_Record):
    request_id: bytes
    link_id: bytes
    service: str
    method: str
    args: bytes
    request_token: bytes
    token_digest: bytes  # SHA-256 of the client's token: GetResult needs the same token
    state: int
    created_ms: int
    expires_at_ms: int
    seq: int = 0
    status: int = 0
    payload: bytes = b""
    error: str = ""
    done_ms: int = 0
    from_cache: bool = False
    forwarded_to: str = ""  # set on a forwarding gateway's stub: the peer that holds it
    attested: bool = False  # made on a trusted caller's word (invoke-any), not checked against the device
    _bytes = ("request_id", "link_id", "args", "request_token", "token_digest", "payload")

    @property
    def st(self) -> State:
        return State(self.state)

    def queued(self) -> QueuedRequest:
        return QueuedRequest(self.request_id, self.service, self.method, self.args, self.request_token,
                             self.expires_at_ms)


@dataclass
class CacheEntry(_Record):
    payload: bytes
    stored_ms: int
    max_age_s: int
    _bytes = ("payload",)


@dataclass
class Contact(_Record):
    last_ms: int = 0
    sleep_s: int | None = None  # announced at BYE; None while a session is open
    reported_s: int = 0  # last liveness bucket put on chain


def cache_key(link_id: bytes, service: str, method: str, args: bytes) -> bytes:
    digest = hashlib.sha256(b"\0".join([service.encode(), method.encode(), hashlib.sha256(args).digest()])).digest()
    return b"c/" + link_id + digest


def _slim(outcome: tuple[RequestRecord, bool] | Exception) -> RequestRecord | tuple[int, bytes] | Exception:
    """An enqueue outcome as it crosses back from the writer: a new request as
    (seq, request token), the caller holding the rest; a known one whole."""
    if isinstance(outcome, Exception):
        return outcome
    rec, new = outcome
    return (rec.seq, rec.request_token) if new else rec


def _fatten(items: list, slim: list) -> list[tuple[RequestRecord, bool] | Exception]:
    """Undo :func:`_slim` with the caller's own records."""
    out: list[tuple[RequestRecord, bool] | Exception] = []
    for (rec, *_), got in zip(items, slim):
        if isinstance(got, tuple):
            rec.seq, rec.state, rec.request_token = got[0], State.QUEUED, got[1]
            out.append((rec, True))
        else:
            out.append(got if isinstance(got, Exception) else (got, False))
    return out


def _finished(records: list[RequestRecord]) -> list[tuple[bytes, int]]:
    """(id, final state) of finished requests: plain data, cheap to send back."""
    return [(r.request_id, int(r.state)) for r in records]


class GatewayStore:
    """The LMDB store. Plain methods are synchronous and fast (one fsync per
    write); the ``*_async`` ones go through the group-commit writer (thread or process)."""

    def __init__(self, path: Path | str, map_size: int = DEFAULT_MAP_SIZE,
                 result_retention_ms: int = 24 * 3600 * 1000,
                 contact_flush_s: float = CONTACT_FLUSH_S, writer: str = "thread") -> None:
        """``writer``: who runs the group commits of the ``*_async`` methods:
        "thread" (a thread of this process), "process" (a child process of its
        own, gateway/store_process.py: the gateway's choice), or "none" (that
        child itself, which runs the operations it is sent)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        # sync + metasync: commit() returns after fsync (kill -9 loses nothing committed)
        self.env = lmdb.open(str(path), map_size=map_size, sync=True, metasync=True, subdir=True,
                             max_dbs=0, lock=True)
        self.path, self.map_size = path, map_size
        self.retention_ms = result_retention_ms
        self._device_cache: dict[bytes, Device] = {}
        self.listeners: list[Callable[[bytes], None]] = []  # told the id of each request a write changed
        self.contact_flush_s = contact_flush_s
        self._contacts: dict[bytes, tuple[int, int | None]] = {}  # hints: link -> (last_ms, sleep_s)
        self._dirty: dict[bytes, float] = {}  # hints not on disk yet: link -> monotonic time noted
        self._hint_lock = threading.Lock()
        self.writer: GroupWriter | ProcessWriter | None
        if writer == "thread":
            self.writer = GroupWriter(self.env, self.apply, self._flush_contacts_in, self._flush_contacts_if_old)
        elif writer == "process":
            self.writer = ProcessWriter(self, self._take_hints, self._hints_due)
        elif writer == "none":
            self.writer = None
        else:
            raise ValueError(f"writer must be thread, process or none, not {writer!r}")
        self._open = True

    def close(self) -> None:
        """Finish the writer's work, persist the contact hints, close (idempotent)."""
        if self._open:
            self._open = False
            try:
                if self.writer is not None:
                    self.writer.close()
                    self.flush_contacts()
            finally:
                self.env.close()

    async def write(self, op: Op, urgent: bool = False) -> object:
        """Have the writer run ``op`` (see :meth:`apply`) in its next group commit;
        return the result once durable (listeners then hear which requests
        changed, on the caller's thread).

        ``urgent``: hand ``op`` to the writer now rather than with the rest of
        this loop turn's writes. For a caller that has gathered a batch already
        (a SubmitBatch call): the writer starts on it while the loop works on
        the next call, so commits and the loop's work overlap instead of taking
        turns (at a window of a few calls in flight they would otherwise stay
        in lockstep: every call of the window in one commit, nothing to stage
        while it runs)."""
        if self.writer is None:
            raise RuntimeError("this store has no writer")
        result, changed = await self.writer.submit(op, urgent)
        self._notify(changed)
        return result

    # ---- the writer's operations ----
    # An operation is data, ("name", args), not a closure, so that a writer
    # thread or a writer process can run it: apply() calls _op_<name>(txn, *args),
    # which returns (result, ids of the requests it changed). What crosses back
    # from a writer process is kept small (no whole records: unpickling them
    # was 8 % of the gateway's loop): listeners re-read what they need.

    def apply(self, txn: lmdb.Transaction, op: Op) -> tuple[object, list[bytes]]:
        name, args = op
        fn = getattr(self, "_op_" + name, None)
        if fn is None:
            raise ValueError(f"no store operation {name!r}")
        return fn(txn, *args)

    def _op_enqueue(self, txn: lmdb.Transaction, items: list[tuple[RequestRecord, int, int, Callable[[int], bytes]]]
                    ) -> tuple[list[tuple[RequestRecord, bool] | Exception], list[RequestRecord]]:
        out: list[tuple[RequestRecord, bool] | Exception] = []
        for rec, max_depth, now_ms, token_for_seq in items:
            try:
                out.append(self._enqueue_in(txn, rec, max_depth, now_ms, token_for_seq))
            except lmdb.Error:
                raise  # a failed write: the whole batch fails, nothing of it is acknowledged
            except Exception as exc:  # raised before any write of this item (see _enqueue_in)
                out.append(exc)
        changed = [r[0].request_id for r in out if not isinstance(r, Exception) and r[1]]
        return [_slim(r) for r in out], changed

    def _op_delivered(self, txn: lmdb.Transaction, link_id: bytes, request_ids: list[bytes]):
        changed = [r.request_id for r in self._delivered_in(txn, link_id, request_ids)]
        return changed, changed

    def _op_answered(self, txn: lmdb.Transaction, link_id: bytes, answers: list[DeviceAnswer], now_ms: int):
        changed = self._answered_in(txn, link_id, answers, now_ms)
        return ([a.request_id for a in answers], _finished(changed)), [r.request_id for r in changed]

    def _op_rotate_ticket(self, txn: lmdb.Transaction, spent: bytes | None, ticket_id: bytes | None,
                          ticket: Ticket | None):
        return self._rotate_ticket_in(txn, spent, ticket_id, ticket), []

    def _op_revocations_sent(self, txn: lmdb.Transaction, link_id: bytes, position: int):
        return self._revocations_sent_in(txn, link_id, position), []

    def _op_contacts(self, txn: lmdb.Transaction, hints: dict[bytes, tuple[int, int | None]]):
        """Contact hints taken from another process's memory (the process writer's case)."""
        return self._put_hints_in(txn, hints), []

    def _notify(self, request_ids: Iterable[bytes]) -> None:
        for rid in request_ids:
            for fn in self.listeners:
                fn(rid)

    # ---- devices ----

    def put_device(self, dev: Device) -> None:
        with self.env.begin(write=True) as txn:
            old = txn.get(b"d/" + dev.link_id)
            if old is not None:
                txn.delete(b"p/" + Device.load(old).pseudonym)
            txn.put(b"d/" + dev.link_id, dev.dump())
            txn.put(b"p/" + dev.pseudonym, dev.link_id)

    def device(self, link_id: bytes) -> Device | None:
        with self.env.begin() as txn:
            raw = txn.get(b"d/" + link_id)
        return self._device_of(raw) if raw is not None else None

    def device_by_pseudonym(self, pseudonym: bytes) -> Device | None:
        with self.env.begin() as txn:
            link = txn.get(b"p/" + pseudonym)
            raw = txn.get(b"d/" + link) if link is not None else None
        return self._device_of(raw) if raw is not None else None

    def _device_of(self, raw: bytes) -> Device:
        """The Device of a stored record, parsed (with its manifest) once per distinct
        record: every call and every wake reads one. Keyed by the record's bytes, so a
        re-paired device is a new entry; Device records are values (never changed in
        place: put_device writes a new one)."""
        dev = self._device_cache.get(raw)
        if dev is None:
            if len(self._device_cache) >= DEVICE_CACHE_SIZE:
                self._device_cache.clear()  # bounded; refills with the devices in use
            dev = self._device_cache[raw] = Device.load(raw)
        return dev

    def devices(self) -> list[Device]:
        return [Device.load(v) for _, v in self._scan(b"d/")]

    def remove_device(self, link_id: bytes, now_ms: int, why: str = "the device was unpaired") -> Device | None:
        """Unpair: cancel its active requests (clients are told why), drop its cache and state."""
        changed: list[RequestRecord] = []
        with self.env.begin(write=True) as txn:
            raw = txn.get(b"d/" + link_id)
            if raw is None:
                return None
            dev = Device.load(raw)
            for _, rid in list(_prefix(txn, b"q/" + link_id)):
                rec = RequestRecord.load(txn.get(b"r/" + rid))
                rec.state, rec.error, rec.done_ms = State.CANCELLED, why, now_ms
                self._finish(txn, rec)
                changed.append(rec)
            for prefix in (b"c/" + link_id, b"n/" + link_id, b"s/" + link_id, b"l/" + link_id, b"vc/" + link_id):
                for key, _ in list(_prefix(txn, prefix)):
                    txn.delete(key)
            txn.delete(b"d/" + link_id)
            txn.delete(b"p/" + dev.pseudonym)
        with self._hint_lock:
            self._contacts.pop(link_id, None)
            self._dirty.pop(link_id, None)
        self._notify(r.request_id for r in changed)
        return dev

    # ---- requests ----

    def enqueue(self, rec: RequestRecord, max_depth: int, now_ms: int,
                token_for_seq: Callable[[int], bytes]) -> tuple[RequestRecord, bool]:
        """Append a request to its device's queue (durable before return).

        The request sequence is ``max(now_ms, last + 1)`` per device, chosen in
        the same transaction, so sequences rise in queue order (the device
        refuses a sequence not above the last it accepted). Returns the record
        and whether it is new: a known request id returns the stored record
        (idempotence) when the same token made it, else raises Conflict.
        Raises QueueFull at ``max_depth`` active requests.
        """
        with self.env.begin(write=True) as txn:
            out = self._enqueue_in(txn, rec, max_depth, now_ms, token_for_seq)
        if out[1]:
            self._notify([rec.request_id])
        return out

    def enqueue_many(self, items: list[tuple[RequestRecord, int, int, Callable[[int], bytes]]]
                     ) -> list[tuple[RequestRecord, bool] | Exception]:
        """:meth:`enqueue` for several requests in ONE write transaction (one
        commit, one fsync: group commit), each with the semantics of
        :meth:`enqueue` in list order. Per item: ``(record, new)`` or the
        exception refusing it (QueueFull, Conflict, NotFound, a failing
        ``token_for_seq``); a refused item writes nothing. Everything returned
        is durable: this returns only after the commit, and a failing commit
        raises (then nothing of the batch was stored)."""
        with self.env.begin(write=True) as txn:
            out, changed = self._op_enqueue(txn, items)
        self._notify(changed)
        return _fatten(items, out)

    async def enqueue_many_async(self, items: list[tuple[RequestRecord, int, int, Callable[[int], bytes]]],
                                 urgent: bool = False) -> list[tuple[RequestRecord, bool] | Exception]:
        """:meth:`enqueue_many` by the group-commit writer: same semantics
        and per-item results, but the event loop does not wait for the fsync, and
        batches submitted meanwhile (and link writes) share the next commit.
        ``token_for_seq`` runs in the writer (a process writer needs it picklable,
        as auth.RequestTokenFor is). ``urgent``: see :meth:`write`."""
        return _fatten(items, await self.write(("enqueue", (items,)), urgent))

    def _enqueue_in(self, txn: lmdb.Transaction, rec: RequestRecord, max_depth: int, now_ms: int,
                    token_for_seq: Callable[[int], bytes]) -> tuple[RequestRecord, bool]:
        """Checks first, then the writes: an exception leaves ``txn`` untouched
        (apart from writes of the caller's own earlier items)."""
        link = rec.link_id
        old = txn.get(b"r/" + rec.request_id)
        if old is not None:
            prev = RequestRecord.load(old)
            same = (prev.link_id, prev.service, prev.method, prev.args, prev.token_digest) == \
                (link, rec.service, rec.method, rec.args, rec.token_digest)
            if not same:
                raise Conflict("request id already used for a different call")
            return prev, False
        if txn.get(b"d/" + link) is None:
            raise NotFound("no such device")
        depth = _int(txn.get(b"n/" + link))
        if depth >= max_depth:
            raise QueueFull(f"the device's queue is full ({depth} of {max_depth} requests waiting); "
                            "retry after it wakes")
        seq = max(now_ms, _int(txn.get(b"s/" + link)) + 1)
        token = token_for_seq(seq)
        rec.seq, rec.state, rec.request_token = seq, State.QUEUED, token
        raw = rec.dump()
        txn.put(b"s/" + link, be64(seq))
        txn.put(b"n/" + link, be64(depth + 1))
        txn.put(b"q/" + link + be64(seq), rec.request_id)
        txn.put(b"x/" + be64(rec.expires_at_ms) + rec.request_id, b"")
        txn.put(b"r/" + rec.request_id, raw)
        return rec, True

    def put_finished(self, rec: RequestRecord) -> None:
        """Store a request that is already finished (a cache hit, a forwarding stub)."""
        with self.env.begin(write=True) as txn:
            txn.put(b"r/" + rec.request_id, rec.dump())
            txn.put(b"g/" + be64(rec.done_ms + self.retention_ms) + rec.request_id, b"")

    def get(self, request_id: bytes) -> RequestRecord | None:
        with self.env.begin() as txn:
            raw = txn.get(b"r/" + request_id)
        return RequestRecord.load(raw) if raw is not None else None

    def depth(self, link_id: bytes) -> int:
        with self.env.begin() as txn:
            return _int(txn.get(b"n/" + link_id))

    def depths(self) -> dict[bytes, int]:
        return {k[2:]: _int(v) for k, v in self._scan(b"n/") if _int(v)}

    def _finish(self, txn: lmdb.Transaction, rec: RequestRecord) -> None:
        """Move an active request to a terminal state inside ``txn``."""
        txn.delete(b"q/" + rec.link_id + be64(rec.seq))
        txn.delete(b"x/" + be64(rec.expires_at_ms) + rec.request_id)
        depth = _int(txn.get(b"n/" + rec.link_id))
        txn.put(b"n/" + rec.link_id, be64(max(depth - 1, 0)))
        txn.put(b"r/" + rec.request_id, rec.dump())
        txn.put(b"g/" + be64(rec.done_ms + self.retention_ms) + rec.request_id, b"")

    def cancel(self, request_id: bytes, now_ms: int) -> RequestRecord:
        with self.env.begin(write=True) as txn:
            raw = txn.get(b"r/" + request_id)
            if raw is None:
                raise NotFound("no such request")
            rec = RequestRecord.load(raw)
            if not rec.st.active:
                return rec
            rec.state, rec.error, rec.done_ms = State.CANCELLED, "cancelled by the client", now_ms
            self._finish(txn, rec)
        self._notify([rec.request_id])
        return rec

    def expire_due(self, now_ms: int, limit: int = 1000) -> list[RequestRecord]:
        """Dead-letter active requests whose TTL passed; return them (clients are told)."""
        out: list[RequestRecord] = []
        with self.env.begin(write=True) as txn:
            for key, _ in list(_prefix(txn, b"x/")):
                if len(out) >= limit or _BE64.unpack(key[2:10])[0] > now_ms:
                    break
                rec = RequestRecord.load(txn.get(b"r/" + key[10:]))
                rec.state, rec.done_ms = State.EXPIRED, now_ms
                rec.error = "expired before the device answered (dead-lettered)"
                self._finish(txn, rec)
                out.append(rec)
        self._notify(r.request_id for r in out)
        return out

    def purge_finished(self, now_ms: int, limit: int = 10_000) -> int:
        """Forget response slots older than the retention period."""
        n = 0
        with self.env.begin(write=True) as txn:
            for key, _ in list(_prefix(txn, b"g/")):
                if n >= limit or _BE64.unpack(key[2:10])[0] > now_ms:
                    break
                raw = txn.get(b"r/" + key[10:])
                if raw is not None and not RequestRecord.load(raw).st.active:
                    txn.delete(b"r/" + key[10:])
                txn.delete(key)
                n += 1
        return n

    # ---- the link side ----

    def pending(self, link_id: bytes, max_bytes: int, now_ms: int) -> tuple[list[QueuedRequest], bool]:
        """Active, unexpired requests in queue order (delivered-but-unanswered
        ones again: at-least-once, the device drops duplicates)."""
        out: list[QueuedRequest] = []
        size = 0
        with self.env.begin() as txn:
            for _, rid in _prefix(txn, b"q/" + link_id):
                rec = RequestRecord.load(txn.get(b"r/" + rid))
                if rec.expires_at_ms <= now_ms:
                    continue  # the sweeper dead-letters it
                cost = len(rec.args) + len(rec.request_token) + len(rec.service) + len(rec.method) + 64
                if out and size + cost > max_bytes:
                    return out, True
                out.append(rec.queued())
                size += cost
        return out, False

    def delivered(self, link_id: bytes, request_ids: list[bytes], now_ms: int) -> list[bytes]:
        """Mark sent requests delivered; returns the ids whose state changed."""
        with self.env.begin(write=True) as txn:
            changed = [r.request_id for r in self._delivered_in(txn, link_id, request_ids)]
        self._notify(changed)
        return changed

    async def delivered_async(self, link_id: bytes, request_ids: list[bytes], now_ms: int) -> list[bytes]:
        """:meth:`delivered` through the group-commit writer."""
        return await self.write(("delivered", (link_id, request_ids)))

    def _delivered_in(self, txn: lmdb.Transaction, link_id: bytes, request_ids: list[bytes]) -> list[RequestRecord]:
        changed = []
        for rid in request_ids:
            raw = txn.get(b"r/" + rid)
            if raw is None:
                continue
            rec = RequestRecord.load(raw)
            if rec.link_id == link_id and rec.st == State.QUEUED:
                rec.state = State.DELIVERED
                txn.put(b"r/" + rid, rec.dump())
                changed.append(rec)
        return changed

    def answered(self, link_id: bytes, answers: list[DeviceAnswer], now_ms: int
                 ) -> tuple[list[bytes], list[tuple[bytes, int]]]:
        """Store responses (durable before return). Returns every answer's id (all
        are acknowledged) and (id, final state) of the requests they finished;
        answers for unknown, finished or another device's requests are dropped."""
        with self.env.begin(write=True) as txn:
            changed = self._answered_in(txn, link_id, answers, now_ms)
        self._notify(r.request_id for r in changed)
        return [a.request_id for a in answers], _finished(changed)

    async def answered_async(self, link_id: bytes, answers: list[DeviceAnswer],
                             now_ms: int) -> tuple[list[bytes], list[tuple[bytes, int]]]:
        """:meth:`answered` through the group-commit writer."""
        return await self.write(("answered", (link_id, answers, now_ms)))

    def _answered_in(self, txn: lmdb.Transaction, link_id: bytes, answers: list[DeviceAnswer],
                     now_ms: int) -> list[RequestRecord]:
        changed = []
        raw_dev = txn.get(b"d/" + link_id)
        manifest = Manifest.parse(Device.load(raw_dev).manifest) if raw_dev is not None else None
        for ans in answers:
            raw = txn.get(b"r/" + ans.request_id)
            if raw is None:
                continue
            rec = RequestRecord.load(raw)
            if rec.link_id != link_id or not rec.st.active:
                continue  # a device never answers for another's requests
            rec.status, rec.payload, rec.error, rec.done_ms = ans.status, ans.payload, ans.error, now_ms
            rec.state = State.DONE if ans.status == 0 else (
                State.EXPIRED if ans.status == DEVICE_EXPIRED_STATUS else State.FAILED)
            self._finish(txn, rec)
            changed.append(rec)
            method = manifest.method(rec.service, rec.method) if manifest else None
            if ans.status == 0 and method is not None and method.cache_max_age_s and not method.mutating:
                entry = CacheEntry(ans.payload, now_ms, method.cache_max_age_s)
                txn.put(cache_key(link_id, rec.service, rec.method, rec.args), entry.dump())
        return changed

    def cached(self, link_id: bytes, service: str, method: str, args: bytes, now_ms: int) -> CacheEntry | None:
        with self.env.begin() as txn:
            raw = txn.get(cache_key(link_id, service, method, args))
        if raw is None:
            return None
        entry = CacheEntry.load(raw)
        return entry if now_ms < entry.stored_ms + entry.max_age_s * 1000 else None

    # ---- tickets ----

    def store_ticket(self, ticket_id: bytes, ticket: Ticket) -> None:
        with self.env.begin(write=True) as txn:
            self._rotate_ticket_in(txn, None, ticket_id, ticket)

    def take_ticket(self, ticket_id: bytes, now_ms: int) -> Ticket | None:
        with self.env.begin(write=True) as txn:
            raw = txn.pop(b"t/" + ticket_id)
        return _ticket(raw, now_ms)

    def ticket(self, ticket_id: bytes, now_ms: int) -> Ticket | None:
        """Read a ticket without spending it (None when unknown or expired)."""
        with self.env.begin() as txn:
            return _ticket(txn.get(b"t/" + ticket_id), now_ms)

    async def rotate_ticket_async(self, spent: bytes | None, ticket_id: bytes | None,
                                  ticket: Ticket | None) -> None:
        """Delete ``spent`` and store ``ticket`` in one transaction (group commit)."""
        await self.write(("rotate_ticket", (spent, ticket_id, ticket)))

    def _rotate_ticket_in(self, txn: lmdb.Transaction, spent: bytes | None, ticket_id: bytes | None,
                          ticket: Ticket | None) -> None:
        if spent is not None:
            txn.delete(b"t/" + spent)
        if ticket_id is not None and ticket is not None:
            txn.put(b"t/" + ticket_id, RECORD_FORMAT + _PACK(
                [ticket.link_id, ticket.resumption_secret, ticket.expires_at_ms]))

    def purge_tickets(self, now_ms: int) -> int:
        n = 0
        with self.env.begin(write=True) as txn:
            for key, raw in list(_prefix(txn, b"t/")):
                if _ticket_fields(raw)[2] <= now_ms:
                    txn.delete(key)
                    n += 1
        return n

    # ---- contact and liveness ----

    def contact(self, link_id: bytes, now_ms: int, sleep_s: int | None) -> None:
        """Record a contact durably now (one commit). The link path uses
        :meth:`note_contact` (a hint) instead."""
        with self.env.begin(write=True) as txn:
            self._put_contact(txn, link_id, now_ms, sleep_s)
        with self._hint_lock:
            self._contacts.pop(link_id, None)
            self._dirty.pop(link_id, None)

    def note_contact(self, link_id: bytes, now_ms: int, sleep_s: int | None) -> None:
        """Record a contact as a hint: visible to reads at once, on disk with the
        next group commit or within ``contact_flush_s`` (see the module docstring)."""
        with self._hint_lock:
            self._contacts[link_id] = (now_ms, sleep_s)
            self._dirty.setdefault(link_id, time.monotonic())
        if self.writer is not None:
            self.writer.start()  # its idle tick persists hints when nothing else does

    def flush_contacts(self) -> int:
        """Persist the contact hints now (one commit); returns how many."""
        with self.env.begin(write=True) as txn:
            return self._flush_contacts_in(txn)

    def _hints_due(self) -> bool:
        """Some hint has waited ``contact_flush_s`` for the disk."""
        with self._hint_lock:
            return bool(self._dirty) and time.monotonic() - min(self._dirty.values()) >= self.contact_flush_s

    def _flush_contacts_if_old(self) -> None:
        if self._hints_due():
            self.flush_contacts()

    def _take_hints(self) -> dict[bytes, tuple[int, int | None]]:
        """The hints not on disk yet (they count as on disk from here on)."""
        with self._hint_lock:
            dirty, self._dirty = self._dirty, {}
            return {link: self._contacts[link] for link in dirty if link in self._contacts}

    def _flush_contacts_in(self, txn: lmdb.Transaction) -> int:
        return self._put_hints_in(txn, self._take_hints())

    def _put_hints_in(self, txn: lmdb.Transaction, hints: dict[bytes, tuple[int, int | None]]) -> int:
        for link, (last_ms, sleep_s) in hints.items():
            if txn.get(b"d/" + link) is not None:  # not for a device unpaired meanwhile
                self._put_contact(txn, link, last_ms, sleep_s)
        return len(hints)

    def _put_contact(self, txn: lmdb.Transaction, link_id: bytes, now_ms: int, sleep_s: int | None) -> None:
        raw = txn.get(b"l/" + link_id)
        c = Contact.load(raw) if raw is not None else Contact()
        if now_ms < c.last_ms:
            return  # an older hint
        c.last_ms, c.sleep_s = now_ms, sleep_s
        txn.put(b"l/" + link_id, c.dump())

    def _with_hint(self, link_id: bytes, c: Contact | None) -> Contact | None:
        hint = self._contacts.get(link_id)
        if hint is None or (c is not None and c.last_ms > hint[0]):
            return c
        out = Contact(reported_s=c.reported_s) if c is not None else Contact()
        out.last_ms, out.sleep_s = hint
        return out

    def last_contact(self, link_id: bytes) -> Contact | None:
        with self.env.begin() as txn:
            raw = txn.get(b"l/" + link_id)
        return self._with_hint(link_id, Contact.load(raw) if raw is not None else None)

    def liveness_due(self, granularity_s: int) -> list[tuple[bytes, bytes, int]]:
        """(link id, pseudonym, bucket) for devices seen in a bucket not yet reported."""
        out = []
        with self.env.begin() as txn:
            contacts = {key[2:]: Contact.load(raw) for key, raw in _prefix(txn, b"l/")}
            for link in list(self._contacts):
                contacts.setdefault(link, None)
            for link, c in contacts.items():
                c = self._with_hint(link, c)
                if c is None:
                    continue
                bucket = c.last_ms // 1000 // granularity_s * granularity_s
                dev = txn.get(b"d/" + link)
                if bucket > c.reported_s and dev is not None:
                    out.append((link, Device.load(dev).pseudonym, bucket))
        return out

    def liveness_reported(self, entries: list[tuple[bytes, bytes, int]]) -> None:
        with self.env.begin(write=True) as txn:
            self._flush_contacts_in(txn)  # so the records below exist
            for link, _, bucket in entries:
                raw = txn.get(b"l/" + link)
                if raw is not None:
                    c = Contact.load(raw)
                    c.reported_s = max(c.reported_s, bucket)
                    txn.put(b"l/" + link, c.dump())

    # ---- revocations ----

    def add_revocations(self, records: Iterable[tuple[bytes, int]]) -> int:
        """Append new revoked tags to the log devices are told from; returns how many were new."""
        n = 0
        with self.env.begin(write=True) as txn:
            last = _int(txn.get(b"m/revlog"))
            for tag, expires in records:
                if txn.get(b"vt/" + tag) is not None:
                    continue
                last += 1
                txn.put(b"v/" + be64(last), tag + be64(max(expires, 0)))
                txn.put(b"vt/" + tag, b"")
                n += 1
            if n:
                txn.put(b"m/revlog", be64(last))
        return n

    def revoked_since_last_wake(self, link_id: bytes, now_s: int) -> list[bytes]:
        """Unexpired tags logged since the device was last told; advances its cursor."""
        with self.env.begin(write=True) as txn:
            tags, last = self._revocations_in(txn, link_id, now_s)
            self._revocations_sent_in(txn, link_id, last)
        return tags

    def revocations(self, link_id: bytes, now_s: int) -> tuple[list[bytes], int]:
        """Unexpired tags logged since the device was last told, and the log
        position to pass to :meth:`revocations_sent_async` once it has been."""
        with self.env.begin() as txn:
            return self._revocations_in(txn, link_id, now_s)

    async def revocations_sent_async(self, link_id: bytes, position: int) -> None:
        await self.write(("revocations_sent", (link_id, position)))

    def _revocations_in(self, txn: lmdb.Transaction, link_id: bytes, now_s: int) -> tuple[list[bytes], int]:
        cursor = _int(txn.get(b"vc/" + link_id))
        tags, last = [], cursor
        for key, value in _prefix(txn, b"v/", start=b"v/" + be64(cursor + 1)):
            last = _BE64.unpack(key[2:])[0]
            if _BE64.unpack(value[32:])[0] > now_s:
                tags.append(value[:32])
        return tags, last

    def _revocations_sent_in(self, txn: lmdb.Transaction, link_id: bytes, position: int) -> None:
        if position > _int(txn.get(b"vc/" + link_id)) and txn.get(b"d/" + link_id) is not None:
            txn.put(b"vc/" + link_id, be64(position))

    # ---- metadata ----

    def meta(self, name: str) -> bytes | None:
        with self.env.begin() as txn:
            return txn.get(b"m/" + name.encode())

    def _scan(self, prefix: bytes) -> list[tuple[bytes, bytes]]:
        with self.env.begin() as txn:
            return list(_prefix(txn, prefix))


def _ticket_fields(raw: bytes) -> tuple[bytes, bytes, int]:
    """(link id, resumption secret, expiry ms) of a stored ticket (record or older JSON)."""
    if raw[:1] == RECORD_FORMAT:
        link_id, secret, exp = _UNPACK(raw[1:])
        return link_id, secret, exp
    d = json.loads(raw)
    return _unb(d["link_id"]), _unb(d["r"]), d["exp"]


def _ticket(raw: bytes | None, now_ms: int) -> Ticket | None:
    if raw is None:
        return None
    link_id, secret, exp = _ticket_fields(raw)
    if exp <= now_ms:
        return None
    return Ticket(link_id, secret, exp)


def _int(raw: bytes | None) -> int:
    return _BE64.unpack(raw)[0] if raw else 0


def _prefix(txn: lmdb.Transaction, prefix: bytes, start: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
    cur = txn.cursor()
    if not cur.set_range(start or prefix):
        return
    for key, value in cur:
        if not key.startswith(prefix):
            return
        yield bytes(key), bytes(value)


def new_id() -> bytes:
    return os.urandom(16)
