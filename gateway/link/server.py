"""The device-link TCP server: a thin asyncio adapter over two sans-I/O cores.

The protocol is ``GatewaySession`` (firmware/link/link_gateway.py); what to
send a device, in what batches, and what its answers change is ``Delivery``
(delivery.py). This module accepts connections, reads and writes with time
limits, feeds the bytes to the session, hands each event to the delivery
together with what the :class:`LinkBackend` reads, and carries out the
decision: frames through the session, durable writes through the backend.

1. handshake within ``handshake_timeout`` (an absolute deadline: trickling
   bytes does not extend it). HELLO is answered with one flight: CHALLENGE +
   ACCEPT + the delivery's first REQUESTS (0.5-RTT); a RESUME with RESUMED +
   REQUESTS once the ticket rotation is durable;
2. nothing the device says counts before PROOF verifies (Established): then
   the ticket is stored; ACK -> ``backend.delivered`` (the ids the delivery
   names), RESPONSES -> ``backend.answered``, then the delivery's ACK and
   next REQUESTS;
3. BYE -> ``backend.contact(sleep_s)`` and close. A data-phase connection
   with no complete frame for ``idle_timeout`` is closed.

Flights: every frame a read brings is handled before anything is written;
the durable writes they started are awaited together (so PROOF + ACK +
RESPONSES cost one transaction: ticket, delivered, answered), then every
reply goes out in one write (one TCP segment: e.g. RESUMED + REQUESTS,
ACK + REQUESTS). Rule: no reply is written before every durable write its
flight started is on disk.

:meth:`LinkServer.notify` pushes new work to a device connected right now.
Every connection runs in its own task; whatever one does (garbage, floods,
stalls, exceptions in the backend) ends that connection only. Rejections are
logged (``edgistry.gateway.link``) and counted in :class:`LinkMetrics` by
reason word (link_errors.REASONS); connections over the caps of
:class:`~edgistry.gateway.admission.ConnectionCaps` (per source address, in
total) are closed before any byte is read, counted as ``link_source`` /
``link_total``, and logged once a second at most.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable

from ...firmware.link.x25519 import x25519
from ...firmware.link.link_errors import LinkError, RemoteProtocolError
from ...firmware.link.link_gateway import Challenged, GatewaySession
from ...firmware.link.link_session import (
    CLOSED, NEED_DATA, Ack, Bye, Error, Established, Responses,
)
from ...firmware.link.link_wire import MAX_LINK_FRAME
from ..admission import ConnectionCaps, source_key
from ..errors import GatewayError
from .backend import DeviceAnswer, LinkBackend, Ticket, root_fingerprint
from ..probe import LINK_CONNECTION, LINK_ESTABLISHED_TO_REQUESTS, Probe
from .delivery import Backlog, Decision, Delivery

log = logging.getLogger("edgistry.gateway.link")

DEFAULT_PORT = 26671
HANDSHAKE_TIMEOUT_S = 10.0
IDLE_TIMEOUT_S = 30.0
WRITE_TIMEOUT_S = 10.0  # a peer that stops reading is a half-open peer too
READ_CHUNK = 16384
LISTEN_BACKLOG = 1024  # devices waking together (after a gateway restart) queue here, not in SYN retries
REFUSAL_LOG_EVERY_S = 1.0  # a flood of refused connections logs one line a second, not one each


class LinkMetrics:
    """Counters of the link server, for the gateway's Prometheus exporter."""

    def __init__(self) -> None:
        self.sessions_open = 0
        self.sessions_total = 0
        self.connections_total = 0
        self.handshakes_full = 0
        self.handshakes_resumed = 0
        self.rejections: Counter[str] = Counter()
        self.requests_sent = 0
        self.responses_received = 0
        self.bytes_in = 0
        self.bytes_out = 0

    def snapshot(self) -> dict:
        """Plain numbers (``rejections`` is a dict reason -> count)."""
        out = {k: v for k, v in vars(self).items() if k != "rejections"}
        out["rejections"] = dict(self.rejections)
        return out


