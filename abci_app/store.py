"""The registry's durable store: LMDB, with history for queries at a height.

Why LMDB rather than SQLite: Commit must make a whole block durable in one
atomic step, and queries scan ordered key prefixes (devices by cell and
type). LMDB is a copy-on-write B+tree whose write transaction commits with a
single fsync'd meta-page flip, so a kill -9 at any instant leaves either the
old or the new state; its ordered cursors make prefix scans O(log n + k); and
readers never block the writer. SQLite would add SQL parsing and a page cache
on a key-value workload.

Sub-databases:

    state    key -> value                     the latest committed state
    hist     key || be64(h) -> 0x00 | 0x01 value
             the value ``key`` had *before* it changed at height ``h``
             (0x00: absent). A read at height q takes the first entry with
             h > q, else the latest value.
    changes  be64(h) -> packed keys            which keys changed at h (pruning): each key
             as be16(len) || key. (Stores written before this format hold
             be64(h) || key -> b"" per key; pruning reads both.)
    meta     b"height", b"app_hash", b"lthash", b"ah/" || be64(h) -> app hash;
             b"floor" -> be64(h): restored from a snapshot at h (no history below);
             b"restoring" -> be64(h) while a restore is under way

History is kept for ``retain_heights`` heights; older heights cannot be queried.

A restore (state sync) writes the snapshot's records chunk by chunk while the
store is at height 0 and marked ``restoring``; only :meth:`Store.finish_restore`
gives it a height. A store opened with the mark still set holds a restore that
never finished: its records are dropped, so a half-restored state is never
served or built upon.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Mapping
from pathlib import Path

import lmdb

from .keys import be64, from_be64

MAP_SIZE = 1 << 38  # 256 GiB of address space; LMDB files grow only as used
DEFAULT_RETAIN_HEIGHTS = 1000
_ABSENT = b"\x00"
_PRESENT = b"\x01"


class StoreError(Exception):
    """The store cannot answer (e.g. a height outside the retained window)."""


def _prefix_end(prefix: bytes) -> bytes | None:
    """The smallest key greater than every key starting with ``prefix``."""
    p = bytearray(prefix)
    while p and p[-1] == 0xFF:
        p.pop()
    if not p:
        return None
    p[-1] += 1
    return bytes(p)


class Store:
    """Committed registry state in one LMDB environment (one process at a time)."""

    def __init__(self, path: Path | str, retain_heights: int = DEFAULT_RETAIN_HEIGHTS) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)
        self.env = lmdb.open(str(path), map_size=MAP_SIZE, max_dbs=4, sync=True, metasync=True)
        self._state = self.env.open_db(b"state")
        self._hist = self.env.open_db(b"hist")
        self._changes = self.env.open_db(b"changes")
        self._meta = self.env.open_db(b"meta")
        self.retain_heights = retain_heights
        self._rtxn = self.env.begin(buffers=False)
        if self._rtxn.get(b"restoring", db=self._meta) is not None:
            self._clear()
        with self.env.begin() as txn:
            height = txn.get(b"height", db=self._meta)
            self.height = from_be64(height) if height else 0
            self.app_hash = txn.get(b"app_hash", db=self._meta) or b""
            self.lthash = txn.get(b"lthash", db=self._meta) or b""
            floor = txn.get(b"floor", db=self._meta)
            self.floor = from_be64(floor) if floor else 0

    def close(self) -> None:
        self._rtxn.abort()
        self.env.close()

    # ---- reads of the latest committed state (hot path of block execution) ----

    def get(self, key: bytes) -> bytes | None:
        return self._rtxn.get(key, None, self._state)  # positional: no keyword parsing per read

    def scan(self, prefix: bytes, start_after: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        """Latest committed (key, value) pairs under ``prefix`` in key order."""
        return _scan(self._rtxn.cursor(db=self._state), prefix, start_after)

    # ---- reads at a height (queries) ----

    def reader(self, height: int = 0) -> HeightReader:
        """A consistent view at ``height`` (0: the latest committed height)."""
        if height == 0 or height == self.height:
            return HeightReader(self, self.env.begin(), self.height, latest=True)
        floor = self.oldest_height
        if not floor <= height <= self.height:
            raise StoreError(f"height {height} is outside the retained window {floor}..{self.height}")
        return HeightReader(self, self.env.begin(), height, latest=False)

    @property
    def oldest_height(self) -> int:
        return max(1, self.floor, self.height - self.retain_heights + 1) if self.height else 0

    def app_hash_at(self, height: int) -> bytes | None:
        return self._rtxn.get(b"ah/" + be64(height), db=self._meta)

    # ---- the one write path ----

    def commit(self, height: int, writes: Mapping[bytes, bytes | None], app_hash: bytes, lthash: bytes) -> None:
        """Persist one block atomically: its writes, history, height and app hash."""
        if height <= self.height:
            raise StoreError(f"commit of height {height} at or below committed height {self.height}")
        h = be64(height)
        # The first commit needs no history: there is no earlier height to read.
        history = self.height > 0
        state = self._state
        hist: list[tuple[bytes, bytes]] = []
        with self.env.begin(write=True) as txn:
            # replace/pop read the old value and write the new one in one B-tree
            # descent; history goes in one putmulti, the change list in one record.
            for key in sorted(writes):
                value = writes[key]
                if value is None:
                    old = txn.pop(key, state)  # positional arguments: no keyword parsing per key
                    if old is None:
                        continue  # deleting nothing changes nothing
                else:
                    old = txn.replace(key, value, state)
                    if old == value:
                        continue  # skip writes that change nothing (no history)
                if history:
                    hist.append((key + h, _ABSENT if old is None else _PRESENT + old))
            if hist:
                txn.cursor(db=self._hist).putmulti(hist)
                txn.put(h, _pack_keys(k[:-8] for k, _ in hist), db=self._changes)
            txn.put(b"height", h, db=self._meta)
            txn.put(b"app_hash", app_hash, db=self._meta)
            txn.put(b"lthash", lthash, db=self._meta)
            txn.put(b"ah/" + h, app_hash, db=self._meta)
            self._prune(txn, height - self.retain_heights)
        self.height, self.app_hash, self.lthash = height, app_hash, lthash
        self._rtxn.abort()
        self._rtxn = self.env.begin(buffers=False)

    def _prune(self, txn: lmdb.Transaction, floor: int) -> None:
        """Drop history needed only for heights below ``floor + 1``."""
        if floor <= 0:
            return
        cursor = txn.cursor(db=self._changes)
        if not cursor.first():
            return
        end = be64(floor + 1)
        while (key := cursor.key()) and key < end:
            h = key[:8]
            changed = _unpack_keys(cursor.value()) if len(key) == 8 else (key[8:],)
            for k in changed:
                txn.delete(k + h, db=self._hist)
            txn.delete(b"ah/" + h, db=self._meta)
            if not cursor.delete():
                break

    # ---- restoring a snapshot (state sync) ----

    def begin_restore(self, height: int) -> None:
        """Start restoring the state of ``height`` into this empty store (see the module notes)."""
        if self.height:
            raise StoreError(f"restore into a store at height {self.height}")
        self._clear()
        with self.env.begin(write=True) as txn:
            txn.put(b"restoring", be64(height), db=self._meta)

    def restore_records(self, items: Iterator[tuple[bytes, bytes]]) -> None:
        """Write some of the restored records (one chunk's) in one transaction."""
        with self.env.begin(write=True) as txn:
            cursor = txn.cursor(db=self._state)
            for key, value in items:
                cursor.put(key, value)

    def finish_restore(self, height: int, app_hash: bytes, lthash: bytes) -> None:
        """The restored records are the state of ``height``: give the store that height."""
        h = be64(height)
        with self.env.begin(write=True) as txn:
            if txn.get(b"restoring", db=self._meta) != h:
                raise StoreError(f"no restore of height {height} under way")
            txn.delete(b"restoring", db=self._meta)
            txn.put(b"height", h, db=self._meta)
            txn.put(b"app_hash", app_hash, db=self._meta)
            txn.put(b"lthash", lthash, db=self._meta)
            txn.put(b"ah/" + h, app_hash, db=self._meta)
            txn.put(b"floor", h, db=self._meta)
        self.height, self.app_hash, self.lthash, self.floor = height, app_hash, lthash, height
        self._rtxn.abort()
        self._rtxn = self.env.begin(buffers=False)

    def abort_restore(self) -> None:
        """Drop whatever a restore wrote (it failed, or another snapshot is tried)."""
        if self.height:
            raise StoreError(f"abort_restore on a store at height {self.height}")
        self._clear()

    def _clear(self) -> None:
        with self.env.begin(write=True) as txn:
            for db in (self._state, self._hist, self._changes, self._meta):
                txn.drop(db, delete=False)
        self.height, self.app_hash, self.lthash, self.floor = 0, b"", b"", 0
        self._rtxn.abort()
        self._rtxn = self.env.begin(buffers=False)


def _pack_keys(keys: Iterator[bytes]) -> bytes:
    return b"".join(len(k).to_bytes(2, "big") + k for k in keys)


def _unpack_keys(packed: bytes) -> list[bytes]:
    out, pos, n = [], 0, len(packed)
    while pos < n:
        size = int.from_bytes(packed[pos:pos + 2], "big")
        out.append(packed[pos + 2:pos + 2 + size])
        pos += 2 + size
    return out


class HeightReader:
    """Reads at one height; use as a context manager so the read txn ends."""

    def __init__(self, store: Store, txn: lmdb.Transaction, height: int, latest: bool) -> None:
        self._store, self._txn, self.height, self._latest = store, txn, height, latest

    def __enter__(self) -> HeightReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self._txn.abort()

    def get(self, key: bytes) -> bytes | None:
        if not self._latest:
            cursor = self._txn.cursor(db=self._store._hist)
            if cursor.set_range(key + be64(self.height + 1)):
                k = cursor.key()
                if len(k) == len(key) + 8 and k.startswith(key):
                    v = cursor.value()
                    return None if v == _ABSENT else v[1:]
        return self._txn.get(key, db=self._store._state)

    def scan(self, prefix: bytes, start_after: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        """(key, value) pairs under ``prefix`` after ``start_after`` as they were at this
        height, in key order, read lazily: a page of n items costs the keys up to its
        last one, not all the history under the prefix."""
        latest = _scan(self._txn.cursor(db=self._store._state), prefix, start_after)
        if self._latest:
            yield from latest
            return
        # Keys changed since this height may have been deleted from `state`:
        # take them from history too, then resolve every key at the height.
        keys = heapq.merge((k for k, _ in latest), self._changed_since(prefix, start_after))
        last = None
        for key in keys:
            if key == last:
                continue
            last = key
            value = self.get(key)
            if value is not None:
                yield key, value

    def _changed_since(self, prefix: bytes, start_after: bytes) -> Iterator[bytes]:
        """Keys under ``prefix`` after ``start_after`` with a history entry above this
        height (changed since), in key order, each once.

        History keys are ``key || be64(h)``: one key's entries are adjacent and the keys
        come in order as long as no key under the prefix is a proper prefix of another
        (every prefix of keys.py ends in fixed-size ids). Were that ever broken, keys
        would come out of order, and that raises rather than answering wrongly."""
        height, last = self.height, None
        for k, _ in _scan(self._txn.cursor(db=self._store._hist), prefix, start_after):
            key = k[:-8]
            if key != last and key > start_after and from_be64(k[-8:]) > height:
                if last is not None and key < last:
                    raise StoreError(f"keys under {prefix!r} are not prefix-free: no ordered scan at a past height")
                last = key
                yield key


def _scan(cursor: lmdb.Cursor, prefix: bytes, start_after: bytes) -> Iterator[tuple[bytes, bytes]]:
    start = max(prefix, start_after)
    if not cursor.set_range(start):
        return
    if cursor.key() == start_after:
        if not cursor.next():
            return
    end = _prefix_end(prefix)
    for key, value in cursor:
        if end is not None and key >= end:
            return
        yield key, value
