"""The ABCI socket server: a thin asyncio adapter around :class:`RegistryApp`.

CometBFT opens four connections (query, snapshot, mempool, consensus) and
nothing says which is which, so every connection may carry any method. App
calls run inline on the event loop, one at a time, which serialises the four
connections onto the application (as kvstore's single mutex does) without a
lock. Each connection answers its requests in order, exactly one response per
request.

Each connection is an asyncio protocol: every burst of bytes the socket
delivers is answered in full (all whole frames, Flush included) and the
responses leave in one write, so a pipelined run of CheckTx and its Flushes
costs one send, not one per Flush. While the transport's write buffer is
above its high-water mark the connection stops reading (backpressure). A burst
is answered :data:`OUT_BURST` bytes of responses at a time: a few KB of small
queries with large answers would otherwise queue hundreds of MB of replies
before backpressure could act; the rest of the burst waits, unread input
included, until the transport has drained.
Requests are read without building the ``Request`` wrapper: a frame is one
oneof field, so its tag names the method and the field's bytes parse
straight into the method's message; responses are wrapped the same way, by
prefixing the serialized message with its field tag (no copy into a
``Response``). Anything unusual takes the general path.

A malformed or oversized frame, or bytes that do not decode as a Request,
close that connection only, with a log line; the app is untouched and other
connections go on. An app failure is answered with ``Response.exception``
(CometBFT then stops the node, which is what a broken invariant needs).

Limits. Each connection's partial frame is bounded by the frame limit; the
server also bounds the number of connections (:data:`MAX_CONNECTIONS`) and the
bytes buffered in partial frames over all of them (:data:`MAX_BUFFERED_BYTES`),
so junk connections cannot exhaust memory. Neither limit may lock CometBFT
out: it opens four connections together and, after a crash, four new ones
while the old ones may linger. So a connection over the limit replaces one
already open (:meth:`AbciServer._victim`), and over the byte budget the
connections holding the largest partial frames are closed. Never chosen: the
consensus connection (the latest to carry a consensus method, and any holding
a partial frame: it may be mid-FinalizeBlock with a block-sized frame) and,
while it is active, the connections opened together with it (CometBFT's
other three, which may be idle for long). A connection younger than
:data:`GRACE_S` is not replaced either, so a restarted CometBFT can open its
four before its first call. A consensus connection left over from before a
restart may be replaced. Each drop or refusal is one warning line.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import logging
import os
import socket
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import DecodeError

from .app import FatalAppError
from .framing import (
    MAX_FRAME_SIZE, FrameDecoder, FramingError, decode_uvarint, encode_frame, encode_uvarint,
)
from ..proto import abci_pb2 as abci

log = logging.getLogger(__name__)

WRITE_HIGH_WATER = 4 * 1024 * 1024  # stop reading a connection whose answers are not being taken
OUT_BURST = 1024 * 1024  # answer at most about this many bytes before checking the transport again
# CometBFT's four connections, four more after it restarts while the old ones
# linger, and room for a tool or two.
MAX_CONNECTIONS = 32
GRACE_S = 2.0  # a new connection gets this long to start talking before it may be replaced
SIBLINGS_S = 2.0  # CometBFT opens query, snapshot, mempool and consensus within this
STALE_S = 60.0  # a consensus connection silent this long no longer shields its siblings
# Two frames of the maximum size: a block-sized FinalizeBlock on the consensus
# connection never has to wait for anything else to drain.
MAX_BUFFERED_BYTES = 2 * MAX_FRAME_SIZE
CONSENSUS_METHODS = frozenset({"init_chain", "prepare_proposal", "process_proposal", "extend_vote",
                               "verify_vote_extension", "finalize_block", "commit"})


@dataclass(frozen=True)
class ListenAddress:
    scheme: str  # "tcp" or "unix"
    host: str = ""
    port: int = 0
    path: str = ""

    @classmethod
    def parse(cls, text: str) -> ListenAddress:
        if text.startswith("unix://"):
            return cls("unix", path=text[len("unix://") :])
        rest = text[len("tcp://") :] if text.startswith("tcp://") else text
        host, _, port = rest.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"listen address {text!r} is not tcp://HOST:PORT or unix://PATH")
        return cls("tcp", host.strip("[]"), int(port))


def dispatch(app: Any, req: abci.Request) -> abci.Response:
    """Call the app method named by the request's oneof; wrap the answer."""
    kind = req.WhichOneof("value")
    if kind == "flush":
        return abci.Response(flush=abci.ResponseFlush())
    try:
        result = getattr(app, kind)(getattr(req, kind))
    except Exception as exc:
        return _exception(kind, exc)
    resp = abci.Response()
    getattr(resp, kind).CopyFrom(result)
    return resp


