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
            snap.format = 3
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


# ---- a peer that lies: only the app hash is trusted ----


def _crafted(records: list[tuple[bytes, bytes]], height: int, chunk_bytes: int = 1024,
             fmt: int = 2) -> tuple[abci.Snapshot, list[bytes]]:
    """A snapshot a peer could serve: the given records in format ``fmt`` (2: a new chain's
    v2 sums), with matching metadata."""
    import hashlib

    from edgistry.abci_app.framing import encode_uvarint

    chunks, buf = [], bytearray()
    for k, v in records:
        buf += encode_uvarint(len(k)) + k + encode_uvarint(len(v)) + v
        if len(buf) >= chunk_bytes:
            chunks.append(bytes(buf))
            buf.clear()
    if buf or not chunks:
        chunks.append(bytes(buf))
    meta = b"".join(hashlib.sha256(c).digest() for c in chunks)
    return abci.Snapshot(height=height, format=fmt, chunks=len(chunks), hash=hashlib.sha256(meta).digest(),
                         metadata=meta), chunks


def _sync(app: RegistryApp, snap: abci.Snapshot, chunks: list[bytes], app_hash: bytes) -> list[int]:
    assert app.offer_snapshot(abci.RequestOfferSnapshot(snapshot=snap, app_hash=app_hash)).result == Offer.ACCEPT
    results = []
    for i, c in enumerate(chunks):
        results.append(app.apply_snapshot_chunk(abci.RequestApplySnapshotChunk(index=i, chunk=c)).result)
        if results[-1] != Apply.ACCEPT:
            break
    return results


def _records(app: RegistryApp, snap: abci.Snapshot) -> list[tuple[bytes, bytes]]:
    return [kv for c in _chunks(app, snap) for kv in snapshots.decode_records(c)]


def _state(app: RegistryApp) -> list[tuple[bytes, bytes]]:
    with app.store.reader() as r:
        return list(r.scan(b""))


def test_a_record_repeated_to_cancel_in_the_sum_is_refused(two_nodes, tmp_path: Path):
    """2^16 copies of a record add nothing to a 16-bit LtHash, and a store keeps the last
    value of a key: a peer could add an admin or forge a nonce under the trusted app hash.
    Keys must strictly increase, so the snapshot is refused and nothing of it stays."""
    from edgistry.abci_app import keys

    a, _, _, _ = two_nodes
    snap = a.list_snapshots(abci.RequestListSnapshots()).snapshots[0]
    honest = _records(a, snap)
    forged = sorted(honest + [(keys.admin(b"\xee" * 32), b"1")] * 65536)
    fresh = RegistryApp(tmp_path / "fresh" / "registry")
    try:
        crafted, chunks = _crafted(forged, snap.height, chunk_bytes=1 << 20)
        results = _sync(fresh, crafted, chunks, a.app_hash)
        assert results[-1] == Apply.REJECT_SNAPSHOT
        assert fresh.height == 0 and _state(fresh) == []
        # the honest snapshot is still taken afterwards
        assert _sync(fresh, snap, _chunks(a, snap), a.app_hash) == [Apply.ACCEPT] * snap.chunks
        assert fresh.app_hash == a.app_hash and _state(fresh) == _state(a)
    finally:
        fresh.close()


