"""The transaction view the store's operations and reads work on.

An operation (ops.py) sees a :class:`KV`: get, put, delete and an ordered
prefix scan. The writer process gives it an LMDB write transaction
(:class:`LmdbKV`), the store's reads an LMDB read transaction, and tests a
:class:`MemoryKV`, so every operation can be tested without LMDB.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

import lmdb

DEFAULT_MAP_SIZE = 1 << 30  # 1 GiB of address space; LMDB only uses what it writes
RESERVE_SHARE = 16  # 1/16 of the map is kept for work already accepted (see reserve_check)
RESERVE_MIN_PAGES = 64


class KV(Protocol):
    def get(self, key: bytes) -> bytes | None: ...

    def put(self, key: bytes, value: bytes) -> object: ...

    def delete(self, key: bytes) -> object: ...

    def scan(self, prefix: bytes, start: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        """(key, value) of every key starting with ``prefix``, in key order,
        from ``start`` (a key at or after ``prefix``) when given. Materialise
        it (``list(...)``) before writing keys it covers."""
        ...


class LmdbKV:
    """:class:`KV` over an LMDB transaction (read-only or write). get, put
    and delete are the transaction's own methods: no call layer added."""

    __slots__ = ("txn", "get", "put", "delete")

    def __init__(self, txn) -> None:
        self.txn = txn
        self.get, self.put, self.delete = txn.get, txn.put, txn.delete

    def scan(self, prefix: bytes, start: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        cur = self.txn.cursor()
        if not cur.set_range(start or prefix):
            return
        for key, value in cur:
            if not key.startswith(prefix):
                return
            yield bytes(key), bytes(value)


def open_env(path: Path | str, map_size: int = DEFAULT_MAP_SIZE, readonly: bool = False) -> lmdb.Environment:
    """The store's LMDB environment. Writable (the writer process): with sync
    and metasync, ``commit()`` returns after the fsync, so kill -9 loses
    nothing committed. Read-only (the gateway's event loop): created first if
    new, then opened so that it cannot begin a write transaction at all."""
    opts = dict(map_size=map_size, subdir=True, max_dbs=0, lock=True)
    if readonly:
        Path(path).mkdir(parents=True, exist_ok=True, mode=0o700)
        if not (Path(path) / "data.mdb").exists():
            lmdb.open(str(path), **opts).close()
        return lmdb.open(str(path), readonly=True, **opts)
    return lmdb.open(str(path), sync=True, metasync=True, **opts)


def reserve_check(map_size: int, txn) -> Callable[[], str | None]:
    """A check that new work may still take room in the map: None while more than
    the reserve (1/``RESERVE_SHARE`` of the map, at least ``RESERVE_MIN_PAGES``) is
    free, else why not.

    Why a reserve: every write in LMDB copies the pages it touches before the old
    ones are free (copy on write), so answering, expiring, cancelling or revoking a
    queued request needs free pages too. Were new requests to fill the map to the
    last page, the requests already queued could not finish and the map would
    never drain. So new requests stop at the reserve and the rest of it is theirs.
    The free count is the map less the main tree's pages (branch, leaf, overflow,
    as ``txn`` sees them) and the two meta pages; pages in LMDB's free list count
    as free (they are, once no reader holds them), which the reserve's size absorbs."""
    def short_of_room() -> str | None:  # only the operations that add requests call it
        st = txn.stat()
        total = map_size // st["psize"]
        reserve = max(RESERVE_MIN_PAGES, total // RESERVE_SHARE)
        used = st["branch_pages"] + st["leaf_pages"] + st["overflow_pages"] + 2
        if total - used > reserve:
            return None
        return (f"the store's LMDB map is nearly full ({used} of {total} pages in use; the last {reserve} are "
                "kept so that queued requests can still be answered, expire or be revoked): no new requests "
                "until old ones are purged, or raise store_map_size")
    return short_of_room


def room_unlimited() -> str | None:
    """The check for a KV without a map (MemoryKV, reads): always room."""
    return None


class MemoryKV:
    """:class:`KV` over a dict, in memory (tests). Scans read a snapshot."""

    def __init__(self, items: dict[bytes, bytes] | None = None) -> None:
        self.data: dict[bytes, bytes] = dict(items or {})

    def get(self, key: bytes) -> bytes | None:
        return self.data.get(key)

    def put(self, key: bytes, value: bytes) -> bool:
        self.data[key] = bytes(value)
        return True

    def delete(self, key: bytes) -> bool:
        return self.data.pop(key, None) is not None

    def scan(self, prefix: bytes, start: bytes | None = None) -> Iterator[tuple[bytes, bytes]]:
        keys = sorted(self.data)
        snapshot = []
        for key in keys[bisect.bisect_left(keys, start or prefix):]:
            if not key.startswith(prefix):
                break
            snapshot.append((key, self.data[key]))
        return iter(snapshot)
