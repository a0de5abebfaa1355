"""LtHash16: an incremental, homomorphic hash of a set of (key, value) pairs.

The app hash must commit to the whole canonical state, yet recomputing a hash
over a million records per block is too slow. LtHash (Bellare-Micciancio
lattice hash, as used by Facebook's and Solana's state hashing) maps every
element to a vector of 1024 16-bit lanes with an extendable-output hash and
sums the vectors lane-wise mod 2**16. Adding or removing a record is one
vector addition or subtraction, and the sum is independent of insertion order
yet identifies the set (collision resistance reduces to the short integer
solution problem; 1024x16 bits is the parameter set analysed for ~200-bit
security). The final app hash is SHA-256 of the 2048-byte sum.

Lanes are packed into one Python int. To add lane-wise without carries
spilling into neighbours, even and odd lanes are added separately, each with a
16-bit zero gap above every lane, and masked back.
"""

from __future__ import annotations

import hashlib

LANES = 1024
LANE_BITS = 16
NBYTES = LANES * LANE_BITS // 8
_DOMAIN = b"edgistry/lthash16/v1\0"

_EVEN = int.from_bytes(b"\xff\xff\x00\x00" * (LANES // 2), "little")
_ODD = _EVEN << LANE_BITS
_ONE_EVEN = int.from_bytes(b"\x01\x00\x00\x00" * (LANES // 2), "little")
_ONE_ODD = _ONE_EVEN << LANE_BITS


def element(key: bytes, value: bytes) -> int:
    """The lane vector of one record; key and value are length-delimited."""
    h = hashlib.shake_128(_DOMAIN)
    h.update(len(key).to_bytes(4, "big"))
    h.update(key)
    h.update(value)
    return int.from_bytes(h.digest(NBYTES), "little")


def add(acc: int, vec: int) -> int:
    even = ((acc & _EVEN) + (vec & _EVEN)) & _EVEN
    odd = ((acc & _ODD) + (vec & _ODD)) & _ODD
    return even | odd


def sub(acc: int, vec: int) -> int:
    # per lane: a - b = a + (~b & 0xffff) + 1  (mod 2**16)
    even = ((acc & _EVEN) + ((vec & _EVEN) ^ _EVEN) + _ONE_EVEN) & _EVEN
    odd = ((acc & _ODD) + ((vec & _ODD) ^ _ODD) + _ONE_ODD) & _ODD
    return even | odd


def to_bytes(acc: int) -> bytes:
    return acc.to_bytes(NBYTES, "little")


def from_bytes(data: bytes) -> int:
    if len(data) != NBYTES:
        raise ValueError(f"an LtHash16 state is {NBYTES} bytes, got {len(data)}")
    return int.from_bytes(data, "little")


def digest(acc: int) -> bytes:
    """The 32-byte app hash of a state sum."""
    return hashlib.sha256(b"edgistry/apphash/v1\0" + to_bytes(acc)).digest()
