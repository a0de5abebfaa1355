"""Edgistry's Ed25519 acceptance rules, as pure functions.

Why this module exists: every validator must reach the same verdict on every
signature, or replicas diverge. RFC 8032 leaves edge cases open (small-order
points, non-canonical point encodings, cofactored vs cofactorless equation) and
libraries disagree on them; some change their answer between releases (libsodium
did in 1.0.16, which is why Zcash wrote ZIP 215). So the rule is ours, written
down here, and a library only does the part every maintained version agrees on.

* ``verify_v1``: the rule used so far (``cryptography`` / OpenSSL): S < L, A
  decoded leniently (y may be >= p, "negative zero" x accepted, small-order A
  accepted), cofactorless equation encode([S]B - [k]A) == R, R compared as bytes.
  Kept bit for bit for replaying blocks below the activation height.
* ``verify_v2``: stricter (it accepts a subset of what v1 accepts):
  1. lengths 32 / 64;
  2. S < L (canonical scalar);
  3. A and R canonical: y < p (checked here on the bytes);
  4. A and R not of small order: neither is one of the 14 byte strings that
     decode to a point of order 1, 2, 4 or 8 (8 canonical encodings plus 6
     non-canonical ones; the two "x = -0" encodings are among them, so with 3.
     every non-canonical encoding is rejected);
  5. libsodium's crypto_sign_open (PyNaCl), i.e. the cofactorless equation
     encode([S]B - [k]A) == R bytes, k = SHA-512(R || A || M) mod L.
  The libsodium bundled in PyNaCl 1.6.2 (1.0.20-stable) also makes checks 2-4
  itself, but not when built with ED25519_COMPAT (then it only rejects S with
  one of the top 3 bits set), and 1.0.15 used a different, partial blocklist;
  doing them here makes 2-4 independent of which libsodium and how it was built. What is
  left to the library is the group equation, which the tests pin on published
  vectors (a libsodium that switched to the cofactored equation fails them).
* ``rule_version`` / ``rule_for_height``: which rule applies to a block height
  (the activation height comes from genesis: ``genesis.py``).

The verifiers return a bool and never raise for wrong-length or odd inputs of
type bytes. The libraries are pinned in pyproject.toml (PyNaCl exactly, which
fixes the bundled libsodium; cryptography to the major whose OpenSSL gave the
v1 verdicts) and :func:`self_test` runs when a node starts.
"""
from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from nacl.bindings import crypto_sign_open
from nacl.exceptions import BadSignatureError

Verifier = Callable[[bytes, bytes, bytes], bool]

RULE_V1 = 1  # cryptography / OpenSSL, the rule of every block below the activation height
RULE_V2 = 2  # our checks + libsodium

P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493

# L as 32 big-endian bytes: comparing the byte-reversed S with it is the
# integer comparison S < L (equal-length bytes compare lexicographically).
_L_BE = L.to_bytes(32, "big")
_FF30 = b"\xff" * 30

# Every 32-byte string that decodes to a point of small order (order 1, 2, 4
# or 8). There are 8 such points; their y is 1, -1, 0 or one of two order-8
# values. Encodings: 8 canonical ones, plus 6 non-canonical ones: y + p (only
# possible for y = 0 and y = 1, with either sign bit) and x = -0 (sign bit set
# on a point whose x is 0: y = 1 and y = -1). Same 14 as libsodium 1.0.20's
# ge25519_has_small_order (7 y values, sign bit masked) and C2SP/CCTV's list;
# the tests re-derive it by enumeration.
SMALL_ORDER_ENCODINGS: frozenset[bytes] = frozenset(bytes.fromhex(h) for h in (
    # canonical
    "0100000000000000000000000000000000000000000000000000000000000000",  # identity (order 1)
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # (0, -1), order 2
    "0000000000000000000000000000000000000000000000000000000000000000",  # (+-sqrt(-1), 0), order 4
    "0000000000000000000000000000000000000000000000000000000000000080",  # order 4
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",  # order 8
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",  # order 8
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",  # order 8
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",  # order 8
    # non-canonical
    "0100000000000000000000000000000000000000000000000000000000000080",  # identity, x = -0
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",  # order 2, x = -0
    "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # y = p (= 0), order 4
    "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",  # y = p (= 0), order 4
    "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # y = p + 1 (= 1), identity
    "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",  # y = p + 1, x = -0, identity
))


def is_canonical_y(enc: bytes) -> bool:
    """True iff the 255-bit y of a 32-byte point encoding is below p = 2^255 - 19.

    y >= p exactly when bytes 1..30 are 0xff, byte 31 is 0x7f or 0xff (sign
    bit ignored) and byte 0 is >= 0xed. Tested byte 31 first: for almost every
    input that single comparison settles it.
    """
    return not (enc[31] & 0x7F == 0x7F and enc[0] >= 0xED and enc[1:31] == _FF30)