def _exception(kind: str, exc: Exception) -> abci.Response:
    if isinstance(exc, FatalAppError):
        log.critical("halting: %s", exc)
        return abci.Response(exception=abci.ResponseException(error=str(exc)))
    log.exception("ABCI %s failed", kind)  # a bug: tell CometBFT rather than answer wrongly
    return abci.Response(exception=abci.ResponseException(error=f"{kind}: {exc!r}"))


def _tag(number: int) -> bytes:
    return encode_uvarint(number << 3 | 2)  # a length-delimited field


def _fast_table() -> dict[int, tuple[str, type, bytes]]:
    """Request tag (as an int of its 1-2 varint bytes) -> (method, request class, response tag)."""
    responses = {f.name: f.number for f in abci.Response.DESCRIPTOR.oneofs_by_name["value"].fields}
    table = {}
    for f in abci.Request.DESCRIPTOR.oneofs_by_name["value"].fields:
        tag = _tag(f.number)
        key = tag[0] if len(tag) == 1 else (tag[0] & 0x7F) | (tag[1] << 7)
        table[key] = (f.name, getattr(abci, f.message_type.name), _tag(responses[f.name]))
    return table


_FAST = _fast_table()
_CONSENSUS_KEYS = frozenset(key for key, (kind, _, _) in _FAST.items() if kind in CONSENSUS_METHODS)
_FLUSH_RESPONSE = encode_frame(abci.Response(flush=abci.ResponseFlush()).SerializeToString())


def _is_consensus(frame: bytes) -> bool:
    """Whether a request frame carries a consensus-connection method (its first tag says)."""
    if not frame:
        return False
    key = frame[0] if frame[0] < 0x80 or len(frame) < 2 else (frame[0] & 0x7F) | (frame[1] << 7)
    return key in _CONSENSUS_KEYS


def answer_frame(app: Any, frame: bytes) -> bytes:
    """The framed response to one framed request body (see the module notes)."""
    n = len(frame)
    if n >= 2:
        b0 = frame[0]
        if b0 < 0x80:
            key, pos = b0, 1
        elif frame[1] < 0x80:
            key, pos = (b0 & 0x7F) | (frame[1] << 7), 2
        else:
            key = -1
        entry = _FAST.get(key)
        if entry is not None and pos < n:
            if frame[pos] < 0x80:
                length, pos = frame[pos], pos + 1
            else:
                head = decode_uvarint(frame, pos)
                length, pos = head if head is not None else (-1, pos)
            if pos + length == n:  # exactly one field: the method's message
                kind, cls, resp_tag = entry
                if kind == "flush":
                    return _FLUSH_RESPONSE
                try:
                    msg = cls.FromString(memoryview(frame)[pos:])
                except DecodeError as exc:
                    raise FramingError(f"frame of {n} bytes is not an ABCI Request: {exc}") from exc
                try:
                    body = getattr(app, kind)(msg).SerializeToString()
                except Exception as exc:
                    return encode_frame(_exception(kind, exc).SerializeToString())
                m = len(body)
                inner = resp_tag + (bytes((m,)) if m < 0x80 else encode_uvarint(m))
                return encode_frame(inner + body) if m < 4096 else b"".join(
                    (encode_uvarint(len(inner) + m), inner, body))
    return encode_frame(dispatch(app, _parse_request(frame)).SerializeToString())


