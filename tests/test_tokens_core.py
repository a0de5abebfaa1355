"""Unit tests of the MicroPython-compatible verification core."""

from __future__ import annotations

import hmac
import os
import random

import h3
import pytest

from edgistry.firmware.caplets import api as cl
from edgistry.firmware.caplets import cap_codec, cap_crypto, cap_h3, cap_token, cap_verify, cap_wire

SECRET = b"core-test-secret-0123456789abcde"
NOW = 1_700_000_000
SEQ = NOW * 1000


def varint(value: int) -> bytes:
    """The varint encoding of ``value`` (the core's writer, cap_wire.put_varint)."""
    out = bytearray()
    cap_wire.put_varint(out, value)
    return bytes(out)


def forge(frames_entries: list[list], secret: bytes = SECRET) -> bytes:
    """A token with arbitrary frames and a correct tag."""
    frames = [cap_token.make_frame(e) for e in frames_entries]
    return cap_token.Token(frames, cap_verify.compute_tag(secret, frames)).to_bytes()


def verdict(token, **fields) -> str:
    try:
        cap_verify.verify(token, SECRET, cl.Context(**fields))
    except cl.TokenError as exc:
        return type(exc).__name__
    return "ok"


# ---- crypto ---------------------------------------------------------------------

def test_fallback_hmac_matches_stdlib_on_random_inputs() -> None:
    """The pure HMAC-SHA256 equals hmac.new for random keys (incl. > block size)."""
    rnd = random.Random(7)
    for _ in range(500):
        key = rnd.randbytes(rnd.randint(0, 150))
        msg = rnd.randbytes(rnd.randint(0, 300))
        assert cap_crypto.hmac_sha256_pure(key, msg) == hmac.new(key, msg, "sha256").digest()


def test_fallback_hmac_pad_cache_follows_the_key() -> None:
    """Repeated, alternating and mutated keys all give the stdlib's HMAC: the padded-key
    cache (kept for the link keystream) never answers for another key."""
    k1, k2 = os.urandom(32), os.urandom(32)
    for key in (k1, k1, k2, k1, bytes(k1), k2):
        assert cap_crypto.hmac_sha256_pure(key, b"m") == hmac.new(bytes(key), b"m", "sha256").digest()
    mutable = bytearray(k1)
    cap_crypto.hmac_sha256_pure(mutable, b"m")
    mutable[0] ^= 1
    assert cap_crypto.hmac_sha256_pure(mutable, b"m") == hmac.new(bytes(mutable), b"m", "sha256").digest()


def test_fallback_compare() -> None:
    """The XOR-accumulate comparison agrees with ==."""
    a = os.urandom(32)
    assert cap_crypto.equal_pure(a, bytes(a))
    assert not cap_crypto.equal_pure(a, a[:-1] + bytes([a[-1] ^ 1]))
    assert not cap_crypto.equal_pure(a, a[:31])
    assert cap_crypto.equal_pure(b"", b"")


@pytest.fixture(params=["fast", "fallback"])
def crypto_path(request, monkeypatch) -> str:
    """Run a test with the stdlib fast path and with the core's own fallbacks."""
    if request.param == "fallback":
        monkeypatch.setattr(cap_crypto, "FAST_DIGEST", None)
        monkeypatch.setattr(cap_crypto, "FAST_COMPARE", None)
    return request.param


def test_verification_same_on_both_crypto_paths(crypto_path: str) -> None:
    """Valid and tampered tokens get the same verdicts with the fallback HMAC/compare."""
    app = cl.derive(cl.root(SECRET), [cl.Service("t", ["m"])], [cl.ExpiresAt(NOW + 1)])
    req = cl.request_token(app, "t", "m", b"x", SEQ)
    raw = req.to_bytes()
    assert verdict(raw, now=NOW) == "ok"
    assert verdict(raw[:-1] + bytes([raw[-1] ^ 1]), now=NOW) == "BadTag"
    assert cl.encryption_tag(SECRET, cl.encryption_token(app, bytes(16)).body) == \
        cl.encryption_token(app, bytes(16)).tag


# ---- wire and codec ----------------------------------------------------------------

