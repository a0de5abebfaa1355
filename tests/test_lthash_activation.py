"""The app hash's second LtHash version (BLAKE3 lanes) behind its genesis activation height:
older chains keep their hashes, the change happens whole at one height, restarts, replays
and state sync agree with it, and a peer cannot pass one version off as the other."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from edgistry.abci_app import lthash, snapshots
from edgistry.abci_app.app import RegistryApp
from edgistry.abci_app.genesis import Genesis, GenesisError
from edgistry.abci_app.lthash import V1, V2, LtHash, hashed_records, version_at
from edgistry.proto import abci_pb2 as abci
from registry_helpers import CHAIN, T0, Actors, Driver, device_msg

Apply = abci.ResponseApplySnapshotChunk
ACTIVATION = 3


def _blocks(actors: Actors, n: int = 6) -> list[list[bytes]]:
    return [[actors.tx(actors.gw1 if b % 2 else actors.gw2, device_msg(bytes([b, i]) * 8)) for i in range(3)]
            for b in range(n)]


def _chain(tmp_path: Path, name: str, actors: Actors, activation: int | None, blocks: list[list[bytes]],
           interval: int = 0) -> tuple[RegistryApp, list[bytes]]:
    genesis = actors.genesis()
    genesis.lthash_v2_height = activation
    app = RegistryApp(tmp_path / name / "registry", snapshot_interval=interval)
    d = Driver(app, genesis)
    hashes = []
    for txs in blocks:
        resp = d.block(txs)
        assert all(r.code == 0 for r in resp.tx_results), [r.log for r in resp.tx_results]
        # every height's app hash is the sum of the whole state under that height's version
        assert resp.app_hash == _recomputed(app, version_at(app.height, activation))
        hashes.append(resp.app_hash)
    return app, hashes


def _recomputed(app: RegistryApp, version: int) -> bytes:
    """The committed state's app hash summed from scratch under ``version``."""
    return LtHash.rehash(hashed_records(app.store), version).digest()


# ---- the hash itself ----

def test_blake3_gives_the_published_vectors():
    lthash.self_test()


def test_a_library_that_drifts_stops_the_self_test(monkeypatch):
    class Drifted:
        def __init__(self, data: bytes) -> None:
            self.data = data

        def hexdigest(self, n: int) -> str:
            return "00" * n

    monkeypatch.setattr(lthash, "blake3", Drifted)
    with pytest.raises(RuntimeError, match="published"):
        lthash.self_test()


def test_the_versions_differ_and_each_is_homomorphic():
    records = [(b"d/" + bytes([i]) * 16, bytes([i]) * 300) for i in range(5)]
    v1, v2 = LtHash.rehash(records, V1), LtHash.rehash(records, V2)
    assert v1.to_bytes() != v2.to_bytes() and v1.digest() != v2.digest()
    # the same lanes read as the other version still give another app hash (its own domain)
    assert LtHash.from_bytes(v2.to_bytes(), V1).digest() != v2.digest()
    for version, acc in ((V1, v1), (V2, v2)):
        order = LtHash.rehash(reversed(records), version)
        assert order.digest() == acc.digest()
        acc.remove(*records[0])
        assert acc.digest() == LtHash.rehash(records[1:], version).digest()
        assert LtHash.from_bytes(acc.to_bytes(), version).digest() == acc.digest()
    with pytest.raises(ValueError):
        LtHash(version=3)


def test_version_at():
    assert [version_at(h, None) for h in (0, 1, 10**12)] == [V1, V1, V1]
    assert [version_at(h, 5) for h in (0, 4, 5, 6)] == [V1, V1, V2, V2]


# ---- genesis ----

def test_genesis_carries_the_activation_height():
    assert Genesis().lthash_v2_height == 1  # new chains
    assert Genesis.from_json({}).lthash_v2_height is None  # a genesis written before it: never
    assert Genesis.from_bytes(b"").lthash_v2_height is None
    g = Genesis(lthash_v2_height=7)
    assert Genesis.from_json(json.loads(json.dumps(g.to_json()))).lthash_v2_height == 7
    for bad in (0, -1, "3", 2.0, True, 2**63):
        with pytest.raises(GenesisError, match="lthash_v2_height"):
            Genesis.from_json({"lthash_v2_height": bad})