class _ConnKeys:
    """The key store one GatewaySession sees. Reads go to the backend; ticket
    writes are only recorded here, and the connection makes them durable: the
    ticket of a full handshake once PROOF verifies (never for an impostor),
    the rotation of a resumption (spent ticket out, next ticket in, one
    transaction) before RESUMED is written. Single use across concurrent
    connections is the server's in-memory ``spending`` set, which holds a
    ticket id from the moment it is presented until its deletion is durable."""

    def __init__(self, server: LinkServer) -> None:
        self.server = server
        self.backend = server.backend
        self.spent: bytes | None = None
        self.new: tuple[bytes, Ticket] | None = None
        self.root: bytes | None = None  # the root of the device this session authenticated against

    def identity_secret(self) -> bytes:
        return self.backend.identity_secret()

    def device(self, link_id: bytes) -> tuple[bytes, bool] | None:
        dev = self.backend.device_for_link(link_id)
        if dev is None:
            return None
        self.root = dev.root_token
        return dev.root_token, dev.encrypt

    def store_ticket(self, ticket_id: bytes, link_id: bytes, secret: bytes,
                     expires_at_ms: int) -> None:
        # bound to the root the session was made with: a re-pairing under another root voids it
        root = self.root
        if root is None:
            dev = self.backend.device_for_link(link_id)
            root = dev.root_token if dev is not None else b""
        self.new = (ticket_id, Ticket(link_id, secret, expires_at_ms, root_fingerprint(root)))  # b"": matches none

    def take_ticket(self, ticket_id: bytes) -> tuple[bytes, bytes, int] | None:
        spending = self.server.spending
        if ticket_id in spending:
            return None  # presented on another connection a moment ago
        t = self.backend.ticket(ticket_id)
        if t is None:
            return None  # nothing to spend: an unknown id costs no write (anyone can send one)
        spending.add(ticket_id)
        self.spent = ticket_id
        return t.link_id, t.resumption_secret, t.expires_at_ms


class _Closed(Exception):
    """The connection ended (EOF, BYE, ERROR, timeout): leave the loop."""


