"""State-sync snapshots of the registry through the ABCI snapshot methods.

Format 1: the committed state at a height as ``uvarint(len key) key
uvarint(len value) value`` records in key order, cut into chunks of at most
``CHUNK_BYTES``. The snapshot's metadata is the concatenated SHA-256 of every
chunk and its hash is SHA-256 of the metadata, so two nodes at the same
height produce byte-identical snapshots. A restoring node checks each chunk
against the metadata and, at the end, recomputes the app hash from the
records and compares it with the light-client-verified one it was offered.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

from . import keys
from .lthash import LtHash
from .framing import decode_uvarint, encode_uvarint
from .store import Store
from ..proto import abci_pb2 as abci

log = logging.getLogger(__name__)

FORMAT = 1
CHUNK_BYTES = 4 * 1024 * 1024  # CometBFT requires < 16 MB per chunk
# Peers discover snapshots every few seconds and then fetch chunks from the one
# they chose: keep enough that a chosen snapshot outlives a join (see README).
KEEP_SNAPSHOTS = 4
Offer = abci.ResponseOfferSnapshot
Apply = abci.ResponseApplySnapshotChunk


def encode_records(items: Iterator[tuple[bytes, bytes]]) -> Iterator[bytes]:
    """Cut (key, value) records into chunks."""
    buf = bytearray()
    emitted = False
    for key, value in items:
        buf += encode_uvarint(len(key)) + key + encode_uvarint(len(value)) + value
        if len(buf) >= CHUNK_BYTES:
            yield bytes(buf)
            buf.clear()
            emitted = True
    if buf or not emitted:
        yield bytes(buf)  # at least one chunk, even for an empty state


def decode_records(chunk: bytes) -> Iterator[tuple[bytes, bytes]]:
    pos = 0
    while pos < len(chunk):
        parts = []
        for _ in range(2):
            head = decode_uvarint(chunk, pos)
            if head is None or head[1] + head[0] > len(chunk):
                raise ValueError("truncated snapshot record")
            length, start = head
            parts.append(chunk[start : start + length])
            pos = start + length
        yield parts[0], parts[1]


class SnapshotManager:
    """Takes snapshots after Commit and restores one during state sync."""

    def __init__(self, store: Store, directory: Path, interval: int = 0, keep: int = KEEP_SNAPSHOTS) -> None:
        self.store, self.dir, self.interval, self.keep = store, directory, interval, max(1, keep)
        self._restore: dict | None = None
        self.restored = False

    # ---- taking ----
    def maybe_take(self, height: int) -> None:
        if self.interval and height % self.interval == 0:
            self.take(height)

    def take(self, height: int) -> abci.Snapshot:
        """Write the snapshot of the current committed height (synchronously)."""
        target = self.dir / str(height)
        tmp = self.dir / f".{height}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        hashes = []
        with self.store.reader(0) as reader:
            for i, chunk in enumerate(encode_records(reader.scan(b""))):
                (tmp / f"chunk-{i}").write_bytes(chunk)
                hashes.append(hashlib.sha256(chunk).digest())
        metadata = b"".join(hashes)
        snap = abci.Snapshot(height=height, format=FORMAT, chunks=len(hashes),
                             hash=hashlib.sha256(metadata).digest(), metadata=metadata)
        (tmp / "snapshot.pb").write_bytes(snap.SerializeToString(deterministic=True))
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
        for old in sorted(self._heights())[:-self.keep]:
            shutil.rmtree(self.dir / str(old), ignore_errors=True)
        log.info("snapshot at height %d: %d chunks", height, snap.chunks)
        return snap

    def _heights(self) -> list[int]:
        if not self.dir.exists():
            return []
        return [int(p.name) for p in self.dir.iterdir() if p.name.isdigit() and (p / "snapshot.pb").exists()]

    def list(self) -> list[abci.Snapshot]:
        return [abci.Snapshot.FromString((self.dir / str(h) / "snapshot.pb").read_bytes())
                for h in sorted(self._heights(), reverse=True)]

    def load_chunk(self, height: int, fmt: int, index: int) -> bytes:
        path = self.dir / str(height) / f"chunk-{index}"
        if fmt != FORMAT or not path.exists():
            return b""
        return path.read_bytes()

    # ---- restoring ----
    def offer(self, snap: abci.Snapshot, app_hash: bytes) -> int:
        if snap.format != FORMAT:
            return Offer.REJECT_FORMAT
        if snap.chunks == 0 or len(snap.metadata) != 32 * snap.chunks or hashlib.sha256(snap.metadata).digest() != snap.hash:
            return Offer.REJECT
        if self.store.height:
            return Offer.ABORT  # state sync only into an empty node
        self._restore = {"snap": snap, "app_hash": app_hash, "chunks": {}}
        self.restored = False
        return Offer.ACCEPT

    def apply_chunk(self, index: int, chunk: bytes) -> int:
        if self._restore is None:
            return Apply.ABORT
        snap = self._restore["snap"]
        if index >= snap.chunks:
            return Apply.REJECT_SNAPSHOT
        if hashlib.sha256(chunk).digest() != snap.metadata[32 * index : 32 * index + 32]:
            return Apply.RETRY
        self._restore["chunks"][index] = chunk
        if len(self._restore["chunks"]) < snap.chunks:
            return Apply.ACCEPT
        return self._finish()

    def _finish(self) -> int:
        restore, self._restore = self._restore, None
        assert restore is not None
        try:
            items = [kv for i in range(restore["snap"].chunks) for kv in decode_records(restore["chunks"][i])]
        except ValueError:
            return Apply.REJECT_SNAPSHOT
        acc = LtHash()
        for key, value in items:
            if keys.is_hashed(key):
                acc.add(key, value)
        if acc.digest() != restore["app_hash"]:
            log.error("snapshot at height %d does not match the verified app hash", restore["snap"].height)
            return Apply.REJECT_SNAPSHOT
        self.store.restore(restore["snap"].height, iter(items), restore["app_hash"], acc.to_bytes())
        self.restored = True
        log.info("restored snapshot at height %d", restore["snap"].height)
        return Apply.ACCEPT
