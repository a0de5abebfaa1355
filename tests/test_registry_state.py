"""Registry state machine behaviour: devices, indexes, revocations, history, recovery."""

from __future__ import annotations

import json

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from edgistry.abci_app import keys, sealing, txs
from edgistry.abci_app.lthash import V2, LtHash, version_at
from edgistry.abci_app.app import RegistryApp
from edgistry.abci_app.codes import Code
from edgistry.abci_app.genesis import Genesis, GenesisError
from edgistry.proto import abci_pb2 as abci
from edgistry.proto import registry_pb2 as pb
from edgistry.gateway.discovery.sealbox import SealError
from registry_helpers import (CHAIN, T0, Actors, Driver, cell_at, device_fields, device_msg, driver_catalogs,
                              manifest_msg, pub, test_keyring)


@pytest.fixture
def env(tmp_path):
    actors = Actors()
    app = RegistryApp(tmp_path / "reg")
    driver = Driver(app, actors.genesis())
    yield actors, app, driver
    app.close()


def device_at(driver, pseudonym, height=0):
    """The committed record of one device at a height (None when absent)."""
    resp = driver.query("/device", pb.DeviceQuery(pseudonym=pseudonym).SerializeToString(), height)
    return pb.DeviceRecord.FromString(resp.value) if resp.code == 0 else None


def ok(resp):
    assert [r.code for r in resp.tx_results] == [0] * len(resp.tx_results), [r.log for r in resp.tx_results]
    return resp


def test_device_fields_rest_sealed_and_only_the_data_key_opens_them(env):
    """A registered device's record holds its pseudonym and a sealed blob; the data key opens the fields."""
    a, app, d = env
    cell = cell_at(48.85, 2.35, 7)
    ok(d.block([a.tx(a.gw1, manifest_msg(a.gw1_id, ("sensor", "valve"))),
                a.tx(a.gw1, device_msg(b"A" * 16, cell, ("sensor", "valve"), res=7))]))
    rec = device_at(d, b"A" * 16)
    assert not rec.services and rec.cell == 0 and not rec.HasField("policy") and rec.duty_cycle_s == 0
    assert rec.sealed.epoch == 1 and len(rec.sealed.ciphertext) == sealing.DEVICE_REF_SIZE == 64 + 16
    with pytest.raises(SealError):  # it names a catalog slot: without the catalog, no services
        test_keyring().open_record(rec)
    opened = test_keyring().open_record(rec, driver_catalogs(d))
    assert [s.type for s in opened.services] == ["sensor", "valve"] and opened.cell == cell
    assert opened.policy.resolution == 7 and opened.duty_cycle_s == 30
    with pytest.raises(SealError):
        test_keyring(bytes(32)).open_record(rec)
    resp = d.query("/devices/by_cell", pb.DeviceQuery(service_type="sensor", cell=cell).SerializeToString())
    assert resp.code == Code.MOVED_TO_GATEWAYS


def test_update_reseals_and_unregister_removes_every_key(env):
    """Updating a device replaces its sealed fields; unregistering drops every key that names it."""
    a, app, d = env
    berlin, paris = cell_at(52.52, 13.40, 6), cell_at(48.85, 2.35, 6)
    ok(d.block([a.tx(a.gw1, manifest_msg(a.gw1_id)), a.tx(a.gw1, manifest_msg(a.gw1_id, ("camera",))),
                a.tx(a.gw1, device_msg(b"B" * 16, berlin))]))
    ok(d.block([a.tx(a.gw1, device_msg(b"B" * 16, paris, ("camera",), cls=pb.UpdateDevice))]))
    opened = test_keyring().open_record(device_at(d, b"B" * 16), driver_catalogs(d))
    assert opened.cell == paris and [s.type for s in opened.services] == ["camera"]
    ok(d.block([a.tx(a.gw1, pb.UnregisterDevice(pseudonym=b"B" * 16))]))
    with app.store.reader() as r:
        leftovers = [k for k, _ in r.scan(b"d") if b"B" * 16 in k]
    assert leftovers == []


