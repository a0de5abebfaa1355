"""Key derivation, frame MACs and the keystream cipher (MicroPython-compatible core).

Everything is HMAC-SHA256 (``cap_crypto``: CPython's OpenSSL HMAC when there,
the pure RFC 2104 construction on MicroPython), so a device needs nothing
beyond ``hashlib.sha256``:

* ``hkdf`` is RFC 5869 HKDF-SHA256.
* ``frame_mac`` is ``HMAC(k, u8(type) || u64be(seq) || body)[:16]``.
* ``crypt`` XORs with the keystream ``HMAC(k, u64be(seq) || u32be(i))`` for
  ``i = 0, 1, ...`` (HMAC as a PRF in counter mode). Each (key, seq) pair is
  used once, so the keystream never repeats; bodies are encrypted, then MACed.

X25519 is optional: the sessions take a provider or None (``link/x25519.py``,
CPython only, wraps ``cryptography``); the handshake then runs without it.
"""

from ..caplets import cap_crypto

hmac_sha256 = cap_crypto.hmac_sha256
equal = cap_crypto.equal
sha256 = cap_crypto.sha256

MAC_SIZE = 16       # frame MAC (truncated HMAC-SHA256): 128 bits
KEY_SIZE = 32
KEYS_INFO = b"edgistry/link/v1 keys"
RESUMPTION_INFO = b"edgistry/link/v1 resumption"


def u32be(n):
    return bytes([(n >> 24) & 255, (n >> 16) & 255, (n >> 8) & 255, n & 255])


def u64be(n):
    return u32be((n >> 32) & 0xFFFFFFFF) + u32be(n & 0xFFFFFFFF)


def hkdf(ikm, salt, info, length):
    """HKDF-SHA256 (RFC 5869): extract with ``salt``, expand to ``length`` bytes."""
    prk = hmac_sha256(salt if salt else bytes(32), ikm)
    out = b""
    block = b""
    i = 1
    while len(out) < length:
        block = hmac_sha256(prk, block + info + bytes([i]))
        out += block
        i += 1
    return out[:length]


def session_keys(ikm, salt):
    """The four data-phase keys: (mac_d2g, mac_g2d, enc_d2g, enc_g2d)."""
    k = hkdf(ikm, salt, KEYS_INFO, 4 * KEY_SIZE)
    return k[0:32], k[32:64], k[64:96], k[96:128]


def resumption_secret(ikm, salt):
    """The secret a ticket resumes with (the next one on each resumption)."""
    return hkdf(ikm, salt, RESUMPTION_INFO, KEY_SIZE)


def frame_mac(key, ftype, seq, body):
    """The 16-byte MAC of a data-phase frame."""
    return hmac_sha256(key, bytes([ftype & 255]) + u64be(seq) + body)[:MAC_SIZE]


def _keystream(key, seq, n):
    """The first ``n`` bytes of the (key, seq) keystream."""
    base = u64be(seq)
    blocks = []
    for i in range((n + 31) // 32):
        blocks.append(hmac_sha256(key, base + u32be(i)))
    return b"".join(blocks)[:n]


def xor_pure(data, stream):
    """``data`` XOR ``stream`` byte by byte (any MicroPython build)."""
    out = bytearray(len(data))
    for i in range(len(data)):
        out[i] = data[i] ^ stream[i]
    return bytes(out)


def xor_bigint(data, stream):
    """``data`` XOR ``stream`` as two big integers: one C-level operation on CPython
    (and on MicroPython builds with arbitrary-precision ints) instead of a
    Python-level loop per byte, which dominated an encrypted flight's cost."""
    n = len(data)
    return (int.from_bytes(data, "big") ^ int.from_bytes(stream, "big")).to_bytes(n, "big")


def _bigint_xor_works():
    # Boards whose ints stop at 64 bits raise, or silently keep the low bits:
    # either way the result differs from the byte loop's.
    a, b = bytes(range(1, 41)), bytes(range(200, 240))
    try:
        return xor_bigint(a, b) == xor_pure(a, b)
    except Exception:
        return False


# Module-level hook (tests set it to None to exercise the byte loop on CPython).
FAST_XOR = xor_bigint if _bigint_xor_works() else None


def crypt(key, seq, data):
    """Encrypt or decrypt ``data`` (XOR with the (key, seq) keystream)."""
    if not data:
        return b""
    stream = _keystream(key, seq, len(data))
    fast = FAST_XOR
    if fast is not None:
        try:
            return fast(data, stream)
        except MemoryError:  # a small heap: the byte loop needs less at once
            pass
    return xor_pure(data, stream)
