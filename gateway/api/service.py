"""The gateway's client-facing domain logic (no gRPC here).

Theory of operation. A call names a target (a handle), a method, JSON args
and a token. The target resolves to a pseudonym (a discovery handle, or an
owner handle that names it: then only a device-derived token will do, see
``PSEUDONYM_NEEDS_DEVICE_TOKEN``); a device paired here is
served locally, any other is forwarded to its owning gateway (peer.py). A
local call is authorised (auth.py), answered from the response cache when
the method is cacheable and a fresh answer is stored (the device is not
woken), or turned into a request token and appended to the device's durable
queue (store.py), which refuses at once beyond the maximum depth. The link
server hands the queue to the device when it wakes; responses land in the
store, whose change notifications wake Invoke and Watch waiters here.
Expiry is the sweeper's job (app.py); a client learns of it as EXPIRED.

Request sequences. A request token fixes a sequence number that must rise
per device (the device refuses one not above the last it ran), in queue
order. The service mints the token here, on the loop: it keeps each
device's last sequence in memory, read once from the store (this service
is the only one that enqueues, and the store's writer the only writer, so
that value is authoritative), and takes ``max(now, last + 1)``. Minting and
handing the write to the store happen in one step of the loop (no await
between them, :meth:`GatewayService._enqueue`), so the writer receives
sequences in the order they were minted; the store's enqueue refuses a
sequence not above the stored one (StaleSequence), so a bug can never reuse
a sequence, and the service then catches up.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import msgspec

from ...firmware.caplets import api as cl
from ...firmware.caplets.revocation import RevocationSet
from ..tokens import auth
from ..errors import BadRequest, GatewayError, InvokeTimeout, NotFound, Unauthorized, Unavailable
from ..metrics import GatewayMetrics
from ..probe import SUBMIT_AUTHORISE, SUBMIT_TOTAL, Probe
from ..store.ops import StaleSequence
from ..store.store import ACTIVE_WINDOW_MS, Device, GatewayStore, RequestRecord, State, new_id

log = logging.getLogger(__name__)

OWNER_HANDLE_PREFIX = "dev-"  # owner handle: "dev-" + pseudonym hex
# No bypass of discovery: a gateway-issued application token (anonymous regional
# access) reaches devices only through discovery (its handles, invoke-any: the
# call is then ``attested``). A call naming a pseudonym (owner handle) needs a
# token derived from that device's root, here and at the owner of a forward.
PSEUDONYM_NEEDS_DEVICE_TOKEN = ("a call by pseudonym (owner handle) needs a token derived from the device's root; "
                                "a gateway application token reaches devices only through discovery handles or "
                                "invoke-any")


@dataclass
class Settings:
    max_queue_depth: int = 100
    default_ttl_s: int = 600
    max_ttl_s: int = 7 * 24 * 3600
    max_args_bytes: int = 16 * 1024  # fits a link frame with room for the token
    max_invoke_timeout_s: float = 600.0
    max_batch: int = 256  # SubmitBatch items per call (bounds one call's work and memory)
    default_invoke_timeout_s: float = 30.0


@dataclass
class Call:
    target: str
    method: str
    args: bytes = b""
    token: bytes = b""
    timeout_ms: int = 0
    ttl_s: int = 0
    service: str = ""
    request_id: str = ""
    attested: bool = False  # a peer gateway vouches it authorised the client (read-only calls only)
    # revocation hashes of the client token's chain: from a peer's forward, then
    # completed by _prepare (a request keeps them: a revocation of any stops it)
    chain: tuple[bytes, ...] = ()
    via: str = ""  # the peer gateway that forwarded this call (set by the Peer service only)
    revocation_height: int = 0  # a forwarding gateway's revocation height: served once ours reaches it


@dataclass(frozen=True)
class HandleGrant:
    """What a discovery handle resolved to (GatewayService.resolvers): the device, the
    one service type it was found for, and the verified client's rights. A read through a
    handle needs no device token (it is vouched for), so these bound it: that service
    only, and only methods the client's token may invoke."""

    pseudonym: bytes
    service_type: str
    may_invoke: Callable[[str, str, bool], bool]  # (service type, method, mutating) -> allowed


PEER_SCOPE = "a peer gateway vouches for reads only of devices discovery discloses for that service"
HANDLE_SCOPE = "a discovery handle reaches only the service it was found for, and what the token may invoke there"


@dataclass
class Result:
    request_id: str
    state: int
    payload: bytes = b""
    error: str = ""
    expected_at_ms: int = 0
    expires_at_ms: int = 0
    from_cache: bool = False
    device_status: int = 0

    @property
    def terminal(self) -> bool:
        return self.state not in (State.QUEUED, State.DELIVERED)


def owner_handle(pseudonym: bytes) -> str:
    return OWNER_HANDLE_PREFIX + pseudonym.hex()


