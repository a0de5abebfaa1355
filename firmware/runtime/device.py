"""The device program's CPython port: asyncio sockets around the portable core.

The wake itself (handshake or resume, store, ACK, run, answer, BYE) and the
backoff rule are the portable core's (firmware/device/dev_core.py), the same
code a MicroPython board runs (firmware/device/dev_mp.py); this module adds
only what CPython does differently: asyncio streams, ``asyncio.sleep``
between wakes, a ``stop`` event, X25519 from ``cryptography`` (forward
secrecy) and the state in ``<home>/state.json`` (firmware/runtime/state.py).

:meth:`Device.run` is the duty cycle::

    WAKE -> connect + session (resume with the stored ticket, else full handshake)
         -> ok:     SLEEP duty_cycle_s, failures = 0
         -> failed: SLEEP uniform(0, min(cap, base * 2**failures)) (full jitter), failures += 1

A ticket the gateway refuses (unknown after a gateway restart, expired, used)
costs one immediate retry with a full handshake, not a backoff.

With ``"link": "udp"`` in the manifest (``edgistry device init --link udp``)
a wake goes over the datagram link instead: the portable dev_dgram.DgramWake
over a blocking UDP socket, run in a worker thread (its waits are bounded by
its retries), with the context kept in the same state file.

Clock, sleep, randomness and the network (``open_connection``) are
parameters, so tests run without real sleeps or sockets.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from ..device import dev_core
from ..device.dev_core import Report, Wake, WakeFailed
from ..device.dev_dgram import DGRAM_RETRIES, RECV_SIZE, REPLY_TIMEOUT_MS, DgramWake, load_context
from ..link.link_dgram import DgramDevice
from ..link.x25519 import x25519
from ..link.link_device import DeviceSession
from ..link.link_errors import E_AUTH, E_TICKET
from .home import DeviceHome, Pairing
from .services import ServiceRegistry, build_registry
from .state import DeviceState

log = logging.getLogger("edgistry.device")

WAKE_TIMEOUT_S = float(dev_core.WAKE_TIMEOUT_S)
BACKOFF_BASE_S = float(dev_core.BACKOFF_BASE_S)
BACKOFF_CAP_S = float(dev_core.BACKOFF_CAP_S)
BACKOFF_MIN_CAP_S = float(dev_core.BACKOFF_MIN_CAP_S)
READ_SIZE = 16384

LINKS = ("tcp", "udp")

WakeReport = Report

__all__ = ["Device", "WakeFailed", "WakeReport"]

OpenConnection = Callable[[str, int], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]


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
                 linger_s: float = 0.0, udp_timeout_ms: int = REPLY_TIMEOUT_MS,
                 udp_retries: int = DGRAM_RETRIES) -> None:
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
        self.udp_timeout_ms = udp_timeout_ms  # UDP: the first wait for a reply, doubled per resend
        self.udp_retries = udp_retries
        self.duty_cycle_s = int(self.manifest.get("duty_cycle_s", 0) or 0)
        self.require_encrypt = bool(self.manifest.get("encrypt", False))
        self.link = self.manifest.get("link") or "tcp"
        if self.link not in LINKS:
            raise ValueError(f"{self.home.manifest_path}: link is one of {', '.join(LINKS)}, not {self.link!r}")
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
                log.info("wake done (%s over %s%s): %d received, %d run, %d deduplicated, %d delivered; "
                         "sleeping %d s", "resumed" if report.resumed else "full",
                         self.link, ", forward secret" if report.forward_secret else "",
                         report.received, report.executed, report.deduplicated,
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
        """Full jitter under a cap that follows the duty cycle (dev_core.backoff_delay)."""
        return dev_core.backoff_delay(self.failures, self.duty_cycle_s, self.rng.random(),
                                      self.backoff_base, self.backoff_cap)

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
        if self.link == "udp":  # bounded by its retries; a thread cannot be cancelled anyway
            return await asyncio.to_thread(self._wake_udp, pairing)
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
        w = Wake(self.state, self.registry, session, self.secret, self.now_ms,
                 lambda: int(time.monotonic() * 1000), self.duty_cycle_s, flush=writer.write,
                 linger=bool(self.linger_s), log=log.warning)
        try:
            writer.write(w.start())
            await writer.drain()
            while True:
                if self.linger_s and w.idle():
                    try:
                        data = await asyncio.wait_for(reader.read(READ_SIZE), self.linger_s)
                    except asyncio.TimeoutError:  # lingered with nothing new: go to sleep
                        w.bye()
                        writer.write(w.take())
                        await writer.drain()
                        return w.report
                else:
                    data = await reader.read(READ_SIZE)
                if not data:
                    raise WakeFailed("the gateway closed the connection")
                done = w.feed(data)
                writer.write(w.take())
                await writer.drain()
                if done:
                    return w.report
        except WakeFailed as exc:
            exc.resumed_with_ticket = ticket is not None
            try:
                writer.write(w.take())
                await writer.drain()
            except (ConnectionError, OSError):
                pass
            raise
        finally:
            writer.close()
            try:
                await asyncio.wait_for(writer.wait_closed(), 1.0)
            except (asyncio.TimeoutError, ConnectionError, OSError):
                pass

    def _wake_udp(self, pairing: Pairing) -> WakeReport:
        """One wake over the datagram link (blocking; runs in a worker thread)."""
        dev = DgramDevice(self.root_token, self.link_id, load_context(self.state.dgram), self.randbytes,
                          self.x25519)
        try:
            family, kind, proto, _, addr = socket.getaddrinfo(pairing.host, pairing.port, type=socket.SOCK_DGRAM)[0]
            sock = socket.socket(family, kind, proto)
        except OSError as exc:
            raise WakeFailed(f"cannot reach {pairing.host}:{pairing.port} over udp: {exc}") from exc
        try:
            sock.connect(addr)

            def recv(timeout_ms: int) -> bytes | None:
                deadline = time.monotonic() + timeout_ms / 1000
                while (left := deadline - time.monotonic()) > 0:
                    sock.settimeout(left)
                    try:
                        return sock.recv(RECV_SIZE)
                    except (TimeoutError, socket.timeout):
                        return None
                    except ConnectionRefusedError:  # ICMP port unreachable: nobody listens (yet)
                        time.sleep(min(left, 0.05))
                return None

            w = DgramWake(self.state, self.registry, dev, self.secret, self.now_ms,
                          lambda: int(time.monotonic() * 1000), self.duty_cycle_s, sock.send, recv,
                          self.udp_retries, self.udp_timeout_ms, log=log.warning)
            return w.run()
        except OSError as exc:
            raise WakeFailed(f"udp link to {pairing.host}:{pairing.port} failed: {exc}") from exc
        finally:
            sock.close()
