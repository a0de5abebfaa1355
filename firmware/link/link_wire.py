"""Protobuf wire codec and framing for the device link (MicroPython-compatible core).

Theory of operation
-------------------
``proto/link.proto`` is mirrored here as a table (``SCHEMAS``): for each
message, its fields as ``(number, name, kind, repeated)``. Messages are plain
dicts keyed by field name. ``encode(name, msg)`` writes the known fields in
field-number order and omits proto3 defaults (0, False, empty bytes or
string), exactly as the generated protobuf code does, so both produce the same
bytes (tests/test_link_wire.py checks that byte for byte). ``decode(name, data)``
returns a dict with every field present (defaults filled in), skips unknown
fields of any wire type, and raises :class:`DecodeError` on truncation or a
known field with the wrong wire type. Only the wire types this schema needs
(varint, length-delimited) carry known fields; fixed32/64 are skipped.

On CPython an optional C accelerator (``_linkwire.c``, built at install when a
compiler is there) does the same for well-formed input; the Python functions
stay the reference, and tests/test_linkwire_c.py holds the two to the same
results.

A frame on the wire is ``uvarint(len) || LinkFrame``. :class:`FrameReader`
buffers partial input and yields decoded ``LinkFrame`` dicts one at a time; a
length above ``MAX_LINK_FRAME`` is rejected as soon as the prefix is read,
before any of the body is buffered.
"""

from ..caplets.cap_wire import put_varint
from .link_errors import DecodeError, FrameTooLarge

# 64 KiB: a batch of requests fits in one frame, and a device's receive
# buffer stays bounded. Larger batches go out in several REQUESTS frames.
MAX_LINK_FRAME = 65536
# uvarint(MAX_LINK_FRAME) takes 3 bytes; a longer prefix is oversized anyway.
_MAX_PREFIX = 3
_U64 = 1 << 64
_U32 = 1 << 32

# field kinds
UINT = "u"     # uint32 / uint64 (range checked on encode by RANGE)
INT64 = "i"    # int64: two's complement, 10-byte varint when negative
BOOL = "?"
BYTES = "b"
STRING = "s"

# link.proto FrameType
HELLO = 1
CHALLENGE = 2
PROOF = 3
ACCEPT = 4
RESUME = 5
RESUMED = 6
REQUESTS = 10
RESPONSES = 11
ACK = 12
BYE = 13
ERROR = 14

FRAME_NAMES = {HELLO: "HELLO", CHALLENGE: "CHALLENGE", PROOF: "PROOF", ACCEPT: "ACCEPT",
               RESUME: "RESUME", RESUMED: "RESUMED", REQUESTS: "REQUESTS",
               RESPONSES: "RESPONSES", ACK: "ACK", BYE: "BYE", ERROR: "ERROR"}

# message name -> ((number, name, kind, repeated), ...) in field-number order
SCHEMAS = {
    "LinkFrame": ((1, "type", UINT, False), (2, "seq", UINT, False),
                  (3, "body", BYTES, False), (4, "mac", BYTES, False)),
    "Hello": ((1, "version", UINT, False), (2, "link_id", BYTES, False),
              (3, "identity_token", BYTES, False), (4, "nonce", BYTES, False),
              (5, "x25519", BYTES, False)),
    "Challenge": ((1, "enc_token_body", BYTES, False), (2, "nonce", BYTES, False),
                  (3, "x25519", BYTES, False)),
    "Proof": ((1, "mac", BYTES, False),),
    "Accept": ((1, "mac", BYTES, False), (2, "ticket_id", BYTES, False),
               (3, "ticket_ttl_s", UINT, False), (4, "encrypt", BOOL, False)),
    "Resume": ((1, "link_id", BYTES, False), (2, "ticket_id", BYTES, False),
               (3, "nonce", BYTES, False), (4, "mac", BYTES, False)),
    "Resumed": ((1, "nonce", BYTES, False), (2, "mac", BYTES, False),
                (3, "ticket_id", BYTES, False), (4, "ticket_ttl_s", UINT, False),
                (5, "encrypt", BOOL, False)),
    "DeviceRequest": ((1, "request_id", BYTES, False), (2, "service", STRING, False),
                      (3, "method", STRING, False), (4, "args", BYTES, False),
                      (5, "request_token", BYTES, False), (6, "expires_at_ms", INT64, False)),
    "Requests": ((1, "items", "DeviceRequest", True), (2, "more", BOOL, False),
                 (3, "revoked", BYTES, True), (4, "gateway_now_ms", INT64, False),
                 (5, "twin", "TwinChange", True)),
    "TwinChange": ((1, "key", STRING, False), (2, "value", BYTES, False),
                   (3, "version", UINT, False)),
    "DeviceResponse": ((1, "request_id", BYTES, False), (2, "status", UINT, False),
                       (3, "payload", BYTES, False), (4, "error", STRING, False)),
    "Responses": ((1, "items", "DeviceResponse", True), (2, "twin", "TwinReport", False)),
    "TwinReport": ((1, "applied", UINT, False), (2, "reported", "TwinChange", True),
                   (3, "replace", BOOL, False)),
    "Ack": ((1, "ids", BYTES, True),),
    "Bye": ((1, "sleep_s", UINT, False),),
    "Error": ((1, "code", UINT, False), (2, "reason", STRING, False)),
}

