"""A tiny MQTT 3.1.1 codec (the packets the benchmarks need) so every byte is ours to count.

Packets: CONNECT, CONNACK, PUBLISH (QoS 0/1), PUBACK, SUBSCRIBE, SUBACK,
DISCONNECT. Encoders return bytes; :class:`PacketReader` buffers a byte
stream and yields ``(type, flags, body)`` tuples. No I/O here: wake.py drives
it over a byte-counting TLS socket, invoke.py over asyncio streams.
"""

from __future__ import annotations

import struct

CONNECT, CONNACK, PUBLISH, PUBACK, SUBSCRIBE, SUBACK, PINGREQ, PINGRESP, DISCONNECT = 1, 2, 3, 4, 8, 9, 12, 13, 14
NAMES = {CONNECT: "CONNECT", CONNACK: "CONNACK", PUBLISH: "PUBLISH", PUBACK: "PUBACK", SUBSCRIBE: "SUBSCRIBE",
         SUBACK: "SUBACK", PINGREQ: "PINGREQ", PINGRESP: "PINGRESP", DISCONNECT: "DISCONNECT"}


def _remaining(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _str(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack(">H", len(b)) + b


def packet(ptype: int, flags: int, body: bytes) -> bytes:
    return bytes([(ptype << 4) | flags]) + _remaining(len(body)) + body


def connect(client_id: str, clean: bool, keepalive: int = 60, username: str | None = None,
            password: str | None = None) -> bytes:
    flags = (0x02 if clean else 0) | (0x80 if username is not None else 0) | (0x40 if password is not None else 0)
    body = _str("MQTT") + bytes([4, flags]) + struct.pack(">H", keepalive) + _str(client_id)
    if username is not None:
        body += _str(username)
    if password is not None:
        body += _str(password)
    return packet(CONNECT, 0, body)


def publish(topic: str, payload: bytes, qos: int = 1, pid: int = 1, dup: bool = False) -> bytes:
    body = _str(topic) + (struct.pack(">H", pid) if qos else b"") + payload
    return packet(PUBLISH, (0x08 if dup else 0) | (qos << 1), body)


def puback(pid: int) -> bytes:
    return packet(PUBACK, 0, struct.pack(">H", pid))


def subscribe(pid: int, topics: list[tuple[str, int]]) -> bytes:
    body = struct.pack(">H", pid) + b"".join(_str(t) + bytes([q]) for t, q in topics)
    return packet(SUBSCRIBE, 0x02, body)


def disconnect() -> bytes:
    return packet(DISCONNECT, 0, b"")


def parse_publish(flags: int, body: bytes) -> tuple[str, int, bytes, int]:
    """(topic, packet id or 0, payload, qos)."""
    n = struct.unpack_from(">H", body)[0]
    topic = body[2:2 + n].decode()
    qos = (flags >> 1) & 3
    pos = 2 + n
    pid = 0
    if qos:
        pid = struct.unpack_from(">H", body, pos)[0]
        pos += 2
    return topic, pid, body[pos:], qos


def connack(body: bytes) -> tuple[bool, int]:
    """(session present, return code)."""
    return bool(body[0] & 1), body[1]


class PacketReader:
    """Buffers bytes; ``next()`` returns ``(type, flags, body)`` or None."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def feed(self, data: bytes) -> None:
        self.buf += data

    def next(self) -> tuple[int, int, bytes] | None:
        buf = self.buf
        if len(buf) < 2:
            return None
        n, shift, pos = 0, 0, 1
        while True:
            if pos >= len(buf):
                return None
            b = buf[pos]
            pos += 1
            n |= (b & 0x7F) << shift
            if b < 0x80:
                break
            shift += 7
            if shift > 21:
                raise ValueError("malformed remaining length")
        if len(buf) - pos < n:
            return None
        first = buf[0]
        body = bytes(buf[pos:pos + n])
        del buf[:pos + n]
        return first >> 4, first & 0x0F, body