def test_indexes_are_rebuilt_from_the_records_not_taken_from_the_peer(two_nodes, tmp_path: Path):
    """The app hash covers primary records only. A peer that maps its own key to gw1's
    gateway id (gk/) and drops gw2's gets nowhere: the restored indexes are derived from
    the gateway records, equal to the source's, and the forged signer stays unknown."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from edgistry.abci_app import keys
    from edgistry.abci_app.codes import Code
    from registry_helpers import pub

    a, _, _, _ = two_nodes
    snap = a.list_snapshots(abci.RequestListSnapshots()).snapshots[0]
    honest = _records(a, snap)
    attacker = Ed25519PrivateKey.generate()
    gw1_id = next(v for k, v in honest if k.startswith(keys.GATEWAY_BY_KEY))
    forged = sorted([(k, v) for k, v in honest if not k.startswith(keys.GATEWAY_BY_KEY)]
                    + [(keys.gateway_by_key(pub(attacker)), gw1_id)])
    fresh = RegistryApp(tmp_path / "fresh" / "registry")
    try:
        crafted, chunks = _crafted(forged, snap.height)
        assert _sync(fresh, crafted, chunks, a.app_hash) == [Apply.ACCEPT] * crafted.chunks
        assert fresh.app_hash == a.app_hash and _state(fresh) == _state(a)
        a_actors = Actors()
        tx = a_actors.tx(attacker, device_msg(b"\x42" * 16), nonce=1)
        assert fresh.check_tx(abci.RequestCheckTx(tx=tx)).code == Code.UNKNOWN_SIGNER
    finally:
        fresh.close()


@pytest.mark.parametrize("junk", ["unknown_key", "empty_key", "long_key", "bad_varint", "bad_record",
                                  "bad_block_time"])
def test_malformed_chunks_refuse_the_snapshot_without_raising(two_nodes, tmp_path: Path, junk: str):
    """Whatever bytes a peer sends (they pass the chunk hash: the peer wrote the metadata),
    the answer is REJECT_SNAPSHOT, never an exception (which stops the node), and the
    store is left empty."""
    from edgistry.abci_app import keys

    a, _, _, _ = two_nodes
    snap = a.list_snapshots(abci.RequestListSnapshots()).snapshots[0]
    honest = _records(a, snap)
    extra = {"unknown_key": [(b"zz/junk", b"x")], "empty_key": [(b"", b"x")],
             "long_key": [(keys.admin(b"\x01" * 600), b"1")],
             "bad_record": [(keys.device(b"\xff" * 16), b"\xff\xff\xff")],
             "bad_block_time": [(keys.BLOCK_TIME, b"123")]}
    fresh = RegistryApp(tmp_path / "fresh" / "registry")
    try:
        records = dict(honest)
        for k, v in extra.get(junk, []):
            records[k] = v
        crafted, chunks = _crafted(sorted(records.items()), snap.height)
        if junk == "bad_varint":  # a length prefix that overflows 64 bits
            chunks[0] = b"\xff" * 11 + chunks[0]
            import hashlib
            meta = b"".join(hashlib.sha256(c).digest() for c in chunks)
            crafted = abci.Snapshot(height=snap.height, format=snap.format, chunks=len(chunks),
                                    hash=hashlib.sha256(meta).digest(), metadata=meta)
        results = _sync(fresh, crafted, chunks, a.app_hash)
        assert results[-1] == Apply.REJECT_SNAPSHOT, results
        assert fresh.height == 0 and _state(fresh) == []
    finally:
        fresh.close()


def test_chunks_are_written_as_they_come_and_an_unfinished_restore_is_dropped(two_nodes, tmp_path: Path):
    """Memory holds one chunk: each is written to the store on arrival (at height 0, not
    served). A node stopped halfway reopens empty, so the half-restored records are never
    built upon; chunks out of order refuse the snapshot."""
    a, _, _, _ = two_nodes
    snap = a.list_snapshots(abci.RequestListSnapshots()).snapshots[0]
    chunks = _chunks(a, snap)
    path = tmp_path / "fresh" / "registry"
    fresh = RegistryApp(path)
    assert fresh.offer_snapshot(abci.RequestOfferSnapshot(snapshot=snap, app_hash=a.app_hash)).result == Offer.ACCEPT
    for i in range(2):
        assert fresh.apply_snapshot_chunk(abci.RequestApplySnapshotChunk(index=i, chunk=chunks[i])).result == Apply.ACCEPT
    assert fresh.height == 0 and len(_state(fresh)) > 0
    fresh.close()
    fresh = RegistryApp(path)
    try:
        assert fresh.height == 0 and _state(fresh) == []
        assert fresh.offer_snapshot(abci.RequestOfferSnapshot(snapshot=snap, app_hash=a.app_hash)).result == Offer.ACCEPT
        assert fresh.apply_snapshot_chunk(abci.RequestApplySnapshotChunk(index=1, chunk=chunks[1])).result \
            == Apply.REJECT_SNAPSHOT
        assert _sync(fresh, snap, chunks, a.app_hash) == [Apply.ACCEPT] * snap.chunks
        assert fresh.app_hash == a.app_hash
    finally:
        fresh.close()


def test_heights_below_the_snapshot_are_unavailable_on_a_restored_node(two_nodes, tmp_path: Path):
    """A restored node has no history below its snapshot: it says so for those heights
    instead of answering them with the snapshot's state."""
    from edgistry.abci_app.codes import Code

    a, _, _, _ = two_nodes
    snap = a.list_snapshots(abci.RequestListSnapshots()).snapshots[-1]  # height 3: heights 1-2 below it
    fresh = RegistryApp(tmp_path / "fresh" / "registry")
    try:
        assert _sync(fresh, snap, _chunks(a, snap), a.store.app_hash_at(snap.height)) == [Apply.ACCEPT] * snap.chunks
        assert fresh.store.oldest_height == snap.height
        for h in (1, 2):
            assert fresh.query(abci.RequestQuery(path="/devices", height=h)).code == Code.HEIGHT_UNAVAILABLE
        at = fresh.query(abci.RequestQuery(path="/devices", height=snap.height))
        assert at.code == 0 and at.value == a.query(abci.RequestQuery(path="/devices", height=snap.height)).value
    finally:
        fresh.close()


def test_the_indexes_the_handlers_keep_are_exactly_those_derived_from_the_records(tmp_path: Path):
    """handlers.index_entries (what a restore rebuilds) agrees with what the handlers wrote:
    gateways, devices registered, moved and unregistered, revocations renewed and pruned."""
    from edgistry.abci_app import keys
    from edgistry.abci_app.handlers import index_entries
    from registry_helpers import T0

    actors = Actors()
    app = RegistryApp(tmp_path / "reg")
    driver = Driver(app, actors.genesis())
    try:
        driver.block([actors.tx(actors.gw1, device_msg(bytes([i]) * 16)) for i in range(1, 6)]
                     + [actors.tx(actors.gw2, device_msg(bytes([i]) * 16)) for i in range(6, 9)])
        driver.block([actors.tx(actors.gw1, pb.UnregisterDevice(pseudonym=b"\x02" * 16)),
                      actors.tx(actors.gw2, pb.RevokeToken(tag_hash=b"\x11" * 32, expires_at=T0 + 10)),
                      actors.tx(actors.gw1, pb.RevokeToken(tag_hash=b"\x22" * 32, expires_at=T0 + 100_000))])
        driver.block([actors.tx(actors.gw1, pb.RevokeToken(tag_hash=b"\x22" * 32, expires_at=T0 + 200_000))])
        driver.time += 1000  # the first revocation expires and is pruned
        driver.block([])
        state = _state(app)
        derived = sorted(e for k, v in state if keys.is_hashed(k) for e in index_entries(k, v))
        unhashed = sorted((k, v) for k, v in state if not keys.is_hashed(k) and k != keys.BLOCK_TIME)
        assert derived == unhashed
        assert {k[:3] for k, _ in unhashed} == {b"gk/", b"dg/", b"rx/"}
    finally:
        app.close()