def test_queries_at_past_heights_see_past_state(env):
    """Reads at a height return that height's state, including later-deleted records."""
    a, app, d = env
    cell = cell_at(52.52, 13.40, 6)
    ok(d.block([a.tx(a.gw1, manifest_msg(a.gw1_id)), a.tx(a.gw1, device_msg(b"C" * 16, cell))]))
    h_registered = app.height
    ok(d.block([a.tx(a.gw1, pb.UnregisterDevice(pseudonym=b"C" * 16))]))
    assert device_at(d, b"C" * 16) is None
    assert test_keyring().open_record(device_at(d, b"C" * 16, h_registered), driver_catalogs(d)).cell == cell
    assert device_at(d, b"C" * 16, h_registered - 1) is None
    resp = d.query("/device", pb.DeviceQuery(pseudonym=b"C" * 16).SerializeToString(), h_registered)
    assert resp.code == 0 and resp.height == h_registered


def test_pagination_returns_each_device_once(env):
    """Paging with the next cursor walks all devices exactly once, in order."""
    a, app, d = env
    cell = cell_at(52.52, 13.40, 6)
    names = sorted(bytes([i]) * 16 for i in range(1, 26))
    ok(d.block([a.tx(a.gw1, device_msg(p, cell)) for p in names]))
    seen, q = [], pb.DeviceQuery(limit=7)
    while True:
        page = pb.DeviceList.FromString(d.query("/devices", q.SerializeToString()).value)
        seen += [x.pseudonym for x in page.devices]
        if not page.next:
            break
        q.start_after = page.next
    assert seen == names
    gw = pb.DeviceList.FromString(d.query("/devices/by_gateway", pb.DeviceQuery(gateway_id=a.gw1_id).SerializeToString()).value)
    assert len(gw.devices) == 25


def test_revocations_expire_with_block_time(env):
    """A revocation is kept until block time passes its expiry, then pruned; extensions move it."""
    a, app, d = env
    tag = b"T" * 32
    ok(d.block([a.tx(a.gw1, pb.RevokeToken(tag_hash=tag, expires_at=T0 + 100))]))
    ok(d.block([a.tx(a.gw2, pb.RevokeToken(tag_hash=tag, expires_at=T0 + 200))]))  # extends
    d.block([], dt=150)  # past the first expiry, before the second
    assert d.query("/revocation", tag).code == 0
    d.block([], dt=100)
    assert d.query("/revocation", tag).code == Code.NOT_FOUND
    with app.store.reader() as r:
        assert list(r.scan(keys.REVOCATION_BY_EXPIRY)) == []


