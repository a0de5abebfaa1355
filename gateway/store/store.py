"""The gateway's durable store: paired devices, request queues, response slots,
tickets, contact, the revocation log. :class:`GatewayStore` is what the rest
of the gateway sees: reads, and write submission.

Why LMDB: it is already the registry's store (one dependency, one set of
operational habits); a write transaction is atomic and, with sync on, fsync'd
before ``commit()`` returns, so "acknowledged" means "on disk"; it is a
copy-on-write B+tree, so a kill -9 at any instant leaves the last committed
state with no recovery pass; reads never block the writer, and ordered keys
(keys.py) make per-device queues and expiry indexes plain prefix scans.

Reads run on the caller's thread (the event loop) in LMDB read
transactions: microseconds, no fsync. This process opens the environment
read-only: it cannot write at all.

Writes have exactly one writer: a child process (child.py, driven by
writer.py) that applies operations (ops.py: one handler per write, in one
table) with group commit. ``await store.write(name, *args)`` or one of the
named wrappers below submits one; it returns once the commit holding it is
fsync'd, and listeners then hear which requests it changed. Writes submitted
in one loop turn (or while a commit runs) share the next transaction; each
runs in a nested transaction of its own, so one that fails is rolled back
alone. Operations are applied in the order they were submitted.

Last contact is a hint (:meth:`GatewayStore.note_contact`): kept in memory,
seen by every read at once, persisted with the next write or at most
``contact_flush_s`` later, and at close. A crash loses at most that much of
it; nothing acknowledged depends on it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path

from . import keys
from .kv import DEFAULT_MAP_SIZE, LmdbKV, open_env, reserve_check
from .ops import EXPIRE_LIMIT, PURGE_LIMIT, token_chain
from .records import CacheEntry, Contact, Device, RequestRecord, State, load_ticket, new_id
from .writer import Writer, WriterDied
from ..errors import MapFull, StorageFull, StoreIOFailed
from ..twins.model import Twin
from ..link.backend import DeviceAnswer, QueuedRequest, Ticket

__all__ = ["ACTIVE_WINDOW_MS", "CacheEntry", "Contact", "Device", "GatewayStore", "RequestRecord", "State",
           "new_id"]

ACTIVE_WINDOW_MS = 30_000  # a device seen this recently with no BYE is in a session
CONTACT_FLUSH_S = 5.0  # contact hints reach the disk at most this late (when no other write carries them)
DEVICE_CACHE_SIZE = 4096  # parsed device records kept (a few MB at most)
RESULT_RETENTION_MS = 24 * 3600 * 1000


class GatewayStore:
    """The store (see the module docstring): reads inline, writes awaited."""

    def __init__(self, path: Path | str, map_size: int = DEFAULT_MAP_SIZE,
                 result_retention_ms: int = RESULT_RETENTION_MS, contact_flush_s: float = CONTACT_FLUSH_S) -> None:
        self.path, self.map_size, self.retention_ms = Path(path), map_size, result_retention_ms
        self.env = open_env(self.path, map_size, readonly=True)
        self.writer = Writer(str(self.path), map_size, result_retention_ms, self._take_hints, self._hints_due)
        self.listeners: list[Callable[[bytes], None]] = []  # told the id of each request a write changed
        self.contact_flush_s = contact_flush_s
        self._device_cache: dict[bytes, Device] = {}
        self._contacts: dict[bytes, tuple[int, int | None]] = {}  # hints: link -> (last_ms, sleep_s)
        self._dirty: dict[bytes, float] = {}  # hints not sent to the writer yet: link -> monotonic time noted
        self._open = True
        self._expire_step = EXPIRE_LIMIT  # requests one sweep step dead-letters (see sweep_expired)
        # faults in force (cause -> reason) and who hears of each change (cause, reason; None: all cleared)
        self.faults: dict[str, str] = {}
        self.fault_listeners: list[Callable[[str | None, str], None]] = []

    def _fault(self, cause: str | None, reason: str) -> None:
        if cause is None:
            self.faults.clear()
        else:
            self.faults[cause] = reason
        for fn in self.fault_listeners:
            fn(cause, reason)

    def close(self) -> None:
        """Have the writer commit what was submitted and the contact hints, then close (idempotent)."""
        if self._open:
            self._open = False
            try:
                self.writer.close()
            finally:
                self.env.close()

    # ---- writing ----

    async def write(self, op: str, *args: object, urgent: bool = False) -> object:
        """Have the writer run operation ``op`` (ops.HANDLERS) with plain
        ``args``; return its result once the commit holding it is fsync'd
        (raise what it raised; WriterDied when the writer failed first).

        ``urgent``: hand ``op`` to the writer now rather than with the rest of
        this loop turn's writes. For a caller that has gathered a batch already
        (a SubmitBatch call): the writer starts on it while the loop works on
        the next call, so commits and the loop's work overlap instead of taking
        turns."""
        try:
            result, changed = await self.writer.submit(op, args, urgent)
        except (StorageFull, StoreIOFailed, WriterDied) as exc:  # a fault of the store, not of this write
            self._fault(exc.reason, str(exc))
            raise
        if self.faults and self._writable_again():  # a commit went through: what kept the store from writing is gone
            self._fault(None, "")
        for rid in changed:
            for fn in self.listeners:
                fn(rid)
        return result

    def _writable_again(self) -> bool:
        """After a commit went through: do the faults in force end? A full map ends only
        once new requests fit again (below the reserve, kv.reserve_check): the commits of
        the requests it let finish go through while new ones are still refused."""
        if MapFull.reason not in self.faults:
            return True
        with self.env.begin() as txn:
            return reserve_check(self.env.info()["map_size"], txn)() is None

    async def put_device(self, dev: Device) -> None:
        """Pair (or re-pair) a device."""
        await self.write("put_device", dev.dump())

    async def remove_device(self, link_id: bytes, now_ms: int, why: str = "the device was unpaired") -> Device | None:
        """Unpair: cancel its active requests (clients are told ``why``), drop its cache and state."""
        raw = await self.write("remove_device", link_id, now_ms, why)
        self._contacts.pop(link_id, None)
        self._dirty.pop(link_id, None)
        return Device.load(raw) if raw is not None else None

    async def enqueue(self, items: list[tuple[RequestRecord, int] | tuple[RequestRecord, int, tuple[bytes, ...]]],
                      urgent: bool = False) -> list[tuple[RequestRecord, bool] | Exception]:
        """Append requests, each (QUEUED record with its sequence and request
        token, maximum queue depth), in one operation. Per item: (record, new)
        (a known request id made by the same call returns the stored record,
        not new) or the exception refusing it (Conflict, NotFound, QueueFull,
        StaleSequence); a refused item writes nothing. Raises when the commit
        fails (nothing of it is stored). ``urgent``: see :meth:`write`."""
        out = await self.write("enqueue", [[item[0].dump(), item[1], list(item[2]) if len(item) > 2 else []]
                                           for item in items], urgent=urgent)
        return [got if isinstance(got, BaseException) else (item[0], True) if got is None
                else (RequestRecord.load(got), False) for item, got in zip(items, out)]

    async def put_finished(self, rec: RequestRecord, chain: tuple[bytes, ...] = ()) -> None:
        """Store a request that is already finished (a cache hit, a forwarding
        stub; a stub's ``chain`` files it for revocation: ops.put_finished)."""
        await self.write("put_finished", rec.dump(), list(chain) or None)

    async def revoke_requests(self, hashes: list[bytes], now_ms: int) -> tuple[list[bytes], list[tuple[bytes, str]]]:
        """End REVOKED the active requests made with a token whose chain holds
        one of ``hashes``; returns their ids and the (id, gateway) of forwards."""
        ended, forwards = await self.write("revoke_requests", list(hashes), now_ms, urgent=True)
        return ended, [(rid, gid) for rid, gid in forwards]

    async def revoke_request(self, request_id: bytes, via: str, now_ms: int) -> RequestRecord | None:
        """A forwarding gateway's revocation cancel (ops.revoke_request)."""
        raw = await self.write("revoke_request", request_id, via, now_ms, urgent=True)
        return RequestRecord.load(raw) if raw is not None else None

    async def cancel(self, request_id: bytes, now_ms: int) -> RequestRecord:
        """Cancel an active request (NotFound when unknown); returns its record."""
        return RequestRecord.load(await self.write("cancel", request_id, now_ms))

    async def expire_due(self, now_ms: int, limit: int = EXPIRE_LIMIT) -> list[RequestRecord]:
        """Dead-letter active requests whose TTL passed; return them (clients are told)."""
        return [RequestRecord.load(raw) for raw in await self.write("expire_due", now_ms, limit)]

    async def sweep_expired(self, now_ms: int) -> list[RequestRecord]:
        """:meth:`expire_due` in steps small enough to fit a full map. Dead-lettering
        rewrites records before their old pages are free, so with the map full a step of
        EXPIRE_LIMIT fails every time and nothing ever frees room: on MapFull the step
        halves (down to one request) and, once steps succeed, grows back."""
        while True:
            try:
                expired = await self.expire_due(now_ms, self._expire_step)
            except MapFull:
                if self._expire_step == 1:
                    raise
                self._expire_step = max(1, self._expire_step // 2)
                continue
            self._expire_step = min(EXPIRE_LIMIT, self._expire_step * 2)
            return expired

    async def purge_finished(self, now_ms: int, limit: int = PURGE_LIMIT) -> int:
        """Forget response slots older than the retention period."""
        return await self.write("purge_finished", now_ms, limit)

    async def delivered(self, link_id: bytes, request_ids: list[bytes]) -> list[bytes]:
        """Mark sent requests delivered; returns the ids whose state changed."""
        return await self.write("delivered", link_id, request_ids)

    async def answered(self, link_id: bytes, answers: list[DeviceAnswer], now_ms: int
                       ) -> tuple[list[bytes], list[tuple[bytes, int]]]:
        """Store responses. Returns every answer's id (all are acknowledged) and
        (id, final state) of the requests they finished; answers for unknown,
        finished or another device's requests are dropped."""
        ids, finished = await self.write("answered", link_id,
                                         [[a.request_id, a.status, a.payload, a.error] for a in answers], now_ms)
        return ids, [(rid, state) for rid, state in finished]

    async def rotate_ticket(self, spent: bytes | None, ticket_id: bytes | None, ticket: Ticket | None) -> None:
        """Delete ticket ``spent`` and store ``ticket`` in one transaction (either may be None)."""
        plain = ([ticket.link_id, ticket.resumption_secret, ticket.expires_at_ms, ticket.root_fp]
                 if ticket is not None else None)
        await self.write("rotate_ticket", spent, ticket_id, plain)

    async def purge_tickets(self, now_ms: int) -> int:
        return await self.write("purge_tickets", now_ms)

    async def liveness_reported(self, entries: list[tuple[bytes, bytes, int]]) -> None:
        """The (link id, pseudonym, bucket) entries of :meth:`liveness_due` are on chain."""
        await self.write("liveness_reported", [[link, bucket] for link, _, bucket in entries])

    async def add_revocations(self, records: Iterable[tuple[bytes, int]]) -> int:
        """Append new revoked tags to the log devices are told from; returns how many were new."""
        return await self.write("add_revocations", [[tag, expires] for tag, expires in records])

    async def revocations_sent(self, link_id: bytes, position: int) -> None:
        """The device was told the log up to ``position`` (from :meth:`revocations`)."""
        await self.write("revocations_sent", link_id, position)

    # ---- devices ----

    def device(self, link_id: bytes) -> Device | None:
        with self.env.begin() as txn:
            raw = txn.get(keys.device(link_id))
        return self._device_of(raw) if raw is not None else None

    def snapshot(self):
        """A read transaction for several reads in one step of the loop (use it
        as a context manager; never hold it across an await)."""
        return self.env.begin()

    def device_by_pseudonym(self, pseudonym: bytes, txn=None) -> Device | None:
        """The device paired under ``pseudonym``; read in ``txn`` (:meth:`snapshot`) when given."""
        if txn is None:
            with self.env.begin() as txn:
                return self.device_by_pseudonym(pseudonym, txn)
        link = txn.get(keys.pseudonym(pseudonym))
        raw = txn.get(keys.device(link)) if link is not None else None
        return self._device_of(raw) if raw is not None else None

    def _device_of(self, raw: bytes) -> Device:
        """The Device of a stored record, parsed (with its manifest) once per distinct
        record: every call and every wake reads one. Keyed by the record's bytes, so a
        re-paired device is a new entry (Device records are values)."""
        dev = self._device_cache.get(raw)
        if dev is None:
            if len(self._device_cache) >= DEVICE_CACHE_SIZE:
                self._device_cache.clear()  # bounded; refills with the devices in use
            dev = self._device_cache[raw] = Device.load(raw)
        return dev

    def devices(self) -> list[Device]:
        return [Device.load(v) for _, v in self._scan(keys.DEVICE)]

    # ---- requests ----

    def get(self, request_id: bytes) -> RequestRecord | None:
        with self.env.begin() as txn:
            raw = txn.get(keys.request(request_id))
        return RequestRecord.load(raw) if raw is not None else None

    def depth(self, link_id: bytes) -> int:
        with self.env.begin() as txn:
            return keys.int_of(txn.get(keys.depth(link_id)))

    def depths(self) -> dict[bytes, int]:
        return {k[len(keys.DEPTH):]: keys.int_of(v) for k, v in self._scan(keys.DEPTH) if keys.int_of(v)}

    def last_sequence(self, link_id: bytes) -> int:
        """The device's last request sequence on disk (0 when none)."""
        with self.env.begin() as txn:
            return keys.int_of(txn.get(keys.last_seq(link_id)))

    def pending(self, link_id: bytes, max_bytes: int, now_ms: int) -> tuple[list[QueuedRequest], bool]:
        """Active, unexpired requests in queue order, about ``max_bytes`` of them
        (at least one), and whether more wait. Delivered-but-unanswered ones come
        again: at-least-once, the device drops duplicates."""
        out: list[QueuedRequest] = []
        size = 0
        with self.env.begin() as txn:
            for _, rid in LmdbKV(txn).scan(keys.queue(link_id)):
                rec = RequestRecord.load(txn.get(keys.request(rid)))
                if rec.expires_at_ms <= now_ms:
                    continue  # the sweeper dead-letters it
                cost = len(rec.args) + len(rec.request_token) + len(rec.service) + len(rec.method) + 64
                if out and size + cost > max_bytes:
                    return out, True
                out.append(rec.queued(token_chain(LmdbKV(txn), rec.token_digest)))
                size += cost
        return out, False

    def cached(self, link_id: bytes, service: str, method: str, args: bytes, now_ms: int) -> CacheEntry | None:
        """A fresh cached answer to this call, or None."""
        with self.env.begin() as txn:
            raw = txn.get(keys.cache(link_id, service, method, args))
        entry = CacheEntry.load(raw) if raw is not None else None
        return entry if entry is not None and entry.fresh(now_ms) else None

    # ---- tickets ----

    def ticket(self, ticket_id: bytes, now_ms: int) -> Ticket | None:
        """A ticket (without spending it), or None when unknown or expired."""
        with self.env.begin() as txn:
            raw = txn.get(keys.ticket(ticket_id))
        ticket = load_ticket(raw) if raw is not None else None
        return ticket if ticket is not None and ticket.expires_at_ms > now_ms else None

    # ---- contact and liveness ----

    def note_contact(self, link_id: bytes, now_ms: int, sleep_s: int | None) -> None:
        """Record a contact as a hint: visible to reads at once, on disk with the
        next write or within ``contact_flush_s`` (see the module docstring)."""
        self._contacts[link_id] = (now_ms, sleep_s)
        self._dirty.setdefault(link_id, time.monotonic())
        self.writer.start()  # its idle tick persists hints when nothing else does

    def _hints_due(self) -> bool:
        """Some hint has waited ``contact_flush_s`` for the disk."""
        return bool(self._dirty) and time.monotonic() - min(self._dirty.values()) >= self.contact_flush_s

    def _take_hints(self) -> list[list]:
        """The hints not sent to the writer yet, as the ``contacts`` operation
        takes them (they count as sent from here on)."""
        dirty, self._dirty = self._dirty, {}
        return [[link, *self._contacts[link]] for link in dirty if link in self._contacts]

    def _with_hint(self, link_id: bytes, c: Contact | None) -> Contact | None:
        hint = self._contacts.get(link_id)
        if hint is None or (c is not None and c.last_ms > hint[0]):
            return c
        out = Contact(reported_s=c.reported_s) if c is not None else Contact()
        out.last_ms, out.sleep_s = hint
        return out

    def last_contact(self, link_id: bytes) -> Contact | None:
        with self.env.begin() as txn:
            raw = txn.get(keys.contact(link_id))
        return self._with_hint(link_id, Contact.load(raw) if raw is not None else None)

    def liveness_due(self, granularity_s: int) -> list[tuple[bytes, bytes, int]]:
        """(link id, pseudonym, bucket) for devices seen in a bucket not yet reported."""
        out = []
        with self.env.begin() as txn:
            contacts: dict[bytes, Contact | None] = {
                key[len(keys.CONTACT):]: Contact.load(raw) for key, raw in LmdbKV(txn).scan(keys.CONTACT)}
            for link in self._contacts:
                contacts.setdefault(link, None)
            for link, c in contacts.items():
                c = self._with_hint(link, c)
                if c is None:
                    continue
                bucket = c.last_ms // 1000 // granularity_s * granularity_s
                dev = txn.get(keys.device(link))
                if bucket > c.reported_s and dev is not None:
                    out.append((link, Device.load(dev).pseudonym, bucket))
        return out

    # ---- revocations ----

    def revocations(self, link_id: bytes, now_s: int) -> tuple[list[bytes], int]:
        """Unexpired revocations logged since the device was last told, each
        its hash and be64 expiry (what the link carries), and the log position
        to pass to :meth:`revocations_sent` once it has been."""
        with self.env.begin() as txn:
            cursor = keys.int_of(txn.get(keys.revcursor(link_id)))
            tags, last = [], cursor
            for key, value in LmdbKV(txn).scan(keys.REVLOG, start=keys.revlog(cursor + 1)):
                last = keys.revlog_position(key)
                if keys.int_of(value[32:]) > now_s:
                    tags.append(value[:40])
        return tags, last

    # ---- twins (gateway/twins/model.py has the rules, twin_ops.py the writes) ----

    def twin(self, link_id: bytes) -> Twin | None:
        """The device's twin record, or None when nothing was ever set or reported."""
        with self.env.begin() as txn:
            raw = txn.get(keys.twin(link_id))
        return Twin.load(raw) if raw is not None else None

    async def twin_set(self, link_id: bytes, changes: list[tuple[str, bytes | None, int | None]],
                       chain: list[bytes], now_ms: int) -> list[tuple[str, int]]:
        """Desired changes, all or none; returns (key, version) of each (VersionConflict, BadRequest)."""
        out = await self.write("twin_set", link_id, [list(c) for c in changes], list(chain), now_ms)
        return [(k, v) for k, v in out]

    async def twin_report(self, link_id: bytes, applied: int, props: list[tuple[str, bytes]], replace: bool,
                          now_ms: int) -> bool:
        """A device's report; whether the twin changed."""
        return await self.write("twin_report", link_id, applied, [list(p) for p in props], replace, now_ms)

    async def twin_withdraw(self, hashes: list[bytes], now_ms: int) -> list[tuple[bytes, list[str]]]:
        """Revoked hashes: withdraw undelivered desired changes made under them."""
        return [(link, keys_back) for link, keys_back in await self.write("twin_withdraw", list(hashes), now_ms)]

    # ---- metadata ----

    def meta(self, name: str) -> bytes | None:
        with self.env.begin() as txn:
            return txn.get(keys.meta(name))

    def _scan(self, prefix: bytes) -> list[tuple[bytes, bytes]]:
        with self.env.begin() as txn:
            return list(LmdbKV(txn).scan(prefix))