@pytest.mark.parametrize("value", [0, 1, 127, 128, 300, 2**32, 2**64 - 1])
def test_varint_round_trip(value: int) -> None:
    """Varints round-trip and take their minimal length."""
    enc = varint(value)
    assert cap_wire.get_varint(enc, 0, len(enc)) == (value, len(enc))


@pytest.mark.parametrize("data, why", [
    (b"", "truncated"), (b"\x80", "truncated"), (b"\x80\x00", "non-minimal"),
    (b"\xff" * 10 + b"\x01", "too long"), (b"\xff" * 9 + b"\x7f", "64 bits"),
])
def test_bad_varints_are_malformed(data: bytes, why: str) -> None:
    """Truncated, non-minimal and oversized varints are MalformedToken."""
    with pytest.raises(cl.MalformedToken, match=why):
        cap_wire.get_varint(data, 0, len(data))


def test_varint_range() -> None:
    """Encoding a value outside 0..2**64-1 is a programming error."""
    with pytest.raises(ValueError):
        varint(-1)
    with pytest.raises(ValueError):
        varint(2**64)


def test_frame_count_limit() -> None:
    """Tokens of more than MAX_FRAMES frames are malformed; derive refuses to build them."""
    token = cl.root(SECRET)
    for _ in range(cl.MAX_FRAMES - 1):
        token = cl.derive(token)
    cap_verify.verify(token, SECRET)
    with pytest.raises(cl.InvalidDerivation, match="flatten"):
        cl.derive(token)
    frames = token.frames + (token.frames[-1],)
    raw = cap_token.encode_body(frames) + cap_verify.compute_tag(SECRET, frames)
    with pytest.raises(cl.MalformedToken, match="frame count"):
        cl.decode(raw)


def test_entry_and_token_size_limits() -> None:
    """Frames over MAX_ENTRIES entries and tokens over MAX_TOKEN_SIZE are malformed."""
    many = [cl.Root()] + [cl.Endpoint(f"e{i}") for i in range(cl.MAX_ENTRIES)]
    with pytest.raises(cl.MalformedToken, match="entries"):
        forge([many])
    with pytest.raises(cl.MalformedToken, match="larger"):
        cl.decode(b"\x01" * (cl.MAX_TOKEN_SIZE + 1))


def test_tokens_and_frames_are_immutable() -> None:
    """Token and Frame attributes cannot be set; derive returns a new token."""
    token = cl.root(SECRET)
    with pytest.raises(AttributeError):
        token.tag = bytes(32)
    with pytest.raises(AttributeError):
        token.frames[0]._caps = ()
    child = cl.derive(token)
    assert child is not token and len(token.frames) == 1


def test_token_accessors() -> None:
    """body, request, expires_at and equality behave as documented."""
    app = cl.derive(cl.root(SECRET), None, [cl.ExpiresAt(NOW + 9), cl.ExpiresAt(NOW + 5)])
    assert app.expires_at == NOW + 5 and app.request is None
    req = cl.request_token(app, "t", "m", b"", 42)
    assert req.request.sequence == 42 and req.body + req.tag == req.to_bytes()
    assert cl.decode(req.to_bytes()) == req and hash(cl.decode(req.to_bytes())) == hash(req)
    with pytest.raises(cl.MalformedToken):
        cl.decode("not bytes")  # type: ignore[arg-type]


# ---- subset relation --------------------------------------------------------------

CELL7 = h3.str_to_int(h3.latlng_to_cell(34.41, -119.85, 7))
CELL9 = h3.str_to_int(h3.cell_to_children(h3.int_to_str(CELL7), 9)[3])
FAR9 = h3.str_to_int(h3.latlng_to_cell(-33.9, 151.2, 9))
REQ = cl.Request("t", "m", bytes(32), 1)
ENC = cl.Encryption(bytes(16))


