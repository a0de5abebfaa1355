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
A board works on the records alone (this module and cap_verify); the object
forms (``Frame``, entry objects, a ``Token`` that lists them) are the CPython
API in ``cap_token`` and ``cap_entries``, built from the records when asked for.

On CPython an optional C accelerator (``_capscan.c``, built at install when a
compiler is present) does the same scan for well-formed input: it takes the
format (entry layouts, limits, the constant root record) from ``cap_fast``
at import, gives equal records, and answers None for anything else, so
``scan_frame`` and ``_split`` run on that input and raise their own error.
They stay the reference, and the only path on MicroPython (a differential
test holds the two together). ``FAST_SCAN`` is None when the accelerator is
absent, or set so by tests.
"""

import sys

from .cap_errors import MalformedToken
from .cap_wire import get_varint
from .cap_caps import (
    SCANNERS as _CAP_SCANNERS, CAP_NAMES, ROOT, REQUEST, ENCRYPTION, EXPIRES_AT, entry_bytes,
)
from .cap_cons import SCANNERS as _CON_SCANNERS, scan_unknown
from .cap_crypto import TAG_SIZE
try:  # CPython: the C accelerator's loader (not shipped to a board)
    from .cap_fast import load_scanner
except ImportError:
    load_scanner = None

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

# The C scanner when it was built (CPython only); the module-level switch
# tests set to None to force the pure-Python scan. It answers None for
# anything but a well-formed token, and the reference then runs (and raises).
FAST_SCAN = None if load_scanner is None else load_scanner(
    VERSION, MAX_FRAMES, MAX_FRAME_SIZE, MAX_ENTRIES, _ROOT_FRAME, _ROOT_REC, _cache, FRAME_CACHE_SIZE)


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


class Token:
    """A decoded token as the verifier sees it: the frames' bytes (``_slices``),
    their records (``_recs``), the tag and the token's bytes. Read-only by
    convention; ``cap_token.Token`` (the CPython API) adds the frames as objects."""

    __slots__ = ("_tag", "_raw", "_slices", "_recs")

    def __init__(self, tag, raw, slices, recs):
        self._tag = tag
        self._raw = raw
        self._slices = slices
        self._recs = recs

    tag = property(lambda self: self._tag)

    def to_bytes(self):
        """The token's binary encoding."""
        return self._raw

    @property
    def body(self):
        """The token without its tag (what the key exchange sends)."""
        return self._raw[:-TAG_SIZE]

    @property
    def expires_at(self):
        """Earliest expiry (Unix seconds) among the leaf's constraints, or None."""
        best = None
        for c in self._recs[-1][1]:
            if c[0] == EXPIRES_AT and (best is None or c[2] < best):
                best = c[2]
        return best

    def __len__(self):
        return len(self._slices)

    # a token is its bytes: equal and hashed alike whichever class decoded it
    def __eq__(self, other):
        return isinstance(other, Token) and self._raw == other._raw

    def __ne__(self, other):
        return not self.__eq__(other)

    def __hash__(self):
        return hash(self._raw)


def split_token(data):
    """Validate ``data`` as a token: ``(bytes, frame bytes, frame records)``; raise
    MalformedToken if not well-formed."""
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
    return data, slices, recs


def decode(data):
    """Decode a token from bytes; raise MalformedToken if not well-formed."""
    data, slices, recs = split_token(data)
    return Token(data[-TAG_SIZE:], data, slices, recs)


def split_body(data):
    """Validate a token body (no tag): ``(frame bytes, frame records)``."""
    if not isinstance(data, bytes):
        data = bytes(data)
    if len(data) > MAX_TOKEN_SIZE:
        raise MalformedToken("body larger than %d bytes" % MAX_TOKEN_SIZE)
    return _frames(data, len(data))


def encryption_frame(root, nonce):
    """The frame deriving an encryption token from the device root token ``root``
    (decoded, one frame): Encryption(nonce) and the root frame's constraints,
    verbatim, validated as any frame. A nonce outside 16..32 bytes is a ValueError (the
    caller's mistake, as the API's Encryption says), not a malformed token."""
    if not 16 <= len(nonce) <= 32:
        raise ValueError("nonce must be 16 to 32 bytes")
    frame = entry_bytes(ENCRYPTION, nonce) + b"".join([c[1] for c in root._recs[0][1]])
    scan_frame(frame)
    return frame
