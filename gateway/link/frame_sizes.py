"""How many bytes a REQUESTS frame will take before it is built.

The gateway fills each REQUESTS frame up to a bound (delivery.py). Protobuf
sizes add up field by field, so a batch is sized one entry at a time:
``item_size()`` and ``tag_size()`` are what one DeviceRequest or one revoked
tag adds to a Requests body, ``requests_frame_size()`` the frame around them.
Every field number involved is below 16 (one-byte keys). tests/test_link_wire.py
holds these to ``link_wire.encode_frame`` byte for byte. A device never sizes
a REQUESTS frame, so this lives on the gateway side, over the link codec's
``uvarint_size`` / ``field_size``.
"""

from __future__ import annotations

from ...firmware.link.link_crypto import MAC_SIZE
from ...firmware.link.link_wire import REQUESTS, encode, field_size, uvarint_size

_WIDEST_SEQ = 10  # LinkFrame.seq is a uint64: a varint of at most 10 bytes
_U64 = 1 << 64


def frame_size(ftype: int, body_len: int) -> int:
    """The most bytes a data-phase LinkFrame of type ``ftype`` around a body of
    ``body_len`` bytes takes: what MAX_LINK_FRAME bounds (the length prefix
    comes on top). The sequence number counts at its widest; encryption keeps
    the body's length."""
    return (1 + uvarint_size(ftype)) + (1 + _WIDEST_SEQ) + field_size(body_len) + field_size(MAC_SIZE)


def item_size(item: dict) -> int:
    """Bytes one DeviceRequest dict adds to a Requests body."""
    return field_size(len(encode("DeviceRequest", item)))


def tag_size(tag: bytes) -> int:
    """Bytes one revoked tag adds to a Requests body."""
    return field_size(len(tag))


def requests_frame_size(parts: int, gateway_now_ms: int) -> int:
    """The most bytes a REQUESTS frame takes whose items and revoked tags add
    ``parts`` bytes (a sum of item_size and tag_size), with ``more`` set and
    this gateway clock."""
    body = parts + 2  # more = true: key + one byte
    if gateway_now_ms:
        body += 1 + uvarint_size(gateway_now_ms & (_U64 - 1))  # int64: negatives take 10 bytes
    return frame_size(REQUESTS, body)
