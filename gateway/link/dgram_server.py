"""The datagram device link (UDP): an asyncio DatagramProtocol over sans-I/O cores.

Frames, keys and crypto are ``firmware/link/link_dgram.py`` (the same code the
device runs); what to send a device and what its answers change is
``Delivery`` (delivery.py), exactly as on the TCP link; queues, deliveries,
answers and the revocation cursor go through the same :class:`LinkBackend`.
docs/LINK_PROTOCOL.md ("Datagram link") is the protocol.

Rules this adapter keeps:

* **No amplification.** A datagram gets no answer until its MAC checks out;
  the only answer to an authenticated but stale WAKE is a RESYNC, smaller than
  the WAKE. Every source (an IPv4 address, an IPv6 /64: admission.source_key)
  has a token bucket (``rate``/``burst``) checked before any crypto; over it,
  datagrams are dropped and counted. The table of buckets is bounded, so a
  sender cycling through more sources than it holds would start afresh each
  time: a source the table does not hold is admitted only through one shared
  bucket (``new_rate``/``new_burst``), which bounds the datagrams of such
  senders all together.
* **Replay.** A WAKE's counter must exceed the last one stored for the link
  (kept in the link's own record, so it outlives the context id being handed
  to another device while this one was unpaired), a DATA's sequence the last
  one seen on its context. The gateway answers
  sequence ``n`` only once that ``n`` is durable (so a replay after a crash
  can never make it encrypt a second, different reply under the same
  keystream). A DATA that gets no reply and records nothing (the bare ACK
  that ends a wake) writes nothing: its sequence protects no keystream, and
  the next DATA that gets a reply stores a higher one first.
* **At-least-once.** A reply's requests count as delivered only when the
  device's DATA acknowledges that reply; answers are stored before the reply
  that acknowledges them (any reply to a DATA carrying answers says: stored).
* One datagram of a link at a time (a per-link lock): durable writes of one
  datagram finish before the next of that link is looked at. A DATA's writes
  (what its ACK records, its twin report, its answers, its sequence) are
  started together, so they share one group commit: a wake with answers costs
  two commits, as on the TCP link.

The context state lives in the backend's ticket store (records named
``dgC``+kid and ``dgL``+link id, never confused with 16-byte ticket ids), so
it is as durable as tickets are, and like a ticket it is bound to the root the
device was paired with (``Ticket.root_fp``): unpaired, it is gone; paired
again under the same root, the link's counter floor comes back with it; under
another root, nothing made before is usable (a context record from before the
binding is not used at all: the device's next full wake makes a new one).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, field

from ...firmware.link import link_dgram as dg
from ...firmware.link import link_wire as wire
from ...firmware.link.x25519 import x25519
from ...firmware.link.link_session import Requests
from ..admission import source_key
from .backend import DeviceAnswer, LinkBackend, Ticket, root_fingerprint
from .delivery import Backlog, Decision, Delivery

log = logging.getLogger("edgistry.gateway.link.dgram")

CONTEXT_TTL_MS = 10 * 365 * 24 * 3600 * 1000  # a context lives until the next full wake replaces it
FRAME_BUDGET = dg.MAX_DATAGRAM - 24  # LinkFrame overhead Delivery sizes with >= our header + tag - 24
RATE_PER_S = 20.0
BURST = 40
SOURCES_TRACKED = 16384  # ~2 MB of buckets at most
NEW_SOURCES_PER_S = 2000.0  # first datagrams of sources not in the table, all together
NEW_SOURCES_BURST = 4000
DELIVERY_IDLE_S = 60.0


class DgramMetrics:
    """Counters of the datagram link, for the gateway's Prometheus exporter."""

    def __init__(self) -> None:
        self.datagrams_in = 0
        self.datagrams_out = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.wakes: Counter[str] = Counter()  # full, full_fs, saved
        self.drops: Counter[str] = Counter()  # reason -> count (rate_limited, bad_mac, replayed, ...)
        self.resyncs = 0
        self.requests_sent = 0
        self.responses_received = 0

    def snapshot(self) -> dict:
        out = {k: v for k, v in vars(self).items() if not isinstance(v, Counter)}
        out["wakes"] = dict(self.wakes)
        out["drops"] = dict(self.drops)
        return out


