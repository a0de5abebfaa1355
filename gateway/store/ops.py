"""Every write to the gateway's store: one handler per operation, in ``HANDLERS``.

A handler is a pure function of a :class:`Ctx` (a transaction view, kv.py,
and the store's settings) and plain arguments (bytes, ints, strings, lists,
None: what crosses to the writer process, see wire.py). It returns an
``Outcome``: its result, plain data too, and the ids of the requests it
changed (the store tells its listeners). It raises to refuse; the writer runs
each operation in a nested transaction of its own, so a handler that raises
leaves nothing behind, whatever it wrote before raising.

Records cross as their bytes (records.py), never as objects. Keys are
built by keys.py only. Nothing here knows LMDB, processes or the event loop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from . import keys, twin_ops
from .kv import KV, room_unlimited
from .records import CacheEntry, Contact, Device, RequestRecord, State, dump_ticket, load_ticket
from ..errors import (
    BadRequest, Conflict, DiskFull, GatewayError, MapFull, StoreIOFailed, NotFound, Precondition, QueueFull, Unavailable,
    Unauthorized, VersionConflict,
)
from ..link.backend import Ticket
from ..manifest import Manifest
from ...firmware.caplets.cap_crypto import revocation_hash
from ...firmware.caplets.mint import load as load_token
from ...firmware.link.link_device import REVOKED

DEVICE_EXPIRED_STATUS = 5  # docs/LINK_PROTOCOL.md: "expired before it ran"
REVOKED_STATUS = REVOKED  # refused: its authorising token is revoked (by the device, or at delivery)
REVOKED_ERROR = "refused: the token that made this request (or one it derives from) was revoked"
EXPIRE_LIMIT = 1000  # requests one sweep dead-letters at most (one transaction stays short)
PURGE_LIMIT = 10_000  # response slots one purge forgets at most


class StaleSequence(RuntimeError):
    """An enqueue whose sequence is not above the device's last stored one:
    refused, so no sequence is ever used twice. ``last`` is the stored one."""

    def __init__(self, message: str, last: int = 0) -> None:
        super().__init__(message, last)
        self.last = last

    def __str__(self) -> str:
        return str(self.args[0])


# what a handler may raise or return as a refusal: these keep their class across the pipe
ERRORS: tuple[type[BaseException], ...] = (
    GatewayError, BadRequest, Unauthorized, NotFound, QueueFull, Conflict, Precondition, Unavailable,
    DiskFull, MapFull, StoreIOFailed, StaleSequence, ValueError, TypeError, KeyError, VersionConflict)


@dataclass(frozen=True, slots=True)
class Ctx:
    kv: KV
    retention_ms: int  # a finished request's response slot is kept this long
    # None while new work may take room in the store, else why not (kv.reserve_check):
    # checked by the operations that add requests, never by those that finish them
    short_of_room: Callable[[], str | None] = room_unlimited


Outcome = tuple[object, list[bytes]]  # (result, ids of the requests changed)
Handler = Callable[..., Outcome]


# ---- devices ----

def put_device(ctx: Ctx, raw: bytes) -> Outcome:
    """Pair (or re-pair) a device: its record and its pseudonym index."""
    kv, dev = ctx.kv, Device.load(raw)
    old = kv.get(keys.device(dev.link_id))
    if old is not None:
        kv.delete(keys.pseudonym(Device.load(old).pseudonym))
    kv.put(keys.device(dev.link_id), dev.dump())
    kv.put(keys.pseudonym(dev.pseudonym), dev.link_id)
    return None, []


def remove_device(ctx: Ctx, link_id: bytes, now_ms: int, why: str) -> Outcome:
    """Unpair: cancel its active requests (with ``why``), drop its cache and
    counters. Returns the removed device's record (None when unknown)."""
    kv = ctx.kv
    raw = kv.get(keys.device(link_id))
    if raw is None:
        return None, []
    changed = []
    for _, rid in list(kv.scan(keys.queue(link_id))):
        rec = RequestRecord.load(kv.get(keys.request(rid)))
        rec.state, rec.error, rec.done_ms = State.CANCELLED, why, now_ms
        _finish(ctx, rec)
        changed.append(rid)
    for prefix in keys.PER_DEVICE:
        for key, _ in list(kv.scan(prefix + link_id)):
            kv.delete(key)
    twin_ops.forget(kv, link_id)
    kv.delete(keys.device(link_id))
    kv.delete(keys.pseudonym(Device.load(raw).pseudonym))
    return raw, changed


