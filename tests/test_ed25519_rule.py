"""The Ed25519 acceptance rules (abci_app/ed25519_rule.py): published edge-case vectors through both.

Expected verdicts (V = accepted, X = rejected):

"Taming the many EdDSAs" (speccheck, 12 cases; S/A/R column = what the case has)

  #  | S       | A       | R       | v1 (OpenSSL) | v2 (ours+libsodium) | why v2
  0  | 0       | small   | small   | V | X | small-order A and R
  1  | 0<S<L   | small   | mixed   | V | X | small-order A
  2  | 0<S<L   | mixed   | small   | V | X | small-order R
  3  | 0<S<L   | mixed   | mixed   | V | V | both points fine, cofactorless equation holds
  4  | 0<S<L   | mixed   | mixed   | X | X | holds only cofactored (both rules are cofactorless)
  5  | 0<S<L   | mixed   | L       | X | X | holds only cofactored, without pre-reduction
  6  | S>L     | L       | L       | X | X | S not canonical (both check S < L)
  7  | S>>L    | L       | L       | X | X | S not canonical (top bits set)
  8  | 0<S<L   | mixed   | small*  | X | X | R = ecff..ff (x = -0): bytes differ from re-encoding
  9  | 0<S<L   | mixed   | small*  | X | X | same R, hash over the raw bytes
  10 | 0<S<L   | small*  | mixed   | X | X | A = ecff..ff, hash over re-encoded A: fails both
  11 | 0<S<L   | small*  | mixed   | V | X | A = ecff..ff, hash over raw A: OpenSSL accepts it

  v1 = VVVVXXXXXXXV: the published PyCA and OpenSSL-3.0 rows; v2 = XXXVXXXXXXXX:
  the published LibSodium row. Both confirmed here with cryptography 48 / OpenSSL
  4.0.0 and PyNaCl 1.6.2 / libsodium 1.0.20-stable.

ZIP 215 small-order set (196: A, R among the 14 small-order encodings, S = 0,
message "Zcash"; ZIP 215's cofactored rule accepts all 196)

  v2: all X (every A is small order).
  v1: V for the 12 cases whose R is canonical and R + [k]A = 0; X otherwise.

C2SP/CCTV ed25519vectors.json (914 cases with flags)

  v2: X iff any of low_order_A, low_order_R, non_canonical_A, non_canonical_R,
      low_order_residue; V otherwise (43 V).
  v1: X iff non_canonical_R or low_order_residue; V otherwise (208 V), which is
      the "ref10 / Go / dalek / OpenSSL" behaviour the CCTV README describes.

Over all 1,122 vectors v2 accepts a subset of what v1 accepts (v2 tightens v1,
so no block valid under v2 is invalid under v1), and each rule agrees with a
pure-Python statement of it (ed25519_ref), so the verdicts are defined by code we
can read, not by a library's defaults.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

import ed25519_ref as ref
from edgistry.abci_app import ed25519_rule as rule
from edgistry.abci_app.ed25519_rule import L, P, RULE_V1, RULE_V2, rule_for_height, rule_version, verify_v1, verify_v2

# tests/data/README.md says where every vector comes from and how the file was made
VECTORS = json.loads((Path(__file__).resolve().parent / "data" / "ed25519_vectors.json").read_text())

V2_REJECT_FLAGS = {"low_order_A", "low_order_R", "non_canonical_A", "non_canonical_R", "low_order_residue"}
V1_REJECT_FLAGS = {"non_canonical_R", "low_order_residue"}


def _args(case: dict) -> tuple[bytes, bytes, bytes]:
    return bytes.fromhex(case["pub"]), bytes.fromhex(case["msg"]), bytes.fromhex(case["sig"])


def _verdicts(fn, cases: list[dict]) -> str:
    return "".join("V" if fn(*_args(c)) else "X" for c in cases)


ALL_CASES = [c for name in ("speccheck", "zip215", "cctv") for c in VECTORS[name]["cases"]]


# --- speccheck ("Taming the many EdDSAs") ------------------------------------

def test_speccheck_has_the_12_published_cases():
    """The fixture holds the 12 speccheck cases of the paper."""
    assert len(VECTORS["speccheck"]["cases"]) == 12


def test_speccheck_v1_matches_published_openssl_row():
    """v1 gives the published PyCA/OpenSSL row VVVVXXXXXXXV."""
    published = VECTORS["speccheck"]["published_results"]
    assert published["PyCA"] == published["OpenSSL-3.0"] == "VVVVXXXXXXXV"
    assert _verdicts(verify_v1, VECTORS["speccheck"]["cases"]) == "VVVVXXXXXXXV"


def test_speccheck_v2_matches_published_libsodium_row():
    """v2 gives the published LibSodium row XXXVXXXXXXXX."""
    assert VECTORS["speccheck"]["published_results"]["LibSodium"] == "XXXVXXXXXXXX"
    assert _verdicts(verify_v2, VECTORS["speccheck"]["cases"]) == "XXXVXXXXXXXX"


# --- ZIP 215 small-order set --------------------------------------------------

def test_zip215_set_is_all_small_order_pairs():
    """The ZIP 215 set is every pair of the 14 small-order encodings with S = 0."""
    cases = VECTORS["zip215"]["cases"]
    assert len(cases) == 196
    pubs = {bytes.fromhex(c["pub"]) for c in cases}
    rs = {bytes.fromhex(c["sig"])[:32] for c in cases}
    assert pubs == rs == rule.SMALL_ORDER_ENCODINGS
    assert all(bytes.fromhex(c["sig"])[32:] == bytes(32) for c in cases)


def test_zip215_rule_accepts_all_196():
    # Sanity check of the fixture: ZIP 215 (cofactored, lenient decoding) accepts them all.
    """The fixture is what it claims: the cofactored ZIP 215 rule accepts all 196 cases."""
    assert all(ref.verify_cofactored(*_args(c)) for c in VECTORS["zip215"]["cases"])


def test_zip215_v2_rejects_all():
    """v2 rejects every ZIP 215 small-order case."""
    assert _verdicts(verify_v2, VECTORS["zip215"]["cases"]) == "X" * 196


def test_zip215_v1_accepts_exactly_canonical_r_with_r_plus_ka_zero():
    """v1 accepts exactly the 12 ZIP 215 cases with canonical R and R + [k]A = 0."""
    got = _verdicts(verify_v1, VECTORS["zip215"]["cases"])
    want = ""
    for c in VECTORS["zip215"]["cases"]:
        pub, msg, sig = _args(c)
        A, R = ref.decode_point(pub, strict=False), ref.decode_point(sig[:32], strict=False)
        k = ref._k(sig[:32], pub, msg)
        ok = ref.is_canonical_encoding(sig[:32]) and ref.is_identity(ref.point_add(R, ref.scalar_mult(k, A)))
        want += "V" if ok else "X"
    assert got == want
    assert got.count("V") == 12


# --- C2SP/CCTV ------------------------------------------------------------------

def test_cctv_v2_verdicts_follow_flags():
    """v2 rejects a CCTV case iff it is flagged low-order or non-canonical A/R or low-order residue (43 V)."""
    cases = VECTORS["cctv"]["cases"]
    assert len(cases) == 914
    want = "".join("X" if set(c["flags"]) & V2_REJECT_FLAGS else "V" for c in cases)
    assert _verdicts(verify_v2, cases) == want
    assert want.count("V") == 43


def test_cctv_v1_verdicts_follow_flags():
    """v1 rejects a CCTV case iff it is flagged non-canonical R or low-order residue (208 V)."""
    cases = VECTORS["cctv"]["cases"]
    want = "".join("X" if set(c["flags"]) & V1_REJECT_FLAGS else "V" for c in cases)
    assert _verdicts(verify_v1, cases) == want
    assert want.count("V") == 208


# --- whole set: relations and independent statements of the rules -------------

def test_v2_accepts_a_subset_of_v1():
    """Every vector v2 accepts, v1 accepts too: activation only tightens the rule."""
    for c in ALL_CASES:
        if verify_v2(*_args(c)):
            assert verify_v1(*_args(c)), c["id"]


def test_v2_agrees_with_pure_python_statement_of_the_rule():
    """v2 agrees with the rule written out from first principles on every vector."""
    for c in ALL_CASES:
        assert verify_v2(*_args(c)) == ref.verify_rule_v2(*_args(c)), c["id"]


def test_v1_agrees_with_pure_python_ref10_rule():
    """v1 agrees with a pure-Python lenient cofactorless verifier on every vector."""
    for c in ALL_CASES:
        assert verify_v1(*_args(c)) == ref.verify_cofactorless_lenient(*_args(c)), c["id"]


def test_v2_verdicts_do_not_depend_on_libsodium_prechecks(monkeypatch):
    """Replace libsodium by a bare ref10-style verifier (no canonical or
    small-order checks, as a libsodium built with ED25519_COMPAT, or 1.0.15):
    v2 must give the same verdict on every vector, because those checks are ours."""
    from nacl.exceptions import BadSignatureError

    def lax_open(signed: bytes, pk: bytes) -> bytes:
        if not ref.verify_cofactorless_lenient(pk, signed[64:], signed[:64]):
            raise BadSignatureError("lax")
        return signed[64:]

    before = [verify_v2(*_args(c)) for c in ALL_CASES]
    monkeypatch.setattr(rule, "crypto_sign_open", lax_open)
    after = [verify_v2(*_args(c)) for c in ALL_CASES]
    assert before == after


def test_libsodium_alone_gives_the_same_verdicts_as_v2():
    """Documents the bundled libsodium (1.0.20): it already applies checks 2-4,
    so v2's own checks change no verdict today; they pin it for tomorrow."""
    from nacl.bindings import crypto_sign_open
    from nacl.exceptions import BadSignatureError

    def raw(pub: bytes, msg: bytes, sig: bytes) -> bool:
        try:
            crypto_sign_open(sig + msg, pub)
        except BadSignatureError:
            return False
        return True

    for c in ALL_CASES:
        assert raw(*_args(c)) == verify_v2(*_args(c)), c["id"]