class RateLimiter:
    """Token buckets per source (bounded table, least recently seen evicted), and one
    shared bucket a source not in the table passes first (a pure core: ``now`` is given)."""

    def __init__(self, rate: float = RATE_PER_S, burst: int = BURST, size: int = SOURCES_TRACKED,
                 new_rate: float = NEW_SOURCES_PER_S, new_burst: int = NEW_SOURCES_BURST) -> None:
        self.rate, self.burst, self.size = rate, burst, size
        self.new_rate, self.new_burst = new_rate, new_burst
        self._b: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._new = (float(new_burst), None)  # (tokens, last) of the shared bucket

    def allow(self, source: str, now: float) -> bool:
        held = self._b.pop(source, None)
        if held is None:  # unknown (or evicted): one token of the shared bucket first
            tokens, last = self._new
            tokens = float(self.new_burst) if last is None else min(float(self.new_burst),
                                                                     tokens + (now - last) * self.new_rate)
            if tokens < 1.0:
                self._new = (tokens, now)
                return False  # not tracked: its own bucket starts only once it got in
            self._new = (tokens - 1.0, now)
            held = (float(self.burst), now)
        tokens, last = held
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        ok = tokens >= 1.0
        self._b[source] = (tokens - 1.0 if ok else tokens, now)
        if len(self._b) > self.size:
            self._b.popitem(last=False)
        return ok


@dataclass
class Context:
    """One device's datagram context (durable fields: master, fs, ctr_high, seq_high)."""

    link_id: bytes
    kid: int
    master: bytes
    fs: bool
    ctr_high: int
    seq_high: int
    keys: tuple = ()
    root_fp: bytes = b""  # the pairing it was made under (backend.root_fingerprint)

    def pack(self) -> bytes:
        return self.master + bytes([1 if self.fs else 0]) + dg.uv(self.ctr_high) + dg.uv(self.seq_high)

    @classmethod
    def unpack(cls, link_id: bytes, kid: int, blob: bytes, root_fp: bytes) -> Context:
        ctr, pos = dg.get_uv(blob, 33, len(blob))
        seq, _ = dg.get_uv(blob, pos, len(blob))
        return cls(link_id, kid, blob[:32], bool(blob[32]), ctr, seq, root_fp=root_fp)


def _cid(kid: int) -> bytes:
    return b"dgC" + dg.uv(kid)


def _lid(link_id: bytes) -> bytes:
    return b"dgL" + link_id


