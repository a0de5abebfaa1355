"""What the store and its writer process say to each other over the child's
stdin/stdout (sans-I/O: bytes in, values out; the I/O is writer.py's and
child.py's).

A frame is a 4-byte big-endian length and a MessagePack body. Parent to
child, one frame per hand-over: the array of its operations, each
``[name, args]`` (ops.py). Child to parent, one frame per message, in order:
``[first of its transaction, outcomes]``, an outcome per operation being
``[True, [result, changed ids]]`` or ``[False, error]``.

Only plain data travels: bytes, str, int, bool, None, lists and maps of them,
and exceptions. An exception travels as its class name and ``args``; the
classes in ``ops.ERRORS`` come back as themselves, any other as
:class:`StoreOpError` naming it. Closures, auth code or arbitrary objects
cannot be encoded at all (TypeError), unlike with pickle.
"""

from __future__ import annotations

import struct

import msgspec

from .ops import ERRORS

LEN = struct.Struct("!I")
MAX_MESSAGE = 1 << 30  # a bound on what either side will read (a frame is at most a hand-over's writes)
_ERROR_EXT = 1
_KNOWN = {cls.__name__: cls for cls in ERRORS}
_plain = msgspec.msgpack.Encoder()
_to_plain = msgspec.msgpack.Decoder()


class ProtocolError(Exception):
    """A frame that breaks the protocol (too large, truncated, undecodable)."""


class StoreOpError(RuntimeError):
    """An operation failed in the writer with an error of no class known here
    (the message names it)."""


def _enc_hook(obj: object) -> msgspec.msgpack.Ext:
    if isinstance(obj, BaseException):
        try:
            body = _plain.encode([type(obj).__name__, list(obj.args)])
        except TypeError:  # arguments that are not plain data: keep the message
            body = _plain.encode([type(obj).__name__, [str(obj)]])
        return msgspec.msgpack.Ext(_ERROR_EXT, body)
    raise TypeError(f"not plain data: {type(obj).__name__} (a store operation carries bytes, str, int, "
                    "bool, None, lists and maps only)")


def _ext_hook(code: int, data: memoryview) -> BaseException:
    if code != _ERROR_EXT:
        raise ProtocolError(f"unknown extension type {code}")
    name, args = _to_plain.decode(data)
    cls = _KNOWN.get(name)
    if cls is None:
        return StoreOpError(f"{name}: {args[0] if len(args) == 1 else args}")
    try:
        return cls(*args)
    except TypeError:
        return StoreOpError(f"{name}: {args}")


_encoder = msgspec.msgpack.Encoder(enc_hook=_enc_hook)
_decoder = msgspec.msgpack.Decoder(ext_hook=_ext_hook)


def encode(obj: object) -> bytes:
    """MessagePack of plain data and exceptions (TypeError for anything else)."""
    return _encoder.encode(obj)


def decode(body: bytes) -> object:
    try:
        return _decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise ProtocolError(f"undecodable frame: {exc}") from exc


def part(obj: object) -> msgspec.Raw:
    """One element of a frame (an operation, an outcome), encoded on its own:
    one that is not plain data fails alone, before anything is sent."""
    return msgspec.Raw(_encoder.encode(obj))


def frame_of(parts: list[msgspec.Raw] | list) -> bytes:
    """A frame holding ``parts`` as one array (pre-encoded parts are copied as is)."""
    body = _encoder.encode(parts)
    return LEN.pack(len(body)) + body


class Frames:
    """Reassembles frames from a byte stream: ``feed`` bytes, take complete bodies."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def feed(self, data: bytes) -> None:
        self.buf += data

    def next(self) -> bytes | None:
        """The next complete frame's body, or None until more bytes arrive."""
        if len(self.buf) < LEN.size:
            return None
        (n,) = LEN.unpack_from(self.buf)
        if n > MAX_MESSAGE:
            raise ProtocolError(f"frame of {n} bytes (at most {MAX_MESSAGE})")
        if len(self.buf) < LEN.size + n:
            return None
        body = bytes(self.buf[LEN.size:LEN.size + n])
        del self.buf[:LEN.size + n]
        return body
