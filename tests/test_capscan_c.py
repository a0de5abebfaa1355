"""The optional C frame scanner (firmware/caplets/_capscan.c) against the
pure-Python reference (cap_codec._split / scan_frame).

The C scanner's contract (as _linkwire's): whenever it answers, the answer is
exactly the reference's record (same tuple shapes and types); for anything
the reference refuses it answers None, and cap_codec then runs the reference,
which raises MalformedToken with its own message. It must not hand back
anything well-formed either, so here None comes exactly where the reference
raises, for valid tokens of many shapes and for mutated, truncated or random
bytes; verify() gives the same verdicts either way. Its format comes from
cap_codec at init(), all or nothing. The existing token test modules are also
run once more with the C scanner off.
"""

from __future__ import annotations

import gc
import sys
import tracemalloc
from contextlib import contextmanager
from pathlib import Path

import h3
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from proc_helpers import (import_accelerator, require_accelerator, run_tests_on_the_pure_path,
                          run_tests_without)

from edgistry.firmware.caplets import api as cl
from edgistry.firmware.caplets import cap_caps, cap_codec, cap_cons, cap_fast, cap_token, cap_verify, cap_wire

NAME = "edgistry.firmware.caplets._capscan"
_capscan = import_accelerator(NAME)


def varint(value: int) -> bytes:
    """The varint encoding of ``value`` (the core's writer, cap_wire.put_varint)."""
    out = bytearray()
    cap_wire.put_varint(out, value)
    return bytes(out)


@pytest.fixture(autouse=True)
def _accelerator_built() -> None:
    require_accelerator(_capscan, NAME)


SECRET = b"capscan-test-secret-0123456789ab"
NOW = 1_700_000_000
SEQ = NOW * 1000
MANY = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])
TESTS = Path(__file__).resolve().parent
MALFORMED = "MalformedToken"


# ---- comparing the two paths ----------------------------------------------------

def typed(x):
    """``x`` with the type of every part made explicit, so that equal results
    also have equal shapes (a list is not a tuple, True is not 1)."""
    if isinstance(x, (list, tuple)):
        return (type(x).__name__, [typed(v) for v in x])
    return (type(x).__name__, x)


def outcome(fn, *args):
    """("ok", typed result) or ("MalformedToken", message)."""
    try:
        return ("ok", typed(fn(*args)))
    except cl.MalformedToken as exc:
        return (MALFORMED, str(exc))


def cold(fn, *args):
    """``fn(*args)`` from an empty frame cache, leaving it empty."""
    cap_token.clear_cache()
    try:
        return fn(*args)
    finally:
        cap_token.clear_cache()


def agree(got, pure: tuple) -> None:
    """C's answer ``got`` against the reference's outcome: None exactly where
    the reference raises, else an equal, equally shaped result."""
    if pure[0] == "ok":
        assert got is not None, "well-formed input handed back"
        assert typed(got) == pure[1]
    else:
        assert got is None, (pure, got)


def c_split_twice(data: bytes, end: int) -> tuple:
    """The C split from a cold cache, then again with the frames it cached."""
    cap_token.clear_cache()
    try:
        return _capscan.split(data, end), _capscan.split(data, end)
    finally:
        cap_token.clear_cache()


def assert_same_split(data: bytes, end: int | None = None) -> tuple:
    """Both scanners on ``data[:end]``; return the reference's outcome."""
    if end is None:
        end = len(data) - cl.cap_crypto.TAG_SIZE
    pure = outcome(cold, cap_codec._split, data, end)
    for got in c_split_twice(data, end):
        agree(got, pure)
    # cap_codec's own switch: C's result, or the reference's error and message
    assert outcome(cold, cap_codec._frames, data, end) == pure
    return pure


def assert_same_frame(raw: bytes, hint=None) -> tuple:
    pure = outcome(cap_codec.scan_frame, raw, hint)
    agree(_capscan.scan_frame(raw, hint), pure)
    agree(_capscan.scan_frame(raw), pure)  # the hint only saves work
    assert outcome(cold, cap_token.frame_record, raw, hint) == pure
    return pure


def verdict(data: bytes, **ctx) -> tuple[str, str]:
    """verify()'s verdict and message, from cold caches."""
    cap_token.clear_cache()
    try:
        cap_verify.verify(data, SECRET, cl.Context(**ctx))
    except cl.TokenError as exc:
        return (type(exc).__name__, str(exc))
    finally:
        cap_token.clear_cache()
    return ("ok", "")


def assert_same_verdict(data: bytes, **ctx) -> None:
    assert cap_codec.FAST_SCAN is _capscan
    assert verdict(data, **ctx) == on_pure_path(verdict, data, **ctx)


