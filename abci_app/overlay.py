"""Staged writes over a read-only view: what a block (or a tx) changes.

Block execution never writes the store directly: it writes an :class:`Overlay`
whose reads fall through to the layer below. A tx runs in a child overlay
merged into the block's only when it succeeds, so a failing tx leaves nothing
behind. Commit hands the block overlay's writes to the store in one LMDB
transaction.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from typing import Protocol

from . import keys
from .lthash import LtHash


class Reader(Protocol):
    def get(self, key: bytes) -> bytes | None: ...

    def scan(self, prefix: bytes, start_after: bytes = b"") -> Iterator[tuple[bytes, bytes]]: ...


class Overlay:
    """A key-value view: staged writes (None = deleted) over ``base``."""

    def __init__(self, base: Reader) -> None:
        self.base = base
        self.writes: dict[bytes, bytes | None] = {}

    def get(self, key: bytes) -> bytes | None:
        if key in self.writes:
            return self.writes[key]
        return self.base.get(key)

    def put(self, key: bytes, value: bytes) -> None:
        self.writes[key] = value

    def delete(self, key: bytes) -> None:
        self.writes[key] = None

    def scan(self, prefix: bytes, start_after: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        """Merged view in key order; staged values win, staged deletes hide."""
        staged = sorted(
            (k, v) for k, v in self.writes.items() if k.startswith(prefix) and k > start_after
        )
        staged_keys = {k for k, _ in staged}
        below = ((k, v) for k, v in self.base.scan(prefix, start_after) if k not in staged_keys)
        for key, value in heapq.merge(staged, below):
            if value is not None:
                yield key, value

    def child(self) -> Overlay:
        return Overlay(self)

    def merge_into_parent(self) -> None:
        """Move this (child) overlay's writes into the overlay below it."""
        assert isinstance(self.base, Overlay)
        self.base.writes.update(self.writes)
        self.writes = {}

    def fold_hash(self, acc: LtHash, committed: Reader) -> LtHash:
        """A copy of ``acc`` (the hash of ``committed``) updated with this overlay's net changes."""
        acc = acc.copy()
        hashed = keys.HASHED_PREFIXES
        for key, new in self.writes.items():
            if not key.startswith(hashed):  # keys.is_hashed, inlined: once per written key
                continue
            old = committed.get(key)
            if old == new:
                continue
            if old is not None:
                acc.remove(key, old)
            if new is not None:
                acc.add(key, new)
        return acc
