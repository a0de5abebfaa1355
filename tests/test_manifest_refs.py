"""Manifests by reference on the state machine's side (abci_app/sealing.py): the catalog slot
write, the device blob's one size from the genesis activation height, and chains without it."""

from __future__ import annotations

import pytest

from edgistry.abci_app import keys, sealing
from edgistry.abci_app.app import RegistryApp
from edgistry.abci_app.batch import batch_of
from edgistry.abci_app.codes import Code
from edgistry.abci_app.genesis import Genesis, GenesisError
from edgistry.gateway.discovery import sealbox
from edgistry.proto import registry_pb2 as pb
from registry_helpers import (TEST_DATA_KEY, Actors, Driver, device_msg, driver_catalogs, manifest_msg, slot_for,
                              test_keyring)


def make(tmp_path, name: str = "reg", activation: int | None = 1, actors: Actors | None = None):
    actors = actors or Actors()
    genesis = actors.genesis()
    genesis.manifest_ref_height = activation
    app = RegistryApp(tmp_path / name)
    return actors, app, Driver(app, genesis)


@pytest.fixture
def env(tmp_path):
    a, app, d = make(tmp_path)
    yield a, app, d
    app.close()


def codes(resp) -> list[int]:
    return [r.code for r in resp.tx_results]


def nonce_of(app: RegistryApp, key) -> int:
    with app.store.reader() as r:
        raw = r.get(keys.nonce(key.public_key().public_bytes_raw()))
    return keys.from_be64(raw) if raw else 0


def device_at(d: Driver, pseudonym: bytes) -> pb.DeviceRecord:
    resp = d.query("/device", pb.DeviceQuery(pseudonym=pseudonym).SerializeToString())
    assert resp.code == 0, resp.log
    return pb.DeviceRecord.FromString(resp.value)


def manifests(d: Driver, gateway_id: str = "", height: int = 0) -> list[pb.ManifestRecord]:
    resp = d.query("/manifests", pb.DeviceQuery(gateway_id=gateway_id).SerializeToString(), height)
    assert resp.code == 0, resp.log
    return list(pb.ManifestList.FromString(resp.value).manifests)


def test_a_device_names_its_gateways_slot_and_only_the_small_size_is_taken(env):
    a, app, d = env
    assert codes(d.block([a.tx(a.gw1, manifest_msg(a.gw1_id, ("sensor", "valve"))),
                          a.tx(a.gw1, device_msg(b"A" * 16, types=("sensor", "valve")))])) == [0, 0]
    (record,) = manifests(d)
    assert (record.gateway_id, record.slot, record.height) == (a.gw1_id, slot_for(("sensor", "valve")), app.height)
    opened = test_keyring().open_record(device_at(d, b"A" * 16), driver_catalogs(d))
    assert [s.type for s in opened.services] == ["sensor", "valve"]
    before = nonce_of(app, a.gw1)
    inline = device_msg(b"B" * 16, inline=True)  # the services inside, 1 KiB: the old form
    resp = d.block([a.tx(a.gw1, inline)])
    assert codes(resp) == [Code.INVALID_FIELD] and "80 bytes" in resp.tx_results[0].log
    assert nonce_of(app, a.gw1) == before  # refused before the nonce, as a malformed tx always was
    in_batch = d.block([a.tx(a.gw1, batch_of([inline, device_msg(b"C" * 16)]))]).tx_results[0]
    assert in_batch.code == 0 and list(pb.BatchResult.FromString(in_batch.data).codes) == [Code.INVALID_FIELD, 0]