class _Connection(asyncio.Protocol):
    """One ABCI connection: answer every received burst in one write."""

    def __init__(self, server: AbciServer) -> None:
        self.server = server
        self.decoder = FrameDecoder(server.max_frame_size)
        self.transport: asyncio.Transport | None = None
        self.peer: Any = "unix"
        self.loop = asyncio.get_running_loop()
        self.closed = self.loop.create_future()
        self.serial = next(server._serials)  # opening order
        self.opened = self.loop.time()
        self.requests = 0  # requests answered
        self.consensus = False  # has carried a consensus method: never dropped
        self.last_active = self.loop.time()
        self.buffered = 0  # bytes of partial frames held, as counted in server.buffered
        self.dropped = False
        self._writing_paused = False  # the transport's buffer is above its high-water mark
        self._backlog = False  # whole frames may wait unanswered (reading is paused meanwhile)
        self._scheduled = False  # an _answer is due on the next loop turn

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        self.peer = transport.get_extra_info("peername") or "unix"
        if not self.server._admit(self):
            transport.abort()
            return
        self.server._connections.add(self)
        self.server.connections += 1
        log.info("ABCI connection from %s", self.peer)

    def data_received(self, data: bytes) -> None:
        if self.dropped:
            return
        self.decoder.receive_data(data)
        self.last_active = self.loop.time()
        self._answer()

    def _answer(self) -> None:
        """Answer the whole frames received, up to OUT_BURST bytes of responses; when
        more wait, stop reading and go on once the transport can take more."""
        self._scheduled = False
        if self.dropped or self.transport.is_closing():
            return
        decoder, app, out, size = self.decoder, self.server.app, [], 0
        try:
            while size < OUT_BURST and (frame := decoder.next_frame()) is not None:
                if not self.consensus and _is_consensus(frame):
                    self.consensus = True
                answer = answer_frame(app, frame)
                out.append(answer)
                size += len(answer)
                self.requests += 1
        except FramingError as exc:
            log.error("ABCI connection %s sent a bad frame (%s); closing that connection", self.peer, exc)
            if out:  # what was answered before the bad frame still goes out
                self.transport.write(b"".join(out))
            self._account()
            self.transport.close()
            return
        except Exception:  # a bug outside the app call: this connection cannot go on in order
            log.exception("ABCI connection %s: failed to answer; closing that connection", self.peer)
            self._account()
            self.transport.abort()
            return
        if out:
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))
        if size >= OUT_BURST:  # more may wait: read nothing new until they are answered
            self._backlog = True
            self.transport.pause_reading()
            if not self._writing_paused:
                self._continue()
        elif self._backlog:
            self._backlog = False
            if not self._writing_paused:
                self.transport.resume_reading()
        if self._account() > 0:
            self.server._shed()

    def _continue(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            self.loop.call_soon(self._answer)  # next turn: other connections get theirs between

    def _account(self) -> int:
        """Bring the server's buffered total up to date; the change, in bytes."""
        now = self.decoder.buffered
        change, self.buffered = now - self.buffered, now
        self.server.buffered += change
        return change

    def drop(self, why: str) -> None:
        """Close this connection to free a slot or buffer space (one warning line)."""
        log.warning("ABCI connection %s dropped: %s (it had answered %d requests, held %d bytes)",
                    self.peer, why, self.requests, self.buffered)
        self.dropped = True
        self.transport.abort()

    def pause_writing(self) -> None:
        self._writing_paused = True
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self.transport.is_closing():
            return
        if self._backlog:
            self._continue()
        else:
            self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            log.info("ABCI connection %s dropped: %s", self.peer, exc)
        if self in self.server._connections:
            self.server.connections -= 1
            self.server._connections.discard(self)
        self.server.buffered -= self.buffered
        self.buffered = 0
        self.decoder = FrameDecoder(self.server.max_frame_size)  # let go of any partial frame
        if not self.closed.done():
            self.closed.set_result(None)


class AbciServer:
    """Serves one application over a bounded number of ABCI connections."""

    def __init__(self, app: Any, max_frame_size: int = MAX_FRAME_SIZE, max_connections: int = MAX_CONNECTIONS,
                 max_buffered_bytes: int = MAX_BUFFERED_BYTES) -> None:
        self.app = app
        self.max_frame_size = max_frame_size
        self.max_connections = max_connections
        self.max_buffered_bytes = max_buffered_bytes
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[_Connection] = set()
        self._serials = itertools.count()
        self.connections = 0
        self.buffered = 0  # bytes of partial frames over all connections
        self.refused = 0  # connections dropped or refused by the limits

    def _protected(self) -> set[_Connection]:
        """Connections never dropped: the latest consensus connection, any consensus one
        mid-frame, and while the latest is active, the connections opened together with it."""
        live = [c for c in self._connections if not c.dropped]
        consensus = [c for c in live if c.consensus]
        keep = {c for c in consensus if c.buffered > 0}
        if consensus:
            latest = max(consensus, key=lambda c: (c.last_active, c.serial))
            keep.add(latest)
            if latest.loop.time() - latest.last_active <= STALE_S:  # CometBFT opens it after the other three
                keep.update(c for c in live if latest.serial - 3 <= c.serial < latest.serial
                            and latest.opened - c.opened <= SIBLINGS_S)
        return keep

    def _victim(self) -> _Connection | None:
        """The connection a newcomer replaces, if any: not protected, not in its grace period;
        a never-answered one holding a partial frame first, then non-consensus before consensus,
        never-answered before answered, the one idle longest, the oldest."""
        protected = self._protected()
        now = asyncio.get_running_loop().time()
        candidates = [c for c in self._connections
                      if c not in protected and not c.dropped and now - c.opened >= GRACE_S]
        if not candidates:
            return None
        return min(candidates, key=lambda c: (not (c.requests == 0 and c.buffered > 0), c.consensus,
                                              c.requests > 0, c.last_active, c.serial))

    def _admit(self, conn: _Connection) -> bool:
        """Make room for a new connection; False to refuse it."""
        if len(self._connections) < self.max_connections:
            return True
        self.refused += 1
        victim = self._victim()
        if victim is None:
            log.warning("ABCI connection from %s refused: %d connections open, none may be replaced",
                        conn.peer, len(self._connections))
            return False
        victim.drop(f"the limit of {self.max_connections} connections was reached and {conn.peer} connected")
        self._connections.discard(victim)
        self.connections -= 1
        return True

    def _shed(self) -> None:
        """Over the byte budget: drop the non-consensus connections holding the largest partial frames."""
        while self.buffered > self.max_buffered_bytes:
            protected = self._protected()
            holders = [c for c in self._connections if c not in protected and not c.dropped and c.buffered > 0]
            if not holders:
                return  # only the consensus connection buffers: bounded by the frame limit
            victim = max(holders, key=lambda c: (c.buffered, -c.serial))
            self.refused += 1
            victim.drop(f"{self.buffered} bytes buffered over all connections exceed {self.max_buffered_bytes}")
            self.buffered -= victim.buffered
            victim.buffered = 0
            victim.decoder = FrameDecoder(self.max_frame_size)

    async def start(self, address: str) -> list[str]:
        addr = ListenAddress.parse(address)
        loop = asyncio.get_running_loop()
        factory = lambda: _Connection(self)  # noqa: E731
        if addr.scheme == "unix":
            _refuse_live_socket(addr.path)
            self._server = await loop.create_unix_server(factory, path=addr.path)
            return [address]
        self._server = await loop.create_server(factory, addr.host, addr.port, reuse_port=False)
        return [f"tcp://{s.getsockname()[0]}:{s.getsockname()[1]}" for s in self._server.sockets]

    async def close(self) -> None:
        """Stop listening, end every connection, and wait for them to finish."""
        if self._server is not None:
            self._server.close()
        conns = list(self._connections)
        for conn in conns:
            log.info("ABCI connection %s closed: shutting down", conn.peer)
            conn.transport.abort()
        await asyncio.gather(*(c.closed for c in conns), return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()


def _refuse_live_socket(path: str) -> None:
    """asyncio replaces an existing socket file without asking, so a second server would
    silently take a live server's path: refuse when something still answers there."""
    if not os.path.exists(path):
        return
    with socket.socket(socket.AF_UNIX) as probe:
        try:
            probe.connect(path)
        except OSError:
            return  # a stale file from a server that is gone: replacing it is right
    raise OSError(errno.EADDRINUSE, f"{path}: address already in use (a server answers on this socket)")


def _parse_request(frame: bytes) -> abci.Request:
    req = abci.Request()
    try:
        req.ParseFromString(frame)
    except DecodeError as exc:
        raise FramingError(f"frame of {len(frame)} bytes is not an ABCI Request: {exc}") from exc
    if req.WhichOneof("value") is None:
        raise FramingError("ABCI Request with no known method (unsupported or empty oneof)")
    return req
