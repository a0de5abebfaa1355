"""HMAC-SHA256 and constant-time comparison (MicroPython-compatible core).

CPython's ``hmac.digest`` (one-shot, OpenSSL) is used when present. MicroPython
ships an ``hmac`` module with only ``new``/``HMAC``, so there the pure
construction below (RFC 2104 over ``hashlib.sha256``) is used instead. Digests
are compared with ``hmac.compare_digest`` when present, otherwise with an
XOR-accumulate loop whose running time depends only on the length.
"""

import hashlib

try:
    import hmac as _hmac
except ImportError:  # pragma: no cover - MicroPython builds without hmac
    _hmac = None

_sha256 = hashlib.sha256

TAG_SIZE = 32
_BLOCK = 64
# A revoked tag is published only as this one-way hash: a tag is the key that
# derives the next frame, so publishing it would let anyone mint children of
# the very token it revokes. Domain-separated so the hash is no other digest.
REVOCATION_DOMAIN = b"edgistry/revoked-tag/v1\0"

# Module-level hooks: tests set these to None to exercise the fallbacks on CPython.
FAST_DIGEST = getattr(_hmac, "digest", None)
FAST_COMPARE = getattr(_hmac, "compare_digest", None)


def revocation_hash(tag):
    """The one-way hash under which ``tag`` is revoked (on chain, in lists, on devices)."""
    return _sha256(REVOCATION_DOMAIN + tag).digest()


# The padded keys of the last key object used. The link cipher calls HMAC once per 32
# bytes of keystream under one key: padding it every time made a board allocate ~1 KB
# of garbage per block (a 2 KB frame: ~64 KB of churn on a heap of ~100 KB). The cache
# is keyed by object identity, never by comparing key bytes, so a hit or miss says
# nothing about a key's contents.
_pads_of = [None, b"", b""]


def _pads(key):
    c = _pads_of
    if c[0] is not key:
        k = _sha256(key).digest() if len(key) > _BLOCK else bytes(key)
        k = k + bytes(_BLOCK - len(k))
        ipad = bytes(b ^ 0x36 for b in k)
        opad = bytes(b ^ 0x5C for b in k)
        if type(key) is not bytes:  # a mutable key may change under the same identity
            return ipad, opad
        c[0], c[1], c[2] = key, ipad, opad
    return c[1], c[2]


def hmac_sha256_pure(key, msg):
    """HMAC-SHA256 from ``hashlib.sha256`` alone (RFC 2104)."""
    ipad, opad = _pads(key)
    inner = _sha256(ipad)
    inner.update(msg)
    outer = _sha256(opad)
    outer.update(inner.digest())
    return outer.digest()


def hmac_sha256(key, msg):
    """HMAC-SHA256 of ``msg`` under ``key`` (32 bytes)."""
    fast = FAST_DIGEST
    if fast is not None:
        return fast(key, msg, "sha256")
    return hmac_sha256_pure(key, msg)


def equal_pure(a, b):
    """Compare two byte strings in time independent of where they differ."""
    if len(a) != len(b):
        return False
    acc = 0
    for i in range(len(a)):
        acc |= a[i] ^ b[i]
    return acc == 0


def equal(a, b):
    """Constant-time equality of two byte strings."""
    fast = FAST_COMPARE
    if fast is not None:
        return fast(a, b)
    return equal_pure(a, b)


def sha256(data):
    """SHA-256 digest of ``data``."""
    return _sha256(data).digest()