def on_pure_path(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` with the C scanner switched off (cold caches)."""
    cap_codec.FAST_SCAN = None
    cap_token.clear_cache()
    try:
        return fn(*args, **kwargs)
    finally:
        cap_codec.FAST_SCAN = _capscan
        cap_token.clear_cache()


def test_the_c_scanner_is_the_default() -> None:
    """An install that built the extension uses it."""
    assert cap_codec.FAST_SCAN is _capscan


# ---- entries of every type, valid --------------------------------------------------

BASE_CELL = h3.str_to_int(h3.latlng_to_cell(34.41, -119.85, 6))
CELLS = [BASE_CELL, h3.str_to_int(h3.latlng_to_cell(48.85, 2.35, 15)),
         h3.str_to_int(h3.latlng_to_cell(0.0, 0.0, 0))]

# short ASCII (the service fast path), unicode, and long (multi-byte lengths)
texts = st.one_of(st.sampled_from(["a", "b", "m1", "thermo", "*", "10.0.0.7"]),
                  st.text(min_size=1, max_size=8),
                  st.builds(str.__mul__, st.sampled_from(["x", "é", "\u20ac"]),
                            st.integers(128, 140)))
u64 = st.one_of(st.integers(0, 300), st.integers(0, 2**64 - 1))


@st.composite
def services(draw):
    stype = draw(texts)
    methods = draw(st.one_of(st.just(["*"]), st.sets(texts, min_size=1, max_size=4)))
    if "*" in methods and len(methods) > 1:
        methods = ["*"]
    return cl.Service(stype, methods)


def capabilities():
    return st.one_of(
        st.just(cl.Root()),
        services(),
        st.builds(cl.Resource, st.one_of(st.just(""), texts), u64),
        st.builds(cl.Region, st.sampled_from(CELLS)),
        st.builds(cl.Identity, texts),
    )


def leaves():
    return st.one_of(
        st.builds(cl.Request, texts, texts.filter(lambda m: m != "*"),
                  st.binary(min_size=32, max_size=32), u64),
        st.builds(cl.Encryption, st.binary(min_size=16, max_size=32)),
    )


@st.composite
def windows(draw):
    low = draw(st.integers(0, 2**64 - 2))
    return cl.SequenceWindow(low, draw(st.integers(low + 1, 2**64 - 1)))


def constraints():
    return st.one_of(
        st.builds(cl.ExpiresAt, u64), st.builds(cl.NotBefore, u64),
        st.builds(cl.Endpoint, texts), st.builds(cl.Gateway, texts),
        st.builds(cl.RequireIdentity, texts),
        st.builds(cl.BoundTo, st.binary(min_size=32, max_size=32)),
        windows(),
        st.builds(cl.AuthorisedBy, st.lists(st.binary(min_size=32, max_size=32), min_size=1, max_size=3)),
        st.builds(cl.UnknownConstraint, st.sampled_from([0x80, 0x89, 0x9F, 0xFF]),
                  st.binary(max_size=40)),
    )


@st.composite
def frame_chains(draw) -> list[bytes]:
    """Frame bytes of a chain (derivation not checked: only the scan is): each
    frame keeps some capabilities of the previous one verbatim and usually
    carries its constraint run first (the scanners' hint reuse), sometimes
    mixes capabilities after constraints, sometimes ends with a leaf."""
    frames = []
    caps: list = [cl.Root()]
    run = b""
    for _ in range(draw(st.integers(1, cl.MAX_FRAMES))):
        kept = draw(st.lists(st.sampled_from(caps), max_size=2))
        caps = kept + draw(st.lists(capabilities(), min_size=0 if kept else 1, max_size=3))
        cons = draw(st.lists(constraints(), max_size=3))
        body = b"".join(c.raw for c in caps)
        layout = draw(st.sampled_from(["carry", "carry", "fresh", "mixed"]))
        if layout == "carry":
            frame = body + run + b"".join(c.raw for c in cons)
        elif layout == "fresh":
            frame = body + b"".join(c.raw for c in cons)
        else:
            frame = b"".join(c.raw for c in cons[:1]) + body + b"".join(c.raw for c in cons[1:])
        if len(frame) > cl.MAX_FRAME_SIZE:
            break
        frames.append(frame)
        run = frame[len(body):] if layout != "mixed" else b""
    if not frames:
        frames.append(cl.Root().raw)
    leaf = draw(leaves()).raw + run
    if draw(st.booleans()) and len(leaf) <= cl.MAX_FRAME_SIZE:
        frames.append(leaf)
    return frames[:cl.MAX_FRAMES]


def token_bytes(frames: list[bytes]) -> bytes:
    return cap_token.encode_body(frames) + cap_verify.compute_tag(SECRET, frames)


# ---- the differential properties -----------------------------------------------------

@settings(MANY, max_examples=120)
@given(frame_chains())
def test_valid_chains_scan_the_same(frames: list[bytes]) -> None:
    """Chains of every entry type go through C and give equal records, frame by
    frame and whole."""
    data = token_bytes(frames)
    kind, _ = assert_same_split(data)
    assert kind == "ok"
    prev = None
    for raw in frames:
        assert assert_same_frame(raw, prev)[0] == "ok"
        prev = cap_codec.scan_frame(raw, prev)
    # decode_body goes through the same switch
    assert outcome(cap_token.decode_body, data[:-32]) == on_pure_path(
        outcome, cap_token.decode_body, data[:-32])


@st.composite
def mutations(draw):
    """A chain's token bytes changed in one of many ways."""
    data = bytearray(token_bytes(draw(frame_chains())))
    how = draw(st.sampled_from(["flip", "byte", "truncate", "extend", "insert", "delete"]))
    i = draw(st.integers(0, len(data) - 1))
    if how == "flip":
        data[i] ^= 1 << draw(st.integers(0, 7))
    elif how == "byte":
        data[i] = draw(st.integers(0, 255))
    elif how == "truncate":
        del data[i:]
    elif how == "extend":
        data += draw(st.binary(min_size=1, max_size=40))
    elif how == "insert":
        data[i:i] = draw(st.binary(min_size=1, max_size=4))
    else:
        del data[i:i + draw(st.integers(1, 4))]
    return bytes(data)


@settings(MANY, max_examples=200)
@given(mutations())
def test_mutated_tokens_scan_the_same(data: bytes) -> None:
    """Bit flips, changed bytes, truncation, garbage and insertions: C's record
    equals the reference's, or C hands back exactly where the reference raises."""
    assert_same_split(data)
    assert_same_split(data, len(data))  # as a body (no tag)


@MANY
@given(st.one_of(st.binary(max_size=300),
                 st.binary(max_size=300).map(lambda b: b"\x01" + b),
                 st.binary(max_size=300).map(lambda b: b"\x01\x01" + b)))
@example(b"")
@example(b"\x01\x01\x00")
def test_random_bytes_scan_the_same(data: bytes) -> None:
    """Arbitrary bytes (often past the version byte): agreed or handed back."""
    assert_same_split(data, len(data))
    assert_same_split(data)


@settings(MANY, max_examples=200)
@given(st.binary(min_size=0, max_size=64), st.one_of(st.none(), frame_chains()))
def test_random_frames_scan_the_same(raw: bytes, hint_frames) -> None:
    """scan_frame on random bytes, with and without a (valid) hint."""
    hint = None
    if hint_frames:
        hint = cap_codec.scan_frame(hint_frames[-1])
        assert_same_frame(hint_frames[-1] + raw, hint)
    assert_same_frame(raw, hint)


@settings(MANY, max_examples=100)
@given(st.data())
def test_verify_verdicts_are_the_same(data: st.DataObject) -> None:
    """verify() gives the same verdict and message on both paths, for valid
    tokens made by the library and for mutations of them."""
    token = cl.root(SECRET)
    methods = ["read", "set", "status"]
    for _ in range(data.draw(st.integers(0, 4))):
        caps = None  # keep the capabilities, or narrow the method set
        if data.draw(st.booleans()):
            methods = sorted(data.draw(st.sets(st.sampled_from(methods), min_size=1)))
            caps = [cl.Service("thermo", methods)]
        cons = data.draw(st.lists(st.sampled_from(
            [cl.ExpiresAt(NOW + 60), cl.Endpoint("e"), cl.NotBefore(NOW - 1)]), max_size=2))
        token = cl.derive(token, caps, cons)
    if data.draw(st.booleans()):
        token = cl.request_token(token, "thermo", methods[0], b"x", SEQ)
    raw = token.to_bytes()
    ctx = dict(now=NOW, endpoint="e")
    assert_same_verdict(raw, **ctx)
    i = data.draw(st.integers(0, len(raw) - 1))
    flipped = raw[:i] + bytes([raw[i] ^ (1 << data.draw(st.integers(0, 7)))]) + raw[i + 1:]
    assert_same_verdict(flipped, **ctx)
    assert_same_verdict(raw[:i], **ctx)
    assert_same_verdict(raw + data.draw(st.binary(min_size=1, max_size=8)), **ctx)


# ---- every rule, by hand ----------------------------------------------------------

def entry(code: int, payload: bytes) -> bytes:
    return cap_caps.entry_bytes(code, payload)


def s(text: str | bytes) -> bytes:
    """A length-prefixed string field."""
    raw = text.encode() if isinstance(text, str) else text
    return varint(len(raw)) + raw


def service(stype, methods, count=None) -> bytes:
    count = len(methods) if count is None else count
    return entry(2, s(stype) + varint(count) + b"".join(s(m) for m in methods))


ROOT = cl.Root().raw
OK_CELL = varint(BASE_CELL)
DIGEST = bytes(32)

FRAMES = [  # (frame bytes, expected message or None when valid)
    (b"", "frame size 0"),
    (ROOT * 513, "frame size 1026"),
    (b"\x01\x80\x00", "non-minimal varint"),
    (b"\x01\x81", "truncated varint"),
    (b"\x01" + b"\xff" * 10 + b"\x01", "varint too long"),
    (b"\x01" + b"\xff" * 9 + b"\x7f", "varint exceeds 64 bits"),
    (b"\x01" + b"\xff" * 9 + b"\x02", "varint exceeds 64 bits"),
    (b"\x01" + b"\xff" * 9 + b"\x01", "truncated entry"),  # 2**64-1 itself is a varint
    (entry(3, s("/a") + b"\x80" * 9 + b"\x01"), None),  # 2**63
    (entry(3, s("/a") + b"\x80" * 9 + b"\x02"), "varint exceeds 64 bits"),
    (entry(3, s("/a") + b"\xff" * 8 + b"\x7f"), None),  # 2**63-1
    (b"\x01\x05ab", "truncated entry"),
    (b"\x7f\x00", "unknown capability type 0x7f"),
    (b"\x00\x00", "unknown capability type 0x00"),
    (b"\x01\x01\x00", "trailing bytes in root entry"),
    # service, ASCII payload (the reference's fast path)
    (entry(2, b"\x05"), "truncated field"),
    (entry(2, b"\x01t"), "truncated field"),
    (entry(2, b"\x01t\x05"), "method count exceeds entry"),
    (service("t", ["", "a"]), "non-empty, sorted and distinct"),
    (service("t", ["b", "a"]), "non-empty, sorted and distinct"),
    (service("t", ["a", "a"]), "non-empty, sorted and distinct"),
    (service("t", ["a", "ab"]), None),
    (service("t", ["ab", "a"]), "non-empty, sorted and distinct"),
    (service("t", ["*", "*"]), "non-empty, sorted and distinct"),
    (service("t", ["*", "a"]), "'*' stands alone"),
    (service("", ["a"]), "service needs a type"),
    (service("t", []), "service needs a type"),
    (entry(2, b"\x01t\x01\x01mX"), "trailing bytes in service entry"),
    (entry(2, b"\x01t\x01\x05m"), "truncated field"),
    (entry(2, b"\x01t\x02\x01m\x05"), "non-empty, sorted and distinct"),  # "" after "m"
    (entry(2, b"\x01t\x02\x01m\x03no"), "truncated field"),
    (entry(2, b"\x01t\x01\x00"), "non-empty, sorted and distinct"),
    # service, anything else (the reference's general parser)
    (entry(2, b""), "truncated varint"),
    (service("é", ["*", "*"]), "'*' stands alone"),
    (service("é", ["b", "a"]), "non-empty, sorted and distinct"),
    (service("é", ["a", "é", "ü"]), None),
    (service("é", ["é", "a"]), "non-empty, sorted and distinct"),
    (service("é", ["", "a"]), "non-empty, sorted and distinct"),
    (service("", ["é"]), "service needs a type"),
    (service("é", []), "service needs a type"),
    (service("é", ["a"], count=5), "method count exceeds entry"),
    (service("é", ["a"], count=2), "truncated varint"),
    (entry(2, s("é") + b"\x01\x01a!"), "trailing bytes in service entry"),
    (entry(2, s(b"\xff") + b"\x01\x01a"), "invalid UTF-8 in string field"),
    (entry(2, s("t") + b"\x01" + s(b"\xc3")), "invalid UTF-8 in string field"),
    (entry(2, s("x" * 200) + b"\x01" + s("m")), None),
    (entry(2, s("t") + b"\x81\x00" + s("m")), "non-minimal varint"),
    (entry(2, s("t") + b"\x80\x01" + s("m")), "method count exceeds entry"),
    # resource
    (entry(3, b""), "truncated varint"),
    (entry(3, s("/a")), "truncated varint"),
    (entry(3, s("/a") + b"\x01!"), "trailing bytes in resource entry"),
    (entry(3, s("/a") + b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01"), None),
    (entry(3, s(b"/\xed\xa0\x80") + b"\x01"), "invalid UTF-8 in string field"),  # surrogate
    # region
    (entry(4, b"\x05"), "invalid H3 cell"),
    (entry(4, OK_CELL + b"!"), "trailing bytes in region entry"),
    (entry(4, b"\x05!"), "invalid H3 cell"),
    (entry(4, OK_CELL), None),
    # identity
    (entry(5, s("")), "empty identity"),
    (entry(5, s("") + b"!"), "empty identity"),
    (entry(5, s("bob") + b"!"), "trailing bytes in identity entry"),
    (entry(5, b"\x03\x01\xff"), "truncated field"),
    (entry(5, b"\x01\xff"), "invalid UTF-8 in string field"),
    # request
    (entry(6, s("t")), "truncated varint"),
    (entry(6, s("t") + s("")), "request needs one service type"),
    (entry(6, s("") + s("m")), "request needs one service type"),
    (entry(6, s("t") + s("*")), "request needs one service type"),
    (entry(6, s("t") + s("m") + bytes(31)), "truncated request digest"),
    (entry(6, s("t") + s("m") + DIGEST), "truncated varint"),
    (entry(6, s("t") + s("m") + DIGEST + b"\x05!"), "trailing bytes in request entry"),
    (entry(6, s("t") + s("m") + DIGEST + b"\x05"), None),
    # encryption
    (entry(7, bytes(15)), "bad encryption nonce length"),
    (entry(7, bytes(33)), "bad encryption nonce length"),
    (entry(7, bytes(16)) + cl.Endpoint("x").raw, None),
    # constraints
    (ROOT + entry(0x81, b""), "truncated varint"),
    (ROOT + entry(0x81, b"\x05!"), "trailing bytes in expires_at entry"),
    (ROOT + entry(0x82, b"\x80\x00"), "non-minimal varint"),
    (ROOT + entry(0x82, b"\x05!"), "trailing bytes in not_before entry"),
    (ROOT + entry(0x83, s("")), "empty endpoint"),
    (ROOT + entry(0x84, s(b"\xff")), "invalid UTF-8 in string field"),
    (ROOT + entry(0x84, s("")), "empty gateway"),
    (ROOT + entry(0x85, s("bob") + b"!"), "trailing bytes in require_identity entry"),
    (ROOT + entry(0x85, s("")), "empty require_identity"),
    (ROOT + entry(0x86, bytes(31)), "bound tag must be 32 bytes"),
    (ROOT + entry(0x86, bytes(32)), None),
    (ROOT + entry(0x87, b"\x05\x05"), "empty sequence window"),
    (ROOT + entry(0x87, b"\x05"), "truncated varint"),
    (ROOT + entry(0x87, b"\x05\x06!"), "trailing bytes in sequence_window entry"),
    (ROOT + entry(0x80, b""), None),
    (ROOT + entry(0xFF, b"anything"), None),
    # frames
    (cl.Endpoint("x").raw, "at least one capability"),
    (ROOT + cl.Endpoint("x").raw * 32, "more than 32 entries"),
    (ROOT + cl.Endpoint("x").raw * 31, None),
    (ROOT + cl.Endpoint("x").raw * 40 + b"\x7f\x00", "unknown capability type 0x7f"),
    (entry(6, s("t") + s("m") + DIGEST + b"\x05") + ROOT, "a request capability stands alone"),
    (ROOT + entry(7, bytes(16)) + entry(6, s("t") + s("m") + DIGEST + b"\x05"),
     "a encryption capability stands alone"),
    (cl.Endpoint("x").raw + ROOT + cl.Gateway("g").raw, None),  # mixed: run is None
]


def case_ids(cases) -> list[str]:
    return ["%d-%s" % (i, message or "valid") for i, (_, message) in enumerate(cases)]


@pytest.mark.parametrize("frame, message", FRAMES, ids=case_ids(FRAMES))
def test_each_rule_is_handed_back_to_the_reference(frame: bytes, message: str | None) -> None:
    """One frame per rule of the reference: C's equal record when it is valid,
    else None from C and the reference's own message from cap_codec."""
    kind, got = assert_same_frame(frame)
    if message is None:
        assert kind == "ok", got
    else:
        assert kind == "MalformedToken" and message in got, got
    assert_same_split(cap_token.encode_body([frame]) + bytes(32))
    # the same frame after a valid one (the hint path), in a token
    assert_same_split(cap_token.encode_body([ROOT + cl.Endpoint("x").raw, frame]) + bytes(32))


TOKENS = [  # (bytes scanned whole as a body, expected message or None)
    (b"", "not a version-1 token"),
    (b"\x01\x01", "not a version-1 token"),
    (b"\x02\x01\x02\x01\x00", "not a version-1 token"),
    (b"\x01\x00\x02\x01\x00", "frame count 0 outside 1..16"),
    (b"\x01\x11\x02\x01\x00", "frame count 17 outside 1..16"),
    (b"\x01\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", "frame count 18446744073709551615"),
    (b"\x01\x81\x00\x02\x01\x00", "non-minimal varint"),
    (b"\x01\x80\x01\x02", "frame count 128 outside"),
    (b"\x01\x01\x03\x01\x00", "truncated frame"),
    (b"\x01\x02\x02\x01\x00", "truncated varint"),
    (b"\x01\x01\x02\x01\x00\x00", "trailing bytes after the last frame"),
    (b"\x01\x01\x00\x01", "frame size 0"),
    (b"\x01\x01\x02\x01\x00", None),
    (b"\x01\x01\x8c\x01" + ROOT + cl.Endpoint("x" * 133).raw, None),  # a two-byte length
    (b"\x01\x02\x02\x01\x00\x02\x01\x00", None),
]


@pytest.mark.parametrize("data, message", TOKENS, ids=case_ids(TOKENS))
def test_each_token_rule_is_handed_back_to_the_reference(data: bytes, message: str | None) -> None:
    """One token per rule of the reference's _split, the same way."""
    kind, got = assert_same_split(data, len(data))
    if message is None:
        assert kind == "ok", got
    else:
        assert kind == "MalformedToken" and message in got, got


def test_root_frame_record_is_the_shared_constant() -> None:
    """The root frame's record is cap_codec's constant (tuples, not lists)."""
    assert _capscan.scan_frame(ROOT) is cap_codec._ROOT_REC
    slices, recs = cold(_capscan.split, token_bytes([ROOT]), 5)
    assert recs[0] is cap_codec._ROOT_REC


def test_cache_is_cap_codecs_and_bounded() -> None:
    """The C split caches the records it returns in cap_codec's own cache and
    clears it when full, as the reference does."""
    frames = [ROOT] + [ROOT + cl.Endpoint("e%d" % i).raw for i in range(5)]
    body = cap_token.encode_body(frames)
    size = cap_codec.FRAME_CACHE_SIZE
    cap_token.clear_cache()
    try:
        slices, recs = _capscan.split(body, len(body))
        assert cap_codec._cache == dict(zip(slices, recs))
        cap_token.clear_cache()
        for i in range(size + 2):
            one = cap_token.encode_body([ROOT + cl.Endpoint("f%d" % i).raw])
            assert _capscan.split(one, len(one)) is not None
            assert len(cap_codec._cache) == i % size + 1
    finally:
        cap_token.clear_cache()


class _Bytes(bytes):
    pass


class _Int(int):
    pass


class _Dict(dict):
    pass


def test_odd_arguments_are_handed_back() -> None:
    """Only exact bytes and an exact int within them are read; anything else is
    handed back to the reference (None), and a wrong argument count is a TypeError."""
    body = cap_token.encode_body([ROOT, ROOT + cl.Endpoint("x").raw])
    assert cold(_capscan.split, body, len(body)) is not None
    for data, end in [(bytearray(body), len(body)), (memoryview(body), len(body)),
                      (_Bytes(body), len(body)), (body, _Int(len(body))), (body, True),
                      (body, float(len(body))), (body, len(body) + 1), (body, -1),
                      (body, 2**70), (body, None)]:
        assert cold(_capscan.split, data, end) is None, (type(data), end)
    for raw in ("not bytes", bytearray(ROOT), _Bytes(ROOT), memoryview(ROOT)):
        assert _capscan.scan_frame(raw) is None
    for call, args in [(_capscan.split, (body,)), (_capscan.split, (body, 1, 2)),
                       (_capscan.scan_frame, ()), (_capscan.scan_frame, (ROOT, None, None)),
                       (_capscan.init, ()), (_capscan.init, ({}, 1)),
                       (_capscan.init, (_Dict(cap_fast.c_format()),))]:
        with pytest.raises(TypeError):
            call(*args)
    # a hint of the wrong shape is ignored (it only ever saves work)
    frame = ROOT + cl.Endpoint("x").raw
    for junk in [("junk",), (1, 2, 3, 4), [[], [], b"x", False], (_Dict(), (), _Bytes(b"x"), 0)]:
        assert _capscan.scan_frame(frame, junk) == cap_codec.scan_frame(frame)


# ---- the format, from cap_codec at init() ------------------------------------------

@contextmanager
def c_format(**changes):
    """_capscan re-initialised with cap_codec's format changed so, and restored."""
    spec = dict(cap_fast.c_format(), **changes)
    _capscan.init(spec)
    try:
        yield spec
    finally:
        _capscan.init(cap_fast.c_format())
        cap_token.clear_cache()


def test_the_format_names_every_entry_the_reference_scans() -> None:
    """cap_codec's table for C has a layout for exactly the entry codes the
    reference scanners know, and hands over cap_codec's own constants."""
    spec = cap_fast.c_format()
    assert set(spec["entries"]) == set(cap_caps.SCANNERS) | set(cap_cons.SCANNERS)
    assert spec["root_record"] is cap_codec._ROOT_REC and spec["cache"] is cap_codec._cache
    assert (spec["version"], spec["max_frames"], spec["max_frame_size"], spec["max_entries"]) \
        == (cap_codec.VERSION, cap_codec.MAX_FRAMES, cap_codec.MAX_FRAME_SIZE, cap_codec.MAX_ENTRIES)


NONCE_24 = cl.Encryption(bytes(24)).raw
FIVE = ROOT + cl.Endpoint("a").raw + cl.Endpoint("b").raw + cl.Gateway("g").raw + ROOT


def test_the_format_is_the_one_init_was_given() -> None:
    """C reads nothing of the format on its own: narrower limits, another version
    or a changed layout given at init() change what it accepts."""
    token = cap_token.encode_body([ROOT, NONCE_24])
    assert cold(_capscan.split, token, len(token)) is not None
    assert _capscan.scan_frame(FIVE) is not None
    entries = dict(cap_fast.c_format()["entries"])
    with c_format(entries={**entries, cl.Encryption.code: (("r", 16, 20),)}):
        assert cold(_capscan.split, token, len(token)) is None
    with c_format(version=2):
        assert cold(_capscan.split, token, len(token)) is None
        assert cold(_capscan.split, b"\x02" + token[1:], len(token)) is not None
    with c_format(max_entries=4):
        assert _capscan.scan_frame(FIVE) is None
        assert _capscan.scan_frame(FIVE[:-2]) is not None
    with c_format(max_frames=1):
        assert cold(_capscan.split, token, len(token)) is None
    with c_format(cache={}, cache_size=0) as spec:
        assert cold(_capscan.split, token, len(token)) is not None
        assert spec["cache"] == {} and cap_codec._cache == {}
    assert cold(_capscan.split, token, len(token)) is not None  # restored


def broken_formats() -> list[tuple[str, dict]]:
    """cap_codec's format with one part broken, early or late in what init() reads."""
    good = cap_fast.c_format()
    entries = good["entries"]
    window = cl.SequenceWindow.code
    cases = {
        "version": dict(version=256), "bit": dict(constraint_bit="x"),
        "entries limit": dict(max_entries=0), "cache size": dict(cache_size=-1),
        "leaf is a constraint": dict(leaves=(0x81,)), "leaves": dict(leaves=[6]),
        "unknown kind": dict(entries={**entries, window: ("w", "?")}),
        "kind of two letters": dict(entries={**entries, window: ("uu",)}),
        "size beyond a frame": dict(entries={**entries, window: (("r", 0, 10**6),)}),
        "sizes reversed": dict(entries={**entries, window: (("r", 5, 4),)}),
        "rest not last": dict(entries={**entries, window: (("r", 0, 4), "u")}),
        "too many fields": dict(entries={**entries, window: ("u",) * 7}),
        "code 256": dict(entries={**entries, 256: ()}),
        "layout a list": dict(entries={**entries, window: ["w"]}),
        "code a str": dict(entries={**entries, "7": ()}),
        "code a bool": dict(entries={**{k: v for k, v in entries.items() if k != 1}, True: ()}),
        "size missing": dict(unknown_constraint=(("d",),)),
        "wildcard not UTF-8": dict(wildcard="\ud800"), "wildcard bytes": dict(wildcard=b"*"),
        "check not callable": dict(is_valid_cell=42),
        "root frame": dict(root_frame=bytearray(cap_codec._ROOT_FRAME)),
        "root record": dict(root_record=list(cap_codec._ROOT_REC)),
        "cache": dict(cache=[]),
    }
    out = [(name, dict(good, **change)) for name, change in cases.items()]
    out.append(("cache missing", {k: v for k, v in good.items() if k != "cache"}))
    return out


def traced_growth(fn, times: int = 25) -> int:
    """Bytes still allocated (tracemalloc) after calling ``fn`` ``times`` times."""
    gc.collect()
    tracemalloc.start()
    try:
        fn()  # first-call caches (interned strings, exception types) before the baseline
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(times):
            fn()
        gc.collect()
        return tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


def test_init_is_all_or_nothing_and_leaks_nothing() -> None:
    """A format refused in any part raises, leaves the previous format working,
    and keeps no reference or memory; an accepted one releases the one before."""
    token = cap_token.encode_body([ROOT, NONCE_24])
    want = typed(cold(_capscan.split, token, len(token)))
    for name, spec in broken_formats():
        held = [v for v in spec.values() if not isinstance(v, int)]
        counts = [sys.getrefcount(v) for v in held]
        with pytest.raises((TypeError, ValueError)):
            _capscan.init(spec)
        assert [sys.getrefcount(v) for v in held] == counts, name
        assert typed(cold(_capscan.split, token, len(token))) == want, name

    def refuse_all() -> None:
        for _, spec in broken_formats():
            with pytest.raises((TypeError, ValueError)):
                _capscan.init(spec)

    table = 40 * 1024  # about what one compiled format takes
    assert traced_growth(refuse_all) < table
    assert traced_growth(lambda: _capscan.init(cap_fast.c_format())) < table
    check = cap_fast.c_format()["is_valid_cell"]
    fresh = dict(cache={}, root_record=tuple(list(cap_codec._ROOT_REC)),
                 is_valid_cell=lambda cell: check(cell))
    spec = dict(cap_fast.c_format(), **fresh)
    counts = {k: sys.getrefcount(v) for k, v in fresh.items()}
    _capscan.init(spec)
    try:
        assert {k: sys.getrefcount(v) for k, v in fresh.items()} == \
            {k: c + 1 for k, c in counts.items()}
        assert _capscan.scan_frame(ROOT) is fresh["root_record"]
    finally:
        _capscan.init(cap_fast.c_format())
    assert {k: sys.getrefcount(v) for k, v in fresh.items()} == counts


def test_the_region_check_is_the_references_and_runs_safely() -> None:
    """The cell check is the is_valid_cell init() was given: its errors come
    out, an answer other than True is handed back, and it cannot swap the
    format under the scan that called it."""
    body = cap_token.encode_body([entry(4, OK_CELL)])

    def boom(cell):
        raise ZeroDivisionError(cell)

    def reinit(cell):
        _capscan.init(cap_fast.c_format())
        return True

    assert cold(_capscan.split, body, len(body)) is not None
    with c_format(is_valid_cell=boom):
        with pytest.raises(ZeroDivisionError):
            cold(_capscan.split, body, len(body))
    with c_format(is_valid_cell=lambda cell: 1):  # truthy, but not True
        assert cold(_capscan.split, body, len(body)) is None
    with c_format(is_valid_cell=reinit):
        with pytest.raises(RuntimeError, match="during a scan"):
            cold(_capscan.split, body, len(body))
        with pytest.raises(RuntimeError, match="during a scan"):
            _capscan.scan_frame(entry(4, OK_CELL))
    assert cold(_capscan.split, body, len(body)) is not None


# ---- where the accelerator should have built ------------------------------------

def test_a_missing_accelerator_fails_under_ci_and_skips_elsewhere() -> None:
    """Without _capscan this module's tests fail with a clear message when CI is
    set (there is a compiler there: the build is broken) and skip with the
    reason elsewhere."""
    select = "the_c_scanner_is_the_default or each_token_rule"
    failed = run_tests_without([NAME], [Path(__file__)], ci=True, select=select)
    assert failed.returncode == 1, failed.stdout[-3000:] + failed.stderr[-2000:]
    assert "was not built, but CI has a C compiler" in failed.stdout
    assert " error" in failed.stdout and " passed" not in failed.stdout  # (at setup: a fixture's)
    skipped = run_tests_without([NAME], [Path(__file__)], ci=False, select=select)
    assert skipped.returncode == 0, skipped.stdout[-3000:] + skipped.stderr[-2000:]
    assert "was not built (no C compiler when installed)" in skipped.stdout
    assert " skipped" in skipped.stdout
    assert " passed" not in skipped.stdout and " failed" not in skipped.stdout


# ---- the existing token tests, on the pure path --------------------------------

def test_token_test_modules_pass_on_the_pure_path() -> None:
    """test_tokens_core/properties/api again, with the C scanner switched off
    (the default run above them uses it)."""
    modules = [str(TESTS / f"test_tokens_{m}.py") for m in ("core", "properties", "api")]
    run_tests_on_the_pure_path("edgistry.firmware.caplets.cap_codec", "FAST_SCAN", "_split", modules)
