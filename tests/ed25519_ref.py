"""Pure-Python Ed25519 arithmetic: a slow, dependency-free test oracle.

Not for production (variable time, ~ms per scalar multiplication). It exists so
the tests can state the acceptance rule in our own code and check every library
verdict against it, instead of trusting a library to tell us what it does:

* ``decode_point(..., strict=...)``: RFC 8032 §5.1.3 decoding, either strict
  (y < p, and x = 0 with the sign bit set is rejected) or lenient (y reduced
  mod p, "negative zero" accepted; what ref10/OpenSSL/dalek decompress do);
* ``small_order_encodings()``: every 32-byte string that decodes (leniently)
  to a point of order dividing 8, found by enumeration, not copied from a list;
* ``verify_rule_v2``: the v2 acceptance rule written out from first principles
  (canonical A and R, A and R not of small order, S < L, cofactorless equation
  encode([S]B - [k]A) == R with k = SHA-512(R || A || M) mod L);
* ``verify_cofactored`` / ``verify_cofactorless_lenient``: the other common
  rules, used only to label test vectors.
"""
from __future__ import annotations

import hashlib
from typing import Optional

P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493
D = (-121665 * pow(121666, P - 2, P)) % P
SQRT_M1 = pow(2, (P - 1) // 4, P)

Point = tuple[int, int, int, int]  # extended coordinates (X, Y, Z, T), x = X/Z, y = Y/Z, xy = T/Z
IDENTITY: Point = (0, 1, 1, 0)


def _recover_x(y: int, sign: int) -> Optional[int]:
    """x with x^2 = (y^2 - 1) / (d y^2 + 1) and x's parity = sign; None if none exists.
    Lenient about x = 0 with sign = 1 (returns 0): callers decide."""
    u = (y * y - 1) % P
    v = (D * y * y + 1) % P
    x = (u * pow(v, 3, P) * pow(u * pow(v, 7, P), (P - 5) // 8, P)) % P
    vxx = (v * x * x) % P
    if vxx == u:
        pass
    elif vxx == (-u) % P:
        x = (x * SQRT_M1) % P
    else:
        return None
    if (x & 1) != sign:
        x = (-x) % P
    return x


def decode_point(b: bytes, strict: bool = True) -> Optional[Point]:
    """Decode a 32-byte encoding; None if it is not a point (or, when strict, not canonical)."""
    if len(b) != 32:
        return None
    n = int.from_bytes(b, "little")
    sign = n >> 255
    y = n & ((1 << 255) - 1)
    if y >= P:
        if strict:
            return None
        y -= P
    x = _recover_x(y, sign)
    if x is None:
        return None
    if strict and x == 0 and sign == 1:
        return None
    return (x, y, 1, (x * y) % P)


def is_canonical_encoding(b: bytes) -> bool:
    """True iff ``b`` is the unique (RFC 8032) encoding of the point it decodes to."""
    pt = decode_point(b, strict=False)
    return pt is not None and encode_point(pt) == bytes(b)


def encode_point(pt: Point) -> bytes:
    X, Y, Z, _ = pt
    zi = pow(Z, P - 2, P)
    x, y = (X * zi) % P, (Y * zi) % P
    return (y | ((x & 1) << 255)).to_bytes(32, "little")


def point_add(p: Point, q: Point) -> Point:
    """Complete addition on the twisted Edwards curve (a = -1), extended coordinates."""
    X1, Y1, Z1, T1 = p
    X2, Y2, Z2, T2 = q
    A = ((Y1 - X1) * (Y2 - X2)) % P
    B = ((Y1 + X1) * (Y2 + X2)) % P
    C = (2 * T1 * T2 * D) % P
    Dd = (2 * Z1 * Z2) % P
    E, F, G, H = B - A, Dd - C, Dd + C, B + A
    return ((E * F) % P, (G * H) % P, (F * G) % P, (E * H) % P)


def point_neg(p: Point) -> Point:
    X, Y, Z, T = p
    return ((-X) % P, Y, Z, (-T) % P)


def scalar_mult(k: int, p: Point) -> Point:
    q = IDENTITY
    while k > 0:
        if k & 1:
            q = point_add(q, p)
        p = point_add(p, p)
        k >>= 1
    return q


def point_equal(p: Point, q: Point) -> bool:
    X1, Y1, Z1, _ = p
    X2, Y2, Z2, _ = q
    return (X1 * Z2 - X2 * Z1) % P == 0 and (Y1 * Z2 - Y2 * Z1) % P == 0


def is_identity(p: Point) -> bool:
    return point_equal(p, IDENTITY)


_BY = (4 * pow(5, P - 2, P)) % P
_BX = _recover_x(_BY, 0)
assert _BX is not None
BASE: Point = (_BX, _BY, 1, (_BX * _BY) % P)


def order_class(p: Point) -> str:
    """'1', '2', '4', '8' for small-order points, 'L' for torsion-free, 'mixed' otherwise."""
    if is_identity(scalar_mult(8, p)):
        for o in (1, 2, 4, 8):
            if is_identity(scalar_mult(o, p)):
                return str(o)
    return "L" if is_identity(scalar_mult(L, p)) else "mixed"


def small_order_encodings() -> frozenset[bytes]:
    """All 32-byte strings that decode (leniently) to a point of order 1, 2, 4 or 8.

    Enumerated, not copied: generate the 8-torsion subgroup from one order-8
    point (checked to have order 8), collect the y of its 8 points, then try
    every representative of each y below 2^255 (y and y + p) with both sign
    bits, keeping those that decode (leniently) to a point of order dividing 8.
    """
    # Find an order-8 point: start from a known canonical order-8 encoding and
    # check it rather than trust it.
    g = decode_point(bytes.fromhex("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"))
    assert g is not None and order_class(g) == "8"
    torsion = [scalar_mult(i, g) for i in range(8)]
    ys = {int.from_bytes(encode_point(t), "little") & ((1 << 255) - 1) for t in torsion}
    out: set[bytes] = set()
    for y in ys:
        for rep in (y, y + P):
            if rep >= 1 << 255:
                continue
            for sign in (0, 1):
                enc = (rep | (sign << 255)).to_bytes(32, "little")
                pt = decode_point(enc, strict=False)
                if pt is not None and is_identity(scalar_mult(8, pt)):
                    out.add(enc)
    return frozenset(out)


def _k(r_bytes: bytes, a_bytes: bytes, msg: bytes) -> int:
    return int.from_bytes(hashlib.sha512(r_bytes + a_bytes + msg).digest(), "little") % L


def verify_rule_v2(pub: bytes, msg: bytes, sig: bytes) -> bool:
    """The v2 rule from first principles (what verify_v2 must agree with)."""
    if len(pub) != 32 or len(sig) != 64:
        return False
    r_bytes, s_bytes = sig[:32], sig[32:]
    s = int.from_bytes(s_bytes, "little")
    if s >= L:
        return False
    A = decode_point(pub, strict=True)
    R = decode_point(r_bytes, strict=True)
    if A is None or R is None:
        return False
    if is_identity(scalar_mult(8, A)) or is_identity(scalar_mult(8, R)):
        return False
    k = _k(r_bytes, pub, msg)
    rcheck = point_add(scalar_mult(s, BASE), point_neg(scalar_mult(k, A)))
    return encode_point(rcheck) == r_bytes


def verify_cofactorless_lenient(pub: bytes, msg: bytes, sig: bytes) -> bool:
    """ref10/OpenSSL-style: S < L, lenient A decoding, raw bytes hashed, encode([S]B-[k]A) == R bytes."""
    if len(pub) != 32 or len(sig) != 64:
        return False
    s = int.from_bytes(sig[32:], "little")
    if s >= L:
        return False
    A = decode_point(pub, strict=False)
    if A is None:
        return False
    k = _k(sig[:32], pub, msg)
    rcheck = point_add(scalar_mult(s, BASE), point_neg(scalar_mult(k, A)))
    return encode_point(rcheck) == sig[:32]


def verify_cofactored(pub: bytes, msg: bytes, sig: bytes) -> bool:
    """ZIP-215-style: lenient decoding of A and R, S < L, [8]([S]B - R - [k]A) == 0."""
    if len(pub) != 32 or len(sig) != 64:
        return False
    s = int.from_bytes(sig[32:], "little")
    if s >= L:
        return False
    A = decode_point(pub, strict=False)
    R = decode_point(sig[:32], strict=False)
    if A is None or R is None:
        return False
    k = _k(sig[:32], pub, msg)
    diff = point_add(point_add(scalar_mult(s, BASE), point_neg(R)), point_neg(scalar_mult(k, A)))
    return is_identity(scalar_mult(8, diff))
