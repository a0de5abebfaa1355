"""Binary token format (MicroPython-compatible core).

Theory of operation
-------------------
A token is a chain of frames closed by one 32-byte tag::

    token  = version:u8 (0x01) | count:varint | frame{count} | tag[32]
    frame  = length:varint | entry+            (the frame's bytes are hashed)
    entry  = code:u8 | length:varint | payload (see cap_caps, cap_cons)
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

Decoding is one pass over the bytes that validates everything (every entry of
every frame, all limits) but builds no object per entry: each frame becomes a
*record* ``(caps, cons, run, leaf)`` of value tuples (see cap_caps), where
``run`` is the frame's constraint bytes (from its first constraint to its end)
when no capability follows a constraint, ``b""`` without constraints and None
otherwise. A frame usually starts its constraints with the previous frame's
constraint run verbatim; the scanner then reuses the previous record's
(already validated) constraint values for those identical bytes instead of
parsing them again, and the verifier checks carry-over by one byte comparison.
``Frame`` and entry objects are built from the records only when asked for.

On CPython an optional C accelerator (``_capscan.c``, built at install when a
compiler is present) does the same scan for well-formed input: it takes the
format (entry layouts, limits, the constant root record) from ``_c_format``
below at import, gives equal records, and answers None for anything else, so
``scan_frame`` and ``_split`` run on that input and raise their own error.
They stay the reference, and the only path on MicroPython (a differential
test holds the two together). ``FAST_SCAN`` is None when the accelerator is
absent, or set so by tests.
"""

import sys

try:
    from .cap_errors import MalformedToken
    from .cap_wire import put_varint, get_varint
    from .cap_caps import (
        SCANNERS as _CAP_SCANNERS, CAP_NAMES, ROOT, REQUEST, ENCRYPTION, EXPIRES_AT,
        cap_from_value,
    )
    from .cap_cons import SCANNERS as _CON_SCANNERS, scan_unknown, con_from_value
    from .cap_crypto import TAG_SIZE
except ImportError:
    from cap_errors import MalformedToken
    from cap_wire import put_varint, get_varint
    from cap_caps import (SCANNERS as _CAP_SCANNERS, CAP_NAMES, ROOT, REQUEST, ENCRYPTION,
                          EXPIRES_AT, cap_from_value)
    from cap_cons import SCANNERS as _CON_SCANNERS, scan_unknown, con_from_value
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
# Frame records are cached by their exact bytes (a pure function of them), so
# the chain prefix a client reuses for every request is scanned once. None on
# MicroPython, where RAM matters more than the scan.
FRAME_CACHE_SIZE = 0 if sys.implementation.name == "micropython" else 512

_cache = {}
_ROOT_FRAME = bytes([ROOT, 0])
_ROOT_VALUE = (ROOT, _ROOT_FRAME)
# the record scan_frame returns for _ROOT_FRAME (records are never mutated)
_ROOT_REC = ((_ROOT_VALUE,), (), b"", False)


