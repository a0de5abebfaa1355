"""An asyncio ABCI client speaking CometBFT's socket protocol.

Built from the same message definitions and framing core as the server, it
lets tests (and operators) drive an app the way CometBFT does: synchronous
calls are the request followed by Flush; :meth:`AbciClient.send` pipelines
requests (CheckTx on the mempool connection) and :meth:`flush` collects their
responses in order.
"""

from __future__ import annotations

import asyncio
from typing import Any

from .framing import FrameDecoder, encode_frame
from .server import ListenAddress
from ..proto import abci_pb2 as abci


class AbciClientError(Exception):
    """The server answered out of order, with an exception, or hung up."""


class AbciClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader, self._writer = reader, writer
        self._decoder = FrameDecoder()
        self._pending: list[str] = []

    @classmethod
    async def connect(cls, address: str, timeout: float = 10.0) -> AbciClient:
        addr = ListenAddress.parse(address)
        if addr.scheme == "unix":
            coro = asyncio.open_unix_connection(addr.path)
        else:
            coro = asyncio.open_connection(addr.host, addr.port)
        reader, writer = await asyncio.wait_for(coro, timeout)
        return cls(reader, writer)

    async def close(self) -> None:
        self._writer.close()
        try:
            await self._writer.wait_closed()
        except (ConnectionError, OSError):
            pass

    def send(self, kind: str, msg: Any) -> None:
        """Queue one request without waiting (pipelining)."""
        req = abci.Request()
        getattr(req, kind).CopyFrom(msg)
        self._writer.write(encode_frame(req.SerializeToString()))
        self._pending.append(kind)

    def send_raw(self, data: bytes) -> None:
        self._writer.write(data)

    async def flush(self, timeout: float = 30.0) -> list[Any]:
        """Send Flush; return the pending responses (in request order)."""
        self.send("flush", abci.RequestFlush())
        await self._writer.drain()
        out = []
        while self._pending:
            kind = self._pending.pop(0)
            resp = await asyncio.wait_for(self._read_response(), timeout)
            got = resp.WhichOneof("value")
            if got == "exception":
                raise AbciClientError(f"{kind}: app exception: {resp.exception.error}")
            if got != kind:
                raise AbciClientError(f"response {got!r} to request {kind!r}: out of order")
            out.append(getattr(resp, kind))
        return out[:-1]  # drop the flush response itself

    async def call(self, kind: str, msg: Any, timeout: float = 30.0) -> Any:
        """One synchronous call: request, Flush, wait for both responses."""
        self.send(kind, msg)
        (result,) = await self.flush(timeout)
        return result

    async def _read_response(self) -> abci.Response:
        while (frame := self._decoder.next_frame()) is None:
            data = await self._reader.read(65536)
            if not data:
                raise AbciClientError("connection closed by the app")
            self._decoder.receive_data(data)
        resp = abci.Response()
        resp.ParseFromString(frame)
        return resp
