"""Deadlines and connection caps for the aiohttp servers (embedded RPC, gateway HTTP).

aiohttp bounds the size of a request head but not the time it takes to arrive:
a client that opens a connection and sends a header line now and then (or
nothing at all, or half a body) holds a socket and a file descriptor for as
long as it likes, and aiohttp has no cap on connections. A thousand such
clients exhaust a process limited to 1,024 files. This module closes that gap
from outside aiohttp, without touching its parser:

* a protocol wrapper around each of aiohttp's per-connection handlers counts
  connections (in all and per source: an IPv4 address, or an IPv6 /64, which one
  customer typically holds whole) and refuses the ones over a cap by closing them
  at once. It does so when the TCP connection is accepted: with TLS, the site
  listens in plain TCP and the wrapper starts TLS itself once it has admitted the
  connection, so sockets still in (or never starting) their handshake count too;
* it runs one timer per connection, for the phase the connection is in:
  ``head``: from accept (TLS handshake included) or from the first byte after an
  answered request, until a request head is complete, ``head_timeout_s``;
  ``body``: from the head until the body is complete, ``body_timeout_s``;
  ``idle``: from an answered request until the next one starts, ``idle_timeout_s``
  (longer than aiohttp's client keep-alive of 15 s, so a client's reused
  connection is not closed under it);
  none while the handler runs (a long poll or an event stream is the
  handler's business);
* an aiohttp middleware tells the wrapper when a head is complete (the
  handler is called) and when the handler has returned; the request's
  payload stream tells it when the body is complete.

A connection whose phase runs out is aborted. The limits are per listening
site; :class:`GuardStats` counts what was refused and what timed out.
"""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

HEAD_TIMEOUT_S = 10.0
BODY_TIMEOUT_S = 30.0
IDLE_TIMEOUT_S = 30.0
MAX_CONNECTIONS = 512
MAX_PER_SOURCE = 64
TLS_HANDSHAKE_TIMEOUT_S = 10.0
EARLY_BYTES = 1 << 20  # decrypted bytes held between a TLS handshake and aiohttp taking the connection


@dataclass
class GuardLimits:
    head_timeout_s: float = HEAD_TIMEOUT_S
    body_timeout_s: float = BODY_TIMEOUT_S
    idle_timeout_s: float = IDLE_TIMEOUT_S
    max_connections: int = MAX_CONNECTIONS
    max_per_source: int = MAX_PER_SOURCE


@dataclass
class GuardStats:
    open: int = 0
    refused: int = 0  # over a cap: closed at once
    timed_out: dict[str, int] = field(default_factory=lambda: {"head": 0, "body": 0, "idle": 0})


class ConnectionGuard:
    """The caps, timers and counters of one listening site. Build the
    application with :attr:`middleware`, then listen with a :class:`GuardedSite`."""

    def __init__(self, limits: GuardLimits | None = None) -> None:
        self.limits = limits or GuardLimits()
        self.stats = GuardStats()
        self._per_source: dict[str, int] = {}
        self._by_transport: dict[Any, _Guarded] = {}

    # -- the middleware: a head is complete when aiohttp calls the handler --

    @web.middleware
    async def middleware(self, request: web.Request,
                         handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        conn = self._by_transport.get(request.transport)
        if conn is None:  # not one of ours (a test client, or the connection is gone)
            return await handler(request)
        conn.head_complete(request)
        try:
            return await handler(request)
        finally:
            conn.answered()

    def factory(self, inner: Callable[[], asyncio.Protocol],
                tls: ssl.SSLContext | None = None) -> Callable[[], asyncio.Protocol]:
        """Protocols for a plain TCP listener; with ``tls``, each starts TLS once admitted."""
        return lambda: _Guarded(self, inner(), tls)

    # -- bookkeeping for _Guarded --

    def _admit(self, conn: _Guarded, source: str) -> bool:
        lim, per = self.limits, self._per_source
        if self.stats.open >= lim.max_connections or per.get(source, 0) >= lim.max_per_source:
            self.stats.refused += 1
            return False
        self.stats.open += 1
        per[source] = per.get(source, 0) + 1
        return True

    def _release(self, conn: _Guarded, source: str) -> None:
        self.stats.open -= 1
        left = self._per_source.get(source, 1) - 1
        if left:
            self._per_source[source] = left
        else:
            self._per_source.pop(source, None)
        if conn.transport is not None:
            self._by_transport.pop(conn.transport, None)


def source_of(peer: Any) -> str:
    """The unit the per-source cap counts: an IPv4 address (also IPv4-mapped IPv6), an
    IPv6 /64, or the peer as given (a unix socket)."""
    host = peer[0] if isinstance(peer, tuple) and peer else peer
    try:
        addr = ipaddress.ip_address(str(host).split("%", 1)[0])
    except ValueError:
        return str(host)
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.ip_network(f"{addr}/64", strict=False))
    return str(addr)