def _c_format():
    """The token format as the C scanner takes it at ``init()``: with it, this
    module and cap_caps / cap_cons stay the one place that defines tokens.

    ``entries`` gives each entry code's payload as its fields in order (the
    scanners of cap_caps and cap_cons read the same), each a kind:

    ``"u"``  varint (minimal, below 2**64) -> int
    ``"s"``  length-prefixed UTF-8 string -> str; ``"t"`` the same, non-empty;
             ``"n"`` non-empty and not the wildcard (one method)
    ``"m"``  method set: a count, then that many non-empty strings, strictly
             increasing, the wildcard only alone -> tuple of str
    ``"h"``  varint that ``is_valid_cell`` accepts -> int
    ``"w"``  two varints, low < high -> int, int
    ``("d", n)``       exactly n bytes -> bytes
    ``("r", lo, hi)``  the rest of the payload, lo to hi bytes -> bytes

    Every capability code below ``constraint_bit`` without a layout is
    unknown (not well-formed); every constraint code without one is kept
    with its payload (``unknown_constraint``, cap_cons.scan_unknown).
    """
    try:
        from . import cap_caps as c
        from . import cap_h3
    except ImportError:
        import cap_caps as c
        import cap_h3
    return {
        "version": VERSION, "max_frames": MAX_FRAMES, "max_frame_size": MAX_FRAME_SIZE,
        "max_entries": MAX_ENTRIES, "constraint_bit": c.CONSTRAINT_BIT,
        "leaves": (c.REQUEST, c.ENCRYPTION),
        "entries": {
            c.ROOT: (),
            c.SERVICE: ("t", "m"),
            c.RESOURCE: ("s", "u"),
            c.REGION: ("h",),
            c.IDENTITY: ("t",),
            c.REQUEST: ("t", "n", ("d", c.DIGEST_SIZE), "u"),
            c.ENCRYPTION: (("r", c.NONCE_MIN, c.NONCE_MAX),),
            c.EXPIRES_AT: ("u",),
            c.NOT_BEFORE: ("u",),
            c.ENDPOINT: ("t",),
            c.GATEWAY: ("t",),
            c.REQUIRE_IDENTITY: ("t",),
            c.BOUND_TO: (("r", c.DIGEST_SIZE, c.DIGEST_SIZE),),
            c.SEQUENCE_WINDOW: ("w",),
            c.AUTHORISED_BY: (("r", c.DIGEST_SIZE, c.DIGEST_SIZE * 16),),
        },
        "unknown_constraint": (("r", 0, MAX_FRAME_SIZE),),
        "wildcard": c.WILDCARD,
        "is_valid_cell": cap_h3.is_valid_cell,
        "root_frame": _ROOT_FRAME, "root_record": _ROOT_REC,
        "cache": _cache, "cache_size": FRAME_CACHE_SIZE,
    }


# The C scanner when it was built (CPython only); the module-level switch
# tests set to None to force the pure-Python scan. It answers None for
# anything but a well-formed token, and the reference then runs (and raises).
try:
    from . import _capscan as FAST_SCAN
except ImportError:  # MicroPython, or installed without a C compiler
    FAST_SCAN = None
if FAST_SCAN is not None:
    FAST_SCAN.init(_c_format())


def clear_cache():
    """Forget every cached frame record (the next decode is a cold one)."""
    _cache.clear()


def scan_frame(raw, hint=None):
    """Validate a frame's bytes (the entries, without the length prefix) and
    return its record ``(caps, cons, run, leaf)``; raise MalformedToken.

    ``hint`` (optional) is the previous frame's record. Entries whose bytes
    equal entries of the hint (a capability kept as it was; the constraint run
    carried over verbatim) take the hint's values: the hint validated those
    very bytes, and an entry parses the same wherever it starts. The result
    never depends on the hint, only the work does.
    """
    if raw == _ROOT_FRAME:  # the first frame of most tokens: a constant record
        return _ROOT_REC
    end = len(raw)
    if end == 0 or end > MAX_FRAME_SIZE:
        raise MalformedToken("frame size %d outside 1..%d" % (end, MAX_FRAME_SIZE))
    caps = []
    cons = []
    cstart = -1
    mixed = False
    pos = 0
    if hint is not None:
        hcaps = hint[0]
        hrun = hint[2]
    else:
        hcaps = ()
        hrun = None
    while pos < end:
        code = raw[pos]
        p = pos + 2
        if p <= end and raw[p - 1] < 0x80:  # one-byte length: the common case
            stop = p + raw[p - 1]
        else:
            n, p = get_varint(raw, pos + 1, end)
            stop = p + n
        if stop > end:
            raise MalformedToken("truncated entry")
        if code < 0x80:
            if cstart >= 0:
                mixed = True
            eraw = raw[pos:stop]
            for t in hcaps:
                if t[1] == eraw:
                    caps.append(t)
                    break
            else:
                scanner = _CAP_SCANNERS.get(code)
                if scanner is None:
                    raise MalformedToken("unknown capability type 0x%02x" % code)
                caps.append(scanner(raw, p, stop, eraw))
        else:
            if cstart < 0:
                cstart = pos
                if hrun and raw.startswith(hrun, pos):
                    cons.extend(hint[1])
                    pos += len(hrun)
                    continue
            cons.append(_CON_SCANNERS.get(code, scan_unknown)(raw, p, stop, raw[pos:stop]))
        pos = stop
    # (bounded work even beyond the limit: a frame is at most MAX_FRAME_SIZE bytes)
    if len(caps) + len(cons) > MAX_ENTRIES:
        raise MalformedToken("more than %d entries in a frame" % MAX_ENTRIES)
    if not caps:
        raise MalformedToken("a frame needs at least one capability")
    first = caps[0][0]
    leaf = first == REQUEST or first == ENCRYPTION
    if len(caps) > 1:
        for c in caps:
            if c[0] == REQUEST or c[0] == ENCRYPTION:
                raise MalformedToken("a %s capability stands alone in its frame"
                                     % CAP_NAMES[c[0]])
    if cstart < 0:
        run = b""
    elif mixed:
        run = None
    else:
        run = raw[cstart:]
    return (caps, cons, run, leaf)


