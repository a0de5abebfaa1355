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

Two element functions, each a version of the sum (``version_at`` says which
a height takes; genesis sets the activation height, as for the Ed25519
rule): v1 expands a record with SHAKE-128, v2 with BLAKE3's XOF, ~4x faster
for a record's 2048 bytes (the element was ~7 us of a ~30 us tx beside its
signature; ``benchmarks/registry.py``). Both are extendable-output functions
meant to be used as random oracles of any output length, which is what the
reduction asks of the element hash. The versions use different domains for the
element and for the app hash, so a v1 sum can never pass for a v2 one. A sum
changes version only whole: the first height under v2 re-hashes every record
(``rehash``), once.

Two forms of the accumulator hold the same sum. ``FastLtHash`` keeps the lanes
as the bytes themselves and folds each element in with the C accelerator
(``_lthash.c``); ``PyLtHash`` is the reference, used where no C compiler built
it. In PyLtHash lanes are packed into two Python ints, even lanes and odd
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
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

from blake3 import blake3

from . import keys

LANES = 1024
LANE_BITS = 16
NBYTES = LANES * LANE_BITS // 8
V1, V2 = 1, 2
_DOMAIN = {V1: b"edgistry/lthash16/v1\0", V2: b"edgistry/lthash16/v2\0"}
_APP_HASH_DOMAIN = {V1: b"edgistry/apphash/v1\0", V2: b"edgistry/apphash/v2\0"}
_MASK = int.from_bytes(b"\xff\xff\x00\x00" * (LANES // 2), "little")  # low 16 bits of each slot
_ODD_MASK = _MASK << LANE_BITS  # the odd lanes, in place
_ONE = int.from_bytes(b"\x01\x00\x00\x00" * (LANES // 2), "little")
_ODD_ONE = _ONE << LANE_BITS
_HEADROOM = (1 << 16) - 2  # additions a slot can absorb before it must be reduced


def _shake(data: bytes) -> bytes:
    return hashlib.shake_128(data).digest(NBYTES)


def _blake3(data: bytes) -> bytes:
    return blake3(data).digest(NBYTES)  # one thread: the default, and deterministic either way


_XOF: dict[int, Callable[[bytes], bytes]] = {V1: _shake, V2: _blake3}


def version_at(height: int, activation: int | None) -> int:
    """The version of the sum that block ``height``'s app hash is (None: v1 at every height)."""
    return V2 if activation is not None and height >= activation else V1


# The BLAKE3 team's published vectors (test_vectors.json: input byte i is i % 251,
# 131 bytes of extended output), one chunk and two, across chunk bounds as a
# ~1.2 KB device record is: what the start-up self-test holds the library to.
BLAKE3_VECTORS = {
    0: "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262e00f03e7b69af26b7faaf09fcd333050338ddfe085"
       "b8cc869ca98b206c08243a26f5487789e8f660afe6c99ef9e0c52b92e7393024a80459cf91f476f9ffdbda7001c22e159b402631f2"
       "77ca96f2defdf1078282314e763699a31c5363165421cce14d",
    1025: "d00278ae47eb27b34faecf67b4fe263f82d5412916c1ffd97c8cb7fb814b8444f4c4a22b4b399155358a994e52bf255de60035742e"
          "c71bd08ac275a1b51cc6bfe332b0ef84b409108cda080e6269ed4b3e2c3f7d722aa4cdc98d16deb554e5627be8f955c98e1d5f95"
          "65a9194cad0c4285f93700062d9595adb992ae68ff12800ab67a",
    2049: "5f4d72f40d7a5f82b15ca2b2e44b1de3c2ef86c426c95c1af0b687952256303096de31d71d74103403822a2e0bc1eb193e7aecc964"
          "3a76b7bbc0c9f9c52e8783aae98764ca468962b5c2ec92f0c74eb5448d519713e09413719431c802f948dd5d90425a4ecdadece9e"
          "b178d80f26efccae630734dff63340285adec2aed3b51073ad3",
}


def self_test() -> None:
    """Raise RuntimeError unless the BLAKE3 library gives the published outputs and the C
    lane arithmetic (when built) the reference's sums: an app hash that moved with a
    dependency or a build would split the chain."""
    data = bytes(i % 251 for i in range(max(BLAKE3_VECTORS)))
    for n, want in BLAKE3_VECTORS.items():
        if blake3(data[:n]).hexdigest(len(want) // 2) != want:
            raise RuntimeError(f"BLAKE3 of the published {n}-byte input is not the published output")
    if LtHash is not PyLtHash:  # the C lane arithmetic against the reference, adds and removes
        for version in _XOF:
            fast, ref = LtHash(version=version), PyLtHash(version=version)
            for i in range(40):
                for acc in (fast, ref):
                    (acc.remove if i % 3 == 2 else acc.add)(data[:i % 7], data[i:i + 2 * i])
            if fast.to_bytes() != ref.to_bytes():
                raise RuntimeError("the C LtHash lane arithmetic disagrees with the Python reference")


class _Reader(Protocol):  # overlay.Reader, which imports this module
    def get(self, key: bytes) -> bytes | None: ...

    def scan(self, prefix: bytes, start_after: bytes = b"") -> Iterator[tuple[bytes, bytes]]: ...


def read_lthash_v2_height(reader: _Reader) -> int | None:
    """The v2 activation height recorded in the state (None: never)."""
    raw = reader.get(keys.LTHASH_V2_HEIGHT)
    return keys.from_be64(raw) if raw else None


def hashed_records(reader: _Reader) -> Iterator[tuple[bytes, bytes]]:
    """Every record the app hash covers (the prefixes are disjoint, so each once)."""
    for prefix in keys.HASHED_PREFIXES:
        yield from reader.scan(prefix)


def expand(key: bytes, value: bytes, version: int = V1) -> bytes:
    """The 2048 bytes of lanes (little-endian) of one record under ``version``."""
    return _XOF[version](_DOMAIN[version] + len(key).to_bytes(4, "big") + key + value)


def element(key: bytes, value: bytes, version: int = V1) -> tuple[int, int]:
    """The lane vector of one record, split into (even lanes, odd lanes in place)."""
    v = int.from_bytes(expand(key, value, version), "little")
    return v & _MASK, v & _ODD_MASK


def _check_version(version: int) -> None:
    if version not in _XOF:
        raise ValueError(f"no LtHash16 version {version!r}")


class _Sum:
    """What both forms of the accumulator share: building one from records, the app hash."""

    __slots__ = ()
    version: int

    def add(self, key: bytes, value: bytes) -> None:
        raise NotImplementedError

    def to_bytes(self) -> bytes:
        raise NotImplementedError

    @classmethod
    def rehash(cls, records: Iterable[tuple[bytes, bytes]], version: int):
        """The sum of ``records`` (each key once) under ``version``: a change of version."""
        acc = cls(version=version)
        for key, value in records:
            acc.add(key, value)
        return acc

    def digest(self) -> bytes:
        """The 32-byte app hash of this sum."""
        return hashlib.sha256(_APP_HASH_DOMAIN[self.version] + self.to_bytes()).digest()


class PyLtHash(_Sum):
    """A mutable LtHash16 accumulator in pure Python: the reference."""

    __slots__ = ("even", "odd", "pending", "version")

    def __init__(self, even: int = 0, odd: int = 0, version: int = V1) -> None:
        _check_version(version)
        self.even, self.odd, self.pending = even, odd, 0  # odd: lanes in place (see the module notes)
        self.version = version

    def copy(self) -> PyLtHash:
        other = PyLtHash(self.even, self.odd, self.version)
        other.pending = self.pending
        return other

    def add(self, key: bytes, value: bytes) -> None:
        e, o = element(key, value, self.version)
        self.even += e
        self.odd += o
        self._count()

    def remove(self, key: bytes, value: bytes) -> None:
        e, o = element(key, value, self.version)
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
    def from_bytes(cls, data: bytes, version: int = V1) -> PyLtHash:
        """A stored sum; ``version`` is not in the bytes: the height says it (``version_at``)."""
        if not data:
            return cls(version=version)
        if len(data) != NBYTES:
            raise ValueError(f"an LtHash16 state is {NBYTES} bytes, got {len(data)}")
        v = int.from_bytes(data, "little")
        return cls(v & _MASK, v & _ODD_MASK, version)


# The C lane arithmetic when the install built it (abci_app/_lthash.c); PyLtHash otherwise.
try:
    from ._lthash import fold as _fold
except ImportError:  # installed without a C compiler
    _fold = None


class FastLtHash(_Sum):
    """The same accumulator over a bytearray of little-endian lanes (the bytes ``to_bytes``
    gives), each element folded in by the C accelerator: no big integers."""

    __slots__ = ("lanes", "version")

    def __init__(self, lanes: bytes | bytearray = b"", version: int = V1) -> None:
        _check_version(version)
        self.lanes = bytearray(lanes) if lanes else bytearray(NBYTES)
        self.version = version

    def copy(self) -> FastLtHash:
        return FastLtHash(self.lanes, self.version)

    def add(self, key: bytes, value: bytes) -> None:
        _fold(self.lanes, expand(key, value, self.version), False)

    def remove(self, key: bytes, value: bytes) -> None:
        _fold(self.lanes, expand(key, value, self.version), True)

    def to_bytes(self) -> bytes:
        return bytes(self.lanes)

    @classmethod
    def from_bytes(cls, data: bytes, version: int = V1) -> FastLtHash:
        """A stored sum; ``version`` is not in the bytes: the height says it (``version_at``)."""
        if data and len(data) != NBYTES:
            raise ValueError(f"an LtHash16 state is {NBYTES} bytes, got {len(data)}")
        return cls(data, version)


LtHash = FastLtHash if _fold is not None else PyLtHash