def test_a_slot_is_written_by_its_gateway_only_within_bounds_and_under_the_current_epoch(env):
    a, app, d = env
    m = manifest_msg(a.gw1_id)
    assert codes(d.block([a.tx(a.admin, m)])) == [Code.UNAUTHORIZED]
    assert codes(d.block([a.tx(a.stranger, m)])) == [Code.UNKNOWN_SIGNER]
    over = pb.PutManifest(slot=sealing.MAX_MANIFEST_SLOTS, sealed=m.sealed)
    assert codes(d.block([a.tx(a.gw1, over)])) == [Code.INVALID_FIELD]
    small = pb.PutManifest(slot=1, sealed=device_msg(b"A" * 16).sealed)  # a device-sized blob: not a slot
    assert codes(d.block([a.tx(a.gw1, small)])) == [Code.INVALID_FIELD]
    assert codes(d.block([a.tx(a.gw1, pb.PutManifest(slot=1))])) == [Code.INVALID_FIELD]
    stale = manifest_msg(a.gw1_id, epoch=2)
    assert codes(d.block([a.tx(a.gw1, stale)])) == [Code.STALE_EPOCH]
    # gateway 2 writes its own slot of the same number: two catalogs, keyed by gateway
    assert codes(d.block([a.tx(a.gw1, m), a.tx(a.gw2, manifest_msg(a.gw2_id, slot=m.slot))])) == [0, 0]
    assert {(r.gateway_id, r.slot) for r in manifests(d)} == {(a.gw1_id, m.slot), (a.gw2_id, m.slot)}
    assert [r.gateway_id for r in manifests(d, a.gw2_id)] == [a.gw2_id]
    assert d.query("/manifests", pb.DeviceQuery(gateway_id="x").SerializeToString()).code == Code.BAD_QUERY


def test_a_slot_blob_opens_only_at_its_own_gateway_and_slot(env):
    """The AAD binds gateway, slot and epoch: a slot's bytes copied elsewhere do not open."""
    a, app, d = env
    m = manifest_msg(a.gw1_id, ("camera",), slot=5)
    ring = test_keyring()
    ok = pb.ManifestRecord(gateway_id=a.gw1_id, slot=5, sealed=m.sealed)
    assert [s.type for s in ring.open_manifest(ok).services] == ["camera"]
    for moved in (pb.ManifestRecord(gateway_id=a.gw2_id, slot=5, sealed=m.sealed),
                  pb.ManifestRecord(gateway_id=a.gw1_id, slot=6, sealed=m.sealed)):
        with pytest.raises(sealbox.SealError):
            ring.open_manifest(moved)
    # a gateway copying another's slot onto its own does not give its devices those services
    assert codes(d.block([a.tx(a.gw2, pb.PutManifest(slot=5, sealed=m.sealed))])) == [0]
    with pytest.raises(sealbox.SealError):
        driver_catalogs(d)


def test_a_device_naming_a_missing_or_free_slot_is_unreadable_not_wrong(env):
    a, app, d = env
    assert codes(d.block([a.tx(a.gw1, device_msg(b"A" * 16))])) == [0]  # the chain cannot see the slot
    rec = device_at(d, b"A" * 16)
    with pytest.raises(sealbox.SealError):
        test_keyring().open_record(rec, driver_catalogs(d))
    free = manifest_msg(a.gw1_id)  # the device's slot, written free (a cover of an unused slot)
    free.sealed.CopyFrom(sealbox.seal_manifest(TEST_DATA_KEY, 1, a.gw1_id, free.slot, pb.Manifest()))
    assert codes(d.block([a.tx(a.gw1, free)])) == [0]
    with pytest.raises(sealbox.SealError):
        test_keyring().open_record(rec, {k: v for k, v in driver_catalogs(d).items() if v})


def test_removing_a_gateway_drops_its_catalog(env):
    a, app, d = env
    assert codes(d.block([a.tx(a.gw2, manifest_msg(a.gw2_id)), a.tx(a.gw1, manifest_msg(a.gw1_id))])) == [0, 0]
    assert codes(d.block([a.tx(a.admin, pb.RemoveGateway(gateway_id=a.gw2_id))])) == [0]
    assert {r.gateway_id for r in manifests(d)} == {a.gw1_id}


def test_a_chain_without_the_activation_keeps_the_inline_form(tmp_path):
    """A genesis without manifest_ref_height (older chains): inline blobs as ever, no small size,
    and a PutManifest, alone or in a batch, is what it was before the message existed: a tx
    that does not decode (MALFORMED_TX before its nonce, dropped and refused by the proposal
    checks), so the state and app hash stay as the code before this rule left them."""
    from edgistry.proto import abci_pb2 as abci

    a, app, d = make(tmp_path, activation=None)
    try:
        assert codes(d.block([a.tx(a.gw1, device_msg(b"A" * 16, inline=True))])) == [0]
        before = nonce_of(app, a.gw1)
        assert codes(d.block([a.tx(a.gw1, device_msg(b"B" * 16))])) == [Code.INVALID_FIELD]
        assert nonce_of(app, a.gw1) == before
        put = a.tx(a.gw1, manifest_msg(a.gw1_id))
        mixed = a.tx(a.gw1, batch_of([manifest_msg(a.gw1_id), device_msg(b"C" * 16, inline=True)]))
        for raw in (put, mixed):
            assert app.check_tx(abci.RequestCheckTx(tx=raw)).code == Code.MALFORMED_TX
            height = app.height + 1
            prep = app.prepare_proposal(abci.RequestPrepareProposal(max_tx_bytes=1 << 22, txs=[raw], height=height))
            assert list(prep.txs) == []
            assert app.process_proposal(abci.RequestProcessProposal(txs=[raw], height=height)).status == 2  # REJECT
        hash_before = d.block([]).app_hash
        resp = d.block([put, mixed])  # a byzantine block holding them anyway
        assert codes(resp) == [Code.MALFORMED_TX] * 2 and resp.app_hash == hash_before
        assert nonce_of(app, a.gw1) == before and manifests(d) == []
        with app.store.reader() as r:
            assert r.get(keys.MANIFEST_REF_HEIGHT) is None
    finally:
        app.close()


