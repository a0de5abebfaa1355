"""Binary token format (MicroPython-compatible core).

Theory of operation
-------------------
A token is a chain of frames closed by one 32-byte tag::

    token  = version:u8 (0x01) | count:varint | frame{count} | tag[32]
    frame  = length:varint | entry+            (the frame's bytes are hashed)
    entry  = code:u8 | length:varint | payload (see cap_types)
    body   = token without its tag (sent in the key exchange)

``tag_0 = HMAC-SHA256(secret, frame_0)`` and ``tag_i = HMAC-SHA256(tag_{i-1},
frame_i)``: one HMAC per frame however many entries it holds, computed over the
frame bytes exactly as received. Anyone holding a token can append a frame
(keyed by the token's tag); only the origin, holding the secret, can recompute
the chain. Varints are minimal and every length is exact, so each token has
one encoding: any change of its bytes changes a frame or the tag and is
rejected. The rights of a token are the capabilities of its last (leaf) frame;
earlier frames are its derivation history, checked pairwise (cap_verify).

Every frame holds at least one capability. A frame holding a REQUEST or an
ENCRYPTION capability holds no other capability and ends the chain.

Limits (a MalformedToken beyond them) keep a device's work and memory bounded.
"""

import sys

try:
    from .cap_errors import MalformedToken
    from .cap_wire import put_varint, get_varint
    from .cap_types import parse_entry, ExpiresAt, EXPIRES_AT
    from .cap_crypto import TAG_SIZE
except ImportError:
    from cap_errors import MalformedToken
    from cap_wire import put_varint, get_varint
    from cap_types import parse_entry, ExpiresAt, EXPIRES_AT
    from cap_crypto import TAG_SIZE

VERSION = 0x01
# One HMAC per frame: 16 bounds verification to 16 HMACs on a microcontroller;
# longer delegation chains should be flattened by the origin.
MAX_FRAMES = 16
# A frame is a handful of entries; 1 KiB bounds what a device buffers per frame.
MAX_FRAME_SIZE = 1024
# Derivation checks are entries x entries; 32 keeps that at most 1024 tests.
MAX_ENTRIES = 32
# Fits a few radio packets and a small receive buffer.
MAX_TOKEN_SIZE = 4096
# Parsed frames are cached by their exact bytes (a pure function of them), so
# the chain prefix a client reuses for every request is parsed once. None on
# MicroPython, where RAM matters more than the parse.
FRAME_CACHE_SIZE = 0 if sys.implementation.name == "micropython" else 512

_cache = {}


class Frame:
    """One immutable frame: capabilities and constraints, with its bytes."""

    __slots__ = ("_raw", "_caps", "_constraints", "_cset", "_leaf")

    def __init__(self, raw, caps, constraints):
        s = object.__setattr__
        s(self, "_raw", raw)
        s(self, "_caps", caps)
        s(self, "_constraints", constraints)
        s(self, "_cset", frozenset([c._raw for c in constraints]))
        s(self, "_leaf", caps[0].is_leaf)

    def __setattr__(self, name, value):
        raise AttributeError("frames are immutable")

    raw = property(lambda self: self._raw)
    capabilities = property(lambda self: self._caps)
    constraints = property(lambda self: self._constraints)
    is_leaf = property(lambda self: self._leaf)

    def __eq__(self, other):
        return isinstance(other, Frame) and self._raw == other._raw

    def __ne__(self, other):
        return not self.__eq__(other)

    def __hash__(self):
        return hash(self._raw)

    def __repr__(self):
        return "Frame(%r, %r)" % (list(self._caps), list(self._constraints))


def parse_frame(raw):
    """Parse a frame's bytes (the entries, without the length prefix)."""
    if not isinstance(raw, bytes):
        raw = bytes(raw)
    frame = _cache.get(raw)
    if frame is not None:
        return frame
    end = len(raw)
    if end == 0 or end > MAX_FRAME_SIZE:
        raise MalformedToken("frame size %d outside 1..%d" % (end, MAX_FRAME_SIZE))
    caps = []
    cons = []
    pos = 0
    while pos < end:
        if len(caps) + len(cons) >= MAX_ENTRIES:
            raise MalformedToken("more than %d entries in a frame" % MAX_ENTRIES)
        entry, pos = parse_entry(raw, pos, end)
        if entry.is_constraint:
            cons.append(entry)
        else:
            caps.append(entry)
    if not caps:
        raise MalformedToken("a frame needs at least one capability")
    if len(caps) > 1:
        for c in caps:
            if c.is_leaf:
                raise MalformedToken("a %s capability stands alone in its frame" % c.name)
    frame = Frame(raw, tuple(caps), tuple(cons))
    if FRAME_CACHE_SIZE:
        if len(_cache) >= FRAME_CACHE_SIZE:
            _cache.clear()  # crude but bounded; refills with the hot frames
        _cache[raw] = frame
    return frame