# ---- a chain across its activation height ----

def test_a_chain_without_the_key_keeps_v1_and_one_with_it_changes_whole(tmp_path: Path):
    """Both chains get, at every height, the from-scratch sum of their state under the
    height's version (checked in _chain): v1 throughout without the key, v2 from 3 with it.
    Their records differ only by the activation height the state records."""
    from edgistry.abci_app import keys

    actors = Actors()
    blocks = _blocks(actors)
    old, _ = _chain(tmp_path, "never", actors, None, blocks)
    new, _ = _chain(tmp_path, "at3", actors, ACTIVATION, blocks)
    try:
        assert old.lthash_v2_height is None and new.lthash_v2_height == ACTIVATION
        # an export keeps each chain's rule
        assert Genesis.export(old.store).lthash_v2_height is None
        assert Genesis.export(new.store).lthash_v2_height == ACTIVATION
        assert [kv for kv in hashed_records(new.store) if kv[0] != keys.LTHASH_V2_HEIGHT] \
            == list(hashed_records(old.store))
    finally:
        old.close()
        new.close()


def test_a_restart_at_the_activation_height_gives_the_same_hashes(tmp_path: Path):
    """Stopped after block 2 (v1), restarted, and run on: the same hashes as without the stop."""
    actors = Actors()
    blocks = _blocks(actors)
    ref, ref_hashes = _chain(tmp_path, "ref", actors, ACTIVATION, blocks)
    ref.close()
    app, hashes = _chain(tmp_path, "stop", actors, ACTIVATION, blocks[:ACTIVATION - 1])
    app.close()
    app = RegistryApp(tmp_path / "stop" / "registry")
    try:
        assert app.lthash_v2_height == ACTIVATION and app.app_hash == hashes[-1]
        d = Driver(app, Genesis())
        d.time = T0 + 5 * (ACTIVATION - 1)  # the blocks' times as in the reference chain
        hashes += [d.block(b).app_hash for b in blocks[ACTIVATION - 1:]]
        assert hashes == ref_hashes
    finally:
        app.close()


def test_a_replayed_first_v2_block_gives_the_same_hash(tmp_path: Path):
    """FinalizeBlock of the activation height run, then the node stops before Commit
    (CometBFT replays the block): the replay re-hashes the same committed state alike."""
    actors = Actors()
    blocks = _blocks(actors)
    app, _ = _chain(tmp_path, "c", actors, ACTIVATION, blocks[:ACTIVATION - 1])
    req = abci.RequestFinalizeBlock(txs=blocks[ACTIVATION - 1], height=ACTIVATION,
                                    time=Timestamp(seconds=T0 + 5 * ACTIVATION))
    first = app.finalize_block(req).app_hash
    assert app.finalize_block(req).app_hash == first  # replayed in the same process
    app.close()
    app = RegistryApp(tmp_path / "c" / "registry")  # ... and after a restart
    try:
        assert app.finalize_block(req).app_hash == first
        app.commit(abci.RequestCommit())
        assert app.app_hash == first == _recomputed(app, V2)
    finally:
        app.close()


def test_a_chain_started_above_the_activation_height_is_v2_from_init_chain(tmp_path: Path):
    """initial_height 100, v2 from 1: the state InitChain returns is that of height 99, a v2 sum."""
    actors = Actors()
    app = RegistryApp(tmp_path / "r")
    try:
        genesis = actors.genesis()
        init = app.init_chain(abci.RequestInitChain(chain_id=CHAIN, initial_height=100,
                                                    app_state_bytes=json.dumps(genesis.to_json()).encode()))
        acc = LtHash(version=V2)
        for key, value in hashed_records(app._block):
            acc.add(key, value)
        assert init.app_hash == acc.digest()
        resp = app.finalize_block(abci.RequestFinalizeBlock(txs=_blocks(actors, 1)[0], height=100,
                                                            time=Timestamp(seconds=T0)))
        app.commit(abci.RequestCommit())
        assert all(r.code == 0 for r in resp.tx_results) and resp.app_hash == _recomputed(app, V2)
    finally:
        app.close()