def _now_ms() -> int:
    return int(time.time() * 1000)


_JSON = msgspec.json.Decoder()


def _check_json(args: bytes) -> None:
    """Raise BadRequest unless ``args`` is JSON. msgspec's strict parser answers
    the usual case in a tenth of json's time; what it refuses (it also refuses
    some JSON: numbers beyond float range, lone surrogates) gets json's verdict."""
    try:
        _JSON.decode(args)
        return
    except (msgspec.DecodeError, RecursionError):
        pass
    try:
        json.loads(args)
    except ValueError as exc:
        raise BadRequest(f"arguments are not JSON: {exc}") from exc
    except RecursionError as exc:  # valid JSON, but nested deeper than the parser goes
        raise BadRequest("arguments are nested too deeply") from exc


def _result(rec: RequestRecord, expected_at_ms: int = 0) -> Result:
    return Result(rec.request_id.hex(), rec.state, rec.payload, rec.error, expected_at_ms, rec.expires_at_ms,
                  rec.from_cache, rec.status)


class Forwarder:
    """What the service needs to reach another gateway (peer.PeerClient wrapped by app.py)."""

    async def owner_of(self, pseudonym: bytes) -> str | None: ...
    async def call(self, gateway_id: str, kind: str, call: Call | None = None,
                   request_id: str = "", token: bytes = b"") -> Result: ...
    def watch(self, gateway_id: str, request_id: str, token: bytes) -> AsyncIterator[Result]: ...


@dataclass
class _Batch:
    """A SubmitBatch in progress: answers by position, items staged for its
    commit (position; device and record to queue), cache hits to store,
    positions left to submit(), the first unexpected error."""

    out: list
    staged: list[int] = field(default_factory=list)
    items: list[tuple[Device, RequestRecord, tuple[bytes, ...]]] = field(default_factory=list)
    hits: list[tuple[int, RequestRecord]] = field(default_factory=list)  # (position, cached answer)
    elsewhere: list[int] = field(default_factory=list)
    failure: BaseException | None = None