def frame_record(raw, hint=None):
    """The record of a frame's bytes, from the cache when it was seen before."""
    rec = _cache.get(raw)
    if rec is None:
        fast = FAST_SCAN
        if fast is not None:
            rec = fast.scan_frame(raw, hint)
        if rec is None:
            rec = scan_frame(raw, hint)
        if FRAME_CACHE_SIZE:
            if len(_cache) >= FRAME_CACHE_SIZE:
                _cache.clear()  # crude but bounded; refills with the hot frames
            _cache[raw] = rec
    return rec


class Frame:
    """One immutable frame: capabilities and constraints, with its bytes."""

    __slots__ = ("_raw", "_rec", "_caps", "_constraints")

    def __init__(self, raw, rec):
        s = object.__setattr__
        s(self, "_raw", raw)
        s(self, "_rec", rec)
        s(self, "_caps", None)
        s(self, "_constraints", None)

    def __setattr__(self, name, value):
        raise AttributeError("frames are immutable")

    raw = property(lambda self: self._raw)
    is_leaf = property(lambda self: self._rec[3])

    @property
    def capabilities(self):
        caps = self._caps
        if caps is None:
            caps = tuple([cap_from_value(t) for t in self._rec[0]])
            object.__setattr__(self, "_caps", caps)
        return caps

    @property
    def constraints(self):
        cons = self._constraints
        if cons is None:
            cons = tuple([con_from_value(t) for t in self._rec[1]])
            object.__setattr__(self, "_constraints", cons)
        return cons

    def __eq__(self, other):
        return isinstance(other, Frame) and self._raw == other._raw

    def __ne__(self, other):
        return not self.__eq__(other)

    def __hash__(self):
        return hash(self._raw)

    def __repr__(self):
        return "Frame(%r, %r)" % (list(self.capabilities), list(self.constraints))


def parse_frame(raw):
    """Parse a frame's bytes (the entries, without the length prefix)."""
    if not isinstance(raw, bytes):
        raw = bytes(raw)
    return Frame(raw, frame_record(raw))


def make_frame(entries):
    """A frame from capability and constraint objects, in the given order."""
    return parse_frame(b"".join([e.raw for e in entries]))