def is_canonical_s(sig: bytes) -> bool:
    """True iff S (little-endian, sig[32:64]) is below L.

    L = 2^252 + small, so S < L whenever its top byte is below 0x10 (every
    honest signature but a 1-in-~2^124 fraction); else compare as big-endian bytes.
    """
    top = sig[63]
    return top < 0x10 or (top == 0x10 and sig[63:31:-1] < _L_BE)


def verify_v1(pub: bytes, msg: bytes, sig: bytes) -> bool:
    """Today's rule: whatever ``cryptography`` (OpenSSL's ossl_ed25519_verify) accepts.

    Kept as it was (same library, same calls, the key object cached as before)
    so blocks below the activation height replay with the verdicts they were
    committed with. Accepts small-order and non-canonical A (e.g. the identity
    key 01 00..00, under which anyone can sign anything) and small-order
    canonical R.
    """
    if len(pub) != 32 or len(sig) != 64:
        return False
    try:
        _v1_key(pub).verify(sig, msg)
    except (InvalidSignature, ValueError):
        return False
    return True


@lru_cache(maxsize=4096)
def _v1_key(raw: bytes) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(raw)  # a ValueError is not cached


def verify_v2(pub: bytes, msg: bytes, sig: bytes) -> bool:
    """The v2 rule: our explicit checks, then libsodium's cofactorless equation.

    Checks 1-4 (see the module docstring) are done here so that their verdict
    does not depend on the libsodium version or build flags; they are cheap
    (about a microsecond) next to the ~50 us of the curve arithmetic.
    """
    if len(pub) != 32 or len(sig) != 64:
        return False
    if not is_canonical_s(sig):
        return False
    r = sig[:32]
    if not (is_canonical_y(pub) and is_canonical_y(r)):
        return False
    if pub in SMALL_ORDER_ENCODINGS or r in SMALL_ORDER_ENCODINGS:
        return False
    try:
        # PyNaCl 1.6.2 exposes no crypto_sign_verify_detached binding;
        # crypto_sign_open(sig || msg) calls the same libsodium function
        # (crypto_sign_ed25519_open -> crypto_sign_ed25519_verify_detached).
        crypto_sign_open(sig + msg, pub)
    except BadSignatureError:
        return False
    return True


def rule_version(height: int, activation_height: int | None) -> int:
    """The acceptance rule (RULE_V1 or RULE_V2) for transactions executed in block ``height``.

    ``activation_height`` comes from genesis (None: v2 never activates). Blocks
    at or above it use v2, blocks below it v1, so a node replaying the chain
    from genesis reaches the verdicts that were committed. CheckTx and the
    proposal methods ask for the height being built (last committed + 1).
    """
    if activation_height is not None and activation_height < 1:
        raise ValueError("activation_height must be >= 1 (or None)")
    if activation_height is not None and height >= activation_height:
        return RULE_V2
    return RULE_V1


VERIFIERS: dict[int, Verifier] = {RULE_V1: verify_v1, RULE_V2: verify_v2}


def rule_for_height(height: int, activation_height: int | None) -> Verifier:
    """The verifier of :func:`rule_version` for ``height``."""
    return VERIFIERS[rule_version(height, activation_height)]