@dataclass
class _Link:
    """In-memory per-link state: the lock, the current wake's delivery, what each
    unacknowledged reply carried, frames a decision left for later replies."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    delivery: Delivery | None = None
    replies: dict[int, tuple[list[bytes], int, bool]] = field(default_factory=dict)  # seq -> (ids, cursor, more)
    queued: list[tuple[Requests, int]] = field(default_factory=list)  # (frame, cursor)
    touched: float = 0.0


class DgramServer(asyncio.DatagramProtocol):
    """The datagram link endpoint of a gateway (one UDP socket)."""

    def __init__(self, backend: LinkBackend, host: str = "127.0.0.1", port: int = 0, *,
                 metrics: DgramMetrics | None = None, rate: float = RATE_PER_S, burst: int = BURST,
                 forward_secrecy: bool = True) -> None:
        self.backend = backend
        self.host, self.port = host, port
        self.metrics = metrics or DgramMetrics()
        self.limiter = RateLimiter(rate, burst)
        self.x = x25519() if forward_secrecy else None
        self.transport: asyncio.DatagramTransport | None = None
        self._contexts: dict[int, Context] = {}
        self._links: dict[bytes, _Link] = {}
        self._link_keys: dict[bytes, tuple[bytes, bytes, bytes]] = {}  # link id -> (root, K_link, root_fp)
        self._kids: set[int] = set()  # kids handed out or being handed out in this process
        self._tasks: set[asyncio.Task] = set()
        self.resync_every_s = 1.0
        self._resynced: dict[bytes, float] = {}

    # ---- lifecycle ----

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.transport, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=(self.host, self.port))
        self.port = self.transport.get_extra_info("sockname")[1]
        log.info("device datagram link on udp %s:%d", self.host, self.port)

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    async def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def now_ms(self) -> int:
        return int(time.time() * 1000)

    # ---- datagrams ----

    def datagram_received(self, data: bytes, addr) -> None:
        m = self.metrics
        m.datagrams_in += 1
        m.bytes_in += len(data)
        if not self.limiter.allow(source_key(addr[0]), time.monotonic()):
            m.drops["rate_limited"] += 1
            return
        if len(data) > dg.MAX_DATAGRAM or len(data) < 1 + dg.TAG:
            m.drops["malformed"] += 1
            return
        if m.datagrams_in % 1024 == 0:
            self._sweep(time.monotonic())
        task = asyncio.get_running_loop().create_task(self._handle(bytes(data), addr))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _sweep(self, now: float) -> None:
        """Forget the in-memory state of links idle for DELIVERY_IDLE_S (their wake is
        over: what was not acknowledged goes again on the next one)."""
        idle = [k for k, st in self._links.items() if now - st.touched > DELIVERY_IDLE_S and not st.lock.locked()]
        for k in idle:
            del self._links[k]
            self._resynced.pop(k, None)

    def _send(self, data: bytes, addr) -> None:
        if self.transport is None:
            return
        self.transport.sendto(data, addr)
        self.metrics.datagrams_out += 1
        self.metrics.bytes_out += len(data)

    async def _handle(self, data: bytes, addr) -> None:
        try:
            if data[0] in (dg.WAKE, dg.WAKE_FS):
                await self._on_wake(data, addr)
            elif data[0] in (dg.DATA, dg.DATA_ACK, dg.DATA_ACKN):
                await self._on_data(data, addr)
            else:
                raise dg.DgramError("malformed", "type")
        except dg.DgramError as exc:
            self.metrics.drops[exc.reason] += 1
            log.debug("datagram from %s dropped: %s (%s)", addr, exc.reason, exc.detail)
        except Exception:  # noqa: BLE001 - one datagram's failure must not stop the endpoint
            self.metrics.drops["internal"] += 1
            log.exception("datagram from %s failed", addr)

    def _link(self, link_id: bytes) -> _Link:
        st = self._links.get(link_id)
        if st is None:
            st = self._links[link_id] = _Link()
        st.touched = time.monotonic()
        return st

    def _key(self, link_id: bytes) -> tuple[bytes, bytes]:
        """(K_link, root fingerprint) of the device paired under ``link_id`` now."""
        dev = self.backend.device_for_link(link_id)
        if dev is None:
            raise dg.DgramError("unknown_link")
        cached = self._link_keys.get(link_id)
        if cached is None or cached[0] != dev.root_token:  # re-paired: another root
            cached = self._link_keys[link_id] = (dev.root_token, dg.link_key(dev.root_token),
                                                 root_fingerprint(dev.root_token))
        return cached[1], cached[2]

    def _load_context(self, kid: int) -> Context | None:
        ctx = self._contexts.get(kid)
        # None also once the device is unpaired, or paired again under another root
        t = self.backend.ticket(_cid(kid))
        if t is None or not t.root_fp:  # (no root binding: made before it, never used again)
            self._contexts.pop(kid, None)
            return None
        if ctx is None or ctx.link_id != t.link_id or ctx.root_fp != t.root_fp:
            ctx = Context.unpack(t.link_id, kid, t.resumption_secret, t.root_fp)
            self._contexts[kid] = ctx
        return ctx

    async def _save(self, ctx: Context) -> None:
        await self.backend.rotate_ticket(None, _cid(ctx.kid), Ticket(ctx.link_id, ctx.pack(),
                                                                     self.now_ms() + CONTEXT_TTL_MS, ctx.root_fp))

    async def _save_link(self, link_id: bytes, kid: int, ctr_high: int, root_fp: bytes) -> None:
        """The link's own record: its context id and the highest WAKE counter taken."""
        await self.backend.rotate_ticket(None, _lid(link_id), Ticket(link_id, dg.uv(kid) + dg.uv(ctr_high),
                                                                     self.now_ms() + CONTEXT_TTL_MS, root_fp))

    async def _kid_for(self, link_id: bytes, root_fp: bytes) -> tuple[int, int]:
        """The link's context id and its WAKE counter floor (0 when it has none yet)."""
        t = self.backend.ticket(_lid(link_id))
        floor = 0
        if t is not None:
            blob = t.resumption_secret
            kid, pos = dg.get_uv(blob, 0, len(blob))
            if pos < len(blob):  # (records from before the floor moved here hold the id alone)
                floor, _ = dg.get_uv(blob, pos, len(blob))
            held = self.backend.ticket(_cid(kid))
            if held is None or held.link_id == link_id:  # (not handed on while this link was unpaired)
                self._kids.add(kid)
                return kid, floor
        # Small ids first (one byte below 128): probe at random, widen when crowded.
        for lo, hi, tries in ((0, 128, 8), (128, 1 << 14, 16), (1 << 14, 1 << 21, 64), (1 << 21, 1 << 35, 64)):
            for _ in range(tries):
                kid = lo + int.from_bytes(os.urandom(5), "big") % (hi - lo)
                if kid not in self._kids and self.backend.ticket(_cid(kid)) is None:
                    self._kids.add(kid)
                    await self._save_link(link_id, kid, floor, root_fp)
                    return kid, floor
        raise dg.DgramError("internal", "no free context id")

    # ---- WAKE: a full wake, new context ----

    async def _on_wake(self, data: bytes, addr) -> None:
        link_id, ctr, x_d, head, mac = dg.open_wake(data)
        lk, root_fp = self._key(link_id)
        if not dg.check_wake_mac(lk, head, mac):
            raise dg.DgramError("bad_mac", "wake")
        st = self._link(link_id)
        async with st.lock:
            kid, floor = await self._kid_for(link_id, root_fp)
            old = self._load_context(kid)
            if old is not None and old.link_id == link_id:
                floor = max(floor, old.ctr_high)
            if ctr <= floor:
                now = time.monotonic()
                if now - self._resynced.get(link_id, -1e9) >= self.resync_every_s:
                    self._resynced[link_id] = now
                    self.metrics.resyncs += 1
                    self._send(dg.seal_resync(lk, mac, floor), addr)  # smaller than the WAKE
                raise dg.DgramError("replayed", "wake counter not above the last")
            x_g = shared = None
            if x_d is not None and self.x is not None:
                priv, x_g = self.x.keypair()
                try:
                    shared = self.x.shared(priv, x_d)
                except ValueError as exc:
                    raise dg.DgramError("bad_key", str(exc))
            master = dg.context_master(lk, shared, data, x_g)
            ctx = Context(link_id, kid, master, shared is not None, ctr, 0, dg.context_keys(master), root_fp)
            self.metrics.wakes["full_fs" if shared is not None else "full"] += 1
            log.debug("%s: full wake from %s (kid %d%s)", link_id.hex()[:8], addr, kid,
                      ", forward secret" if shared is not None else "")
            st.delivery, st.replies, st.queued = Delivery(FRAME_BUDGET), {}, []
            now_ms = self.now_ms()
            self.backend.contact(link_id, now_ms, None)
            decision = st.delivery.established(True, self._backlog(link_id, st.delivery), now_ms)
            writes = [self._save(ctx), self._save_link(link_id, kid, ctr, root_fp)] + self._act(link_id, decision)
            self._queue(st, decision)
            frame, ids_cursor = self._next(st)
            await asyncio.gather(*writes)
            self._contexts[kid] = ctx
            st.replies[0] = ids_cursor
            head_out = bytes([dg.WELCOME_FS]) + x_g if x_g is not None else bytes([dg.WELCOME])
            out = dg.seal_reply(ctx.keys, 0, dg.uv(kid) + self._encode(frame, clock=True), head_out)
            self._send(out, addr)

    # ---- DATA: on a context ----

    async def _on_data(self, data: bytes, addr) -> None:
        kid, seq, back, pos = dg.peek_data(data)
        ctx = self._load_context(kid)
        if ctx is None:
            raise dg.DgramError("unknown_context")
        if not ctx.keys:
            ctx.keys = dg.context_keys(ctx.master)
        payload = dg.open_data(ctx.keys, data, seq, pos)
        st = self._link(ctx.link_id)
        async with st.lock:
            if self._contexts.get(kid) is not ctx or seq <= ctx.seq_high:
                raise dg.DgramError("replayed", "data sequence not above the last")
            ctx.seq_high = seq
            link_id, b = ctx.link_id, self.backend
            now_ms = self.now_ms()
            b.contact(link_id, now_ms, None)
            msg = wire.decode("Responses", payload) if payload else None
            writes: list = []
            waits = False  # the device waits for a reply to a bare ACK only after "more"
            if back:
                ids, cursor, waits = st.replies.pop(seq - back, ([], 0, False))
                if st.delivery is not None and ids:
                    ids = st.delivery.acked(ids)
                    if ids:
                        writes.append(b.delivered(link_id, ids))
                if cursor:
                    writes.append(b.revocations_sent(link_id, cursor))
            decision: Decision | None = None
            saved = False
            must_reply = False
            if not back and msg is None or st.delivery is None:  # a wake on the saved context
                if not back and msg is None:
                    self.metrics.wakes["saved"] += 1
                st.delivery, st.replies, st.queued = Delivery(FRAME_BUDGET), {}, []
                decision = st.delivery.established(True, self._backlog(link_id, st.delivery), now_ms)
                must_reply = not back or msg is not None
            if msg is not None:
                must_reply = True
                answers = [DeviceAnswer(r["request_id"], r["status"], r["payload"], r["error"])
                           for r in msg["items"]]
                self.metrics.responses_received += len(answers)
                if msg["twin"] is not None and msg["twin"] != {}:
                    t = msg["twin"]
                    writes.append(b.twin_report(link_id, t["applied"],
                                                [(c["key"], c["value"]) for c in t["reported"]], t["replace"]))
                # one transaction: what the ACK recorded, the twin report, the answers and the
                # sequence (a reply follows); the next batch is read once they are stored
                *_, stored = await asyncio.gather(*writes, self._save(ctx), b.answered(link_id, answers))
                writes = []
                saved = True
                if decision is None:
                    decision = st.delivery.answered(stored, self._backlog(link_id, st.delivery), now_ms)
            if decision is not None:
                writes += self._act(link_id, decision)
                self._queue(st, decision)
            if waits and not st.queued and decision is None:
                d = st.delivery.woken(self._backlog(link_id, st.delivery), now_ms)
                writes += self._act(link_id, d)
                self._queue(st, d)
            if waits:
                must_reply = True  # even empty: "nothing more" ends the device's wait
            frame = None
            if must_reply:
                frame, st.replies[seq] = self._next(st)
                if not saved:
                    writes.append(self._save(ctx))  # the sequence is durable before any reply to it
            elif writes:
                writes.append(self._save(ctx))  # rides in the same transaction
            # else nothing to write: see "Replay" in the module docstring
            await asyncio.gather(*writes)
            if frame is not None:
                self._send(dg.seal_reply(ctx.keys, seq, self._encode(frame, clock=False)), addr)

    # ---- delivery plumbing ----

    def _backlog(self, link_id: bytes, d: Delivery) -> Backlog:
        b = self.backend
        revoked, position = b.revocations(link_id) if d.wants_revocations else ([], 0)
        pending, more = b.pending(link_id, d.queue_bytes)
        twin, withdraw = b.twin_delta(link_id)
        return Backlog(pending, more, revoked, position, b.barred(), twin, withdraw)

    def _act(self, link_id: bytes, decision: Decision) -> list:
        """The durable writes a decision asks for (refusals, withdrawals), as coroutines."""
        b = self.backend
        out = []
        if decision.refused:
            out.append(b.answered(link_id, decision.refused))
        if decision.withdraw:
            out.append(b.twin_withdraw(link_id, decision.withdraw))
        self.metrics.requests_sent += decision.items
        return out

    @staticmethod
    def _queue(st: _Link, decision: Decision) -> None:
        """Frames wait for one reply each; the revocation cursor rides on the last."""
        frames = decision.frames
        for i, f in enumerate(frames):
            st.queued.append((f, decision.cursor if i == len(frames) - 1 else 0))

    @staticmethod
    def _next(st: _Link) -> tuple[Requests, tuple[list[bytes], int, bool]]:
        """The next frame to send (an empty one when none waits: "stored, nothing
        more"), and what acknowledging its reply records."""
        if not st.queued:
            return Requests([], False, [], 0), ([], 0, False)
        frame, cursor = st.queued.pop(0)
        if st.queued:
            frame.more = True
        return frame, ([item["request_id"] for item in frame.items], cursor, frame.more)

    @staticmethod
    def _encode(frame: Requests, clock: bool) -> bytes:
        msg = frame.to_msg()
        if not clock:  # the clock rides on full wakes only: 7 bytes a saved wake need not carry
            msg["gateway_now_ms"] = 0
        return wire.encode("Requests", msg)
