"""Hypothesis properties of CAPLets tokens."""

from __future__ import annotations

import itertools

import h3
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgistry.firmware.caplets import api as cl
from edgistry.firmware.caplets import cap_crypto, cap_token, cap_verify

SECRET = b"property-test-secret-32-bytes..."
NOW = 1_700_000_000
SEQ = NOW * 1000
CTX = dict(now=NOW, endpoint="e", gateway="g")
FAST = settings(max_examples=100, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])

BASE_CELL = h3.str_to_int(h3.latlng_to_cell(34.41, -119.85, 6))
CELLS = [BASE_CELL] + [h3.str_to_int(c) for c in h3.cell_to_children(h3.int_to_str(BASE_CELL), 7)]
CELLS += [h3.str_to_int(c) for c in h3.cell_to_children(h3.int_to_str(CELLS[1]), 8)][:3]
CELLS.append(h3.str_to_int(h3.latlng_to_cell(48.85, 2.35, 7)))
TYPES = ["a", "b"]
METHODS = ["m1", "m2", "m3"]
PATHS = ["", "/x", "/x/", "/x/y", "/x/y/z", "/xy", "/q"]
IDS = ["alice", "bob"]


# ---- strategies --------------------------------------------------------------

def capabilities() -> st.SearchStrategy:
    """Any non-leaf capability from a small universe (so subsets happen often)."""
    return st.one_of(
        st.just(cl.Root()),
        st.builds(cl.Service, st.sampled_from(TYPES),
                  st.one_of(st.just(["*"]), st.sets(st.sampled_from(METHODS), min_size=1))),
        st.builds(cl.Resource, st.sampled_from(PATHS), st.integers(0, 15)),
        st.builds(cl.Region, st.sampled_from(CELLS)),
        st.builds(cl.Identity, st.sampled_from(IDS)),
    )


CONSTRAINTS = [cl.ExpiresAt(NOW + 3600), cl.NotBefore(NOW - 10), cl.Endpoint("e"),
               cl.Gateway("g")]
WINDOW = cl.SequenceWindow(SEQ, SEQ + 10**9)  # only meaningful on request tokens


@st.composite
def chains(draw, request: bool | None = None) -> cl.Token:
    """A valid token: a root derived 0-4 times by random narrowing steps,
    optionally ending in a request token."""
    token = cl.root(SECRET)
    for _ in range(draw(st.integers(0, 4))):
        wanted = draw(st.lists(capabilities(), min_size=1, max_size=3))
        caps = [c for c in wanted if any(c.within(p) for p in token.capabilities)]
        cons = draw(st.lists(st.sampled_from(CONSTRAINTS), max_size=2))
        token = cl.derive(token, caps or None, cons)
    if request is None:
        request = draw(st.booleans())
    if request:
        services = [c for c in token.capabilities if c.code in (cl.Root.code, cl.Service.code)]
        if services:
            cap = draw(st.sampled_from(services))
            stype = cap.service_type if cap.code == cl.Service.code else "a"
            methods = METHODS if cap.code == cl.Root.code or cap.methods == ("*",) else cap.methods
            token = cl.request_token(token, stype, draw(st.sampled_from(list(methods))),
                                     draw(st.binary(max_size=8)), SEQ + draw(st.integers(0, 99)),
                                     [WINDOW] if draw(st.booleans()) else [])
    return token


def rejected(data: bytes) -> bool:
    try:
        cap_verify.verify(data, SECRET, cl.Context(**CTX))
    except cl.TokenError:
        return True
    return False


def with_frames(frames, tag: bytes) -> bytes:
    return cap_token.encode_body(frames) + tag


# ---- tampering is rejected -------------------------------------------------

@FAST
@given(chains())
def test_valid_chains_verify(token: cl.Token) -> None:
    """Every token built by derive/request_token verifies."""
    cap_verify.verify(token.to_bytes(), SECRET, cl.Context(**CTX))


@settings(FAST, max_examples=30)
@given(chains())
def test_every_bit_flip_is_rejected(token: cl.Token) -> None:
    """Flipping any single bit anywhere in a token makes it fail verification."""
    data = token.to_bytes()
    for i, bit in itertools.product(range(len(data)), range(8)):
        flipped = data[:i] + bytes([data[i] ^ (1 << bit)]) + data[i + 1:]
        assert rejected(flipped), (i, bit)