def test_self_test_passes():
    """The start-up self-test passes with the pinned libraries."""
    rule.self_test()


def test_self_test_catches_a_cofactored_library(monkeypatch):
    """The self-test raises when libsodium's equation is replaced by a cofactored one."""
    from nacl.exceptions import BadSignatureError

    def cofactored_open(signed: bytes, pk: bytes) -> bytes:
        if not ref.verify_cofactored(pk, signed[64:], signed[:64]):
            raise BadSignatureError("cofactored")
        return signed[64:]

    monkeypatch.setattr(rule, "crypto_sign_open", cofactored_open)
    with pytest.raises(RuntimeError):
        rule.self_test()


# --- the explicit checks ------------------------------------------------------

def test_small_order_list_is_complete_by_enumeration():
    """The 14 small-order encodings equal those found by enumerating the 8-torsion subgroup."""
    assert rule.SMALL_ORDER_ENCODINGS == ref.small_order_encodings()
    assert len(rule.SMALL_ORDER_ENCODINGS) == 14
    canonical = {e for e in rule.SMALL_ORDER_ENCODINGS if ref.is_canonical_encoding(e)}
    assert len(canonical) == 8


def test_is_canonical_y_exhaustive_near_p():
    # Every encoding whose bytes 1..30 are 0xff, i.e. every place the answer can flip.
    """is_canonical_y is exact on every encoding where the answer can flip."""
    for top in range(256):
        for low in range(256):
            enc = bytes([low]) + b"\xff" * 30 + bytes([top])
            y = int.from_bytes(enc, "little") & ((1 << 255) - 1)
            assert rule.is_canonical_y(enc) == (y < P)