@dataclass
class GatewayService:
    store: GatewayStore
    gateway_id: str
    secret: bytes
    metrics: GatewayMetrics = field(default_factory=GatewayMetrics)
    revoked: RevocationSet = field(default_factory=RevocationSet)
    settings: Settings = field(default_factory=Settings)
    forwarder: Forwarder | None = None
    clock: Callable[[], int] = _now_ms
    on_queued: Callable[[bytes], object] | None = None  # link server: push to a device connected now
    # discovery handles resolve here, at the gateway that issued them
    # (target, client token) -> pseudonym: discovery handles open only with the client's token
    resolvers: list[Callable[[str, bytes], HandleGrant | None]] = field(default_factory=list)
    # (pseudonym, service type) -> whether discovery discloses that device for that type:
    # a registered peer vouches for reads only within what discovery shows (None: not wired)
    disclosed: Callable[[bytes, str], bool] | None = None
    watch_recheck_s: float = 5.0  # a watch re-reads its request (and re-checks its token) this often
    probe: Probe | None = None  # stage timings for benchmarks (gateway/probe.py)
    catch_up_s: float = 3.0  # how long a forward waits for this gateway's revocations to catch up
    # admission control (app.py): (issuer key, device link id) -> None, or raises Overloaded
    admit: Callable[[bytes, bytes], None] | None = None

    def __post_init__(self) -> None:
        self._waiters: dict[bytes, list[asyncio.Future]] = {}
        self._last_seq: dict[bytes, int] = {}  # link id -> last request sequence minted (see the module docstring)
        self.store.listeners.append(self._wake)  # the store tells them on this loop, after each commit
        self._queued_total = self.metrics.requests.labels("queued")  # labels() costs a lookup per call

    # ---- notifications ----

    def _wake(self, request_id: bytes) -> None:
        for fut in self._waiters.pop(request_id, []):
            if not fut.done():
                fut.set_result(None)

    async def _next_change(self, rid: bytes, timeout: float) -> None:
        """Until the request changes or ``timeout`` passes; the caller re-reads it."""
        fut = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(rid, []).append(fut)
        try:
            await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            pass
        finally:
            waiting = self._waiters.get(rid)
            if waiting and fut in waiting:
                waiting.remove(fut)
                if not waiting:
                    del self._waiters[rid]

    # ---- resolution ----

    def _pseudonym(self, call: Call) -> bytes:
        target = call.target
        for resolve in self.resolvers:
            grant = resolve(target, call.token)
            if grant is not None:
                # the resolver authenticated the client with this gateway's secret; it is
                # vouched for within the handle's service and its token's read rights (one
                # answer for any other service, so a handle probes nothing else of the device)
                if call.service not in ("", grant.service_type) or not grant.may_invoke(
                        grant.service_type, call.method, False):
                    raise Unauthorized(HANDLE_SCOPE)
                call.service = grant.service_type
                call.attested = True
                return grant.pseudonym
        text = target[len(OWNER_HANDLE_PREFIX):] if target.startswith(OWNER_HANDLE_PREFIX) else target
        try:
            ps = bytes.fromhex(text)
        except ValueError:
            ps = b""
        if len(ps) != 16:
            raise NotFound(f"unknown handle {target[:80]!r}")
        return ps

    async def _locate(self, call: Call, attested: bool = False) -> tuple[Device | None, str | None]:
        """(local device, None) or (None, owning gateway id). A call to be
        forwarded gets its target rewritten to the owner handle: discovery
        handles mean something only at the gateway that issued them."""
        call.attested = attested  # never taken from the client's request
        ps = self._pseudonym(call)
        dev = self.store.device_by_pseudonym(ps)
        if dev is not None:
            return dev, None
        owner = await self.forwarder.owner_of(ps) if self.forwarder is not None else None
        if owner is None or owner == self.gateway_id:
            raise NotFound("no such device (not paired here and not in the registry)")
        call.target = owner_handle(ps)
        return None, owner

    def _local(self, call: Call) -> Device:
        dev = self.store.device_by_pseudonym(self._pseudonym(call))
        if dev is None:
            raise NotFound("the device is not paired with this gateway")
        return dev

    def _expected(self, dev: Device | None, rec: RequestRecord, now: int) -> int:
        """``expected_at`` for an answer about ``rec`` while it is active, else 0. Not for a
        read vouched for by discovery or a peer (``rec.attested``): its client holds no
        device token, and the device's own wake schedule (its last contact to the
        millisecond) would tell one device from the others of its group, and so link
        handles that are meant to be unlinkable. Such a client has the group's latency."""
        if dev is None or not rec.st.active or rec.attested:
            return 0
        return self.expected_at(dev, now)

    def expected_at(self, dev: Device, now: int) -> int:
        """When the device should next be able to answer (duty cycle, last contact)."""
        c = self.store.last_contact(dev.link_id)
        duty = max(dev.duty_cycle_s, 0) * 1000
        if c is None:
            return now + duty
        if c.sleep_s is None and now - c.last_ms < ACTIVE_WINDOW_MS:
            return now + 1000  # in a session now (or just left without BYE)
        period = c.sleep_s * 1000 if c.sleep_s is not None else duty
        nxt = c.last_ms + period
        if nxt >= now:
            return nxt
        return now + (duty - (now - c.last_ms) % duty if duty else 0)  # overdue: next slot of its cycle

    # ---- calls ----

    async def submit(self, call: Call, attested: bool = False) -> Result:
        """Queue a call (or answer it from cache); the answer comes later.

        ``attested``: a trusted in-process caller (discovery's invoke-any)
        vouches that it authenticated the client itself; honoured for
        read-only methods only, and carried to a peer in the signed forward."""
        t0 = time.perf_counter() if self.probe is not None else 0.0
        try:
            dev, owner = await self._locate(call, attested)
            if owner is not None:
                if not call.request_id:  # the forwarding stub and the peer's record share one id
                    call.request_id = new_id().hex()
                self._forward_chain(call)
                res = await self.forwarder.call(owner, "submit", call)
                await self._remember_forward(call, owner, res)
                return res
            result = await self._submit_local(dev, call)
        except GatewayError as err:
            self.metrics.rejections.labels(err.reason).inc()
            raise
        finally:
            if self.probe is not None:
                self.probe.span(SUBMIT_TOTAL, time.perf_counter() - t0, sample=True)
        return result

    async def submit_many(self, calls: list[Call]) -> list[Result | GatewayError]:
        """Submit each call as :meth:`submit` would; items fail independently.

        All items are authorised in this loop turn; their request tokens are
        minted and they go to the store's writer as one operation, at once:
        the batch shares a group commit (one fsync at most), and each item is
        acknowledged only once it is on disk. A domain error answers its own
        item; anything else fails the whole call (items already queued stay
        queued: a retry with the same request ids is idempotent).

        Items for devices paired here are checked inline, in list order, with
        no task each (a batch is the hot path of bulk submission); the others
        (forwarded to their gateway) take :meth:`submit`'s path."""
        if len(calls) > self.settings.max_batch:
            raise BadRequest(f"a batch holds at most {self.settings.max_batch} requests, not {len(calls)}")
        now = self.clock()
        t0 = time.perf_counter() if self.probe is not None else 0.0
        batch = _Batch([None] * len(calls))
        with self.store.snapshot() as view:  # one read transaction for the batch's device lookups
            for i, call in enumerate(calls):
                self._stage_item(batch, i, call, now, view)
        commit = [self._enqueue(batch.items, urgent=True)] if batch.items else []
        hits = [self.store.put_finished(rec) for _, rec in batch.hits]  # so GetResult works for them
        others = [self.submit(calls[i]) for i in batch.elsewhere]
        if len(commit) == 1 and not hits and not others:  # the usual batch: no task, no gather
            try:
                done = [await commit[0]]
            except Exception as exc:  # noqa: BLE001 - as gather(return_exceptions=True) would hand it back
                done = [exc]
        else:
            done = await asyncio.gather(*commit, *hits, *others, return_exceptions=True)
        committed = done[0] if commit else []
        if isinstance(committed, BaseException):  # the commit failed: none of its items is queued
            committed = [committed] * len(batch.staged)
        for (i, _), res in zip(batch.hits, done[len(commit):len(commit) + len(hits)]):
            if isinstance(res, GatewayError):  # its own item's refusal (a request id in use)
                self.metrics.rejections.labels(res.reason).inc()
                batch.out[i] = res
            elif isinstance(res, BaseException):
                batch.failure = batch.failure or res
        self._settle(batch, committed, done[len(commit) + len(hits):], now)
        if self.probe is not None:  # each local item waits as long as the batch (submit() times the others)
            d = time.perf_counter() - t0
            for _ in range(len(calls) - len(batch.elsewhere)):
                self.probe.span(SUBMIT_TOTAL, d, sample=True)
        if batch.failure is not None:
            raise batch.failure
        return batch.out

    def _stage_item(self, batch: _Batch, i: int, call: Call, now: int, view=None) -> None:
        """Check item ``i`` of a batch and stage it for the next group commit
        (or answer it: a refusal, a cached read; or leave it to submit()).
        ``view``: the batch's read transaction (GatewayStore.snapshot)."""
        try:
            call.attested = False  # as _locate: never taken from the client's request
            dev = self.store.device_by_pseudonym(self._pseudonym(call), view)
            if dev is None:
                batch.elsewhere.append(i)
                return
            rec = self._prepare(dev, call, now)
        except GatewayError as err:
            self.metrics.rejections.labels(err.reason).inc()
            batch.out[i] = err
            return
        except Exception as exc:  # noqa: BLE001 - fails the call, once the others are settled
            batch.failure = batch.failure or exc
            return
        if rec.from_cache:
            batch.out[i] = _result(rec, now)
            batch.hits.append((i, rec))
        else:
            batch.staged.append(i)
            batch.items.append((dev, rec, call.chain))

    def _settle(self, batch: _Batch, committed: list, others: list, now: int) -> None:
        """Answer every item from its commit (or submit()) outcome; a queued item
        is counted and announced even when the call fails as a whole."""
        queued = 0
        for i, (dev, _, _), res in zip(batch.staged, batch.items, committed):
            if isinstance(res, GatewayError):
                self.metrics.rejections.labels(res.reason).inc()
                batch.out[i] = res
            elif isinstance(res, BaseException):
                self._stale(dev, res)
                batch.failure = batch.failure or res
            else:
                batch.out[i] = self._queued(dev, *res, now, counted=True)
                queued += res[1]
        if queued:
            self._queued_total.inc(queued)  # one update for the batch (the counter takes a lock)
        for i, res in zip(batch.elsewhere, others):
            if isinstance(res, BaseException) and not isinstance(res, GatewayError):
                batch.failure = batch.failure or res
            batch.out[i] = res

    async def _submit_local(self, dev: Device, call: Call, store_cached: bool = True) -> Result:
        now = self.clock()
        rec = self._prepare(dev, call, now)
        if rec.from_cache:
            if store_cached:
                await self.store.put_finished(rec)  # so GetResult works for an async cached read
            return _result(rec, now)
        (res,) = await self._enqueue([(dev, rec, call.chain)])
        if isinstance(res, Exception):
            self._stale(dev, res)
            raise res
        return self._queued(dev, *res, now)

    def _prepare(self, dev: Device, call: Call, now: int) -> RequestRecord:
        """Everything before the durable enqueue: authorise, validate, and
        answer a cacheable read from cache (a DONE record, ``from_cache``);
        else the QUEUED record to enqueue (:meth:`_enqueue` mints its token)."""
        manifest = dev.parsed_manifest
        self.revoked_fresh()
        if not call.attested:
            # A call by pseudonym: the token must come from the device's root, and that is
            # settled before anything depends on the device's methods. A gateway token
            # (narrowed as its holder likes) that got "not permitted" for a method the device
            # has and another answer for one it lacks would list the device's sealed
            # services by pseudonym. (Cached: the check below re-verifies nothing.)
            granted = auth.authorise(call.token, "", "", dev.root_token, self.secret, self.gateway_id, self.revoked,
                                     now // 1000, check_permits=False)
            if granted.origin != "device":
                raise Unauthorized(PSEUDONYM_NEEDS_DEVICE_TOKEN)
        try:
            service, method = manifest.resolve(call.service, call.method)
        except (NotFound, BadRequest):  # only a valid token holder may learn which methods exist
            if call.attested:  # (a call by pseudonym has shown a valid token above)
                auth.authorise(call.token, "", "", dev.root_token, self.secret, self.gateway_id, self.revoked,
                               now // 1000, check_permits=False)
            raise
        # A read vouched for by discovery or by a registered peer's signed forward
        # needs no device token; everything else is authorised here.
        if call.attested and not method.mutating and call.via and self.disclosed is not None \
                and not self.disclosed(dev.pseudonym, service):
            # a peer's word reaches what a client could find through discovery, and no further
            raise Unauthorized(PEER_SCOPE)
        token_expiry_ms = 0  # when the client token expires (0: never, or not known here)
        if not (call.attested and not method.mutating):
            t0 = time.perf_counter() if self.probe is not None else 0.0
            granted = auth.authorise(call.token, service, method.name, dev.root_token, self.secret, self.gateway_id,
                                     self.revoked, now // 1000, mutating=method.mutating)
            token_expiry_ms = _expiry_ms(granted.token)
            call.chain = _merged(granted.chain, call.chain)
            issuer = granted.issuer
            if self.probe is not None:
                self.probe.span(SUBMIT_AUTHORISE, time.perf_counter() - t0)
            if granted.origin != "device" and not call.attested:
                raise Unauthorized(PSEUDONYM_NEEDS_DEVICE_TOKEN)
        else:  # vouched for: this gateway's own token (invoke-any) or a peer's hashes
            own = auth.own_chain(call.token, self.secret)
            call.chain = _merged(own, call.chain)
            self._check_chain(call.chain)
            issuer = auth.issuer_key((own or call.chain or (b"",))[0])
            if own:  # our own token, its tags recomputed: an over-rate client is then refused early
                auth.remember_issuer(call.token, issuer)
            # the request ends when the token does, whoever vouched for it (read unverified from a
            # peer's token: it can only shorten the request's life)
            token_expiry_ms = auth.expiry_ms(call.token)
        if self.admit is not None:  # rate limits of the verified client and of the device
            self.admit(issuer, dev.link_id)
        args = call.args or b""
        if len(args) > self.settings.max_args_bytes:
            raise BadRequest(f"arguments larger than {self.settings.max_args_bytes} bytes")
        if args:
            _check_json(args)
        rid = _request_id(call.request_id)
        ttl = call.ttl_s or self.settings.default_ttl_s
        if not 0 < ttl <= self.settings.max_ttl_s:
            raise BadRequest(f"ttl_s must be 1..{self.settings.max_ttl_s}")
        expires = now + ttl * 1000
        if token_expiry_ms:
            # never outlive the token that asked: its request token carries no expiry, and a
            # device forgets a revocation once the revoked token would have expired anyway
            expires = min(expires, token_expiry_ms)
        rec = RequestRecord(rid, dev.link_id, service, method.name, args, b"", auth.token_digest(call.token),
                            State.QUEUED, now, expires, attested=bool(call.attested and not method.mutating),
                            via=call.via)
        if method.cache_max_age_s and not method.mutating:
            hit = self.store.cached(dev.link_id, service, method.name, args, now)
            if hit is not None:
                rec.state, rec.payload, rec.done_ms, rec.from_cache = State.DONE, hit.payload, now, True
                self.metrics.cache_hits.inc()
        return rec

    def _next_sequence(self, link_id: bytes, now: int) -> int:
        """The device's next request sequence: above every one minted or stored
        before, and the clock in ms when that is higher (as devices expect:
        firmware/caplets/mint.py sequence_now)."""
        last = self._last_seq.get(link_id)
        if last is None:
            last = self.store.last_sequence(link_id)
        seq = self._last_seq[link_id] = max(now, last + 1)
        return seq

    def _stale(self, dev: Device, exc: BaseException) -> None:
        """After a StaleSequence refusal (someone else enqueued for this device):
        catch up with the stored sequence, so the next request goes through."""
        if isinstance(exc, StaleSequence):
            log.error("request sequence for device %s was behind the store: %s", dev.pseudonym.hex(), exc)
            self._last_seq[dev.link_id] = max(self._last_seq.get(dev.link_id, 0), exc.last)

    def _queued(self, dev: Device, rec: RequestRecord, new: bool, now: int, counted: bool = False) -> Result:
        """The answer for an enqueued (or, by its id, already known) request
        (``counted``: the caller counts it in the metrics)."""
        if new:
            if not counted:
                self._queued_total.inc()
            if self.on_queued is not None:
                self.on_queued(dev.link_id)
        return _result(rec, self._expected(dev, rec, now) if rec.st.active else rec.done_ms)

    async def _enqueue(self, items: list[tuple[Device, RequestRecord, tuple[bytes, ...]]], urgent: bool = False
                       ) -> list[tuple[RequestRecord, bool] | Exception]:
        """Mint the request tokens of prepared requests and queue them durably:
        per item (record, new) or the exception refusing it; raises when the
        commit fails (nothing stored). Minting and the store's enqueue are one
        step of the loop, so sequences reach the writer in the order minted.

        The store's writer commits what reaches it while it is busy in one
        transaction (group commit), and nothing here waits for an earlier
        commit: a commit holding these items can run while the loop prepares
        the next ones. An item resolves only after the commit holding it, so
        an acknowledged request is on disk exactly as with one commit each."""
        for dev, rec, chain in items:
            rec.seq = self._next_sequence(dev.link_id, rec.created_ms)
            rec.request_token = auth.request_token(dev.root_token, rec.service, rec.method, rec.args, rec.seq,
                                                   chain)
        depth = self.settings.max_queue_depth
        return await self.store.enqueue([(rec, depth, chain) for _, rec, chain in items], urgent)

    async def invoke(self, call: Call, attested: bool = False) -> Result:
        """Queue a call and wait for its answer up to the call's timeout."""
        started = time.monotonic()
        try:
            dev, owner = await self._locate(call, attested)
            if owner is not None:
                call.request_id = call.request_id or new_id().hex()  # a replayed forward is then idempotent
                self._forward_chain(call)
                return await self.forwarder.call(owner, "invoke", call)
            res = await self._invoke_local(dev, call)
        except GatewayError as err:
            self.metrics.rejections.labels(err.reason).inc()
            raise
        self.metrics.invoke_latency.observe(time.monotonic() - started)
        return res

    async def _invoke_local(self, dev: Device, call: Call) -> Result:
        timeout = (call.timeout_ms / 1000) if call.timeout_ms else self.settings.default_invoke_timeout_s
        timeout = min(timeout, self.settings.max_invoke_timeout_s)
        res = await self._submit_local(dev, call, store_cached=False)
        if not res.terminal:
            res = await self._wait(bytes.fromhex(res.request_id), timeout, res)
        return res

    async def serve_forward(self, kind: str, call: Call | None = None, request_id: str = "",
                            token: bytes = b"", via: str = "", revocation_height: int = 0) -> Result:
        """A peer gateway's call (signature already checked; ``via``: its id):
        local devices only, never re-forwarded. Served once the revocations in force
        here reach the forwarding gateway's height (the call's, or ``revocation_height``
        for result, cancel and revoke)."""
        try:
            if call is not None:
                call.via = via
                await self._caught_up(call.revocation_height)
            else:
                await self._caught_up(revocation_height)
            if kind == "submit":
                return await self._submit_local(self._local(call), call)
            if kind == "invoke":
                return await self._invoke_local(self._local(call), call)
            if kind == "revoke":  # the forwarding gateway learnt a revocation (peer.py checked who sent it)
                rec = await self.store.revoke_request(_request_id(request_id, required=True), via, self.clock())
                if rec is None:
                    raise NotFound(f"no request {request_id}")
                return _result(rec)
            rec = self._owned(request_id, token)
            if rec.forwarded_to:
                raise NotFound("the request is not held by this gateway")
            if kind == "cancel":
                return _result(await self.store.cancel(rec.request_id, self.clock()))
            return await self.get_result(request_id, token)
        except GatewayError as err:
            self.metrics.rejections.labels(err.reason).inc()
            raise

    async def _wait(self, rid: bytes, timeout: float, first: Result) -> Result:
        deadline = time.monotonic() + timeout
        while True:
            rec = self.store.get(rid)
            if rec is not None and not rec.st.active:
                return _result(rec)
            left = deadline - time.monotonic()
            if left <= 0:
                when = (" (device expected about %s)" % time.strftime("%H:%M:%S", time.localtime(
                    first.expected_at_ms / 1000))) if first.expected_at_ms else ""
                raise InvokeTimeout(
                    f"no answer within {timeout:g} s; request {first.request_id} stays queued{when}; "
                    f"fetch it later with `edgistry result {first.request_id}`", first.request_id)
            await self._next_change(rid, min(left, 5.0))  # re-read at least every 5 s

    def _owned(self, request_id: str, token: bytes, owner_may_read: bool = False) -> RequestRecord:
        """The request, for the token it was made with, if that token is still good.

        Here, where the device is paired, the token is checked again as on a call
        (revocation, expiry, gateway; not the method's right): a revoked or expired
        token can neither read nor cancel what it asked for; so is this gateway's own token
        behind a discovery handle's call. A peer's client's token (a forwarded, vouched-for
        read) is checked against what this gateway can know of it: its leaf's revocation
        and its expiry. Not checked here: a forwarding stub's (the device's gateway checks
        it) and a request of a device since unpaired (its answer is that failure)."""
        self.revoked_fresh()
        rec = self.store.get(_request_id(request_id, required=True))
        if rec is None:
            raise NotFound(f"no request {request_id} (unknown or purged)")
        if len(token) > auth.MAX_TOKEN_INPUT or not hmac.compare_digest(rec.token_digest, auth.token_digest(token)):
            if len(token) <= auth.MAX_TOKEN_INPUT and owner_may_read and self._is_owner(rec, token):
                return rec
            raise Unauthorized("only the token the request was made with (or the device owner's, to read it) "
                               "can read or cancel it")
        try:
            self._token_still_good(rec, token)
        except Unauthorized as exc:
            if rec.st == State.REVOKED or "Revoked" in str(exc):
                raise Unauthorized(f"request {request_id} refused for revocation: Revoked: the token it was made "
                                   "with, or one it derives from, is revoked (request state "
                                   f"{State(rec.state).name}); the device owner can read its final state") from exc
            raise
        return rec

    def _is_owner(self, rec: RequestRecord, token: bytes) -> bool:
        """Whether ``token`` is the owner's: derived from the device's root,
        not revoked, and holding the root capability (the owner may read how
        any request of its device ended, e.g. REVOKED)."""
        dev = self.store.device(rec.link_id) if not rec.forwarded_to else None
        if dev is None or not token:
            return False
        try:
            ok = auth.authorise(token, "", "", dev.root_token, self.secret, self.gateway_id, self.revoked,
                                self.clock() // 1000, check_permits=False)
        except Unauthorized:
            return False
        return ok.origin == "device" and any(isinstance(c, cl.Root) for c in ok.token.capabilities)

    def _token_still_good(self, rec: RequestRecord, token: bytes) -> None:
        """The re-check of :meth:`_owned` (raises Unauthorized)."""
        now = self.clock()
        if rec.forwarded_to:  # the holder checks it again; what this gateway knows is refused here
            self._check_chain(auth.own_chain(token, self.secret) or auth.leaf_hash(token))
            return
        own = auth.own_chain(token, self.secret) if rec.attested else ()
        if rec.attested and not own:
            # a peer's client (its gateway vouched for it): this gateway knows the leaf's hash
            # and the token's expiry, not its chain; the holder filed the chain with the request
            self._check_chain(auth.leaf_hash(token))
            expiry = auth.expiry_ms(token)
            if expiry and expiry <= now:
                raise Unauthorized("token refused: Expired: the token the request was made with has expired")
            return
        dev = self.store.device(rec.link_id)
        if dev is not None:  # a device's token, or this gateway's own (a discovery handle's call)
            auth.authorise(token, "", "", dev.root_token, self.secret, self.gateway_id, self.revoked,
                           now // 1000, check_permits=False)

    async def _remember_forward(self, call: Call, owner: str, res: Result) -> None:
        now = self.clock()
        stub = RequestRecord(bytes.fromhex(res.request_id), b"", call.service, call.method, b"", b"",
                             auth.token_digest(call.token), State.DONE, now, res.expires_at_ms or now,
                             done_ms=max(res.expires_at_ms, now), forwarded_to=owner)
        await self.store.put_finished(stub, () if res.terminal else call.chain)  # filed for revocation

    def _forward_chain(self, call: Call) -> None:
        """Before forwarding: refuse a token this gateway knows is revoked, and
        carry the hashes it knows of its chain (all of them for this gateway's
        own tokens; the leaf tag's for a device's, whose root it lacks)."""
        self.revoked_fresh()
        call.chain = _merged(auth.own_chain(call.token, self.secret) or auth.leaf_hash(call.token), call.chain)
        call.revocation_height = getattr(self.revoked, "height", 0)
        self._check_chain(call.chain)

    async def _caught_up(self, height: int) -> None:
        """Before serving a peer's forward: wait until the revocations in force
        here reach the forwarding gateway's height (a revocation in force there
        is then in force here too), at most ``catch_up_s``; else Unavailable."""
        mine = getattr(self.revoked, "height", None)
        if mine is None or mine >= height:
            return
        deadline = time.monotonic() + self.catch_up_s
        while self.revoked.height < height:
            if time.monotonic() >= deadline:
                raise Unavailable(f"this gateway's revocations are at height {self.revoked.height}, behind the "
                                  f"forwarding gateway's {height}; retry shortly")
            await asyncio.sleep(0.01)

    def _check_chain(self, chain: tuple[bytes, ...]) -> None:
        if self.revoked is not None and len(self.revoked) and any(h in self.revoked for h in chain):
            raise Unauthorized("token refused: Revoked: the token (or one it derives from) is revoked")

    def status(self) -> dict:
        """What the Status call reports: the revocation height in force here."""
        silent = getattr(self.revoked, "silent_s", lambda: None)()
        return {"gateway_id": self.gateway_id, "revocation_height": getattr(self.revoked, "height", 0),
                "chain_silent_ms": int(silent * 1000) if silent is not None else -1,
                "fail_closed": bool(getattr(self.revoked, "stale", False))}

    def revoked_fresh(self) -> None:
        """Raise Unavailable when the revocation list may be stale (the gateway
        has not heard from its chain node for too long): token checks fail closed."""
        check = getattr(self.revoked, "check_fresh", None)
        if check is not None:
            check()

    async def revoked_now(self, hashes: list[bytes]) -> int:
        """Revocations just learnt (already in :attr:`revoked`): end every active
        request made with a token whose chain holds one of ``hashes`` REVOKED,
        and have the gateways holding requests forwarded from here end theirs
        (each acknowledged, or retried). Returns how many were ended here."""
        ended, forwards = await self.store.revoke_requests(hashes, self.clock())
        if ended:
            self.metrics.rejections.labels("revoked").inc(len(ended))
        if forwards and self.forwarder is not None:
            await asyncio.gather(*(self._cancel_forward(rid, gid) for rid, gid in forwards))
        return len(ended)

    async def _cancel_forward(self, rid: bytes, gateway_id: str, tries: int = 5) -> None:
        """A signed peer cancel (reason: revoked), retried with backoff; the
        holder honours it whatever its own view of the chain."""
        for attempt in range(tries):
            try:
                await self.forwarder.call(gateway_id, "revoke", request_id=rid.hex())
                return
            except NotFound:
                return  # purged there: nothing left to run
            except GatewayError as err:
                log.warning("revocation cancel of %s at %s failed (%s); retrying", rid.hex(), gateway_id, err)
                await asyncio.sleep(0.1 * 2 ** attempt)
        log.error("revocation cancel of %s at %s not acknowledged after %d tries", rid.hex(), gateway_id, tries)

    async def get_result(self, request_id: str, token: bytes) -> Result:
        rec = self._owned(request_id, token, owner_may_read=True)
        if rec.forwarded_to:
            return await self.forwarder.call(rec.forwarded_to, "result", request_id=request_id, token=token)
        return _result(rec, self._expected(self.store.device(rec.link_id), rec, self.clock()))

    async def cancel(self, request_id: str, token: bytes) -> Result:
        rec = self._owned(request_id, token)
        if rec.forwarded_to:
            return await self.forwarder.call(rec.forwarded_to, "cancel", request_id=request_id, token=token)
        return _result(await self.store.cancel(rec.request_id, self.clock()))

    async def serve_forward_watch(self, request_id: str, token: bytes,
                                  revocation_height: int = 0) -> AsyncIterator[Result]:
        """A peer gateway's watch: once the revocations in force here reach its height."""
        await self._caught_up(revocation_height)
        async for res in self.watch(request_id, token):
            yield res

    async def watch(self, request_id: str, token: bytes) -> AsyncIterator[Result]:
        """The current state, then every change, until a terminal state.

        The token is checked again before every update and at least every
        ``watch_recheck_s``: once it is revoked or expires, the stream ends
        with Unauthorized (the device's gateway does the same for a forward)."""
        rec = self._owned(request_id, token)
        if rec.forwarded_to:
            async for res in self.forwarder.watch(rec.forwarded_to, request_id, token):
                yield res
            return
        last = None
        while True:
            rec = self.store.get(rec.request_id) or rec
            if last is not None:
                self._token_still_good(rec, token)
            if last is None or rec.state != last:
                last = rec.state
                yield _result(rec, self._expected(self.store.device(rec.link_id), rec, self.clock()))
            if not rec.st.active:
                return
            await self._next_change(rec.request_id, self.watch_recheck_s)


def _expiry_ms(token: cl.Token) -> int:
    """The token's expiry (its leaf carries every constraint of the chain) in ms; 0: none."""
    ends = [c.value for c in token.frames[-1].constraints if isinstance(c, cl.ExpiresAt)]
    return min(ends) * 1000 if ends else 0


def _merged(*chains: tuple[bytes, ...]) -> tuple[bytes, ...]:
    """Chains of hashes as one, in order, without repeats (at most 16: a full chain)."""
    if len(chains) == 2 and not chains[1]:  # a client's call: its token's chain alone, usually as it is
        chain = chains[0]
        if type(chain) is tuple and len(chain) <= 16 and len(set(chain)) == len(chain):
            return chain
    return tuple(dict.fromkeys(h for c in chains for h in c))[:16]


def _request_id(text: str, required: bool = False) -> bytes:
    if not text:
        if required:
            raise BadRequest("request id missing")
        return new_id()
    try:
        rid = bytes.fromhex(text)
    except ValueError:
        rid = b""
    if len(rid) != 16:
        raise BadRequest("a request id is 32 hex characters")
    return rid
