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
above its high-water mark the connection stops reading (backpressure).
Requests are read without building the ``Request`` wrapper: a frame is one
oneof field, so its tag names the method and the field's bytes parse
straight into the method's message; responses are wrapped the same way, by
prefixing the serialized message with its field tag (no copy into a
``Response``). Anything unusual takes the general path.

A malformed or oversized frame, or bytes that do not decode as a Request,
close that connection only, with a log line; the app is untouched and other
connections go on. An app failure is answered with ``Response.exception``
(CometBFT then stops the node, which is what a broken invariant needs).
"""

from __future__ import annotations

import asyncio
import errno
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
_FLUSH_RESPONSE = encode_frame(abci.Response(flush=abci.ResponseFlush()).SerializeToString())


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
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        self.peer = transport.get_extra_info("peername") or "unix"
        self.server._connections.add(self)
        self.server.connections += 1
        log.info("ABCI connection from %s", self.peer)

    def data_received(self, data: bytes) -> None:
        decoder, app, out = self.decoder, self.server.app, []
        decoder.receive_data(data)
        try:
            while (frame := decoder.next_frame()) is not None:
                out.append(answer_frame(app, frame))
        except FramingError as exc:
            log.error("ABCI connection %s sent a bad frame (%s); closing that connection", self.peer, exc)
            if out:  # what was answered before the bad frame still goes out
                self.transport.write(b"".join(out))
            self.transport.close()
            return
        except Exception:  # a bug outside the app call: this connection cannot go on in order
            log.exception("ABCI connection %s: failed to answer; closing that connection", self.peer)
            self.transport.abort()
            return
        if out:
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))

    def pause_writing(self) -> None:
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        if not self.transport.is_closing():
            self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            log.info("ABCI connection %s dropped: %s", self.peer, exc)
        self.server.connections -= 1
        self.server._connections.discard(self)
        if not self.closed.done():
            self.closed.set_result(None)


class AbciServer:
    """Serves one application over any number of ABCI connections."""

    def __init__(self, app: Any, max_frame_size: int = MAX_FRAME_SIZE) -> None:
        self.app = app
        self.max_frame_size = max_frame_size
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[_Connection] = set()
        self.connections = 0

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