# ---- state sync across versions ----

@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(snapshots, "CHUNK_BYTES", 1024)


def _chunks(app: RegistryApp, snap: abci.Snapshot) -> list[bytes]:
    return [app.load_snapshot_chunk(abci.RequestLoadSnapshotChunk(height=snap.height, format=snap.format,
                                                                  chunk=i)).chunk for i in range(snap.chunks)]


def _sync(fresh: RegistryApp, snap: abci.Snapshot, chunks: list[bytes], app_hash: bytes) -> list[int]:
    assert fresh.offer_snapshot(abci.RequestOfferSnapshot(snapshot=snap, app_hash=app_hash)).result \
        == abci.ResponseOfferSnapshot.ACCEPT
    return [fresh.apply_snapshot_chunk(abci.RequestApplySnapshotChunk(index=i, chunk=c)).result
            for i, c in enumerate(chunks)]


def test_snapshots_name_the_version_of_their_height_and_restore_under_it(tmp_path: Path, small_chunks):
    """Snapshots every 2 blocks on a chain that turns v2 at 3: height 2 is format 1, 4 and 6
    format 2; each restores, and the restored node then agrees with the source block by block."""
    actors = Actors()
    blocks = _blocks(actors, 8)
    src, hashes = _chain(tmp_path, "src", actors, ACTIVATION, blocks[:6], interval=2)
    try:
        by_height = {s.height: s for s in src.list_snapshots(abci.RequestListSnapshots()).snapshots}
        assert {h: s.format for h, s in by_height.items()} == {2: 1, 4: 2, 6: 2}
        for h, other in ((2, 2), (4, 1), (4, 3)):  # a chunk is served only in its snapshot's format
            assert src.load_snapshot_chunk(abci.RequestLoadSnapshotChunk(height=h, format=other, chunk=0)).chunk == b""
        for h in (2, 4):
            fresh = RegistryApp(tmp_path / f"fresh{h}" / "registry")
            try:
                snap = by_height[h]
                assert set(_sync(fresh, snap, _chunks(src, snap), hashes[h - 1])) == {Apply.ACCEPT}
                assert fresh.height == h and fresh.app_hash == hashes[h - 1]
                d = Driver(fresh, Genesis())
                d.time = T0 + 5 * h
                assert [d.block(b).app_hash for b in blocks[h:6]] == hashes[h:6]
            finally:
                fresh.close()
    finally:
        src.close()


def test_a_snapshot_under_the_wrong_version_is_refused(tmp_path: Path, small_chunks):
    """A peer names format 1 for a v2 height: its honest records do not sum to the trusted
    hash. And where the trusted hash were the records' v1 sum, the restored activation
    height still puts the height under v2: refused either way, nothing kept."""
    actors = Actors()
    src, hashes = _chain(tmp_path, "src", actors, ACTIVATION, _blocks(actors, 4), interval=4)
    try:
        snap = src.list_snapshots(abci.RequestListSnapshots()).snapshots[0]
        assert snap.format == 2
        chunks = _chunks(src, snap)
        lied = abci.Snapshot()
        lied.CopyFrom(snap)
        lied.format = 1
        for name, trusted in (("sum", hashes[-1]), ("version", _recomputed(src, V1))):
            fresh = RegistryApp(tmp_path / f"fresh-{name}" / "registry")
            try:
                results = _sync(fresh, lied, chunks, trusted)
                assert results[-1] == Apply.REJECT_SNAPSHOT and set(results[:-1]) <= {Apply.ACCEPT}
                assert fresh.height == 0 and list(fresh.store.scan(b"")) == []
                # the honest snapshot is taken afterwards
                assert set(_sync(fresh, snap, chunks, hashes[-1])) == {Apply.ACCEPT}
                assert fresh.app_hash == hashes[-1]
            finally:
                fresh.close()
    finally:
        src.close()