@FAST
@given(chains(), st.data())
def test_any_byte_change_is_rejected(token: cl.Token, data: st.DataObject) -> None:
    """Replacing any byte by any other value is rejected."""
    raw = token.to_bytes()
    i = data.draw(st.integers(0, len(raw) - 1))
    value = data.draw(st.integers(0, 255).filter(lambda v: v != raw[i]))
    assert rejected(raw[:i] + bytes([value]) + raw[i + 1:])


@FAST
@given(chains())
def test_every_truncation_is_rejected(token: cl.Token) -> None:
    """Every proper prefix of a token is rejected."""
    raw = token.to_bytes()
    for n in range(len(raw)):
        assert rejected(raw[:n])


@FAST
@given(chains(), st.binary(min_size=1, max_size=64))
def test_extension_with_garbage_is_rejected(token: cl.Token, garbage: bytes) -> None:
    """Appending bytes to a token is rejected."""
    assert rejected(token.to_bytes() + garbage)


@FAST
@given(chains().filter(lambda t: len(t.frames) > 1))
def test_frame_removal_is_rejected(token: cl.Token) -> None:
    """Removing any frame (keeping the tag) is rejected."""
    for i in range(len(token.frames)):
        frames = token.frames[:i] + token.frames[i + 1:]
        assert rejected(with_frames(frames, token.tag))


@FAST
@given(chains().filter(lambda t: len(set(t.frames)) > 1), st.randoms())
def test_reordering_is_rejected(token: cl.Token, rnd) -> None:
    """Any reordering of the frames (keeping the tag) is rejected."""
    frames = list(token.frames)
    for _ in range(5):
        rnd.shuffle(frames)
        if tuple(frames) != token.frames:
            assert rejected(with_frames(frames, token.tag))


@FAST
@given(chains(), chains(), st.data())
def test_splicing_between_tokens_is_rejected(a: cl.Token, b: cl.Token,
                                             data: st.DataObject) -> None:
    """Frames of two tokens spliced together, under either tag, are rejected
    unless the result is exactly one of the two tokens."""
    i = data.draw(st.integers(0, len(a.frames)))
    j = data.draw(st.integers(0, len(b.frames)))
    frames = a.frames[:i] + b.frames[j:]
    if not frames or len(frames) > cl.MAX_FRAMES:
        return
    for tag in (a.tag, b.tag):
        spliced = with_frames(frames, tag)
        if spliced in (a.to_bytes(), b.to_bytes()):
            continue
        assert rejected(spliced)


# ---- no derivation widens rights -------------------------------------------

OPS = ([("svc", t, m) for t in TYPES for m in METHODS + ["m4"]]
       + [("res", p, bit) for p in ["/x", "/x/y", "/x/y/z", "/x/w", "/xy", "/q", "/"]
          for bit in (1, 2, 4, 8)]
       + [("cell", c) for c in CELLS] + [("id", i) for i in IDS + ["carol"]] + [("enc",)])


def grants(cap: cl.Root, op: tuple) -> bool:
    """An oracle independent of ``within``: does ``cap`` grant operation ``op``?"""
    kind = op[0]
    if cap.code == cl.Root.code:
        return True
    if kind == "enc":
        return cap.code != cl.Request.code
    if kind == "svc" and cap.code == cl.Service.code:
        return cap.service_type == op[1] and (cap.methods == ("*",) or op[2] in cap.methods)
    if kind == "svc" and cap.code == cl.Request.code:
        return (cap.service, cap.method) == op[1:]
    if kind == "res" and cap.code == cl.Resource.code:
        path, prefix = op[1], cap.prefix
        under = (path == prefix or prefix == "" or prefix.endswith("/") and path.startswith(prefix)
                 or path.startswith(prefix + "/"))
        return under and bool(cap.rights & op[2])
    if kind == "cell" and cap.code == cl.Region.code:
        res = h3.get_resolution(h3.int_to_str(cap.cell))
        if h3.get_resolution(h3.int_to_str(op[1])) < res:
            return False
        return h3.str_to_int(h3.cell_to_parent(h3.int_to_str(op[1]), res)) == cap.cell
    if kind == "id" and cap.code == cl.Identity.code:
        return cap.identity == op[1]
    return False