# uint field widths (everything not listed is uint32)
_UINT64_FIELDS = (("LinkFrame", "seq"), ("TwinChange", "version"), ("TwinReport", "applied"))

# frame type -> body message name
BODY = {HELLO: "Hello", CHALLENGE: "Challenge", PROOF: "Proof", ACCEPT: "Accept",
        RESUME: "Resume", RESUMED: "Resumed", REQUESTS: "Requests",
        RESPONSES: "Responses", ACK: "Ack", BYE: "Bye", ERROR: "Error"}

_DEFAULTS = {UINT: 0, INT64: 0, BOOL: False, BYTES: b"", STRING: ""}


# ---- varints -------------------------------------------------------------------

put_uvarint = put_varint  # one varint writer for tokens and link frames (cap_wire)


def get_uvarint(buf, pos, end):
    """Read a varint at ``pos`` (up to 10 bytes, as protobuf); return ``(value, pos)``."""
    result = 0
    shift = 0
    while True:
        if pos >= end:
            raise DecodeError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            break
        shift += 7
        if shift >= 70:
            raise DecodeError("varint too long")
    if result >= _U64:
        raise DecodeError("varint exceeds 64 bits")
    return result, pos


# ---- messages ------------------------------------------------------------------

def _put_value(out, number, kind, value, msg_name, field_name):
    if kind == BYTES or kind == STRING:
        if kind == STRING:
            value = value.encode("utf-8")
        put_uvarint(out, (number << 3) | 2)
        put_uvarint(out, len(value))
        out.extend(value)
    elif kind == UINT or kind == BOOL or kind == INT64:
        if kind == BOOL:
            value = 1 if value else 0
        elif kind == INT64:
            if value < -(1 << 63) or value >= (1 << 63):
                raise ValueError("%s.%s out of int64 range" % (msg_name, field_name))
            value &= _U64 - 1
        elif (msg_name, field_name) not in _UINT64_FIELDS and value >= _U32:
            raise ValueError("%s.%s out of uint32 range" % (msg_name, field_name))
        put_uvarint(out, number << 3)
        put_uvarint(out, value)
    else:  # nested message
        body = _encode_py(kind, value)
        put_uvarint(out, (number << 3) | 2)
        put_uvarint(out, len(body))
        out.extend(body)


def _encode_py(name, msg):
    """:func:`encode` in Python: the reference (and the only path on MicroPython)."""
    out = bytearray()
    for number, field, kind, repeated in SCHEMAS[name]:
        value = msg.get(field)
        if repeated:
            if value:
                for v in value:
                    _put_value(out, number, kind, v, name, field)
        elif value is not None and value != _DEFAULTS.get(kind, None):
            _put_value(out, number, kind, value, name, field)
    return bytes(out)


def _skip(buf, pos, end, wire):
    if wire == 0:
        return get_uvarint(buf, pos, end)[1]
    if wire == 2:
        n, pos = get_uvarint(buf, pos, end)
        pos += n
    elif wire == 1:
        pos += 8
    elif wire == 5:
        pos += 4
    else:
        raise DecodeError("unsupported wire type %d" % wire)
    if pos > end:
        raise DecodeError("truncated field")
    return pos


def _index(name):
    idx = _INDEX.get(name)
    if idx is None:
        idx = {}
        for spec in SCHEMAS[name]:
            idx[spec[0]] = spec
        _INDEX[name] = idx
    return idx


_INDEX = {}