# "Taming the many EdDSAs" (novifinancial/ed25519-speccheck, cases.json): 12
# cases as (A || R || S hex, message hex). Expected v2 verdicts, one letter per
# case: only case 3 (mixed-order A and R that satisfy the cofactorless equation)
# is accepted. Case 3 accepted and cases 4-5 rejected is what pins the library's
# cofactorless equation; the others exercise checks 2-4.
_SELF_TEST_CASES: tuple[tuple[str, str], ...] = (
    ("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa"
     "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a0000000000000000000000000000000000000000000000000000000000000000",
     "8c93255d71dcab10e8f379c26200f3c7bd5f09d9bc3068d3ef4edeb4853022b6"),
    ("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa"
     "f7badec5b8abeaf699583992219b7b223f1df3fbbea919844e3f7c554a43dd43a5bb704786be79fc476f91d3f3f89b03984d8068dcf1bb7dfc6637b45450ac04",
     "9bd9f44f4dcc75bd531b56b2cd280b0bb38fc1cd6d1230e14861d861de092e79"),
    ("f7badec5b8abeaf699583992219b7b223f1df3fbbea919844e3f7c554a43dd43"
     "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa8c4bd45aecaca5b24fb97bc10ac27ac8751a7dfe1baff8b953ec9f5833ca260e",
     "aebf3f2601a0c8c5d39cc7d8911642f740b78168218da8471772b35f9d35b9ab"),
    ("cdb267ce40c5cd45306fa5d2f29731459387dbf9eb933b7bd5aed9a765b88d4d"
     "9046a64750444938de19f227bb80485e92b83fdb4b6506c160484c016cc1852f87909e14428a7a1d62e9f22f3d3ad7802db02eb2e688b6c52fcd6648a98bd009",
     "9bd9f44f4dcc75bd531b56b2cd280b0bb38fc1cd6d1230e14861d861de092e79"),
    ("cdb267ce40c5cd45306fa5d2f29731459387dbf9eb933b7bd5aed9a765b88d4d"
     "160a1cb0dc9c0258cd0a7d23e94d8fa878bcb1925f2c64246b2dee1796bed5125ec6bc982a269b723e0668e540911a9a6a58921d6925e434ab10aa7940551a09",
     "e47d62c63f830dc7a6851a0b1f33ae4bb2f507fb6cffec4011eaccd55b53f56c"),
    ("cdb267ce40c5cd45306fa5d2f29731459387dbf9eb933b7bd5aed9a765b88d4d"
     "21122a84e0b5fca4052f5b1235c80a537878b38f3142356b2c2384ebad4668b7e40bc836dac0f71076f9abe3a53f9c03c1ceeeddb658d0030494ace586687405",
     "e47d62c63f830dc7a6851a0b1f33ae4bb2f507fb6cffec4011eaccd55b53f56c"),
    ("442aad9f089ad9e14647b1ef9099a1ff4798d78589e66f28eca69c11f582a623"
     "e96f66be976d82e60150baecff9906684aebb1ef181f67a7189ac78ea23b6c0e547f7690a0e2ddcd04d87dbc3490dc19b3b3052f7ff0538cb68afb369ba3a514",
     "85e241a07d148b41e47d62c63f830dc7a6851a0b1f33ae4bb2f507fb6cffec40"),
    ("442aad9f089ad9e14647b1ef9099a1ff4798d78589e66f28eca69c11f582a623"
     "8ce5b96c8f26d0ab6c47958c9e68b937104cd36e13c33566acd2fe8d38aa19427e71f98a473474f2f13f06f97c20d58cc3f54b8bd0d272f42b695dd7e89a8c22",
     "85e241a07d148b41e47d62c63f830dc7a6851a0b1f33ae4bb2f507fb6cffec40"),
    ("f7badec5b8abeaf699583992219b7b223f1df3fbbea919844e3f7c554a43dd43"
     "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff03be9678ac102edcd92b0210bb34d7428d12ffc5df5f37e359941266a4e35f0f",
     "9bedc267423725d473888631ebf45988bad3db83851ee85c85e241a07d148b41"),
    ("f7badec5b8abeaf699583992219b7b223f1df3fbbea919844e3f7c554a43dd43"
     "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffca8c5b64cd208982aa38d4936621a4775aa233aa0505711d8fdcfdaa943d4908",
     "9bedc267423725d473888631ebf45988bad3db83851ee85c85e241a07d148b41"),
    ("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff"
     "a9d55260f765261eb9b84e106f665e00b867287a761990d7135963ee0a7d59dca5bb704786be79fc476f91d3f3f89b03984d8068dcf1bb7dfc6637b45450ac04",
     "e96b7021eb39c1a163b6da4e3093dcd3f21387da4cc4572be588fafae23c155b"),
    ("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff"
     "a9d55260f765261eb9b84e106f665e00b867287a761990d7135963ee0a7d59dca5bb704786be79fc476f91d3f3f89b03984d8068dcf1bb7dfc6637b45450ac04",
     "39a591f5321bbe07fd5a23dc2f39d025d74526615746727ceefd6e82ae65c06f"),
)
_SELF_TEST_V2 = "XXXVXXXXXXXX"  # the published LibSodium row
_SELF_TEST_V1 = "VVVVXXXXXXXV"  # the published PyCA and OpenSSL-3.0 rows


def self_test() -> None:
    """Check, at node start, that this process's rules give the pinned verdicts.

    CI runs the full vector set; this cheap (~1 ms) check catches a validator
    whose PyNaCl/libsodium or cryptography/OpenSSL differs from the pinned one
    (e.g. a build against a system libsodium) before it votes. Raises
    RuntimeError on any difference.
    """
    from nacl.signing import SigningKey  # local: only needed here

    rows = {RULE_V1: "", RULE_V2: ""}
    for key_sig, msg in _SELF_TEST_CASES:
        raw = bytes.fromhex(key_sig)
        for version, verify in VERIFIERS.items():
            rows[version] += "V" if verify(raw[:32], bytes.fromhex(msg), raw[32:]) else "X"
    key = SigningKey(bytes(range(32)))
    signed = key.sign(b"edgistry self-test")
    pub = bytes(key.verify_key)
    honest = verify_v2(pub, signed.message, signed.signature) and verify_v1(pub, signed.message, signed.signature)
    tampered = (verify_v2(pub, signed.message + b"!", signed.signature)
                or verify_v1(pub, signed.message + b"!", signed.signature))
    if rows[RULE_V2] != _SELF_TEST_V2 or rows[RULE_V1] != _SELF_TEST_V1 or not honest or tampered:
        raise RuntimeError(f"Ed25519 self-test failed: v2 {rows[RULE_V2]} (want {_SELF_TEST_V2}), "
                           f"v1 {rows[RULE_V1]} (want {_SELF_TEST_V1}), honest={honest}, tampered={tampered}")