@given(st.binary(min_size=32, max_size=32))
@settings(max_examples=500, deadline=None)
def test_is_canonical_y_matches_integer_comparison(enc: bytes):
    """is_canonical_y equals y < p on random encodings."""
    y = int.from_bytes(enc, "little") & ((1 << 255) - 1)
    assert rule.is_canonical_y(enc) == (y < P)


@pytest.mark.parametrize("s", [0, 1, L - 1, L, L + 1, 2**252, 2**252 - 1, 2**253, 2**256 - 1,
                               L + 2**200, L - 2**200, (L >> 8) << 8])
def test_is_canonical_s_boundaries(s: int):
    """is_canonical_s equals S < L at the boundaries around L."""
    sig = bytes(32) + s.to_bytes(32, "little")
    assert rule.is_canonical_s(sig) == (s < L)


@given(st.integers(min_value=0, max_value=2**256 - 1))
@settings(max_examples=500, deadline=None)
def test_is_canonical_s_matches_integer_comparison(s: int):
    """is_canonical_s equals S < L on random 256-bit S."""
    assert rule.is_canonical_s(bytes(32) + s.to_bytes(32, "little")) == (s < L)


@given(st.integers(min_value=2**252 - 2**130, max_value=2**252 + 2**130))
@settings(max_examples=300, deadline=None)
def test_is_canonical_s_near_l(s: int):
    """is_canonical_s equals S < L for S close to 2^252."""
    assert rule.is_canonical_s(bytes(32) + s.to_bytes(32, "little")) == (s < L)


def test_non_canonical_a_of_large_order_rejected_by_v2():
    """y >= p encodings that decode to points that are not of small order (y = 3, 4, ...):
    not in the blocklist, rejected by the y < p check alone."""
    key = SigningKey(bytes(32))
    signed = key.sign(b"m")
    found = 0
    for low in range(0xED, 0x100):
        for top in (0x7F, 0xFF):
            enc = bytes([low]) + b"\xff" * 30 + bytes([top])
            if enc in rule.SMALL_ORDER_ENCODINGS or ref.decode_point(enc, strict=False) is None:
                continue
            found += 1
            assert not rule.is_canonical_y(enc)
            assert not verify_v2(enc, signed.message, signed.signature)
    assert found == 20