class _Connection:
    """One device connection: reads, the session, the delivery flow."""

    def __init__(self, server: LinkServer, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        s = server
        self.keys = _ConnKeys(server)
        self.session = GatewaySession(self.keys, s.rand, s.now_ms, s.x25519, s.ticket_ttl_s)
        self.link_id: bytes | None = None  # set once the device has proved itself
        self.delivery = Delivery()         # what to send, and when (delivery.py)
        self.wakeup = asyncio.Event()
        self.read_task: asyncio.Task | None = None
        self._waiter: asyncio.Future | None = None  # what a pending _read awaits
        self._out = bytearray()            # replies of the flight being handled
        self._writes: list[asyncio.Future] = []  # durable writes the flight started
        self._flight_t0 = 0.0
        self._items_sent = False           # this flight's replies carry request items
        self._in_handshake = True

    @property
    def name(self) -> str:
        lid = self.link_id or self.session.link_id
        lid = lid.hex()[:12] if lid else "?"
        return f"link {lid} from {self.peer}"

    # -- bytes in and out --

    async def _write(self, data: bytes, last: bool = False) -> None:
        """Write and, when the kernel did not take it all, wait until it drains.
        ``last``: the connection closes next; always drain, which also lets the
        loop read what the peer sent meanwhile (closing a socket with unread
        input sends a reset, and the peer may drop the final frame with it)."""
        if not data:
            return
        self.server.metrics.bytes_out += len(data)
        self.writer.write(data)
        if last or self.writer.transport.get_write_buffer_size():
            await asyncio.wait_for(self.writer.drain(), self.server.write_timeout)
        elif self.writer.transport.is_closing():
            raise ConnectionResetError("connection lost")

    async def _read(self, timeout: float) -> bytes | None:
        """Bytes, b"" at EOF, or None when ``timeout`` passed (or woken by notify).

        One future is awaited and resolved by whichever comes first (the read,
        the timer, :meth:`poke`): cheaper per read than ``asyncio.wait``."""
        task = self.read_task
        if task is None:
            task = self.read_task = asyncio.ensure_future(self.reader.read(READ_CHUNK))
        if not task.done():
            if self.wakeup.is_set():
                return None
            loop = asyncio.get_running_loop()
            waiter = self._waiter = loop.create_future()

            def wake(_=None) -> None:
                if not waiter.done():
                    waiter.set_result(None)
            task.add_done_callback(wake)
            timer = loop.call_later(max(timeout, 0), wake)
            try:
                await waiter
            finally:
                timer.cancel()
                task.remove_done_callback(wake)
                self._waiter = None
            if not task.done():
                return None
        self.read_task = None
        data = task.result()
        self.server.metrics.bytes_in += len(data)
        return data

    def poke(self) -> None:
        """New work for this connection (on the loop): wake a pending read."""
        self.wakeup.set()
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- durable writes and the reply of a flight --

    def _start(self, coro) -> asyncio.Future:
        """Start a durable backend write now (writes started in one loop turn
        share a transaction, in start order); :meth:`_flush` awaits it."""
        fut = asyncio.ensure_future(coro)
        self._writes.append(fut)
        return fut

    def _start_ticket_writes(self) -> None:
        """Make the session's ticket changes durable: a presented ticket is
        deleted whatever followed; a new one is stored only once established."""
        k = self.keys
        spent = k.spent
        new = k.new if self.session.established else None
        if spent is None and new is None:
            return
        k.spent = None
        if new is not None:
            k.new = None
        self._start(self._rotate(spent, new))

    async def _rotate(self, spent: bytes | None, new: tuple[bytes, Ticket] | None) -> None:
        tid, ticket = new if new is not None else (None, None)
        await self.server.backend.rotate_ticket(spent, tid, ticket)
        if spent is not None:
            self.server.spending.discard(spent)  # deleted for good now

    async def _flush(self) -> None:
        """Settle the flight's durable writes, then send its replies in one write.
        A flight with nothing to answer (a lone ACK) does not wait for its writes:
        nothing is promised on them, so the next flight's reply (or the end of the
        connection) settles them, and reading goes on meanwhile."""
        self._start_ticket_writes()
        if not self._out:
            return
        if self._writes:
            writes, self._writes = self._writes, []
            results = await asyncio.gather(*writes, return_exceptions=True)
            for r in results:
                if isinstance(r, BaseException):
                    self._out = bytearray()  # nothing of this flight is acknowledged
                    raise r
        out, self._out = bytes(self._out), bytearray()
        await self._write(out)
        if self._items_sent:
            self._items_sent = False
            if self.server.probe is not None and self._in_handshake:
                self.server.probe.span(LINK_ESTABLISHED_TO_REQUESTS, time.perf_counter() - self._flight_t0,
                                       sample=True)

    # -- the flow --

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        s = self.server
        deadline = loop.time() + s.handshake_timeout
        try:
            while self.session.state != "OPEN":
                data = await self._read(deadline - loop.time())
                if data is None:
                    if loop.time() >= deadline:
                        await self._reject("timeout", "no handshake within %.1f s" % s.handshake_timeout)
                        return
                    continue
                if not data:
                    raise _Closed("EOF during the handshake")
                await self._feed(data)
            self._in_handshake = False
            last = loop.time()
            while True:
                if self.wakeup.is_set():
                    self.wakeup.clear()
                    self._flight_t0 = time.perf_counter()
                    self._act(self.delivery.woken(self._backlog(), s.now_ms()))
                    await self._flush()
                data = await self._read(last + s.idle_timeout - loop.time())
                if data is None:
                    if loop.time() >= last + s.idle_timeout:
                        await self._reject("timeout", "idle for %.1f s" % s.idle_timeout)
                        return
                    continue
                if not data:
                    raise _Closed("EOF")
                if await self._feed(data):
                    last = loop.time()
        except _Closed as exc:
            log.debug("%s: closed (%s)", self.name, exc)
        except RemoteProtocolError as exc:
            await self._reject(exc.reason, exc.detail, already_failed=True)
        except (ConnectionError, asyncio.TimeoutError, OSError) as exc:
            log.info("%s: transport error: %r", self.name, exc)
        finally:
            if self.read_task is not None:
                self.read_task.cancel()
            await self._settle_writes()

    async def _settle_writes(self) -> None:
        """Writes no reply waited for (a lone ACK's) finish before the connection is done."""
        writes, self._writes = self._writes, []
        for r in await asyncio.gather(*writes, return_exceptions=True):
            if isinstance(r, BaseException):
                log.warning("%s: a durable write failed after the device's last flight: %r", self.name, r)

    async def _feed(self, data: bytes) -> bool:
        """Feed bytes; handle every event they complete; then settle and reply
        (also when a frame fails: what came before it still counts).
        True when a complete frame arrived."""
        session = self.session
        session.receive_data(data)
        self._flight_t0 = time.perf_counter()
        got = False
        try:
            while True:
                event = session.next_event()  # on a RemoteProtocolError the ERROR frame stays queued
                if event is NEED_DATA:
                    self._out += session.data_to_send()
                    return got
                if event is CLOSED:
                    raise _Closed("session closed")
                self._out += session.data_to_send()
                got = True
                await self._handle(event)
        finally:
            await self._flush()

    async def _handle(self, event) -> None:
        s = self.server
        b = s.backend
        d = self.delivery
        if isinstance(event, Challenged):
            self._act(d.challenged(event.encrypt, self._backlog(), s.now_ms()))
        elif isinstance(event, Established):
            self.link_id = event.link_id
            if event.resumed:
                s.metrics.handshakes_resumed += 1
            else:
                s.metrics.handshakes_full += 1
            self._start_ticket_writes()
            s._register(self)
            s.metrics.sessions_total += 1
            s.metrics.sessions_open += 1
            log.info("%s: session up (%s%s%s)", self.name,
                     "resumed" if event.resumed else "full handshake",
                     ", forward secret" if event.forward_secret else "",
                     ", encrypted" if event.encrypt else "")
            b.contact(self.link_id, s.now_ms(), None)
            self._act(d.established(event.resumed, self._backlog(), s.now_ms()))
        elif isinstance(event, Ack):
            ids = d.acked(event.ids)
            if ids:
                self._start(b.delivered(self.link_id, ids))
        elif isinstance(event, Responses):
            answers = [DeviceAnswer(r["request_id"], r["status"], r["payload"], r["error"])
                       for r in event.items]
            s.metrics.responses_received += len(answers)
            report = None
            if event.twin is not None:  # one commit with the answers; stored before the next delta is read
                t = event.twin
                report = self._start(b.twin_report(self.link_id, t["applied"],
                                                   [(c["key"], c["value"]) for c in t["reported"]], t["replace"]))
            stored = await self._start(b.answered(self.link_id, answers))
            if report is not None:
                await report
            self._act(d.answered(stored, self._backlog(), s.now_ms()))
        elif isinstance(event, Bye):
            b.contact(self.link_id, s.now_ms(), event.sleep_s)
            log.debug("%s: bye, sleeping %d s", self.name, event.sleep_s)
        elif isinstance(event, Error):
            log.info("%s: device reported error %d (%s)", self.name, event.code, event.reason)

    def _backlog(self) -> Backlog:
        """The backend's reads the delivery's next decision takes (reads are inline)."""
        b = self.server.backend
        link_id = self.link_id or self.session.link_id
        revoked, position = b.revocations(link_id) if self.delivery.wants_revocations else ([], 0)
        pending, more = b.pending(link_id, self.delivery.queue_bytes)
        twin, withdraw = b.twin_delta(link_id)
        return Backlog(pending, more, revoked, position, b.barred(), twin, withdraw)

    def _act(self, decision: Decision) -> None:
        """Carry out a delivery decision: start its durable writes, queue its frames."""
        b = self.server.backend
        link_id = self.link_id or self.session.link_id
        if decision.refused:
            for answer in decision.refused:
                log.warning("%s: request %s refused: %s", self.name, answer.request_id.hex(), answer.error)
            stored = self._start(b.answered(link_id, decision.refused))
            if decision.recheck:  # once they are stored, the queue read sees what is behind
                stored.add_done_callback(lambda f: f.cancelled() or f.exception() or self.poke())
        if decision.withdraw:  # a twin change under a revoked token: withdraw it, then look again
            log.warning("%s: withdrawing twin changes made under a revoked token", self.name)
            done = self._start(b.twin_withdraw(link_id, decision.withdraw))
            done.add_done_callback(lambda f: f.cancelled() or f.exception() or self.poke())
        if decision.ack is not None:
            self._out += self.session.send(Ack(decision.ack))
        for frame in decision.frames:
            self._out += self.session.send(frame)
        if decision.cursor:
            self._start(b.revocations_sent(link_id, decision.cursor))
        if decision.items:
            self.server.metrics.requests_sent += decision.items
            self._items_sent = True

    async def _reject(self, reason: str, detail: str, already_failed: bool = False) -> None:
        """Log, count, send ERROR when possible; the caller then closes."""
        self.server.metrics.rejections[reason] += 1
        log.warning("%s: rejected: %s (%s)", self.name, reason, detail)
        out = self.session.data_to_send() if already_failed else self.session.fail(reason, detail)
        try:
            await self._write(out, last=True)
        except (ConnectionError, asyncio.TimeoutError, OSError):
            pass

    async def shutdown(self) -> None:
        """Tell the device the gateway is going away (best effort)."""
        try:
            await self._write(self.session.fail("shutdown"), last=True)
        except (ConnectionError, asyncio.TimeoutError, OSError, LinkError):
            pass


class LinkServer:
    """Accepts device connections and runs their sessions against ``backend``.

    ``clock()`` (seconds) and ``rand(n)`` are injectable; the timeouts are
    seconds. Use ``async with LinkServer(...)`` or :meth:`start` / :meth:`close`.
    """

    def __init__(self, backend: LinkBackend, host: str = "127.0.0.1", port: int = DEFAULT_PORT, *,
                 handshake_timeout: float = HANDSHAKE_TIMEOUT_S,
                 idle_timeout: float = IDLE_TIMEOUT_S, write_timeout: float = WRITE_TIMEOUT_S,
                 ticket_ttl_s: int = 7 * 24 * 3600, forward_secrecy: bool = True,
                 clock: Callable[[], float] = time.time,
                 rand: Callable[[int], bytes] = os.urandom,
                 metrics: LinkMetrics | None = None, probe: Probe | None = None,
                 caps: ConnectionCaps | None = None) -> None:
        self.backend = backend
        self.spending: set[bytes] = set()  # ticket ids presented, deletion not yet durable
        self.probe = probe  # stage timings (gateway/probe.py): connections, flight read -> REQUESTS written
        self.host, self.port = host, port
        self.handshake_timeout = handshake_timeout
        self.idle_timeout = idle_timeout
        self.write_timeout = write_timeout
        self.ticket_ttl_s = ticket_ttl_s
        self.x25519 = x25519() if forward_secrecy else None
        self.clock = clock
        self.rand = rand
        self.metrics = metrics or LinkMetrics()
        self.caps = caps
        self._refused_logged = (0.0, 0)  # (when last logged, refusals since)
        self._server: asyncio.base_events.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task] = set()
        self._by_link: dict[bytes, _Connection] = {}

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    async def start(self) -> None:
        """Listen (``port`` 0 picks a free port; see :attr:`address`)."""
        self._loop = asyncio.get_running_loop()
        self._server = await asyncio.start_server(self._accept, self.host, self.port,
                                                  limit=MAX_LINK_FRAME, backlog=LISTEN_BACKLOG,
                                                  reuse_port=False)  # the port is ours alone
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("device link listening on %s:%d", self.host, self.port)

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    def connected(self) -> list[bytes]:
        """Link ids with an established session right now."""
        return list(self._by_link)

    def notify(self, link_id: bytes) -> bool:
        """New work for ``link_id``: push it now if the device is connected
        (True), else it waits for the next wake (False). Thread-safe."""
        conn = self._by_link.get(link_id)
        if conn is None or self._loop is None:
            return False
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            conn.poke()
        else:
            self._loop.call_soon_threadsafe(conn.poke)
        return True

    def _register(self, conn: _Connection) -> None:
        old = self._by_link.get(conn.link_id)
        if old is not None and old is not conn:
            log.info("%s: replaces an older connection of the same device", conn.name)
            old.writer.close()  # its read fails and its task ends
        self._by_link[conn.link_id] = conn

    def _within_caps(self, writer: asyncio.StreamWriter) -> str | None:
        """The source key of a connection within the caps (counted in), else None (it was aborted)."""
        peer = writer.get_extra_info("peername")
        key = source_key(str(peer[0])) if isinstance(peer, tuple) else str(peer)
        reason = self.caps.admit(key)
        if reason is None:
            return key
        self.metrics.rejections[reason] += 1
        writer.transport.abort()  # no byte read, none written: the cheapest refusal
        last, since = self._refused_logged
        now = time.monotonic()
        if now - last >= REFUSAL_LOG_EVERY_S:
            log.warning("device link: refused %d connection(s) (%s; latest from %s)", since + 1, reason, key)
            self._refused_logged = (now, 0)
        else:
            self._refused_logged = (last, since + 1)
        return None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        key = None
        if self.caps is not None:
            key = self._within_caps(writer)
            if key is None:
                return
        task = asyncio.current_task()
        self._tasks.add(task)
        conn = _Connection(self, reader, writer)
        self.metrics.connections_total += 1
        t0 = time.perf_counter()
        try:
            await conn.run()
        except asyncio.CancelledError:
            await conn.shutdown()
            raise
        except Exception as exc:  # a bug or a backend failure: this connection only
            if isinstance(exc, GatewayError):  # a store fault (full, writer gone): /healthz names it
                log.warning("%s: connection ended: %s", conn.name, exc)
            else:
                log.exception("%s: connection failed", conn.name)
            self.metrics.rejections["internal"] += 1
            try:
                await conn._write(conn.session.fail("internal"), last=True)
            except (ConnectionError, asyncio.TimeoutError, OSError):
                pass
        finally:
            if conn.link_id is not None and self._by_link.get(conn.link_id) is conn:
                del self._by_link[conn.link_id]
            if conn.session.established:
                self.metrics.sessions_open -= 1
            if self.probe is not None:
                self.probe.span(LINK_CONNECTION, time.perf_counter() - t0)
            writer.close()
            try:
                await asyncio.wait_for(writer.wait_closed(), 1.0)
            except (ConnectionError, asyncio.TimeoutError, OSError):
                pass
            self._tasks.discard(task)
            if key is not None:
                self.caps.release(key)

    async def close(self, grace: float = 2.0) -> None:
        """Stop listening, tell connected devices, end every connection."""
        if self._server is not None:
            self._server.close()
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=grace)
        if self._server is not None:
            try:
                await asyncio.wait_for(self._server.wait_closed(), grace)
            except asyncio.TimeoutError:
                pass
            self._server = None
        log.info("device link closed")

    async def __aenter__(self) -> LinkServer:
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


class LinkServerThread:
    """Runs a LinkServer on its own event loop in a background thread (for
    synchronous callers and tests). ``start()`` returns once listening."""

    def __init__(self, server: LinkServer) -> None:
        self.server = server
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True,
                                        name="link-server")

    def start(self) -> LinkServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(10)
        return self.server

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()