def make_frame(entries):
    """A frame from capability and constraint objects, in the given order."""
    return parse_frame(b"".join([e.raw for e in entries]))


class Token:
    """An immutable token: frames (root first, leaf last) and the tag."""

    __slots__ = ("_frames", "_tag", "_raw")

    def __init__(self, frames, tag, raw=None):
        if raw is None:  # built by the API: check; decode() has checked already
            frames = tuple(frames)
            if not frames or len(frames) > MAX_FRAMES:
                raise ValueError("a token has 1..%d frames" % MAX_FRAMES)
            tag = bytes(tag)
            if len(tag) != TAG_SIZE:
                raise ValueError("a tag is %d bytes" % TAG_SIZE)
            raw = encode_body(frames) + tag
        s = object.__setattr__
        s(self, "_frames", frames)
        s(self, "_tag", tag)
        s(self, "_raw", raw)

    def __setattr__(self, name, value):
        raise AttributeError("tokens are immutable; derive a new one")

    frames = property(lambda self: self._frames)
    tag = property(lambda self: self._tag)
    leaf = property(lambda self: self._frames[-1])
    capabilities = property(lambda self: self._frames[-1]._caps)
    constraints = property(lambda self: self._frames[-1]._constraints)

    def to_bytes(self):
        """The token's binary encoding."""
        return self._raw

    @property
    def body(self):
        """The token without its tag (what the key exchange sends)."""
        return self._raw[:-TAG_SIZE]

    @property
    def request(self):
        """The leaf's request capability, or None."""
        cap = self._frames[-1]._caps[0]
        return cap if cap.code == 0x06 else None

    @property
    def expires_at(self):
        """Earliest expiry (Unix seconds) among the leaf's constraints, or None."""
        best = None
        for c in self._frames[-1]._constraints:
            if c.code == EXPIRES_AT and (best is None or c.value < best):
                best = c.value
        return best

    def __eq__(self, other):
        return isinstance(other, Token) and self._raw == other._raw

    def __ne__(self, other):
        return not self.__eq__(other)

    def __hash__(self):
        return hash(self._raw)

    def __len__(self):
        return len(self._frames)

    def __repr__(self):
        return "Token(%d frames, tag=%s...)" % (len(self._frames), _hex(self._tag[:4]))


def _hex(data):
    return "".join(["%02x" % b for b in data])


def encode_body(frames):
    """Version, frame count and length-prefixed frames (no tag)."""
    out = bytearray()
    out.append(VERSION)
    put_varint(out, len(frames))
    for f in frames:
        raw = f.raw if isinstance(f, Frame) else f
        put_varint(out, len(raw))
        out.extend(raw)
    return bytes(out)


def _split(data, end):
    """Parse version, count and frames of ``data[:end]``; return the frames."""
    if end < 3 or data[0] != VERSION:
        raise MalformedToken("not a version-%d token" % VERSION)
    count = data[1]
    pos = 2
    if count >= 0x80:
        count, pos = get_varint(data, 1, end)
    if count == 0 or count > MAX_FRAMES:
        raise MalformedToken("frame count %d outside 1..%d" % (count, MAX_FRAMES))
    frames = []
    for _ in range(count):
        n = data[pos] if pos < end else 0x80
        if n < 0x80:  # one-byte frame length: the common case
            pos += 1
        else:
            n, pos = get_varint(data, pos, end)
        stop = pos + n
        if stop > end:
            raise MalformedToken("truncated frame")
        frames.append(parse_frame(data[pos:stop]))
        pos = stop
    if pos != end:
        raise MalformedToken("trailing bytes after the last frame")
    return tuple(frames)


def decode(data):
    """Decode a token from bytes; raise MalformedToken if not well-formed."""
    if not isinstance(data, bytes):
        if not isinstance(data, (bytearray, memoryview)):
            raise MalformedToken("a token is bytes")
        data = bytes(data)
    n = len(data)
    if n > MAX_TOKEN_SIZE:
        raise MalformedToken("token larger than %d bytes" % MAX_TOKEN_SIZE)
    end = n - TAG_SIZE
    frames = _split(data, end)
    return Token(frames, data[end:], data)


def decode_body(data):
    """Decode a token body (no tag) into its frames."""
    if not isinstance(data, bytes):
        data = bytes(data)
    if len(data) > MAX_TOKEN_SIZE:
        raise MalformedToken("body larger than %d bytes" % MAX_TOKEN_SIZE)
    return _split(data, len(data))
