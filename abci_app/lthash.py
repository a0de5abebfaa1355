"""LtHash16: an incremental, homomorphic hash of a set of (key, value) pairs.

The app hash must commit to the whole canonical state, yet recomputing a hash
over a million records per block is too slow. LtHash (Bellare-Micciancio
lattice hash, as used by Facebook's and Solana's state hashing) maps every
element to a vector of 1024 16-bit lanes with an extendable-output hash
(SHAKE-128) and sums the vectors lane-wise mod 2**16. Adding or removing a
record is one vector addition or subtraction, and the sum is independent of
insertion order yet identifies the set (collision resistance reduces to the
short integer solution problem; 1024x16 bits is the parameter set analysed
for ~200-bit security). The app hash is SHA-256 of the 2048-byte sum.

Representation: lanes are packed into two Python ints, even lanes and odd
lanes, each lane in a 32-bit slot. A slot holds 16 bits of lane plus 16 bits
of headroom, so up to 2**16 - 1 additions can be summed without carrying into
the neighbour; the sum is reduced mod 2**16 per lane only when it is read
(or when the headroom runs out). Subtraction adds the lane-wise complement.
The odd lanes stay where the digest has them (bits 16..31 of each slot, with
the next slot's low half as headroom), so an element costs one mask per
parity and no shift; they are shifted down only when the sum is read.
"""

from __future__ import annotations

import hashlib

LANES = 1024
LANE_BITS = 16
NBYTES = LANES * LANE_BITS // 8
_DOMAIN = b"edgistry/lthash16/v1\0"
_MASK = int.from_bytes(b"\xff\xff\x00\x00" * (LANES // 2), "little")  # low 16 bits of each slot
_ODD_MASK = _MASK << LANE_BITS  # the odd lanes, in place
_ONE = int.from_bytes(b"\x01\x00\x00\x00" * (LANES // 2), "little")
_ODD_ONE = _ONE << LANE_BITS
_HEADROOM = (1 << 16) - 2  # additions a slot can absorb before it must be reduced


def element(key: bytes, value: bytes) -> tuple[int, int]:
    """The lane vector of one record, split into (even lanes, odd lanes in place)."""
    raw = hashlib.shake_128(_DOMAIN + len(key).to_bytes(4, "big") + key + value).digest(NBYTES)
    v = int.from_bytes(raw, "little")
    return v & _MASK, v & _ODD_MASK


class LtHash:
    """A mutable LtHash16 accumulator."""

    __slots__ = ("even", "odd", "pending")

    def __init__(self, even: int = 0, odd: int = 0) -> None:
        self.even, self.odd, self.pending = even, odd, 0  # odd: lanes in place (see the module notes)

    def copy(self) -> LtHash:
        other = LtHash(self.even, self.odd)
        other.pending = self.pending
        return other

    def add(self, key: bytes, value: bytes) -> None:
        e, o = element(key, value)
        self.even += e
        self.odd += o
        self._count()

    def remove(self, key: bytes, value: bytes) -> None:
        e, o = element(key, value)
        # per lane: a - b = a + (0xffff - b) + 1  (mod 2**16)
        self.even += (e ^ _MASK) + _ONE
        self.odd += (o ^ _ODD_MASK) + _ODD_ONE
        self._count()

    def _count(self) -> None:
        self.pending += 1
        if self.pending >= _HEADROOM:
            self._reduce()

    def _reduce(self) -> None:
        self.even &= _MASK
        self.odd &= _ODD_MASK
        self.pending = 0

    def to_bytes(self) -> bytes:
        self._reduce()
        return (self.even | self.odd).to_bytes(NBYTES, "little")

    @classmethod
    def from_bytes(cls, data: bytes) -> LtHash:
        if not data:
            return cls()
        if len(data) != NBYTES:
            raise ValueError(f"an LtHash16 state is {NBYTES} bytes, got {len(data)}")
        v = int.from_bytes(data, "little")
        return cls(v & _MASK, v & _ODD_MASK)

    def digest(self) -> bytes:
        """The 32-byte app hash of this sum."""
        return hashlib.sha256(b"edgistry/apphash/v1\0" + self.to_bytes()).digest()
