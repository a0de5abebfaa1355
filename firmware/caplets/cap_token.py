"""Tokens and frames as objects: the CPython API over the verification core.

The core (``cap_codec``: format, validation, records; ``cap_verify``) works on
a token's frame bytes and frame *records* and is all a board ships. Here a
token's frames are ``Frame`` objects listing entry objects (``cap_entries``),
built from the records on demand, plus what minting and showing tokens need:
``make_frame`` / ``parse_frame``, ``encode_body`` and the derivation checks on
frames, and the verification steps a gateway runs apart from ``verify``
(``authenticate``, ``check_constraints``, ``permits``). ``Token`` here is the
core's token with those object views; the core accepts it wherever it takes a
token.
"""

from . import cap_codec, cap_verify
from .cap_caps import REQUEST, ROOT, SERVICE, WILDCARD
from .cap_codec import MAX_FRAMES, VERSION
from .cap_crypto import TAG_SIZE, equal
from .cap_entries import cap_from_value, con_from_value
from .cap_errors import BadTag, NotPermitted
from .cap_verify import check_pair, compute_tag
from .cap_wire import put_varint


def frame_record(raw, hint=None):
    """The record of a frame's bytes, from the cache when it was seen before."""
    cache = cap_codec._cache
    rec = cache.get(raw)
    if rec is None:
        fast = cap_codec.FAST_SCAN
        if fast is not None:
            rec = fast.scan_frame(raw, hint)
        if rec is None:
            rec = cap_codec.scan_frame(raw, hint)
        if cap_codec.FRAME_CACHE_SIZE:
            if len(cache) >= cap_codec.FRAME_CACHE_SIZE:
                cache.clear()  # crude but bounded; refills with the hot frames
            cache[raw] = rec
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


class Token(cap_codec.Token):
    """An immutable token: frames (root first, leaf last) and the tag.

    ``slices`` (frame bytes) and ``recs`` (frame records) are what the
    verifier uses; ``frames`` (Frame objects) are built from them on demand.
    Every public attribute is a read-only property (and there is no instance
    dict), so a token cannot be changed: derive a new one.
    """

    __slots__ = ("_frames",)

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
        cap_codec.Token.__init__(self, tag, raw, slices, recs)
        self._frames = frames

    @property
    def frames(self):
        frames = self._frames
        if frames is None:
            frames = tuple([Frame(s, r) for s, r in zip(self._slices, self._recs)])
            self._frames = frames
        return frames

    leaf = property(lambda self: self.frames[-1])
    capabilities = property(lambda self: self.frames[-1].capabilities)
    constraints = property(lambda self: self.frames[-1].constraints)

    @property
    def request(self):
        """The leaf's request capability, or None."""
        if self._recs[-1][0][0][0] != REQUEST:
            return None
        return self.frames[-1].capabilities[0]

    __eq__ = cap_codec.Token.__eq__  # (a class that defines __eq__ gets no inherited __hash__)
    __hash__ = cap_codec.Token.__hash__

    def __repr__(self):
        return "Token(%d frames, tag=%s...)" % (len(self._slices), self._tag[:4].hex())


def decode(data):
    """Decode a token from bytes; raise MalformedToken if not well-formed."""
    data, slices, recs = cap_codec.split_token(data)
    return Token(None, data[-TAG_SIZE:], data, slices, recs)


def decode_body(data):
    """Decode a token body (no tag) into its frames."""
    slices, recs = cap_codec.split_body(data)
    return tuple([Frame(s, r) for s, r in zip(slices, recs)])


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


def check_derivation(prev, new, index):
    """Raise InvalidDerivation unless Frame ``new`` (at ``index``) may follow ``prev``."""
    check_pair(prev._rec, new._rec, index)


def check_chain(frames):
    """Check every adjacent pair of frames."""
    for i in range(1, len(frames)):
        check_pair(frames[i - 1]._rec, frames[i]._rec, i)


# ---- the verification steps a gateway runs apart --------------------------------------

def authenticate(token, secret):
    """Steps 1-3 only (decode, tag chain, derivations): the token is genuine
    and well derived. Constraints are not checked. Returns the Token."""
    if not isinstance(token, cap_codec.Token):
        token = decode(token)
    if not equal(compute_tag(secret, token._slices), token._tag):
        raise BadTag("tag does not match the chain from this origin's secret")
    recs = token._recs
    for i in range(1, len(recs)):
        check_pair(recs[i - 1], recs[i], i)
    return token


def check_constraints(token, ctx, secret=None):
    """Step 5 alone: the leaf's constraints in ``ctx``, for a token already
    verified (a verifier that remembers verified tokens re-checks only this,
    revocation and rights on each use). ``secret``: the origin's, needed only
    by REQUIRE_IDENTITY."""
    if token._recs[-1][1]:
        cap_verify._check_constraints(token, ctx, secret)


def permits(token, service, method):
    """Raise NotPermitted unless the leaf of ``token`` (already verified)
    grants calling ``method`` of ``service``."""
    for cap in token._recs[-1][0]:
        code = cap[0]
        if code == ROOT:
            return
        if code == SERVICE and cap[2] == service and (
                cap[3][0] == WILDCARD or method in cap[3]):
            return
        if code == REQUEST and cap[2] == service and cap[3] == method:
            return
    raise NotPermitted("token does not grant %s:%s" % (service, method))


def clear_cache():
    """Forget every cached frame record (the next decode is a cold one)."""
    cap_codec._cache.clear()