@pytest.mark.parametrize("child, parent, expected", [
    (cl.Service("t", ["a"]), cl.Root(), True),
    (cl.Service("t", ["a"]), cl.Service("t", ["a", "b"]), True),
    (cl.Service("t", ["a", "b"]), cl.Service("t", ["a"]), False),
    (cl.Service("t", ["a"]), cl.Service("t", ["*"]), True),
    (cl.Service("t", ["*"]), cl.Service("t", ["a", "b"]), False),
    (cl.Service("u", ["a"]), cl.Service("t", ["*"]), False),
    (cl.Resource("/a/b", cl.READ), cl.Resource("/a", cl.READ | cl.WRITE), True),
    (cl.Resource("/a/b", cl.WRITE), cl.Resource("/a", cl.READ), False),
    (cl.Resource("/ab", cl.READ), cl.Resource("/a", cl.READ), False),
    (cl.Resource("/a/b", cl.READ), cl.Resource("/a/", cl.READ), True),
    (cl.Resource("/a", cl.READ), cl.Resource("/a/b", cl.READ), False),
    (cl.Region(CELL9), cl.Region(CELL7), True),
    (cl.Region(CELL7), cl.Region(CELL9), False),
    (cl.Region(FAR9), cl.Region(CELL7), False),
    (cl.Region(CELL7), cl.Region(CELL7), True),
    (cl.Identity("bob"), cl.Identity("bob"), True),
    (cl.Identity("bob"), cl.Identity("alice"), False),
    (REQ, cl.Service("t", ["m"]), True),
    (REQ, cl.Service("t", ["n"]), False),
    (REQ, REQ, False),
    (cl.Service("t", ["m"]), REQ, False),
    (ENC, cl.Identity("bob"), True),
    (ENC, REQ, False),
    (ENC, ENC, False),
    (cl.Root(), ENC, False),
    (cl.Root(), cl.Service("t", ["*"]), False),
    (cl.Identity("t"), cl.Service("t", ["*"]), False),
])
def test_subset_relation(child, parent, expected: bool) -> None:
    """The subset table of cap_caps; undefined pairs are not subsets."""
    assert child.within(parent) is expected


def test_h3_bits_match_the_h3_library() -> None:
    """Cell validity and parents by bit operations agree with h3 on random cells."""
    rnd = random.Random(3)
    for _ in range(300):
        s = h3.latlng_to_cell(rnd.uniform(-90, 90), rnd.uniform(-180, 180), rnd.randint(0, 15))
        cell = h3.str_to_int(s)
        assert cap_h3.is_valid_cell(cell)
        for res in range(h3.get_resolution(s) + 1):
            assert cap_h3.parent(cell, res) == h3.str_to_int(h3.cell_to_parent(s, res))
    for _ in range(3000):
        x = rnd.getrandbits(64)
        assert cap_h3.is_valid_cell(x) == h3.is_valid_cell(h3.int_to_str(x))


@pytest.mark.parametrize("make", [
    lambda: cl.Service("", ["a"]), lambda: cl.Service("t", []),
    lambda: cl.Service("t", ["*", "a"]), lambda: cl.Region(12345),
    lambda: cl.Identity(""), lambda: cl.Request("t", "*", bytes(32), 1),
    lambda: cl.Request("t", "m", b"short", 1), lambda: cl.Encryption(b"short"),
    lambda: cl.BoundTo(b"x"), lambda: cl.SequenceWindow(5, 5), lambda: cl.Endpoint(""),
    lambda: cl.UnknownConstraint(0x10, b""),
])
def test_entry_constructors_validate(make) -> None:
    """Entries refuse invalid fields at construction."""
    with pytest.raises(ValueError):
        make()


def test_entries_round_trip_through_frames() -> None:
    """Every entry type re-parses to an equal entry with the same fields."""
    entries = [cl.Root(), cl.Service("t", ["b", "a"]), cl.Resource("/p", 5), cl.Region(CELL7),
               cl.Identity("bob"), cl.ExpiresAt(NOW), cl.NotBefore(NOW), cl.Endpoint("e"),
               cl.Gateway("g"), cl.RequireIdentity("bob"), cl.BoundTo(bytes(range(32))),
               cl.SequenceWindow(1, 2), cl.UnknownConstraint(0xF0, b"\x01")]
    frame = cap_token.parse_frame(b"".join(e.raw for e in entries))
    again = list(frame.capabilities) + list(frame.constraints)
    assert again == entries
    assert [e.fields() for e in again] == [e.fields() for e in entries]
    assert entries[1].methods == ("a", "b")


