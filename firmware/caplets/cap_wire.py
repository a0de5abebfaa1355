"""Varint and length-prefixed field codec (MicroPython-compatible core).

Varints are unsigned LEB128 (as in protobuf), at most 64 bits, and must be
minimal: a value has exactly one encoding, so a token's bytes and its meaning
correspond one to one (no malleability around the tags).
"""

from .cap_errors import MalformedToken

_U64 = 1 << 64


def put_varint(out, value):
    """Append the varint of ``value`` (0 <= value < 2**64) to bytearray ``out``."""
    if value < 0 or value >= _U64:
        raise ValueError("varint out of range")
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def get_varint(buf, pos, end):
    """Read a varint at ``pos``; return ``(value, new_pos)``."""
    if pos >= end:
        raise MalformedToken("truncated varint")
    b = buf[pos]
    if b < 0x80:  # the common one-byte case
        return b, pos + 1
    result = b & 0x7F
    shift = 7
    pos += 1
    while pos < end:
        b = buf[pos]
        pos += 1
        if b & 0x80:
            result |= (b & 0x7F) << shift
            shift += 7
            if shift > 63:
                raise MalformedToken("varint too long")
            continue
        if b == 0:
            raise MalformedToken("non-minimal varint")
        result |= b << shift
        if result >= _U64:
            raise MalformedToken("varint exceeds 64 bits")
        return result, pos
    raise MalformedToken("truncated varint")


def put_bytes(out, data):
    """Append ``data`` with a varint length prefix."""
    put_varint(out, len(data))
    out.extend(data)


def get_bytes(buf, pos, end):
    """Read a length-prefixed byte string; return ``(bytes, new_pos)``."""
    if pos < end and buf[pos] < 0x80:  # one-byte length: the common case
        n = buf[pos]
        pos += 1
    else:
        n, pos = get_varint(buf, pos, end)
    stop = pos + n
    if stop > end:
        raise MalformedToken("truncated field")
    return bytes(buf[pos:stop]), stop


def get_str(buf, pos, end):
    """Read a length-prefixed UTF-8 string; return ``(str, new_pos)``."""
    if pos < end and buf[pos] < 0x80:  # one-byte length: the common case
        stop = pos + 1 + buf[pos]
        if stop > end:
            raise MalformedToken("truncated field")
        raw = buf[pos + 1:stop]
        pos = stop
    else:
        raw, pos = get_bytes(buf, pos, end)
    try:
        return raw.decode("utf-8"), pos
    except UnicodeError:
        raise MalformedToken("invalid UTF-8 in string field")