def test_liveness_is_coarse_and_only_moves_forward(env):
    """Liveness reports must be bucketed and never move a device's last_seen back."""
    a, app, d = env
    ok(d.block([a.tx(a.gw1, device_msg(b"L" * 16))]))
    bucket = (T0 // 300) * 300
    ok(d.block([a.tx(a.gw1, pb.ReportLiveness(entries=[pb.LivenessEntry(pseudonym=b"L" * 16, last_seen=bucket)]))]))
    ok(d.block([a.tx(a.gw1, pb.ReportLiveness(entries=[pb.LivenessEntry(pseudonym=b"L" * 16, last_seen=bucket - 300)]))]))
    rec = pb.DeviceRecord.FromString(d.query("/device", pb.DeviceQuery(pseudonym=b"L" * 16).SerializeToString()).value)
    assert rec.last_seen == bucket
    odd = d.block([a.tx(a.gw1, pb.ReportLiveness(entries=[pb.LivenessEntry(pseudonym=b"L" * 16, last_seen=bucket + 7)]))])
    assert odd.tx_results[0].code == Code.INVALID_FIELD


def test_non_canonical_body_is_malformed(env):
    """A body with an unknown field is refused even when correctly signed."""
    a, app, d = env
    body = pb.TxBody(chain_id=CHAIN, nonce=5, update_gateway=pb.UpdateGateway(endpoint="h:1")).SerializeToString()
    body += b"\xf8\x07\x01"  # field 127, varint 1: unknown
    raw = pb.SignedTx(body=body, signer=pub(a.gw1), signature=a.gw1.sign(txs.SIGN_DOMAIN + body)).SerializeToString()
    assert app.check_tx(abci.RequestCheckTx(tx=raw)).code == Code.MALFORMED_TX


def test_failed_handler_consumes_the_nonce(env):
    """A signed tx that authenticates but fails cannot be replayed later to succeed."""
    a, app, d = env
    intent = a.tx(a.gw1, pb.UnregisterDevice(pseudonym=b"R" * 16))
    assert d.block([intent]).tx_results[0].code == Code.DEVICE_NOT_FOUND
    ok(d.block([a.tx(a.gw1, device_msg(b"R" * 16))]))
    assert d.block([intent]).tx_results[0].code in (Code.STALE_NONCE, Code.NONCE_REUSED)


def test_recheck_drops_txs_invalidated_by_a_block(env):
    """After Commit, RECHECK (v0.38 field 2 and v1.x field 3) re-runs checks against the new state."""
    a, app, d = env
    pending = [a.tx(a.gw2, device_msg(p)) for p in (b"Q" * 16, b"S" * 16)]
    assert [app.check_tx(abci.RequestCheckTx(tx=t)).code for t in pending] == [0, 0]
    ok(d.block([a.tx(a.gw1, device_msg(b"Q" * 16)), a.tx(a.gw1, device_msg(b"S" * 16))]))
    assert app.check_tx(abci.RequestCheckTx(tx=pending[0], type=abci.RECHECK)).code == Code.DEVICE_EXISTS
    assert app.check_tx(abci.RequestCheckTx(tx=pending[1], type_v1=abci.CHECK_TX_TYPE_RECHECK)).code == Code.DEVICE_EXISTS
    assert app.stats == {"check": 2, "recheck": 2}


def _recheck(app, tx):
    return app.check_tx(abci.RequestCheckTx(tx=tx, type=abci.RECHECK)).code


def _count_handler_runs(monkeypatch):
    from edgistry.abci_app import handlers

    runs = []
    for kind, fn in list(handlers.HANDLERS.items()):
        monkeypatch.setitem(handlers.HANDLERS, kind, lambda ctx, msg, fn=fn, kind=kind: (runs.append(kind), fn(ctx, msg))[1])
    return runs


def test_recheck_of_an_untouched_tx_is_a_nonce_lookup(env, monkeypatch):
    """A pending tx whose reads the block did not touch is rechecked without re-running
    its handler, and its effects stay in the check state (a duplicate is still refused)."""
    a, app, d = env
    d.block([])  # past genesis: the genesis block wrote every gateway key
    pending = [a.tx(a.gw2, device_msg(p)) for p in (b"K" * 16, b"L" * 16)]
    assert [app.check_tx(abci.RequestCheckTx(tx=t)).code for t in pending] == [0, 0]
    ok(d.block([a.tx(a.gw1, device_msg(b"M" * 16))]))  # touches neither K nor L
    runs = _count_handler_runs(monkeypatch)
    assert [_recheck(app, t) for t in pending] == [0, 0]
    assert runs == []
    dup = a.tx(a.gw1, device_msg(b"K" * 16))  # K is pending in the mempool: refused at CheckTx
    assert app.check_tx(abci.RequestCheckTx(tx=dup)).code == Code.DEVICE_EXISTS
    ok(d.block(pending))


def test_recheck_reruns_txs_that_read_what_a_dropped_tx_wrote(env):
    """Rechecks follow mempool order: when an earlier pending tx fails its recheck, a later
    one that read its effects is re-run against the new state (and fails too)."""
    a, app, d = env
    register = a.tx(a.gw2, device_msg(b"N" * 16))
    update = a.tx(a.gw2, device_msg(b"N" * 16, cls=pb.UpdateDevice))
    assert [app.check_tx(abci.RequestCheckTx(tx=t)).code for t in (register, update)] == [0, 0]
    ok(d.block([a.tx(a.gw1, device_msg(b"N" * 16))]))  # gw1 takes N first
    assert _recheck(app, register) == Code.DEVICE_EXISTS
    assert _recheck(app, update) == Code.NOT_DEVICE_OWNER


def test_recheck_after_the_signers_nonce_moved_fails(env):
    """The short path still checks the nonce: a pending tx whose nonce a block used is dropped."""
    a, app, d = env
    first = a.tx(a.gw2, device_msg(b"P" * 16))
    assert app.check_tx(abci.RequestCheckTx(tx=first)).code == 0
    rival = a.tx(a.gw2, device_msg(b"O" * 16), nonce=a.nonces[pub(a.gw2)])  # same nonce, other device
    ok(d.block([rival]))
    assert _recheck(app, first) == Code.NONCE_REUSED


def test_time_dependent_kinds_are_listed():
    """Every handler that reads block time is rechecked in full (recheck.TIME_DEPENDENT)."""
    import inspect

    from edgistry.abci_app import handlers
    from edgistry.abci_app.recheck import TIME_DEPENDENT

    reads_time = {kind for kind, fn in handlers.HANDLERS.items() if "time_s" in inspect.getsource(fn)}
    assert reads_time <= TIME_DEPENDENT


def test_validator_updates_are_returned(env):
    """An admin's SetValidator comes back as a ValidatorUpdate from FinalizeBlock."""
    a, app, d = env
    resp = ok(d.block([a.tx(a.admin, pb.SetValidator(pubkey=b"V" * 32, power=7))]))
    (update,) = resp.validator_updates
    assert update.pub_key.ed25519 == b"V" * 32 and update.power == 7
    # v1.x reads the key from fields 3-4 (field 1 is reserved there): both shapes are sent
    assert (update.pub_key_bytes, update.pub_key_type) == (b"V" * 32, "ed25519")


@pytest.mark.parametrize("shape", ["v0.38", "v1.x"])
def test_init_chain_reads_genesis_validators_in_both_shapes(tmp_path, shape):
    """InitChain's validators are recorded whether CometBFT sends pub_key (v0.38) or
    pub_key_bytes + pub_key_type (v1.x); other key types are ignored."""
    key = b"K" * 32
    if shape == "v0.38":
        vals = [abci.ValidatorUpdate(pub_key=abci.PublicKey(ed25519=key), power=10)]
    else:
        vals = [abci.ValidatorUpdate(pub_key_bytes=key, pub_key_type="ed25519", power=10),
                abci.ValidatorUpdate(pub_key_bytes=b"S" * 33, pub_key_type="secp256k1", power=10)]
    app = RegistryApp(tmp_path / "reg")
    app.init_chain(abci.RequestInitChain(chain_id=CHAIN, initial_height=1, validators=vals,
                                         app_state_bytes=json.dumps(Actors().genesis().to_json()).encode()))
    app.finalize_block(abci.RequestFinalizeBlock(height=1, time=Timestamp(seconds=T0)))
    app.commit(abci.RequestCommit())
    resp = app.query(abci.RequestQuery(path="/validators"))
    assert resp.code == 0
    assert list(pb.KeyList.FromString(resp.value).keys) == [key]
    app.close()


def test_app_hash_commits_to_the_whole_state(env):
    """The app hash equals an LtHash recomputed from every primary record, and changes with any record."""
    a, app, d = env
    ok(d.block([a.tx(a.gw1, device_msg(b"H" * 16))]))
    acc = LtHash(version=version_at(app.height, app.lthash_v2_height))
    assert acc.version == V2  # a new chain's app hashes are v2 sums from block 1
    with app.store.reader() as r:
        for key, value in r.scan(b""):
            if keys.is_hashed(key):
                acc.add(key, value)
    assert acc.digest() == app.app_hash
    before = app.app_hash
    ok(d.block([a.tx(a.gw1, pb.UpdateGateway(endpoint="other:1"))]))
    assert app.app_hash != before


def test_idle_blocks_keep_the_app_hash(env):
    """Empty blocks do not change the app hash (the height is not hashed)."""
    a, app, d = env
    d.block([])
    h = app.app_hash
    d.block([])
    assert app.app_hash == h


def test_uncommitted_block_is_lost_and_replays_to_same_hash(tmp_path):
    """A crash between FinalizeBlock and Commit loses the block; replaying it gives the same hash."""
    a = Actors()
    app = RegistryApp(tmp_path / "reg")
    d = Driver(app, a.genesis())
    d.block([])
    tx = a.tx(a.gw1, device_msg(b"Z" * 16))
    req = abci.RequestFinalizeBlock(txs=[tx], height=app.height + 1, time=Timestamp(seconds=T0 + 100))
    expected = app.finalize_block(req).app_hash
    height = app.height
    app.close()  # "crash": no Commit
    app = RegistryApp(tmp_path / "reg")
    info = app.info(abci.RequestInfo())
    assert info.last_block_height == height
    assert app.finalize_block(req).app_hash == expected
    app.commit(abci.RequestCommit())
    app.close()
    app = RegistryApp(tmp_path / "reg")
    assert app.info(abci.RequestInfo()).last_block_app_hash == expected
    app.close()


@pytest.mark.parametrize("bad", [
    {"admins": ["zz"]},
    {"admins": ["00" * 31]},
    {"gateways": [{"pubkey": "00" * 32, "endpoint": "nope"}]},
    {"gateways": [{"endpoint": "h:1"}]},
    "not an object",
])
def test_bad_genesis_is_refused(bad):
    """Malformed app_state never initialises a chain."""
    with pytest.raises(GenesisError):
        Genesis.from_bytes(json.dumps(bad).encode())


def test_genesis_export_round_trips(env):
    """Exporting the state and re-importing it gives the same records."""
    a, app, d = env
    ok(d.block([a.tx(a.gw1, device_msg(b"E" * 16))]))
    with app.store.reader() as r:
        exported = Genesis.export(r)
    again = Genesis.from_json(json.loads(json.dumps(exported.to_json())))
    assert again.to_json() == exported.to_json()
    assert len(again.devices) == 1 and len(again.gateways) == 2


def test_signatures_checked_in_check_tx_are_not_verified_again(env, monkeypatch):
    """A tx is verified once per node: bytes CheckTx verified are not verified again by the
    proposal methods or FinalizeBlock; a tx first seen in a proposal is verified there once."""
    a, app, d = env
    seen = a.tx(a.gw1, device_msg(b"V" * 16))
    unseen = a.tx(a.gw1, device_msg(b"W" * 16))
    assert app.check_tx(abci.RequestCheckTx(tx=seen)).code == 0
    calls = []
    real = txs.verify_signature

    def counting(tx, rule):
        calls.append(tx.raw_body)
        real(tx, rule)

    monkeypatch.setattr("edgistry.abci_app.state.verify_signature", counting)
    monkeypatch.setattr("edgistry.abci_app.app.verify_signature", counting)
    ok(d.block([seen, unseen]))
    assert calls == [pb.SignedTx.FromString(unseen).body]
    assert len(app.verified) == 0

    calls.clear()
    late = a.tx(a.gw1, device_msg(b"U" * 16))
    resp = app.finalize_block(abci.RequestFinalizeBlock(txs=[late], height=app.height + 1,
                                                        time=Timestamp(seconds=d.time + 5)))
    ok(resp)
    assert calls == [pb.SignedTx.FromString(late).body]  # never seen before: FinalizeBlock verifies it


def test_a_forged_tx_is_never_remembered_as_verified(env):
    """A tx whose signature fails CheckTx still fails in FinalizeBlock."""
    a, app, d = env
    raw = pb.SignedTx.FromString(a.tx(a.gw1, device_msg(b"X" * 16)))
    raw.signature = bytes(64)
    forged = raw.SerializeToString()
    assert app.check_tx(abci.RequestCheckTx(tx=forged)).code == Code.BAD_SIGNATURE
    assert d.block([forged]).tx_results[0].code == Code.BAD_SIGNATURE


def _svc(kind: str, *methods: str) -> pb.ServiceDescriptor:
    return pb.ServiceDescriptor(type=kind, methods=[pb.ServiceMethod(name=m) for m in methods])


@pytest.mark.parametrize("services, fragment", [
    ([_svc("sensor", "read"), _svc("sensor", "write")], "service type is repeated"),
    ([_svc("Bad Type", "read")], "service type 'Bad Type' is malformed"),
    ([_svc("sensor")], "needs 1..32 distinct methods"),
    ([_svc("sensor", "read", "read")], "needs 1..32 distinct methods"),
    ([_svc("sensor", "read", "no/slash")], "malformed method name 'no/slash'"),
    ([_svc(f"s{i}", "read") for i in range(17)], "1..16 services"),
    ([], "1..16 services"),
])
def test_device_service_checks_reject_with_their_reason(services, fragment):
    """The plaintext check a gateway runs before sealing refuses each kind of bad service list
    with INVALID_FIELD and its reason, every time (the per-descriptor verdicts are cached by the
    descriptor's bytes)."""
    fields = device_fields()
    del fields.services[:]
    fields.services.extend(services)
    for _ in range(2):
        with pytest.raises(txs.TxError) as err:
            txs.check_device_plaintext(fields)
        assert err.value.code == Code.INVALID_FIELD and fragment in err.value.log


def test_device_service_checks_accept_a_good_list():
    """Two services with distinct well-formed methods pass, also when checked again."""
    fields = device_fields()
    del fields.services[:]
    fields.services.extend([_svc("sensor", "read", "write"), _svc("valve", "open")])
    txs.check_device_plaintext(fields)
    txs.check_device_plaintext(fields)