def granted(caps) -> set:
    return {op for op in OPS if any(grants(c, op) for c in caps)}


@settings(FAST, max_examples=300)
@given(st.lists(capabilities(), min_size=1, max_size=3),
       st.lists(st.one_of(capabilities(), st.builds(
           cl.Request, st.sampled_from(TYPES), st.sampled_from(METHODS + ["m4"]),
           st.just(bytes(32)), st.integers(0, 9))), min_size=1, max_size=3))
def test_no_derivation_widens_rights(parent_caps: list, child_caps: list) -> None:
    """Whenever a derivation is accepted, the child grants no operation its
    parent did not (checked against an independent oracle)."""
    parent = cl.mint(SECRET, parent_caps)
    requests = [c for c in child_caps if c.code == cl.Request.code]
    if requests:
        child_caps = requests[:1]  # a request stands alone in its frame
    try:
        child = cl.derive(parent, child_caps)
    except cl.InvalidDerivation:
        return
    assert granted(child.capabilities) <= granted(parent.capabilities)
    cap_verify.verify(child.to_bytes(), SECRET)


@FAST
@given(chains(request=False), st.lists(capabilities(), max_size=2),
       st.booleans(), st.binary(min_size=16, max_size=32))
def test_request_and_encryption_tokens_cannot_be_derived(
        token: cl.Token, caps: list, use_request: bool, nonce: bytes) -> None:
    """Neither derive() nor a hand-made frame with a correct tag can extend a
    request or encryption token."""
    svc = next((c for c in token.capabilities if c.code == cl.Service.code), None)
    if use_request and svc is not None and svc.methods != ("*",):
        leaf = cl.request_token(token, svc.service_type, svc.methods[0], b"", SEQ)
    else:
        leaf = cl.encryption_token(token, nonce)
    with pytest.raises(cl.InvalidDerivation):
        cl.derive(leaf, caps or None)
    for extra in (caps or [cl.Root()]) + [leaf.capabilities[0]]:
        frame = cap_token.make_frame([extra] + list(leaf.constraints))
        forged = with_frames(leaf.frames + (frame,),
                             cap_crypto.hmac_sha256(leaf.tag, frame.raw))
        with pytest.raises(cl.InvalidDerivation):
            cap_verify.verify(forged, SECRET, cl.Context(**CTX))


# ---- round trips --------------------------------------------------------------

@FAST
@given(chains())
def test_round_trips_are_exact(token: cl.Token) -> None:
    """Binary and text forms decode to the same token and re-encode identically."""
    raw = token.to_bytes()
    again = cl.decode(raw)
    assert again == token and again.to_bytes() == raw
    assert cl.from_text(cl.to_text(token)).to_bytes() == raw
    assert [f.raw for f in again.frames] == [f.raw for f in token.frames]
    assert cap_token.decode_body(token.body) == token.frames


@settings(FAST, max_examples=300)
@given(st.binary(max_size=200))
def test_any_bytes_decode_exactly_or_are_malformed(data: bytes) -> None:
    """Arbitrary bytes either decode to a token that re-encodes to the same
    bytes (one encoding per token) or raise MalformedToken."""
    try:
        token = cl.decode(data)
    except cl.MalformedToken:
        return
    assert token.to_bytes() == data


@FAST
@given(chains(), st.sampled_from(range(1, 9)))
def test_mutated_frames_decode_exactly_or_are_malformed(token: cl.Token, bit: int) -> None:
    """Frame bytes with a bit changed re-encode exactly or are malformed."""
    raw = bytearray(token.to_bytes())
    for i in range(len(raw) - 32):
        raw[i] ^= 1 << (bit - 1)
        try:
            assert cl.decode(bytes(raw)).to_bytes() == bytes(raw)
        except cl.MalformedToken:
            pass
        raw[i] ^= 1 << (bit - 1)
