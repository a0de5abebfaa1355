"""Sans-I/O framing of CometBFT's ABCI socket protocol.

Theory of operation: every message on an ABCI socket is ``uvarint(len) ||
protobuf``, where uvarint is Go's ``binary.PutUvarint`` (unsigned LEB128, not
zigzag; the signed form was Tendermint <= 0.34). A :class:`FrameDecoder` is fed
raw bytes with :meth:`receive_data` and hands out whole message bodies with
:meth:`next_frame` (``None`` means it needs more data); partial frames are
buffered. :func:`encode_frame` does the reverse. Nothing here touches a socket,
so the asyncio server and the test client share it.
"""

from __future__ import annotations

# CometBFT itself accepts up to MaxInt32, but real messages are bounded by the
# block size (consensus param block.max_bytes, 21 MB by default, plus framing
# of the FinalizeBlock request). Anything larger is an attack or a bug.
MAX_FRAME_SIZE = 32 * 1024 * 1024
# A uvarint for a length <= 2**35 needs at most 5 bytes; Go's limit is 10.
MAX_VARINT_BYTES = 10


class FramingError(Exception):
    """The peer sent bytes that are not a valid ABCI frame; close the connection."""


def encode_uvarint(n: int) -> bytes:
    if n < 0:
        raise ValueError("uvarint cannot encode a negative number")
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def decode_uvarint(buf: bytes | bytearray | memoryview, pos: int = 0) -> tuple[int, int] | None:
    """Decode a uvarint at ``pos``: ``(value, next_pos)``, or ``None`` if incomplete."""
    result = 0
    shift = 0
    for i in range(MAX_VARINT_BYTES):
        if pos + i >= len(buf):
            return None
        byte = buf[pos + i]
        if i == MAX_VARINT_BYTES - 1 and byte > 1:
            raise FramingError("uvarint overflows 64 bits")
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos + i + 1
        shift += 7
    raise FramingError("uvarint longer than 10 bytes")


def encode_frame(body: bytes) -> bytes:
    n = len(body)
    return (_ONE_BYTE[n] if n < 0x80 else encode_uvarint(n)) + body


_ONE_BYTE = [bytes([i]) for i in range(0x80)]


class FrameDecoder:
    """Incremental decoder: feed bytes, take whole frames out in order.

    Received chunks are parsed in place (a read position, no per-frame
    compaction); only a frame that straddles chunks is joined, once, when
    all of it has arrived, so a 20 MB FinalizeBlock read in 256 KiB pieces
    is copied once rather than once per piece.
    """

    def __init__(self, max_frame_size: int = MAX_FRAME_SIZE) -> None:
        self._buf = b""  # the chunk being parsed
        self._pos = 0  # next unparsed byte of _buf
        self._more: list[bytes] = []  # chunks received after _buf
        self._more_len = 0
        self._max = max_frame_size

    def receive_data(self, data: bytes) -> None:
        if not data:
            return
        if self._pos >= len(self._buf) and not self._more:
            self._buf, self._pos = bytes(data), 0
        else:
            self._more.append(bytes(data))
            self._more_len += len(data)

    @property
    def buffered(self) -> int:
        return len(self._buf) - self._pos + self._more_len

    def _gather(self) -> None:
        """Join everything buffered into one chunk (a frame or varint straddles chunks)."""
        self._buf = b"".join([self._buf[self._pos :], *self._more])
        self._pos = 0
        self._more, self._more_len = [], 0

    def next_frame(self) -> bytes | None:
        """The next complete frame body, or ``None`` if more data is needed.

        Raises :class:`FramingError` for a malformed or oversized length prefix
        as soon as the prefix is readable, before the body arrives.
        """
        buf, pos = self._buf, self._pos
        if pos < len(buf) and buf[pos] < 0x80:  # the usual case: a frame under 128 bytes
            start, length = pos + 1, buf[pos]
        else:
            head = decode_uvarint(buf, pos)
            if head is None:
                if not self._more:
                    return None
                self._gather()
                buf, pos = self._buf, 0
                head = decode_uvarint(buf, 0)
                if head is None:
                    return None
            length, start = head
        if length > self._max:
            raise FramingError(f"frame of {length} bytes exceeds the {self._max}-byte limit")
        end = start + length
        if end > len(buf):
            if end - len(buf) > self._more_len:
                return None
            self._gather()
            buf, end, start = self._buf, end - pos, start - pos
        self._pos = end
        if end == len(buf) and not self._more:
            self._buf, self._pos = b"", 0
        return buf[start:end]