def test_malleated_s_rejected_by_both():
    """A signature with S + L (malleated) is rejected by both rules."""
    key = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    pub = key.public_key().public_bytes_raw()
    sig = key.sign(b"tx")
    s = int.from_bytes(sig[32:], "little")
    bad = sig[:32] + (s + L).to_bytes(32, "little")
    assert verify_v1(pub, b"tx", sig) and verify_v2(pub, b"tx", sig)
    assert not verify_v1(pub, b"tx", bad) and not verify_v2(pub, b"tx", bad)


def test_identity_key_forgery_accepted_by_v1_only():
    """With A = identity, [S]B - [k]A = [S]B: anyone "signs" anything by setting R = [S]B."""
    ident = bytes.fromhex("01" + "00" * 31)
    s = 123456789
    forged = ref.encode_point(ref.scalar_mult(s, ref.BASE)) + s.to_bytes(32, "little")
    assert verify_v1(ident, b"any message", forged)
    assert not verify_v2(ident, b"any message", forged)


@pytest.mark.parametrize("pub_len,sig_len", [(0, 64), (31, 64), (33, 64), (32, 0), (32, 63), (32, 65)])
def test_wrong_lengths_rejected_without_raising(pub_len: int, sig_len: int):
    """Wrong-length keys and signatures are rejected by both rules without raising."""
    assert verify_v1(b"\x01" * pub_len, b"m", b"\x02" * sig_len) is False
    assert verify_v2(b"\x01" * pub_len, b"m", b"\x02" * sig_len) is False


def test_off_curve_key_rejected():
    # y = 2 is not the y of any curve point.
    """A key whose y is on no curve point is rejected by both rules."""
    enc = (2).to_bytes(32, "little")
    assert ref.decode_point(enc, strict=False) is None
    assert not verify_v1(enc, b"m", bytes(64)) and not verify_v2(enc, b"m", bytes(64))


# --- properties: honest signatures ----------------------------------------------

@given(seed=st.binary(min_size=32, max_size=32), msg=st.binary(max_size=512))
@settings(max_examples=200, deadline=None)
def test_cryptography_signatures_accepted_by_both(seed: bytes, msg: bytes):
    """Honest signatures made by cryptography pass both rules."""
    key = Ed25519PrivateKey.from_private_bytes(seed)
    pub, sig = key.public_key().public_bytes_raw(), key.sign(msg)
    assert verify_v1(pub, msg, sig)
    assert verify_v2(pub, msg, sig)


@given(seed=st.binary(min_size=32, max_size=32), msg=st.binary(max_size=256))
@settings(max_examples=100, deadline=None)
def test_pynacl_signatures_accepted_by_both(seed: bytes, msg: bytes):
    """Honest signatures made by PyNaCl pass both rules."""
    key = SigningKey(seed)
    signed = key.sign(msg)
    pub = bytes(key.verify_key)
    assert verify_v1(pub, msg, signed.signature)
    assert verify_v2(pub, msg, signed.signature)


@given(seed=st.binary(min_size=32, max_size=32), msg=st.binary(max_size=256),
       where=st.sampled_from(["msg", "sig", "pub"]), bit=st.integers(min_value=0, max_value=511))
@settings(max_examples=200, deadline=None)
def test_tampered_signatures_rejected_by_both(seed: bytes, msg: bytes, where: str, bit: int):
    """Flipping one bit of message, signature or key makes both rules reject."""
    key = Ed25519PrivateKey.from_private_bytes(seed)
    pub, sig = key.public_key().public_bytes_raw(), key.sign(msg)
    if where == "msg":
        msg = msg + b"\x00" if not msg else bytes([msg[0] ^ 1]) + msg[1:]
    elif where == "sig":
        b = bytearray(sig)
        b[bit // 8] ^= 1 << (bit % 8)
        sig = bytes(b)
    else:
        b = bytearray(pub)
        b[(bit // 8) % 32] ^= 1 << (bit % 8)
        pub = bytes(b)
    assert not verify_v1(pub, msg, sig)
    assert not verify_v2(pub, msg, sig)


# --- activation ---------------------------------------------------------------

def test_rule_for_height():
    """Blocks below the activation height use v1, blocks at or above it v2; None never activates."""
    assert rule_version(99, 100) == RULE_V1 and rule_version(100, 100) == RULE_V2
    assert rule_for_height(1, None) is verify_v1
    assert rule_for_height(10**9, None) is verify_v1
    assert rule_for_height(99, 100) is verify_v1
    assert rule_for_height(100, 100) is verify_v2
    assert rule_for_height(101, 100) is verify_v2
    assert rule_for_height(1, 1) is verify_v2
    with pytest.raises(ValueError):
        rule_for_height(5, 0)
