"""The device runtime: wake, connect out, serve the queued requests, sleep.

Theory of operation
-------------------
The device never listens. :meth:`Device.run` is an explicit state loop::

    WAKE -> connect + session (resume with the stored ticket, else full handshake)
         -> ok:     SLEEP duty_cycle_s, failures = 0
         -> failed: SLEEP uniform(0, min(cap, base * 2**failures)) (full jitter), failures += 1

A ticket the gateway refuses (unknown after a gateway restart, expired, used)
costs one immediate retry with a full handshake, not a backoff.

One wake (:meth:`Device.wake`) follows docs/LINK_PROTOCOL.md "Data phase":
responses computed on an earlier wake are sent first; each REQUESTS batch is
stored durably (state.py) and ACKed, revocations are applied before anything
runs, then the requests run in sequence order; each response is persisted
before it is sent. A request id already answered is answered again from the
store (at-least-once delivery, no second run). The device says BYE when the
gateway has nothing more and every response it sent was ACKed (or after
``linger_s`` more seconds of waiting for pushed work).

Flights: everything the device answers to one read (PROOF, ACK, RESPONSES,
BYE) goes out in one write, so a full handshake with encryption costs two
round trips: HELLO, then PROOF + ACK + RESPONSES answering the gateway's
CHALLENGE + ACCEPT + REQUESTS (docs/LINK_PROTOCOL.md).

Clock, sleep, randomness and the network (``open_connection``) are
parameters, so tests run without real sleeps or sockets.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..caplets.cap_errors import Revoked, TokenError
from ..link.link_session import CLOSED, NEED_DATA, Ack, Bye, Error, Established, Requests, Responses
from ..link.link_device import (
    EXPIRED, REVOKED, SERVICE_ERROR, TOKEN_REFUSED, DeviceSession, check_request, request_sequence,
)
from ..link.link_wire import MAX_LINK_FRAME
from ..link.link_errors import LinkError
from ..link.link_crypto import x25519
from ..link.link_errors import E_AUTH, E_TICKET
from .home import DeviceHome, Pairing
from .services import Call, ServiceRegistry, build_registry
from .state import ACKED, DONE, MAX_ENTRIES, RUNNING, STORED, DeviceState

log = logging.getLogger("edgistry.device")

WAKE_TIMEOUT_S = 20.0
BACKOFF_BASE_S = 1.0
BACKOFF_CAP_S = 300.0
BACKOFF_MIN_CAP_S = 10.0
RESPONSE_BATCH_BYTES = MAX_LINK_FRAME - 4096
EAGER_FLUSH_S = 0.05  # services running longer than this: send the flight's replies so far first

OpenConnection = Callable[[str, int], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]


class WakeFailed(Exception):
    """A wake ended without a clean BYE (transport, protocol or gateway error)."""

    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.code = code
        self.resumed_with_ticket = False  # the failed attempt spent a ticket


@dataclass
class WakeReport:
    """What one wake did."""

    resumed: bool = False
    forward_secret: bool = False
    encrypted: bool = False
    received: int = 0          # request items received (including redeliveries)
    executed: int = 0          # service functions run
    deduplicated: int = 0      # redeliveries answered from the store
    delivered: int = 0         # responses ACKed by the gateway
    revoked: int = 0
    sleep_s: int = 0
    errors: list[str] = field(default_factory=list)


class Device:
    """A device home brought to life. See the module docstring."""

    def __init__(self, home: str | Path | DeviceHome, registry: ServiceRegistry | None = None, *,
                 clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 rng: random.Random | None = None,
                 randbytes: Callable[[int], bytes] = os.urandom,
                 open_connection: OpenConnection = asyncio.open_connection,
                 wake_timeout: float = WAKE_TIMEOUT_S, backoff_base: float = BACKOFF_BASE_S,
                 backoff_cap: float = BACKOFF_CAP_S, forward_secrecy: bool = True,
                 linger_s: float = 0.0) -> None:
        self.home = home if isinstance(home, DeviceHome) else DeviceHome(home)
        self.secret = self.home.secret()
        self.root_token = self.home.root_token()
        self.link_id = self.home.link_id()
        self.manifest = self.home.manifest()
        self.registry = registry or build_registry(self.home.path, self.link_id, self.manifest, clock)
        self.state = DeviceState(self.home.state_path)
        self.clock = clock
        self.sleep = sleep
        self.rng = rng or random.Random()
        self.randbytes = randbytes
        self.open_connection = open_connection
        self.wake_timeout = wake_timeout
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.x25519 = x25519() if forward_secrecy else None
        self.linger_s = linger_s
        self.duty_cycle_s = int(self.manifest.get("duty_cycle_s", 0) or 0)
        self.require_encrypt = bool(self.manifest.get("encrypt", False))
        self.failures = 0

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    # -- the duty cycle --

    async def run(self, once: bool = False, stop: asyncio.Event | None = None) -> None:
        """Wake, serve, sleep, forever (or one wake with ``once``; then a
        failure raises WakeFailed). ``stop`` ends the loop between wakes."""
        while stop is None or not stop.is_set():
            try:
                report = await self.wake_with_fallback()
                self.failures = 0
                delay: float = report.sleep_s
                log.info("wake done: %d received, %d run, %d deduplicated, %d delivered; "
                         "sleeping %d s", report.received, report.executed, report.deduplicated,
                         report.delivered, report.sleep_s)
            except WakeFailed as exc:
                if once:
                    raise
                delay = self.backoff_delay()
                self.failures += 1
                log.warning("wake failed (%s); retrying in %.1f s", exc, delay)
            if once:
                return
            await self._pause(delay, stop)

    def backoff_delay(self) -> float:
        """Full jitter: uniform(0, min(cap, base * 2**failures)).

        The cap follows the duty cycle (twice it, at least 10 s, at most
        ``backoff_cap``): a device that wakes every few seconds comes back
        within seconds of its gateway, one that sleeps for hours does not spin."""
        cap = min(self.backoff_cap, max(BACKOFF_MIN_CAP_S, 2 * self.duty_cycle_s))
        return self.rng.uniform(0, min(cap, self.backoff_base * 2 ** self.failures))

    async def _pause(self, delay: float, stop: asyncio.Event | None) -> None:
        if stop is None:
            await self.sleep(delay)
            return
        sleeper = asyncio.ensure_future(self.sleep(delay))
        stopper = asyncio.ensure_future(stop.wait())
        await asyncio.wait({sleeper, stopper}, return_when=asyncio.FIRST_COMPLETED)
        sleeper.cancel()
        stopper.cancel()

    async def wake_with_fallback(self) -> WakeReport:
        """One wake; a refused ticket gets one immediate full-handshake retry."""
        try:
            return await self.wake()
        except WakeFailed as exc:
            if exc.resumed_with_ticket and exc.code in (E_TICKET, E_AUTH):
                log.info("resumption refused (%s); full handshake", exc)
                return await self.wake()
            raise

    # -- one wake --

    async def wake(self) -> WakeReport:
        """Connect, run one session to BYE; raises WakeFailed."""
        pairing = self.home.paired()
        try:
            return await asyncio.wait_for(self._wake(pairing), self.wake_timeout)
        except asyncio.TimeoutError as exc:
            raise WakeFailed(f"no BYE within {self.wake_timeout:.0f} s") from exc
        except (ConnectionError, OSError) as exc:
            raise WakeFailed(f"cannot reach {pairing.host}:{pairing.port}: {exc}") from exc

    async def _wake(self, pairing: Pairing) -> WakeReport:
        reader, writer = await self.open_connection(pairing.host, pairing.port)
        ticket = self.state.take_ticket(self.now_ms())
        if ticket is not None:
            self.state.save()  # a ticket is spent once sent, whatever happens next
        session = DeviceSession(self.secret, self.root_token, self.link_id,
                                pairing.identity_token, self.randbytes, ticket=ticket,
                                x25519=self.x25519, require_encrypt=self.require_encrypt)
        w = _Wake(self, session, writer, WakeReport())
        try:
            w.write(session.initiate())
            await w.flush()
            while True:
                data = await w.read(reader)
                if data is None:  # lingered with nothing new: go to sleep
                    await w.bye()
                    return w.report
                if not data:
                    raise WakeFailed("the gateway closed the connection")
                session.receive_data(data)
                if await w.pump():
                    return w.report
        except LinkError as exc:
            w.write(session.data_to_send())  # e.g. PROOF, then our ERROR
            await w.flush_quietly()
            failed = WakeFailed(f"link error: {exc}")
            failed.resumed_with_ticket = ticket is not None
            raise failed from exc
        except WakeFailed as exc:
            exc.resumed_with_ticket = ticket is not None
            raise
        finally:
            writer.close()
            try:
                await asyncio.wait_for(writer.wait_closed(), 1.0)
            except (asyncio.TimeoutError, ConnectionError, OSError):
                pass


class _Wake:
    """The per-connection part of a wake (the session driver)."""

    def __init__(self, device: Device, session: DeviceSession, writer: asyncio.StreamWriter,
                 report: WakeReport) -> None:
        self.d = device
        self.session = session
        self.writer = writer
        self.report = report
        self.more = True            # until a REQUESTS says otherwise
        self.got_requests = False
        self.unacked_frames = 0     # RESPONSES frames sent and not yet ACKed
        self.gateway_skew_ms = 0    # gateway clock - our clock
        self.idle_since: float | None = None
        self.out = bytearray()      # this flight's replies, sent by flush()
        self.flight_t0 = time.monotonic()

    def write(self, data: bytes) -> None:
        """Queue bytes for the flight's single write (flush)."""
        self.out += data

    async def flush(self) -> None:
        if self.out:
            data, self.out = bytes(self.out), bytearray()
            self.writer.write(data)
            await self.writer.drain()

    async def flush_quietly(self) -> None:
        try:
            await self.flush()
        except (ConnectionError, OSError):
            pass

    async def read(self, reader: asyncio.StreamReader) -> bytes | None:
        """Bytes, b"" at EOF, or None when idle for ``linger_s``."""
        if self.d.linger_s and self._idle():
            try:
                return await asyncio.wait_for(reader.read(16384), self.d.linger_s)
            except asyncio.TimeoutError:
                return None
        return await reader.read(16384)

    def _idle(self) -> bool:
        return self.got_requests and not self.more and self.unacked_frames == 0

    async def pump(self) -> bool:
        """Handle every buffered event, then send the flight's replies in one
        write; True once BYE was sent."""
        s = self.session
        self.flight_t0 = time.monotonic()
        while True:
            event = s.next_event()
            self.write(s.data_to_send())
            if event is NEED_DATA:
                break
            if event is CLOSED:
                raise WakeFailed("session closed")
            await self.handle(event)
        if self._idle() and not self.d.linger_s:
            await self.bye()
            return True
        await self.flush()
        return False

    async def bye(self) -> None:
        self.report.sleep_s = self.d.duty_cycle_s
        self.write(self.session.send(Bye(self.d.duty_cycle_s)))
        await self.flush()

    async def handle(self, event) -> None:
        d, st = self.d, self.d.state
        if isinstance(event, Established):
            self.report.resumed = event.resumed
            self.report.forward_secret = event.forward_secret
            self.report.encrypted = event.encrypt
            if event.ticket_id:
                st.set_ticket(event.ticket_id, event.ticket_secret,
                              d.now_ms() + event.ticket_ttl_s * 1000)
                st.save()
            await self.send_responses(st.with_state(DONE))  # earlier wakes' answers first
        elif isinstance(event, Requests):
            await self.on_requests(event)
        elif isinstance(event, Ack):
            st.acked(list(event.ids))
            st.save()
            self.report.delivered += len(event.ids)
            self.unacked_frames = max(self.unacked_frames - 1, 0)
        elif isinstance(event, Error):
            raise WakeFailed(f"gateway error {event.code}: {event.reason}", event.code)

    async def on_requests(self, event: Requests) -> None:
        d, st = self.d, self.d.state
        self.got_requests = True
        self.more = event.more
        if event.gateway_now_ms:
            self.gateway_skew_ms = event.gateway_now_ms - d.now_ms()
        if event.revoked:
            st.revoke(list(event.revoked), d.now_ms() // 1000)
            self.report.revoked += len(event.revoked)
        now = d.now_ms()
        ack, again = [], []
        for item in event.items:
            self.report.received += 1
            rid = item["request_id"].hex()
            entry = st.entries.get(rid)
            if entry is None:
                if st.open_count() >= MAX_ENTRIES:
                    continue  # not stored, not ACKed: the gateway keeps it for later
                st.store(item, request_sequence(item), now)
            elif entry["state"] in (DONE, ACKED):
                again.append(rid)
                self.report.deduplicated += 1
            ack.append(item["request_id"])
        st.save()  # stored durably before the ACK says so
        if ack:
            self.write(self.session.send(Ack(ack)))
        done = await self.run_pending()
        await self.send_responses(again + done)

    async def run_pending(self) -> list[str]:
        """Run stored requests (and ones a crash interrupted) in sequence order.
        Replies queued so far (PROOF, ACK) wait for the RESPONSES, unless the
        services take long: then they go first (the gateway's handshake
        deadline runs until PROOF)."""
        st = self.d.state
        out = []
        for rid in st.with_state(STORED, RUNNING):
            if self.out and time.monotonic() - self.flight_t0 > EAGER_FLUSH_S:
                await self.flush()
            self.execute(rid)
            out.append(rid)
        return out

    def execute(self, rid: str) -> None:
        d, st = self.d, self.d.state
        entry = st.entries[rid]
        item = st.request(rid)
        now_ms = d.now_ms() + self.gateway_skew_ms
        interrupted = entry["state"] == RUNNING
        if item["expires_at_ms"] and item["expires_at_ms"] <= now_ms:
            st.finish(rid, EXPIRED, error="expired before it ran")
            st.save()
            return
        try:
            seq = check_request(item, d.secret, now_s=now_ms // 1000,
                                last_sequence=None if interrupted else st.last_sequence,
                                revoked=st.revoked_set())
        except TokenError as exc:
            log.warning("request %s refused: %s: %s", rid[:12], type(exc).__name__, exc)
            st.finish(rid, REVOKED if isinstance(exc, Revoked) else TOKEN_REFUSED,
                      error=f"{type(exc).__name__}: {exc}")
            st.save()
            return
        spec = d.registry.method(item["service"], item["method"])
        if interrupted and spec is not None and spec.mutating and not spec.idempotent:
            st.finish(rid, SERVICE_ERROR, error="interrupted by a device restart; outcome unknown")
            st.save()
            return
        entry["state"] = RUNNING
        st.last_sequence = max(st.last_sequence or 0, seq)
        st.save()  # durable before the side effects start
        status, payload, error = d.registry.call(item["service"], item["method"], item["args"],
                                                 Call(item["request_id"], d.clock()))
        self.report.executed += 1
        st.finish(rid, status, payload, error)
        st.save()

    async def send_responses(self, rids: list[str]) -> None:
        """RESPONSES frames for these ids, each under the frame limit."""
        st = self.d.state
        batch: list[dict] = []
        size = 0
        for rid in dict.fromkeys(rids):
            r = st.response(rid)
            cost = len(r["payload"]) + len(r["error"]) + 40
            if batch and size + cost > RESPONSE_BATCH_BYTES:
                await self._send_batch(batch)
                batch, size = [], 0
            batch.append(r)
            size += cost
        if batch:
            await self._send_batch(batch)

    async def _send_batch(self, batch: list[dict]) -> None:
        self.write(self.session.send(Responses(batch)))
        self.unacked_frames += 1
