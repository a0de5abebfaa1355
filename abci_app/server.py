"""The ABCI socket server: a thin asyncio adapter around :class:`RegistryApp`.

CometBFT opens four connections (query, snapshot, mempool, consensus) and
nothing says which is which, so every connection may carry any method. App
calls run inline on the event loop, one at a time, which serialises the four
connections onto the application (as kvstore's single mutex does) without a
lock. Each connection answers its requests in order, exactly one response per
request; a Flush is answered and then the writer is drained.

A malformed or oversized frame, or bytes that do not decode as a Request,
close that connection only, with a log line; the app is untouched and other
connections go on. An app failure is answered with ``Response.exception``
(CometBFT then stops the node, which is what a broken invariant needs).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import DecodeError

from edgistry.abci_app.app import FatalAppError
from edgistry.abci_app.framing import MAX_FRAME_SIZE, FrameDecoder, FramingError, encode_frame
from edgistry.proto import abci_pb2 as abci

log = logging.getLogger(__name__)

READ_CHUNK = 256 * 1024
DRAIN_ABOVE = 4 * 1024 * 1024  # drain early if a client pipelines without Flush


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
    except FatalAppError as exc:
        log.critical("halting: %s", exc)
        return abci.Response(exception=abci.ResponseException(error=str(exc)))
    except Exception as exc:  # a bug: tell CometBFT rather than answer wrongly
        log.exception("ABCI %s failed", kind)
        return abci.Response(exception=abci.ResponseException(error=f"{kind}: {exc!r}"))
    resp = abci.Response()
    getattr(resp, kind).CopyFrom(result)
    return resp


class AbciServer:
    """Serves one application over any number of ABCI connections."""

    def __init__(self, app: Any, max_frame_size: int = MAX_FRAME_SIZE) -> None:
        self.app = app
        self.max_frame_size = max_frame_size
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task] = set()
        self.connections = 0

    async def start(self, address: str) -> list[str]:
        addr = ListenAddress.parse(address)
        if addr.scheme == "unix":
            self._server = await asyncio.start_unix_server(self._serve, path=addr.path)
            return [address]
        self._server = await asyncio.start_server(self._serve, addr.host, addr.port)
        return [f"tcp://{s.getsockname()[0]}:{s.getsockname()[1]}" for s in self._server.sockets]

    async def close(self) -> None:
        """Stop listening, end every connection, and wait for them to finish."""
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _answer(self, decoder: FrameDecoder, writer: asyncio.StreamWriter) -> None:
        """Answer every whole frame received so far, in order. Responses are
        written together (one send for a pipelined burst of CheckTx) and the
        writer is drained at each Flush; whatever was answered before a bad
        frame is still sent before the connection closes."""
        out: list[bytes] = []
        try:
            while (frame := decoder.next_frame()) is not None:
                req = _parse_request(frame)
                out.append(encode_frame(dispatch(self.app, req).SerializeToString()))
                if req.WhichOneof("value") == "flush":
                    writer.write(b"".join(out))
                    out.clear()
                    await writer.drain()
        finally:
            if out:
                writer.write(b"".join(out))
        if writer.transport.get_write_buffer_size() > DRAIN_ABOVE:
            await writer.drain()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername") or "unix"
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        self.connections += 1
        log.info("ABCI connection from %s", peer)
        decoder = FrameDecoder(self.max_frame_size)
        try:
            while data := await reader.read(READ_CHUNK):
                decoder.receive_data(data)
                await self._answer(decoder, writer)
        except FramingError as exc:
            log.error("ABCI connection %s sent a bad frame (%s); closing that connection", peer, exc)
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            log.info("ABCI connection %s dropped: %s", peer, exc)
        except asyncio.CancelledError:
            log.info("ABCI connection %s closed: shutting down", peer)
        finally:
            self.connections -= 1
            self._tasks.discard(task)
            writer.close()


def _parse_request(frame: bytes) -> abci.Request:
    req = abci.Request()
    try:
        req.ParseFromString(frame)
    except DecodeError as exc:
        raise FramingError(f"frame of {len(frame)} bytes is not an ABCI Request: {exc}") from exc
    if req.WhichOneof("value") is None:
        raise FramingError("ABCI Request with no known method (unsupported or empty oneof)")
    return req
