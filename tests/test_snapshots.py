"""State-sync snapshots (abci_app/snapshots.py) with real apps: identical across nodes,
restorable, and checked chunk by chunk and against the verified app hash."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgistry.abci_app import snapshots
from edgistry.abci_app.app import RegistryApp
from edgistry.proto import abci_pb2 as abci
from edgistry.proto import registry_pb2 as pb
from registry_helpers import Actors, Driver, device_msg

INTERVAL = 3
BLOCKS = 6
Offer = abci.ResponseOfferSnapshot
Apply = abci.ResponseApplySnapshotChunk


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    """Chunks of 1 KiB so that a few dozen devices span several chunks."""
    monkeypatch.setattr(snapshots, "CHUNK_BYTES", 1024)


def _blocks(actors: Actors) -> list[list[bytes]]:
    blocks = []
    for b in range(BLOCKS):
        key = actors.gw1 if b % 2 else actors.gw2
        blocks.append([actors.tx(key, device_msg(bytes([b, i]) * 8)) for i in range(8)])
    return blocks


def _run(tmp_path: Path, name: str, actors: Actors, blocks: list[list[bytes]]) -> tuple[RegistryApp, Driver]:
    app = RegistryApp(tmp_path / name / "registry", snapshot_interval=INTERVAL)
    driver = Driver(app, actors.genesis())
    for txs in blocks:
        resp = driver.block(txs)
        assert all(r.code == 0 for r in resp.tx_results)
    return app, driver


@pytest.fixture
def two_nodes(tmp_path: Path):
    actors = Actors()
    blocks = _blocks(actors)
    a, da = _run(tmp_path, "a", actors, blocks)
    b, db = _run(tmp_path, "b", actors, blocks)
    yield a, b, da, db
    a.close()
    b.close()


def _chunks(app: RegistryApp, snap: abci.Snapshot) -> list[bytes]:
    return [app.load_snapshot_chunk(abci.RequestLoadSnapshotChunk(height=snap.height, format=snap.format, chunk=i)).chunk
            for i in range(snap.chunks)]


def test_snapshots_are_byte_identical_across_nodes(two_nodes):
    """Two apps fed the same blocks list the same snapshots and serve identical chunk bytes."""
    a, b, _, _ = two_nodes
    snaps_a = a.list_snapshots(abci.RequestListSnapshots()).snapshots
    snaps_b = b.list_snapshots(abci.RequestListSnapshots()).snapshots
    assert [s.height for s in snaps_a] == [6, 3]
    assert [s.SerializeToString(deterministic=True) for s in snaps_a] == \
        [s.SerializeToString(deterministic=True) for s in snaps_b]
    for snap in snaps_a:
        assert snap.chunks > 1 and len(snap.metadata) == 32 * snap.chunks
        assert _chunks(a, snap) == _chunks(b, snap)


def test_restore_rebuilds_the_state_and_the_chain_goes_on(two_nodes, tmp_path: Path):
    """A fresh app accepts the snapshot chunk by chunk, ends at its height and app hash,
    answers queries, and the next block gives the same app hash as on the source."""
    a, _, da, _ = two_nodes
    snap = a.list_snapshots(abci.RequestListSnapshots()).snapshots[0]
    fresh = RegistryApp(tmp_path / "fresh" / "registry")
    try:
        offer = fresh.offer_snapshot(abci.RequestOfferSnapshot(snapshot=snap, app_hash=a.app_hash))
        assert offer.result == Offer.ACCEPT
        for i, chunk in enumerate(_chunks(a, snap)):
            res = fresh.apply_snapshot_chunk(abci.RequestApplySnapshotChunk(index=i, chunk=chunk, sender="peer"))
            assert res.result == Apply.ACCEPT
        info = fresh.info(abci.RequestInfo())
        assert (info.last_block_height, info.last_block_app_hash) == (a.height, a.app_hash)
        df = Driver(fresh, None)
        df.time = da.time
        listed = pb.DeviceList.FromString(df.query("/devices").value).devices
        assert len(listed) == len(pb.DeviceList.FromString(da.query("/devices").value).devices)
        assert df.block([]).app_hash == da.block([]).app_hash  # the next (empty) block on both
    finally:
        fresh.close()


def test_corrupted_chunk_is_retried(two_nodes, tmp_path: Path):
    """A chunk whose hash does not match the snapshot metadata gets RETRY, the good one ACCEPT."""
    a, _, _, _ = two_nodes
    snap = a.list_snapshots(abci.RequestListSnapshots()).snapshots[0]
    chunks = _chunks(a, snap)
    fresh = RegistryApp(tmp_path / "fresh" / "registry")
    try:
        assert fresh.offer_snapshot(abci.RequestOfferSnapshot(snapshot=snap, app_hash=a.app_hash)).result == Offer.ACCEPT
        bad = bytes([chunks[0][0] ^ 1]) + chunks[0][1:]
        assert fresh.apply_snapshot_chunk(abci.RequestApplySnapshotChunk(index=0, chunk=bad)).result == Apply.RETRY
        for i, chunk in enumerate(chunks):
            assert fresh.apply_snapshot_chunk(abci.RequestApplySnapshotChunk(index=i, chunk=chunk)).result == Apply.ACCEPT
        assert fresh.app_hash == a.app_hash
    finally:
        fresh.close()


def test_wrong_app_hash_rejects_the_snapshot(two_nodes, tmp_path: Path):
    """Records that do not hash to the light-client-verified app hash: REJECT_SNAPSHOT,
    and the app stays empty."""
    a, _, _, _ = two_nodes
    snap = a.list_snapshots(abci.RequestListSnapshots()).snapshots[0]
    fresh = RegistryApp(tmp_path / "fresh" / "registry")
    try:
        wrong = bytes(32) if a.app_hash != bytes(32) else b"\x01" * 32
        assert fresh.offer_snapshot(abci.RequestOfferSnapshot(snapshot=snap, app_hash=wrong)).result == Offer.ACCEPT
        results = [fresh.apply_snapshot_chunk(abci.RequestApplySnapshotChunk(index=i, chunk=c)).result
                   for i, c in enumerate(_chunks(a, snap))]
        assert results == [Apply.ACCEPT] * (snap.chunks - 1) + [Apply.REJECT_SNAPSHOT]
        assert fresh.height == 0
    finally:
        fresh.close()


@pytest.mark.parametrize("change, expected", [
    ("format", Offer.REJECT_FORMAT),
    ("metadata", Offer.REJECT),
    ("hash", Offer.REJECT),
    ("non_empty", Offer.ABORT),
])
def test_offer_checks(two_nodes, tmp_path: Path, change: str, expected: int):
    """An unknown format, metadata not matching the hash, or an app with state is refused."""
    a, b, _, _ = two_nodes
    snap = abci.Snapshot()
    snap.CopyFrom(a.list_snapshots(abci.RequestListSnapshots()).snapshots[0])
    target = RegistryApp(tmp_path / "fresh" / "registry")
    try:
        if change == "format":
            snap.format = 2
        elif change == "metadata":
            snap.metadata = snap.metadata[:-1] + bytes([snap.metadata[-1] ^ 1])
        elif change == "hash":
            snap.hash = bytes(32)
        else:
            target.close()
            target = b
        assert target.offer_snapshot(abci.RequestOfferSnapshot(snapshot=snap, app_hash=a.app_hash)).result == expected
    finally:
        if target is not b:
            target.close()