def _decode_py(name, data, start=0, end=None):
    """:func:`decode` in Python: the reference (and the only path on MicroPython)."""
    if end is None:
        end = len(data)
    msg = {}
    for number, field, kind, repeated in SCHEMAS[name]:
        msg[field] = [] if repeated else _DEFAULTS.get(kind, None)
    idx = _index(name)
    pos = start
    while pos < end:
        key, pos = get_uvarint(data, pos, end)
        number = key >> 3
        wire = key & 7
        spec = idx.get(number)
        if spec is None or number == 0:
            if number == 0:
                raise DecodeError("field number 0")
            pos = _skip(data, pos, end, wire)
            continue
        _, field, kind, repeated = spec
        if kind == UINT or kind == BOOL or kind == INT64:
            if wire != 0:
                raise DecodeError("%s.%s: wrong wire type" % (name, field))
            value, pos = get_uvarint(data, pos, end)
            if kind == BOOL:
                value = value != 0
            elif kind == INT64:
                if value >= (1 << 63):
                    value -= _U64
            elif (name, field) not in _UINT64_FIELDS:
                value &= _U32 - 1  # protobuf truncates uint32 the same way
        else:
            if wire != 2:
                raise DecodeError("%s.%s: wrong wire type" % (name, field))
            n, pos = get_uvarint(data, pos, end)
            stop = pos + n
            if stop > end:
                raise DecodeError("truncated field %s.%s" % (name, field))
            if kind == BYTES:
                value = bytes(data[pos:stop])
            elif kind == STRING:
                try:
                    value = bytes(data[pos:stop]).decode("utf-8")
                except UnicodeError:
                    raise DecodeError("%s.%s: invalid UTF-8" % (name, field))
            else:
                value = _decode_py(kind, data, pos, stop)
            pos = stop
        if repeated:
            msg[field].append(value)
        else:
            msg[field] = value
    if pos != end:
        raise DecodeError("truncated message %s" % name)
    return msg


# The C codec when the install built it (CPython only); the module-level switch
# tests set to None to force the Python path. It answers None for anything but
# a plain success, and the reference then runs (and raises its own error).
try:
    from . import _linkwire as FAST_WIRE
except (ImportError, ValueError):  # MicroPython, or installed without a C compiler
    FAST_WIRE = None
if FAST_WIRE is not None:
    FAST_WIRE.init(SCHEMAS, _UINT64_FIELDS, _DEFAULTS)


def encode(name, msg):
    """Encode dict ``msg`` as message ``name`` (proto3: defaults omitted)."""
    fast = FAST_WIRE
    if fast is not None:
        out = fast.encode(name, msg)
        if out is not None:
            return out
    return _encode_py(name, msg)


def decode(name, data, start=0, end=None):
    """Decode message ``name`` from ``data[start:end]`` into a dict."""
    fast = FAST_WIRE
    if fast is not None:
        msg = fast.decode(name, data, start, end)
        if msg is not None:
            return msg
    return _decode_py(name, data, start, end)


# ---- sizes ---------------------------------------------------------------------
# How many bytes a field will take before it is built, for a sender that fills
# frames up to a bound: a device batching its RESPONSES (dev_dgram), the
# gateway sizing its REQUESTS (gateway/link/frame_sizes.py builds on these).

def uvarint_size(n):
    """Bytes of ``n`` (>= 0) as a varint."""
    size = 1
    while n >= 0x80:
        n >>= 7
        size += 1
    return size


def field_size(data_len):
    """Bytes a length-delimited field carrying ``data_len`` bytes takes in its message."""
    return 1 + uvarint_size(data_len) + data_len


# ---- framing -------------------------------------------------------------------

def encode_frame(ftype, seq, body, mac=b""):
    """``uvarint(len) || LinkFrame`` for one frame."""
    raw = encode("LinkFrame", {"type": ftype, "seq": seq, "body": body, "mac": mac})
    if len(raw) > MAX_LINK_FRAME:
        raise FrameTooLarge("frame of %d bytes exceeds %d" % (len(raw), MAX_LINK_FRAME))
    out = bytearray()
    put_uvarint(out, len(raw))
    out.extend(raw)
    return bytes(out)


class FrameReader:
    """Buffers bytes and returns complete ``LinkFrame`` dicts (sans-I/O)."""

    def __init__(self, max_frame=MAX_LINK_FRAME):
        self.max_frame = max_frame
        self._buf = b""

    def feed(self, data):
        """Add received bytes."""
        if data:
            self._buf = self._buf + bytes(data)

    def next_frame(self):
        """The next complete frame as a dict, or None when more bytes are needed.
        Raises FrameTooLarge or DecodeError."""
        buf = self._buf
        end = len(buf)
        n = 0
        shift = 0
        pos = 0
        while True:
            if pos >= end:
                return None
            b = buf[pos]
            pos += 1
            n |= (b & 0x7F) << shift
            if b < 0x80:
                break
            shift += 7
            if pos >= _MAX_PREFIX:
                raise FrameTooLarge("length prefix too long")
        if n > self.max_frame:
            raise FrameTooLarge("frame of %d bytes exceeds %d" % (n, self.max_frame))
        if end - pos < n:
            return None
        frame = decode("LinkFrame", buf, pos, pos + n)
        self._buf = buf[pos + n:]
        return frame