def test_the_form_changes_at_the_activation_height(tmp_path):
    a, app, d = make(tmp_path, activation=3)
    try:
        assert codes(d.block([a.tx(a.gw1, device_msg(b"A" * 16, inline=True))])) == [0]  # height 1
        assert codes(d.block([a.tx(a.gw1, manifest_msg(a.gw1_id)),
                              a.tx(a.gw1, device_msg(b"B" * 16))])) == [Code.MALFORMED_TX, Code.INVALID_FIELD]
        assert app.height == 2
        assert codes(d.block([a.tx(a.gw1, device_msg(b"C" * 16, inline=True)), a.tx(a.gw1, manifest_msg(a.gw1_id)),
                              a.tx(a.gw1, device_msg(b"D" * 16))])) == [Code.INVALID_FIELD, 0, 0]  # height 3
        # a device registered inline before the height still opens (no slot named)
        rec = device_at(d, b"A" * 16)
        assert test_keyring().open_record(rec).services[0].type == "sensor"
        # and its update from the height on names a slot
        assert codes(d.block([a.tx(a.gw1, device_msg(b"A" * 16, cls=pb.UpdateDevice))])) == [0]
    finally:
        app.close()


def test_two_apps_fed_the_same_blocks_agree(tmp_path):
    a = Actors()
    _, one, d1 = make(tmp_path, "one", actors=a)
    _, two, d2 = make(tmp_path, "two", actors=a)
    try:
        blocks = [[a.tx(a.gw1, manifest_msg(a.gw1_id, slot=3))],
                  [a.tx(a.gw1, batch_of([manifest_msg(a.gw1_id, ("valve",)),
                                         device_msg(b"V" * 16, types=("valve",))]))],
                  [a.tx(a.gw2, manifest_msg(a.gw2_id, slot=3)), a.tx(a.admin, pb.RemoveGateway(gateway_id=a.gw2_id))]]
        for block in blocks:
            r1, r2 = d1.block(block), d2.block(block)
            assert r1.app_hash == r2.app_hash and codes(r1) == codes(r2)
    finally:
        one.close()
        two.close()


def test_genesis_carries_catalogs_and_checks_them(tmp_path):
    a = Actors()
    good = a.genesis()
    m = manifest_msg(a.gw1_id)
    good.manifests = [pb.ManifestRecord(gateway_id=a.gw1_id, slot=m.slot, sealed=m.sealed)]
    assert Genesis.from_json(good.to_json()).manifests == good.manifests
    for broken, why in (
        (dict(manifest_ref_height=None), "manifest_ref_height"),
        (dict(manifests=[pb.ManifestRecord(gateway_id="f" * 32, slot=1, sealed=m.sealed)]), "unknown gateway"),
        (dict(manifests=good.manifests * 2), "duplicate"),
        (dict(manifests=[pb.ManifestRecord(gateway_id=a.gw1_id, slot=999, sealed=m.sealed)]), "slot"),
        (dict(manifest_ref_height=0), "manifest_ref_height"),
        (dict(manifests=[], manifest_ref_height=None,
              devices=[pb.DeviceRecord(pseudonym=b"A" * 16, gateway_id=a.gw1_id,
                                       sealed=device_msg(b"A" * 16).sealed)]), "80"),  # no height takes it
    ):
        g = a.genesis()
        g.manifests = good.manifests
        for name, value in broken.items():
            setattr(g, name, value)
        with pytest.raises(GenesisError, match=why):
            g.validate()