class Token:
    """An immutable token: frames (root first, leaf last) and the tag.

    ``slices`` (frame bytes) and ``recs`` (frame records) are what the
    verifier uses; ``frames`` (Frame objects) are built from them on demand.
    Every public attribute is a read-only property (and there is no instance
    dict), so a token cannot be changed: derive a new one.
    """

    __slots__ = ("_frames", "_tag", "_raw", "_slices", "_recs")

    def __init__(self, frames, tag, raw=None, slices=None, recs=None):
        if slices is None:  # built by the API: check; decode() has checked already
            frames = tuple(frames)
            if not frames or len(frames) > MAX_FRAMES:
                raise ValueError("a token has 1..%d frames" % MAX_FRAMES)
            tag = bytes(tag)
            if len(tag) != TAG_SIZE:
                raise ValueError("a tag is %d bytes" % TAG_SIZE)
            slices = tuple([f._raw for f in frames])
            recs = tuple([f._rec for f in frames])
            if raw is None:
                raw = encode_body(slices) + tag
        self._frames = frames
        self._tag = tag
        self._raw = raw
        self._slices = slices
        self._recs = recs

    @property
    def frames(self):
        frames = self._frames
        if frames is None:
            frames = tuple([Frame(s, r) for s, r in zip(self._slices, self._recs)])
            self._frames = frames
        return frames

    tag = property(lambda self: self._tag)
    leaf = property(lambda self: self.frames[-1])
    capabilities = property(lambda self: self.frames[-1].capabilities)
    constraints = property(lambda self: self.frames[-1].constraints)

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
        if self._recs[-1][0][0][0] != REQUEST:
            return None
        return self.frames[-1].capabilities[0]

    @property
    def expires_at(self):
        """Earliest expiry (Unix seconds) among the leaf's constraints, or None."""
        best = None
        for c in self._recs[-1][1]:
            if c[0] == EXPIRES_AT and (best is None or c[2] < best):
                best = c[2]
        return best

    def __eq__(self, other):
        return isinstance(other, Token) and self._raw == other._raw

    def __ne__(self, other):
        return not self.__eq__(other)

    def __hash__(self):
        return hash(self._raw)

    def __len__(self):
        return len(self._slices)

    def __repr__(self):
        return "Token(%d frames, tag=%s...)" % (len(self._slices), _hex(self._tag[:4]))


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


def _frames(data, end):
    """``_split`` by the C scanner when present (same results)."""
    fast = FAST_SCAN
    if fast is not None:
        got = fast.split(data, end)
        if got is not None:
            return got
    return _split(data, end)


def _split(data, end):
    """Parse version, count and frames of ``data[:end]``; return the frame
    bytes and the frame records (two lists). The reference for the C scanner."""
    if end < 3 or data[0] != VERSION:
        raise MalformedToken("not a version-%d token" % VERSION)
    count = data[1]
    pos = 2
    if count >= 0x80:
        count, pos = get_varint(data, 1, end)
    if count == 0 or count > MAX_FRAMES:
        raise MalformedToken("frame count %d outside 1..%d" % (count, MAX_FRAMES))
    slices = []
    recs = []
    prev = None
    cache = _cache
    for _ in range(count):
        n = data[pos] if pos < end else 0x80
        if n < 0x80:  # one-byte frame length: the common case
            pos += 1
        else:
            n, pos = get_varint(data, pos, end)
        stop = pos + n
        if stop > end:
            raise MalformedToken("truncated frame")
        raw = data[pos:stop]
        rec = cache.get(raw)
        if rec is None:
            rec = scan_frame(raw, prev)
            if FRAME_CACHE_SIZE:
                if len(cache) >= FRAME_CACHE_SIZE:
                    cache.clear()  # crude but bounded; refills with the hot frames
                cache[raw] = rec
        slices.append(raw)
        recs.append(rec)
        prev = rec
        pos = stop
    if pos != end:
        raise MalformedToken("trailing bytes after the last frame")
    return slices, recs


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
    fast = FAST_SCAN  # (_frames inlined: this is the cold verification path)
    got = None if fast is None else fast.split(data, end)
    slices, recs = _split(data, end) if got is None else got
    return Token(None, data[end:], data, slices, recs)


def decode_body(data):
    """Decode a token body (no tag) into its frames."""
    if not isinstance(data, bytes):
        data = bytes(data)
    if len(data) > MAX_TOKEN_SIZE:
        raise MalformedToken("body larger than %d bytes" % MAX_TOKEN_SIZE)
    slices, recs = _frames(data, len(data))
    return tuple([Frame(s, r) for s, r in zip(slices, recs)])