# ---- requests ----

def enqueue(ctx: Ctx, items: list[list]) -> Outcome:
    """Append requests to their devices' queues, in list order. An item is
    (record, max depth, chain): a QUEUED record whose sequence and request token
    the service chose, and the revocation hashes of its client token's chain. Per item: None (queued as given), the stored record of a
    known request id (the same call again: idempotent), or the error refusing
    it (Conflict, NotFound, QueueFull, StaleSequence); a refused item writes
    nothing, the others still go in. With the store at its reserve the whole
    operation is refused (MapFull)."""
    _room_for_new_work(ctx)
    out: list = []
    changed = []
    for raw, max_depth, *chain in items:
        try:
            rec = RequestRecord.load(raw)
            known = _enqueue_one(ctx.kv, rec, raw, max_depth, chain[0] if chain else [])
        except (GatewayError, StaleSequence, ValueError) as exc:  # raised before the item's writes
            out.append(exc)
            continue
        out.append(known)
        if known is None:
            changed.append(rec.request_id)
    return out, changed


def _enqueue_one(kv: KV, rec: RequestRecord, raw: bytes, max_depth: int, chain: list[bytes]) -> bytes | None:
    """Checks first, then the writes (an exception leaves ``kv`` untouched)."""
    link = rec.link_id
    old = kv.get(keys.request(rec.request_id))
    if old is not None:
        prev = RequestRecord.load(old)
        if (prev.link_id, prev.service, prev.method, prev.args, prev.token_digest) != \
                (link, rec.service, rec.method, rec.args, rec.token_digest):
            raise Conflict("request id already used for a different call")
        return old
    if kv.get(keys.device(link)) is None:
        raise NotFound("no such device")
    depth = keys.int_of(kv.get(keys.depth(link)))
    if depth >= max_depth:
        raise QueueFull(f"the device's queue is full ({depth} of {max_depth} requests waiting); "
                        "retry after it wakes")
    # from the hashes filed for the token (what _finish reads back), or this call's
    issuer = _client(kv, link, list(token_chain(kv, rec.token_digest)) or chain)
    mine = keys.int_of(kv.get(keys.client_depth(link, issuer))) if issuer else 0
    if issuer and mine >= client_share(max_depth):
        raise QueueFull(f"this client's share of the device's queue is full ({mine} of {max_depth} requests "
                        "waiting are its own); retry after the device wakes")
    last = keys.int_of(kv.get(keys.last_seq(link)))
    if rec.seq <= last:
        raise StaleSequence(f"sequence {rec.seq} is not above the device's last ({last}): refused, "
                            "a sequence is never used twice", last)
    if rec.st != State.QUEUED:
        raise ValueError(f"only a QUEUED request can be enqueued, not {rec.st.name}")
    kv.put(keys.last_seq(link), keys.be64(rec.seq))
    kv.put(keys.depth(link), keys.be64(depth + 1))
    if issuer:
        kv.put(keys.client_depth(link, issuer), keys.be64(mine + 1))
    kv.put(keys.queue(link, rec.seq), rec.request_id)
    kv.put(keys.expiry(rec.expires_at_ms, rec.request_id), b"")
    kv.put(keys.request(rec.request_id), raw)
    _index_token(kv, rec, chain)
    return None


def _room_for_new_work(ctx: Ctx) -> None:
    why = ctx.short_of_room()
    if why is not None:
        raise MapFull(why)