class _Guarded(asyncio.Protocol):
    """One connection: aiohttp's handler inside, a phase timer outside."""

    def __init__(self, guard: ConnectionGuard, inner: Any, tls: ssl.SSLContext | None = None) -> None:
        self.guard, self.inner, self.tls = guard, inner, tls
        self.raw: asyncio.Transport | None = None  # the TCP connection
        self.transport: asyncio.Transport | None = None  # what aiohttp talks to (TLS over raw, or raw)
        self.source = ""
        self.admitted = False
        self.phase = "head"
        self._timer: asyncio.TimerHandle | None = None
        self._body_done = True
        self._early_data = False  # bytes after the body, while the handler runs: a pipelined head
        self._inner_connected = False
        self._tls_task: asyncio.Future | None = None
        # what TLS decrypted between its handshake and _ready (start_tls returns a loop turn
        # after the handshake, and a client's request may come with its last flight)
        self._early: list[bytes] = []
        self._early_eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.raw = transport  # type: ignore[assignment]
        self.source = source_of(transport.get_extra_info("peername"))
        if not self.guard._admit(self, self.source):
            transport.abort()
            return
        self.admitted = True
        self._arm("head", self.guard.limits.head_timeout_s)  # the TLS handshake counts against it
        if self.tls is None:
            self._ready(self.raw)
        else:
            self._tls_task = asyncio.ensure_future(self._start_tls())

    async def _start_tls(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            tls = await loop.start_tls(self.raw, self, self.tls, server_side=True,
                                       ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT_S)
        except (OSError, ssl.SSLError, asyncio.TimeoutError, RuntimeError):
            tls = None
        if tls is None or not self.admitted:
            if self.raw is not None:
                self.raw.abort()
            self._release()  # connection_lost may not follow a failed handshake
            return
        self._ready(tls)

    def _ready(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.guard._by_transport[transport] = self
        self._inner_connected = True
        self.inner.connection_made(transport)
        early, self._early = self._early, []
        for data in early:
            self.data_received(data)
        if self._early_eof and not transport.is_closing() and not self.inner.eof_received():
            transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._release()
        if self._inner_connected:
            self._inner_connected = False
            self.inner.connection_lost(exc)

    def _release(self) -> None:
        if not self.admitted:
            return
        self.admitted = False
        self._cancel()
        self.guard._release(self, self.source)

    def data_received(self, data: bytes) -> None:
        if not self._inner_connected:  # TLS is up, _ready is a loop turn away: keep it for then
            self._early.append(data)
            if sum(map(len, self._early)) > EARLY_BYTES and self.raw is not None:
                self.raw.abort()
            return
        if self.phase == "idle":  # the next request starts: its head has a deadline
            self._arm("head", self.guard.limits.head_timeout_s)
        elif self.phase == "handler" and self._body_done:
            self._early_data = True
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        if not self._inner_connected:
            self._early_eof = True
            return True  # keep the transport open until _ready hands the EOF on
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        if self._inner_connected:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner_connected:
            self.inner.resume_writing()

    # -- phases, told by the middleware and the payload --

    def head_complete(self, request: web.Request) -> None:
        content = request.content
        if request.body_exists and not content.at_eof():
            self._body_done = False
            self._arm("body", self.guard.limits.body_timeout_s)
            content.on_eof(self._body_complete)
        else:
            self._body_done = True
            self._enter("handler")

    def _body_complete(self) -> None:
        self._body_done = True
        if self.phase == "body":
            self._enter("handler")

    def answered(self) -> None:
        if not self.admitted:
            return
        if self._early_data:
            self._early_data = False
            self._arm("head", self.guard.limits.head_timeout_s)
        else:
            self._arm("idle", self.guard.limits.idle_timeout_s)

    def _enter(self, phase: str) -> None:
        self._cancel()
        self.phase = phase

    def _arm(self, phase: str, seconds: float) -> None:
        self._enter(phase)
        self._timer = asyncio.get_running_loop().call_later(seconds, self._expired, phase)

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self, phase: str) -> None:
        self._timer = None
        if not self.admitted or self.phase != phase or self.raw is None:
            return
        self.guard.stats.timed_out[phase] += 1
        (self.transport or self.raw).abort()
        self._release()  # at once: connection_lost may not follow a handshake cut short


class GuardedSite(web.TCPSite):
    """``web.TCPSite`` whose connections go through ``guard`` (caps, deadlines),
    with a deadline on the TLS handshake too."""

    def __init__(self, runner: web.AppRunner, host: str, port: int, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(runner, host, port, **kwargs)
        self.guard = guard

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with its runner
        server = self._runner.server
        assert server is not None
        loop = asyncio.get_running_loop()
        # plain TCP: each connection is admitted (counted, capped) before its TLS handshake
        self._server = await loop.create_server(
            self.guard.factory(server, self._ssl_context), self._host, self._port,
            backlog=self._backlog, reuse_address=self._reuse_address, reuse_port=self._reuse_port)
        self._bound_port = self._server.sockets[0].getsockname()[1]

    @property
    def port(self) -> int:
        return self._bound_port