# ---- verification error paths ---------------------------------------------------------

def test_each_failure_has_its_own_error() -> None:
    """Bad tag, invalid derivation, constraint, revoked, replayed, malformed each raise
    their own class; a valid token returns the decoded Token (never True)."""
    app = cl.derive(cl.root(SECRET), [cl.Service("t", ["m"])], [cl.Endpoint("e")])
    req = cl.request_token(app, "t", "m", b"", SEQ)
    result = cap_verify.verify(req.to_bytes(), SECRET, cl.Context(endpoint="e"))
    assert result == req and result is not True
    assert verdict(req.to_bytes(), endpoint="x") == "ConstraintFailed"
    assert verdict(req, endpoint="e", revoked={cl.revocation_hash(app.tag)}) == "Revoked"
    assert verdict(req, endpoint="e", last_sequence=SEQ) == "Replayed"
    assert verdict(req, endpoint="e", last_sequence=SEQ - 1) == "ok"
    assert verdict(req.to_bytes()[:-2]) == "MalformedToken"
    assert verdict(forge([[cl.Service("t", ["m"])], [cl.Service("t", ["n"])]])) == \
        "InvalidDerivation"
    with pytest.raises(cl.BadTag):
        cap_verify.verify(req, b"another-secret-0123456789abcdef")


def test_constraint_failure_names_the_constraint() -> None:
    """ConstraintFailed carries which constraint failed."""
    raw = forge([[cl.Root(), cl.Gateway("g1"), cl.UnknownConstraint(0xAB, b"")]])
    with pytest.raises(cl.ConstraintFailed) as info:
        cap_verify.verify(raw, SECRET, cl.Context(gateway="g2"))
    assert info.value.constraint == "gateway"
    with pytest.raises(cl.ConstraintFailed) as info:
        cap_verify.verify(raw, SECRET, cl.Context(gateway="g1"))
    assert info.value.constraint == "unknown:0xab"


@pytest.mark.parametrize("constraint, fields, ok", [
    (cl.ExpiresAt(NOW), dict(now=NOW - 1), True),
    (cl.ExpiresAt(NOW), dict(now=NOW), False),
    (cl.ExpiresAt(NOW), dict(), False),
    (cl.NotBefore(NOW), dict(now=NOW), True),
    (cl.NotBefore(NOW), dict(now=NOW - 1), False),
    (cl.NotBefore(NOW), dict(), False),
    (cl.Endpoint("e"), dict(endpoint="e"), True),
    (cl.Endpoint("e"), dict(), False),
    (cl.Gateway("g"), dict(gateway="g"), True),
    (cl.SequenceWindow(0, 10), dict(sequence=9), True),
    (cl.SequenceWindow(0, 10), dict(sequence=10), False),
    (cl.SequenceWindow(0, 10), dict(), False),
    (cl.BoundTo(bytes(32)), dict(bound_tag=bytes(32)), True),
    (cl.BoundTo(bytes(32)), dict(bound_tag=bytes(31) + b"\x01"), False),
    (cl.RequireIdentity("bob"), dict(), False),
])
def test_constraint_table(constraint, fields: dict, ok: bool) -> None:
    """Each static constraint against a satisfying and a failing context."""
    raw = forge([[cl.Root(), constraint]])
    assert verdict(raw, **fields) == ("ok" if ok else "ConstraintFailed")


def test_identity_constraint_needs_bound_identity_of_same_origin() -> None:
    """require_identity holds only beside a same-origin identity token bound to the
    presented token's tag."""
    root = cl.root(SECRET)
    door = cl.derive(root, [cl.Service("door", ["open"])], [cl.RequireIdentity("bob")])
    req = cl.request_token(door, "door", "open", b"", SEQ)
    bob = cl.derive(root, [cl.Identity("bob")])
    bound = cl.derive(bob, None, [cl.BoundTo(req.tag)])
    other_origin = cl.derive(cl.derive(cl.root(b"x" * 32), [cl.Identity("bob")]), None,
                             [cl.BoundTo(req.tag)])
    alice = cl.derive(cl.derive(root, [cl.Identity("alice")]), None, [cl.BoundTo(req.tag)])
    wrong_bind = cl.derive(bob, None, [cl.BoundTo(door.tag)])
    assert verdict(req, aux=(bound,)) == "ok"
    assert verdict(req, aux=(bound.to_bytes(),)) == "ok"
    for aux in [(), (bob,), (other_origin,), (alice,), (wrong_bind,), (b"junk",)]:
        assert verdict(req, aux=aux) == "ConstraintFailed"
    assert verdict(req, aux=(bound,), revoked={cl.revocation_hash(bob.tag)}) == "ConstraintFailed"


