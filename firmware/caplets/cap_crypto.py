"""HMAC-SHA256 and constant-time comparison (MicroPython-compatible core).

On CPython, OpenSSL's HMAC through ``_hashlib.hmac_new`` is used: about twice
as fast as ``hmac.digest`` for short messages, and it keeps the GIL, where
``hmac.digest`` releases and re-takes it on every call, so in a threaded
process (the gateway's store writer) each MAC could wait for another thread's
turn. ``hmac.digest`` is the next choice. MicroPython
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

try:
    from _hashlib import hmac_new as _openssl_hmac  # CPython with OpenSSL only
except ImportError:  # MicroPython, or CPython without OpenSSL
    _openssl_hmac = None


def _openssl_digest(key, msg, name):
    return _openssl_hmac(key, msg, name).digest()


def _openssl_chain(tag, slices):
    new = _openssl_hmac
    for raw in slices:
        tag = new(tag, raw, "sha256").digest()
    return tag


# Module-level hooks: tests set these to None to exercise the fallbacks on CPython.
FAST_DIGEST = _openssl_digest if _openssl_hmac is not None else getattr(_hmac, "digest", None)
# The last tag of an HMAC chain over ``slices`` from ``tag``, in one call (None: loop on FAST_DIGEST).
FAST_CHAIN = _openssl_chain if _openssl_hmac is not None else None
FAST_COMPARE = getattr(_hmac, "compare_digest", None)


def hmac_sha256_pure(key, msg):
    """HMAC-SHA256 from ``hashlib.sha256`` alone (RFC 2104)."""
    if len(key) > _BLOCK:
        key = _sha256(key).digest()
    key = key + bytes(_BLOCK - len(key))
    inner = _sha256(bytes([b ^ 0x36 for b in key]))
    inner.update(msg)
    outer = _sha256(bytes([b ^ 0x5C for b in key]))
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
