"""State-sync snapshots of the registry through the ABCI snapshot methods.

Formats 1 and 2: the committed state at a height as ``uvarint(len key) key
uvarint(len value) value`` records in key order, cut into chunks of at most
``CHUNK_BYTES``. The snapshot's metadata is the concatenated SHA-256 of every
chunk and its hash is SHA-256 of the metadata, so two nodes at the same
height produce byte-identical snapshots. The format is the version of the
LtHash sum that the height's app hash is (``lthash.version_at``), so the
restoring node sums the records the same way: a peer that names the other one
gets a sum that does not match, and a restore whose records put the height
under the other version is refused.

Restoring. Snapshots and chunks come from peers, who may lie; only the app hash
(verified by CometBFT's light client) is trusted, and the app hash is an LtHash:
a sum over the primary records. So a restoring node takes from a snapshot
exactly what that sum covers, and checks what the sum cannot:

* keys strictly increasing across the whole snapshot (one record per key: a
  record repeated 2^16 times adds nothing to a 16-bit LtHash, so repeats would
  let a peer add keys or change values under the trusted hash), non-empty and
  within LMDB's key limit;
* primary (hashed) records are kept and summed; the indexes derived from them
  (``gk/``, ``dg/``, ``rx/``) are ignored and rebuilt from the records
  (``handlers.index_entries``), since nothing checks a peer's; the last block
  time (``x/block_time``, 8 bytes) is kept, as CheckTx alone reads it; any other
  key refuses the snapshot;
* chunks are applied in order as they arrive, each checked against the metadata,
  decoded and written to the store in its own transaction, so memory holds one
  chunk; the store gets the snapshot's height only when the sum matches
  (``Store.finish_restore``), and anything refused is dropped.

A chunk that does not decode refuses the snapshot (CometBFT then tries another)
rather than raising, which would stop the node.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

from google.protobuf.message import DecodeError

from . import keys
from .handlers import index_entries
from .lthash import V1, V2, LtHash, read_lthash_v2_height, version_at
from .framing import FramingError, decode_uvarint, encode_uvarint
from .store import Store
from ..proto import abci_pb2 as abci

log = logging.getLogger(__name__)

FORMATS = (V1, V2)  # format = the LtHash version of the height's app hash
CHUNK_BYTES = 4 * 1024 * 1024  # CometBFT requires < 16 MB per chunk
# Peers discover snapshots every few seconds and then fetch chunks from the one
# they chose: keep enough that a chosen snapshot outlives a join (see README).
KEEP_SNAPSHOTS = 4
MAX_CHUNKS = 1 << 20  # 4 TiB of state: an offer above it is refused
MAX_KEY_BYTES = 511  # LMDB's key size limit
DERIVED_PREFIXES = (keys.GATEWAY_BY_KEY, keys.DEVICE_BY_GATEWAY, keys.REVOCATION_BY_EXPIRY)
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
            fmt = version_at(height, read_lthash_v2_height(reader))
            for i, chunk in enumerate(encode_records(reader.scan(b""))):
                (tmp / f"chunk-{i}").write_bytes(chunk)
                hashes.append(hashlib.sha256(chunk).digest())
        metadata = b"".join(hashes)
        snap = abci.Snapshot(height=height, format=fmt, chunks=len(hashes),
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
        """A chunk of our snapshot at ``height``, if it is of format ``fmt`` (else nothing)."""
        path = self.dir / str(height) / f"chunk-{index}"
        meta = self.dir / str(height) / "snapshot.pb"
        if not path.exists() or not meta.exists() or abci.Snapshot.FromString(meta.read_bytes()).format != fmt:
            return b""
        return path.read_bytes()

    # ---- restoring (see the module notes) ----
    def offer(self, snap: abci.Snapshot, app_hash: bytes) -> int:
        if snap.format not in FORMATS:
            return Offer.REJECT_FORMAT
        if not 0 < snap.chunks <= MAX_CHUNKS or len(snap.metadata) != 32 * snap.chunks \
                or hashlib.sha256(snap.metadata).digest() != snap.hash or snap.height < 1:
            return Offer.REJECT
        if self.store.height:
            return Offer.ABORT  # state sync only into an empty node
        self.store.begin_restore(snap.height)  # drops what an earlier offer left
        self._restore = _Restore(snap, app_hash)
        self.restored = False
        return Offer.ACCEPT

    def apply_chunk(self, index: int, chunk: bytes) -> int:
        r = self._restore
        if r is None:
            return Apply.ABORT
        if index != r.next:  # CometBFT applies chunks in order
            return self._refuse(f"chunk {index} where chunk {r.next} was due")
        if hashlib.sha256(chunk).digest() != r.snap.metadata[32 * index : 32 * index + 32]:
            return Apply.RETRY
        try:
            writes = r.take(chunk)
        except (ValueError, FramingError, DecodeError) as exc:
            return self._refuse(f"chunk {index}: {exc}")
        self.store.restore_records(writes)
        r.next += 1
        if r.next < r.snap.chunks:
            return Apply.ACCEPT
        if r.acc.digest() != r.app_hash:
            return self._refuse("its records do not sum to the verified app hash")
        if version_at(r.snap.height, r.lthash_v2_height) != r.acc.version:
            return self._refuse(f"format {r.snap.format} is not the LtHash version of height {r.snap.height}")
        self._restore = None
        self.store.finish_restore(r.snap.height, r.app_hash, r.acc.to_bytes())
        self.restored = True
        log.info("restored snapshot at height %d", r.snap.height)
        return Apply.ACCEPT

    def _refuse(self, why: str) -> int:
        r, self._restore = self._restore, None
        log.error("snapshot at height %d refused: %s", r.snap.height if r else 0, why)
        self.store.abort_restore()
        return Apply.REJECT_SNAPSHOT


class _Restore:
    """What a restore under way has checked so far."""

    def __init__(self, snap: abci.Snapshot, app_hash: bytes) -> None:
        self.snap, self.app_hash = snap, app_hash
        self.next = 0  # the chunk due
        self.last_key = b""  # keys strictly increase across chunks
        self.acc = LtHash(version=snap.format)
        self.lthash_v2_height: int | None = None  # as the restored state records it

    def take(self, chunk: bytes) -> list[tuple[bytes, bytes]]:
        """One chunk's records checked and summed; the writes they make (derived indexes included)."""
        writes = []
        for key, value in decode_records(chunk):
            if key <= self.last_key:
                raise ValueError("keys are not strictly increasing")
            if len(key) > MAX_KEY_BYTES:
                raise ValueError(f"a key of {len(key)} bytes")
            self.last_key = key
            if keys.is_hashed(key):
                if key == keys.LTHASH_V2_HEIGHT:
                    if len(value) != 8:
                        raise ValueError("the LtHash activation height is not 8 bytes")
                    self.lthash_v2_height = keys.from_be64(value)
                self.acc.add(key, value)
                writes.append((key, value))
                writes += index_entries(key, value)
            elif key == keys.BLOCK_TIME:
                if len(value) != 8:
                    raise ValueError("the block time is not 8 bytes")
                writes.append((key, value))
            elif not key.startswith(DERIVED_PREFIXES):
                raise ValueError(f"a key outside the registry's state ({key[:16]!r})")
        return writes