def client_share(max_depth: int) -> int:
    """The most of a device's queue one client may hold: three quarters, so that one client
    (whatever it derives from its token: derived tokens keep its chain's first hash) cannot
    keep the device's other clients, its owner among them, out of the queue until it wakes."""
    return max(1, max_depth - max_depth // 4)


def _client(kv: KV, link: bytes, chain: list[bytes]) -> bytes:
    """Whom a request counts against in its device's queue: the first tag of its token's
    chain that its holder could not have made. For a gateway's token, the gateway's first
    tag (its issuer); for a token from the device's root, the first derivation from the
    root (the owner's grant to that client), or the root's own for the root itself. A
    holder can derive children offline, never a new such tag. b"": no chain, not counted."""
    hashes = [h for h in chain if len(h) == 32]
    if not hashes:
        return b""
    if len(hashes) > 1:
        raw = kv.get(keys.device(link))
        if raw is not None and hashes[0] == _root_hash(Device.load(raw).root_token):
            return hashes[1]
    return hashes[0]


_ROOT_HASHES: dict[bytes, bytes] = {}  # root token -> revocation hash of its tag (bounded)


def _root_hash(root_token: bytes) -> bytes:
    h = _ROOT_HASHES.get(root_token)
    if h is None:
        if len(_ROOT_HASHES) >= 4096:
            _ROOT_HASHES.clear()
        h = _ROOT_HASHES[root_token] = revocation_hash(load_token(root_token).tag)
    return h


def _index_token(kv: KV, rec: RequestRecord, chain: list[bytes]) -> None:
    """File an active request (or forwarding stub) under its client token, and
    the token under each hash of its chain (once per distinct token)."""
    digest = rec.token_digest
    hashes = [h for h in chain if len(h) == 32]
    if not hashes:
        return  # nothing a revocation could name (a caller that gave no chain)
    known = kv.get(keys.token(digest))
    if known is None or any(h not in _split32(known) for h in hashes):
        merged = list(dict.fromkeys(_split32(known or b"") + hashes))
        kv.put(keys.token(digest), b"".join(merged))
        for h in merged:
            kv.put(keys.token_by_hash(h, digest), b"")
    kv.put(keys.token_request(digest, rec.request_id), b"")


def _unindex_token(kv: KV, rec: RequestRecord) -> None:
    """The request no longer waits; the token's entries go with its last request."""
    digest = rec.token_digest
    kv.delete(keys.token_request(digest, rec.request_id))
    for _ in kv.scan(keys.token_request(digest)):
        return
    known = kv.get(keys.token(digest))
    if known is not None:
        for h in _split32(known):
            kv.delete(keys.token_by_hash(h, digest))
        kv.delete(keys.token(digest))


def _split32(raw: bytes) -> list[bytes]:
    return [raw[i:i + 32] for i in range(0, len(raw), 32)]


def token_chain(kv: KV, digest: bytes) -> tuple[bytes, ...]:
    """The revocation hashes filed for a client token (empty when none)."""
    return tuple(_split32(kv.get(keys.token(digest)) or b""))


def put_finished(ctx: Ctx, raw: bytes, chain: list[bytes] | None = None) -> Outcome:
    """Store a request that is finished already (a cache hit, a forwarding stub).
    A forwarding stub with ``chain`` is filed under its token, so a revocation
    learnt here cancels it at the gateway that holds it. A request id already on
    record is never overwritten: the same call again (same token, device, service
    and method) leaves it as it is; another call under that id is a Conflict.
    Refused (MapFull) with the store at its reserve, as an enqueue is."""
    _room_for_new_work(ctx)
    rec = RequestRecord.load(raw)
    old = ctx.kv.get(keys.request(rec.request_id))
    if old is not None:
        prev = RequestRecord.load(old)
        if (prev.link_id, prev.service, prev.method, prev.token_digest) != \
                (rec.link_id, rec.service, rec.method, rec.token_digest):
            raise Conflict("request id already used for a different call")
        return None, []
    ctx.kv.put(keys.request(rec.request_id), raw)
    ctx.kv.put(keys.purge(rec.done_ms + ctx.retention_ms, rec.request_id), b"")
    if rec.forwarded_to and chain:
        _index_token(ctx.kv, rec, chain)
    return None, []


def cancel(ctx: Ctx, request_id: bytes, now_ms: int) -> Outcome:
    """Cancel an active request; returns its record (a finished one unchanged)."""
    raw = ctx.kv.get(keys.request(request_id))
    if raw is None:
        raise NotFound("no such request")
    rec = RequestRecord.load(raw)
    if not rec.st.active:
        return raw, []
    rec.state, rec.error, rec.done_ms = State.CANCELLED, "cancelled by the client", now_ms
    return _finish(ctx, rec), [request_id]


def expire_due(ctx: Ctx, now_ms: int, limit: int = EXPIRE_LIMIT) -> Outcome:
    """Dead-letter active requests whose TTL passed; returns their records."""
    out, changed = [], []
    for key in _due(ctx.kv, keys.EXPIRY, now_ms, limit):
        raw = ctx.kv.get(keys.request(keys.rid_of(key)))
        if raw is None:
            ctx.kv.delete(key)  # an index entry without its request
            continue
        rec = RequestRecord.load(raw)
        rec.state, rec.done_ms = State.EXPIRED, now_ms
        rec.error = "expired before the device answered (dead-lettered)"
        out.append(_finish(ctx, rec))
        changed.append(rec.request_id)
    return out, changed


def purge_finished(ctx: Ctx, now_ms: int, limit: int = PURGE_LIMIT) -> Outcome:
    """Forget response slots older than the retention period; returns how many."""
    due = _due(ctx.kv, keys.PURGE, now_ms, limit)
    for key in due:
        raw = ctx.kv.get(keys.request(keys.rid_of(key)))
        if raw is not None:
            rec = RequestRecord.load(raw)
            if not rec.st.active:
                ctx.kv.delete(keys.request(keys.rid_of(key)))
                if rec.forwarded_to:
                    _unindex_token(ctx.kv, rec)
        ctx.kv.delete(key)
    return len(due), []


def _due(kv: KV, index: bytes, now_ms: int, limit: int) -> list[bytes]:
    """Up to ``limit`` keys of a time index (``x/``, ``g/``) due at ``now_ms``."""
    due = []
    for key, _ in kv.scan(index):
        if len(due) >= limit or keys.time_of(key) > now_ms:
            break
        due.append(key)
    return due


def _finish(ctx: Ctx, rec: RequestRecord) -> bytes:
    """Move an active request to its (already set) terminal state; returns its record."""
    kv, link = ctx.kv, rec.link_id
    kv.delete(keys.queue(link, rec.seq))
    kv.delete(keys.expiry(rec.expires_at_ms, rec.request_id))
    issuer = _client(kv, link, list(token_chain(kv, rec.token_digest)))  # filed with it (_index_token)
    if issuer:
        left = keys.int_of(kv.get(keys.client_depth(link, issuer))) - 1
        if left > 0:
            kv.put(keys.client_depth(link, issuer), keys.be64(left))
        else:
            kv.delete(keys.client_depth(link, issuer))
    _unindex_token(kv, rec)
    kv.put(keys.depth(link), keys.be64(max(keys.int_of(kv.get(keys.depth(link))) - 1, 0)))
    raw = rec.dump()
    kv.put(keys.request(rec.request_id), raw)
    kv.put(keys.purge(rec.done_ms + ctx.retention_ms, rec.request_id), b"")
    return raw


# ---- the link ----

def delivered(ctx: Ctx, link_id: bytes, request_ids: list[bytes]) -> Outcome:
    """The device acknowledged receipt: QUEUED -> DELIVERED. Returns the ids changed."""
    changed = []
    for rid in request_ids:
        raw = ctx.kv.get(keys.request(rid))
        if raw is None:
            continue
        rec = RequestRecord.load(raw)
        if rec.link_id == link_id and rec.st == State.QUEUED:
            rec.state = State.DELIVERED
            ctx.kv.put(keys.request(rid), rec.dump())
            changed.append(rid)
    return changed, changed


def answered(ctx: Ctx, link_id: bytes, answers: list[list], now_ms: int) -> Outcome:
    """Store a device's answers, each (request id, status, payload, error).
    Returns every answer's id (all are acknowledged) and (id, final state) of
    the requests they finished; answers for unknown, finished or another
    device's requests are dropped. A fresh answer of a cacheable read is cached."""
    kv = ctx.kv
    raw_dev = kv.get(keys.device(link_id))
    manifest = Manifest.parse(Device.load(raw_dev).manifest) if raw_dev is not None else None
    finished = []
    for rid, status, payload, error in answers:
        raw = kv.get(keys.request(rid))
        if raw is None:
            continue
        rec = RequestRecord.load(raw)
        if rec.link_id != link_id or not rec.st.active:
            continue  # a device never answers for another's requests
        rec.status, rec.payload, rec.error, rec.done_ms = status, payload, error, now_ms
        rec.state = State.DONE if status == 0 else (
            State.EXPIRED if status == DEVICE_EXPIRED_STATUS else
            State.REVOKED if status == REVOKED_STATUS else State.FAILED)
        _finish(ctx, rec)
        finished.append((rid, int(rec.state)))
        method = manifest.method(rec.service, rec.method) if manifest else None
        if status == 0 and method is not None and method.cache_max_age_s and not method.mutating:
            entry = CacheEntry(payload, now_ms, method.cache_max_age_s)
            kv.put(keys.cache(link_id, rec.service, rec.method, rec.args), entry.dump())
    return ([a[0] for a in answers], finished), [rid for rid, _ in finished]


def rotate_ticket(ctx: Ctx, spent: bytes | None, ticket_id: bytes | None, ticket: list | None) -> Outcome:
    """Delete ticket ``spent`` and store ``ticket`` ((link id, secret, expiry
    ms)) under ``ticket_id``; either may be None."""
    if spent is not None:
        ctx.kv.delete(keys.ticket(spent))
    if ticket_id is not None and ticket is not None:
        ctx.kv.put(keys.ticket(ticket_id), dump_ticket(Ticket(*ticket)))
    return None, []


def purge_tickets(ctx: Ctx, now_ms: int) -> Outcome:
    """Drop expired tickets; returns how many."""
    expired = [key for key, raw in ctx.kv.scan(keys.TICKET) if load_ticket(raw).expires_at_ms <= now_ms]
    for key in expired:
        ctx.kv.delete(key)
    return len(expired), []


def contacts(ctx: Ctx, hints: list[list]) -> Outcome:
    """Persist contact hints, each (link id, last ms, announced sleep s or
    None), of devices still paired; an older hint never overwrites a newer one."""
    for link, last_ms, sleep_s in hints:
        if ctx.kv.get(keys.device(link)) is None:
            continue  # unpaired meanwhile
        raw = ctx.kv.get(keys.contact(link))
        c = Contact.load(raw) if raw is not None else Contact()
        if last_ms >= c.last_ms:
            c.last_ms, c.sleep_s = last_ms, sleep_s
            ctx.kv.put(keys.contact(link), c.dump())
    return len(hints), []


def liveness_reported(ctx: Ctx, entries: list[list]) -> Outcome:
    """Each (link id, bucket) is on chain: not due again before a later bucket."""
    for link, bucket in entries:
        raw = ctx.kv.get(keys.contact(link))
        if raw is not None:
            c = Contact.load(raw)
            c.reported_s = max(c.reported_s, bucket)
            ctx.kv.put(keys.contact(link), c.dump())
    return None, []


# ---- revocations ----

def revoke_requests(ctx: Ctx, hashes: list[bytes], now_ms: int) -> Outcome:
    """End REVOKED every active request whose client token's chain holds one of
    ``hashes``. Returns (ids ended, [(id, gateway)] of forwarding stubs, whose
    holder must be told to end them)."""
    kv = ctx.kv
    ended: list[bytes] = []
    forwards: list[list] = []
    for h in hashes:
        for key, _ in list(kv.scan(keys.token_by_hash(h))):
            digest = key[len(keys.TOKEN_BY_HASH) + 32:]
            for rkey, _ in list(kv.scan(keys.token_request(digest))):
                rid = rkey[len(keys.TOKEN_REQUEST) + 32:]
                raw = kv.get(keys.request(rid))
                if raw is None:
                    kv.delete(rkey)
                    continue
                rec = RequestRecord.load(raw)
                if rec.forwarded_to:
                    forwards.append([rid, rec.forwarded_to])
                    _unindex_token(kv, rec)
                elif rec.st.active:
                    rec.state, rec.error, rec.done_ms = State.REVOKED, REVOKED_ERROR, now_ms
                    rec.status = REVOKED_STATUS
                    _finish(ctx, rec)
                    ended.append(rid)
    return (ended, forwards), ended


def revoke_request(ctx: Ctx, request_id: bytes, via: str, now_ms: int) -> Outcome:
    """A forwarding gateway's revocation cancel: end the request REVOKED when
    that gateway forwarded it here and it is still active (whatever this
    gateway's own view of the chain). Returns its record (None when unknown)."""
    raw = ctx.kv.get(keys.request(request_id))
    if raw is None:
        return None, []
    rec = RequestRecord.load(raw)
    if not via or rec.via != via:
        raise Unauthorized("only the gateway that forwarded a request may cancel it for revocation")
    if not rec.st.active:
        return raw, []
    rec.state, rec.error, rec.done_ms, rec.status = State.REVOKED, REVOKED_ERROR, now_ms, REVOKED_STATUS
    return _finish(ctx, rec), [request_id]


def add_revocations(ctx: Ctx, records: list[list]) -> Outcome:
    """Append new revocation hashes, each (hash, expiry s), to the log devices
    are told from; returns how many were new."""
    kv = ctx.kv
    last = first = keys.int_of(kv.get(keys.REVLOG_LAST))
    for tag, expires in records:
        if kv.get(keys.revtag(tag)) is not None:
            continue
        last += 1
        kv.put(keys.revlog(last), tag + keys.be64(max(expires, 0)))
        kv.put(keys.revtag(tag), b"")
    if last != first:
        kv.put(keys.REVLOG_LAST, keys.be64(last))
    return last - first, []


def revocations_sent(ctx: Ctx, link_id: bytes, position: int) -> Outcome:
    """The device was told the log up to ``position`` (its cursor only advances)."""
    if position > keys.int_of(ctx.kv.get(keys.revcursor(link_id))) and ctx.kv.get(keys.device(link_id)) is not None:
        ctx.kv.put(keys.revcursor(link_id), keys.be64(position))
    return None, []


HANDLERS: dict[str, Handler] = {
    "put_device": put_device,
    "remove_device": remove_device,
    "enqueue": enqueue,
    "put_finished": put_finished,
    "cancel": cancel,
    "expire_due": expire_due,
    "purge_finished": purge_finished,
    "delivered": delivered,
    "answered": answered,
    "rotate_ticket": rotate_ticket,
    "purge_tickets": purge_tickets,
    "contacts": contacts,
    "liveness_reported": liveness_reported,
    "add_revocations": add_revocations,
    "revoke_requests": revoke_requests,
    "revoke_request": revoke_request,
    "revocations_sent": revocations_sent,
    **twin_ops.HANDLERS,  # device twins: twin_set, twin_report, twin_withdraw
}


def apply(ctx: Ctx, name: str, args: list) -> Outcome:
    """Run operation ``name`` with ``args`` (ValueError for an unknown name)."""
    handler = HANDLERS.get(name)
    if handler is None:
        raise ValueError(f"no store operation {name!r}")
    return handler(ctx, *args)