def test_revoking_a_tag_revokes_descendants_only() -> None:
    """Revocation applies to the revoked token and everything derived from it."""
    root = cl.root(SECRET)
    a = cl.derive(root, [cl.Service("t", ["*"])])
    a1 = cl.derive(a, [cl.Service("t", ["m"])])
    b = cl.derive(root, [cl.Service("u", ["*"])])
    revoked = {cl.revocation_hash(a.tag)}
    assert verdict(a, revoked=revoked) == "Revoked"
    assert verdict(a1, revoked=revoked) == "Revoked"
    assert verdict(b, revoked=revoked) == "ok"
    assert verdict(root, revoked=revoked) == "ok"


def test_permits() -> None:
    """permits() accepts root, covering services and the exact request only."""
    root = cl.root(SECRET)
    svc = cl.derive(root, [cl.Service("t", ["m"])])
    req = cl.request_token(svc, "t", "m", b"", 1)
    cap_token.permits(root, "x", "y")
    cap_token.permits(svc, "t", "m")
    cap_token.permits(req, "t", "m")
    for token, op in [(svc, ("t", "n")), (svc, ("u", "m")), (req, ("t", "n"))]:
        with pytest.raises(cl.NotPermitted):
            cap_token.permits(token, *op)


def test_encryption_tag_checks_the_body() -> None:
    """encryption_tag recomputes the tag of an encryption body and rejects others."""
    app = cl.derive(cl.root(SECRET), [cl.Service("t", ["m"])], [cl.ExpiresAt(NOW + 5)])
    enc = cl.encryption_token(app)
    assert cl.encryption_tag(SECRET, enc.body) == enc.tag
    assert cl.encryption_tag(SECRET, enc.body, cl.Context(now=NOW)) == enc.tag
    with pytest.raises(cl.ConstraintFailed):
        cl.encryption_tag(SECRET, enc.body, cl.Context(now=NOW + 5))
    with pytest.raises(cl.NotPermitted):
        cl.encryption_tag(SECRET, app.body)
    forged = cap_token.encode_body([cap_token.make_frame([cl.Service("t", ["m"])]),
                                    cap_token.make_frame([cl.Root()])])
    with pytest.raises(cl.InvalidDerivation):
        cl.encryption_tag(SECRET, forged)
    with pytest.raises(cl.MalformedToken):
        cl.encryption_tag(SECRET, enc.body + b"\x00")


def test_frame_cache_is_bounded(monkeypatch) -> None:
    """The parse cache never grows beyond FRAME_CACHE_SIZE."""
    monkeypatch.setattr(cap_codec, "FRAME_CACHE_SIZE", 4)
    cap_codec._cache.clear()
    for i in range(20):
        cap_token.parse_frame(cl.Identity(f"id{i}").raw)
        assert len(cap_codec._cache) <= 4
    cap_codec._cache.clear()


def test_core_has_no_cpython_only_constructs() -> None:
    """The core modules (what a board ships) avoid imports MicroPython lacks (checked
    by the MicroPython test too; this gives a readable failure on CPython)."""
    import pathlib
    import re
    from edgistry.firmware.export import BOARD_MODULES
    folder = pathlib.Path(cl.__file__).parent
    for path in [folder / f"{name}.py" for name in BOARD_MODULES["caplets"]]:
        text = path.read_text()
        for banned in ("import typing", "from typing", "dataclass", "import enum", "import abc",
                       ":=", ".hex("):
            assert banned not in text, (path.name, banned)
        assert not re.search(r"(?<!\w)[fF][rR]?[\"']", text), (path.name, "f-string")
        assert not re.search(r"to_bytes\(\s*\)", text), path.name
