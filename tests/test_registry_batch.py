"""Batch txs in the registry app: one signature and nonce, every operation validated
and applied on its own with its own code, bounded, replay-safe and deterministic."""

from __future__ import annotations

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from edgistry.abci_app import txs
from edgistry.abci_app.app import RegistryApp
from edgistry.abci_app.batch import BATCH_OP_EVENT, batch_of, op_of
from edgistry.abci_app.codes import Code
from edgistry.abci_app.revocation_rule import revocation_hash
from edgistry.proto import abci_pb2 as abci
from edgistry.proto import registry_pb2 as pb
from registry_helpers import T0, Actors, Driver, device_fields, device_msg

P1, P2, P3 = b"\x01" * 16, b"\x02" * 16, b"\x03" * 16


@pytest.fixture
def world(tmp_path):
    actors = Actors()
    app = RegistryApp(tmp_path / "reg")
    driver = Driver(app, actors.genesis())
    yield actors, app, driver
    app.close()


def _result(res: abci.ExecTxResult) -> pb.BatchResult:
    return pb.BatchResult.FromString(res.data)


def _op_events(res: abci.ExecTxResult) -> list[dict]:
    return [{a.key: a.value for a in ev.attributes} for ev in res.events if ev.type == BATCH_OP_EVENT]


def _device(driver: Driver, ps: bytes) -> pb.DeviceRecord | None:
    resp = driver.query("/device", pb.DeviceQuery(pseudonym=ps).SerializeToString())
    return pb.DeviceRecord.FromString(resp.value) if resp.code == 0 else None


def test_mixed_good_and_bad_operations_each_get_their_own_code(world):
    """Good operations apply, bad ones fail alone with their own code; events and data say which."""
    a, app, driver = world
    tag_hash = revocation_hash(b"t" * 32)
    ops = [
        op_of(device_msg(P1)),                                   # ok
        op_of(device_msg(P1)),                                   # DEVICE_EXISTS (the op before registered it)
        op_of(pb.UnregisterDevice(pseudonym=P2)),                # DEVICE_NOT_FOUND
        op_of(pb.UnregisterDevice(pseudonym=b"short")),          # INVALID_FIELD (stateless, alone)
        pb.BatchOp(),                                            # NO_MESSAGE
        op_of(pb.RevokeToken(tag_hash=tag_hash, expires_at=T0 + 10_000)),  # ok
        op_of(pb.RevokeToken(tag_hash=revocation_hash(b"u" * 32), expires_at=T0 - 1)),  # ALREADY_EXPIRED
        op_of(pb.ReportLiveness(entries=[pb.LivenessEntry(pseudonym=P1, last_seen=T0 // 300 * 300)])),  # ok
        op_of(device_msg(P3)),                                   # ok
    ]
    tx = a.tx(a.gw1, pb.Batch(ops=ops))
    assert app.check_tx(abci.RequestCheckTx(tx=tx)).code == 0
    res = driver.block([tx]).tx_results[0]
    assert res.code == 0, res.log
    want = [Code.OK, Code.DEVICE_EXISTS, Code.DEVICE_NOT_FOUND, Code.INVALID_FIELD, Code.NO_MESSAGE, Code.OK,
            Code.ALREADY_EXPIRED, Code.OK, Code.OK]
    result = _result(res)
    assert list(result.codes) == [int(c) for c in want]
    assert result.data[0] == P1 and result.data[1] == b"" and result.data[8] == P3
    summary = {a.key: a.value for a in res.events[0].attributes}
    assert res.events[0].type == "batch"
    assert summary == {"ops": "9", "failed": "5", "codes": ",".join(str(int(c)) for c in want)}
    failures = _op_events(res)  # one per failed operation, with its log
    assert [(int(e["index"]), int(e["code"])) for e in failures] == [(i, c) for i, c in enumerate(want) if c]
    assert all(e["log"] for e in failures) and failures[0]["op"] == "register_device"
    types = [ev.type for ev in res.events]
    assert types.count("device_registered") == 2 and types.count("token_revoked") == 1  # followers read these
    # only the auditable kind is searchable; device and batch bookkeeping stay unindexed
    indexed = {ev.type for ev in res.events for attr in ev.attributes if attr.index}
    assert indexed == {"token_revoked"}
    assert all(attr.index for ev in res.events if ev.type == "token_revoked" for attr in ev.attributes)
    assert _device(driver, P1).last_seen == T0 // 300 * 300 and _device(driver, P3) is not None
    assert _device(driver, P2) is None
    revoked = pb.RevocationList.FromString(driver.query("/revocations").value).revocations
    assert [r.tag_hash for r in revoked] == [tag_hash]


def test_a_failed_operation_leaves_no_write(world, tmp_path):
    """A batch whose every operation fails changes nothing but the signer's nonce."""
    a, app, driver = world
    driver.block([])  # past the genesis block (whose overlay holds the genesis writes)
    tx = a.tx(a.gw1, pb.Batch(ops=[op_of(pb.UnregisterDevice(pseudonym=P2)), pb.BatchOp()]))
    resp = app.finalize_block(abci.RequestFinalizeBlock(txs=[tx], height=app.height + 1,
                                                        time=Timestamp(seconds=driver.time + 5)))
    assert resp.tx_results[0].code == 0
    assert list(_result(resp.tx_results[0]).codes) == [Code.DEVICE_NOT_FOUND, Code.NO_MESSAGE]
    writes = {k for k in app._block.writes if not k.startswith((b"n/", b"x/"))}
    assert writes == set()


def test_operations_keep_the_signer_role(world):
    """Each operation runs with the batch signer's rights: another gateway's device is refused alone."""
    a, app, driver = world
    driver.block([a.tx(a.gw1, device_msg(P1))])
    tx = a.tx(a.gw2, batch_of([pb.UnregisterDevice(pseudonym=P1), device_msg(P2)]))
    res = driver.block([tx]).tx_results[0]
    assert list(_result(res).codes) == [Code.NOT_DEVICE_OWNER, Code.OK]
    assert _device(driver, P1).gateway_id == a.gw1_id and _device(driver, P2).gateway_id == a.gw2_id
    admin = a.tx(a.admin, batch_of([device_msg(P3), pb.UnregisterDevice(pseudonym=P1)]))
    res = driver.block([admin]).tx_results[0]
    assert list(_result(res).codes) == [Code.UNAUTHORIZED, Code.OK]  # admins may unregister, not register


def test_replay_and_stale_nonces_are_refused(world):
    """A batch is one nonce: the same bytes again, or an older nonce, are refused whole."""
    a, app, driver = world
    first = a.tx(a.gw1, batch_of([device_msg(P1)]), nonce=10)
    assert driver.block([first]).tx_results[0].code == 0
    assert app.check_tx(abci.RequestCheckTx(tx=first)).code == Code.NONCE_REUSED
    assert driver.block([first]).tx_results[0].code == Code.NONCE_REUSED
    older = a.tx(a.gw1, batch_of([device_msg(P2)]), nonce=9)
    assert app.check_tx(abci.RequestCheckTx(tx=older)).code == Code.STALE_NONCE
    res = driver.block([older]).tx_results[0]
    assert res.code == Code.STALE_NONCE and not res.data
    assert _device(driver, P2) is None
    # a batch whose operations all failed still consumed its nonce: it cannot come back later to succeed
    doomed = a.tx(a.gw1, batch_of([pb.UnregisterDevice(pseudonym=P3)]), nonce=11)
    assert list(_result(driver.block([doomed]).tx_results[0]).codes) == [Code.DEVICE_NOT_FOUND]
    driver.block([a.tx(a.gw1, device_msg(P3), nonce=12)])
    assert driver.block([doomed]).tx_results[0].code == Code.STALE_NONCE
    assert _device(driver, P3) is not None


def test_bounds(world):
    """At most MAX_BATCH_OPS operations, at least one, and the tx within MAX_TX_BYTES."""
    a, app, driver = world
    unreg = op_of(pb.UnregisterDevice(pseudonym=P1))
    full = a.tx(a.gw1, pb.Batch(ops=[unreg] * txs.MAX_BATCH_OPS))
    assert app.check_tx(abci.RequestCheckTx(tx=full)).code == 0
    res = driver.block([full]).tx_results[0]
    assert res.code == 0 and len(_result(res).codes) == txs.MAX_BATCH_OPS
    over = a.tx(a.gw1, pb.Batch(ops=[unreg] * (txs.MAX_BATCH_OPS + 1)))
    assert app.check_tx(abci.RequestCheckTx(tx=over)).code == Code.BATCH_TOO_LARGE
    empty = a.tx(a.gw1, pb.Batch())
    assert app.check_tx(abci.RequestCheckTx(tx=empty)).code == Code.INVALID_FIELD
    big = device_msg(P1, inline=True)  # the largest operation: a device with its services inline (1 KiB)
    n = txs.MAX_TX_BYTES // len(op_of(big).SerializeToString()) + 1
    assert n <= txs.MAX_BATCH_OPS  # the byte bound is what stops this one
    huge = a.tx(a.gw1, pb.Batch(ops=[op_of(device_msg(bytes([i % 256, i // 256]) * 8, inline=True))
                                     for i in range(n)]))
    assert len(huge) > txs.MAX_TX_BYTES
    assert app.check_tx(abci.RequestCheckTx(tx=huge)).code == Code.TX_TOO_LARGE
    assert driver.block([huge]).tx_results[0].code == Code.TX_TOO_LARGE


def test_only_registry_operations_travel_in_a_batch():
    """Admin and validator messages have no BatchOp field: they cannot be batched."""
    for msg in (pb.RegisterGateway(), pb.SetValidator(), pb.RemoveGateway(), pb.PutDataKey()):
        with pytest.raises(TypeError):
            op_of(msg)


def _blocks(a: Actors) -> list[list[bytes]]:
    live = T0 // 300 * 300
    return [
        [a.tx(a.gw1, batch_of([device_msg(P1), device_msg(P2), pb.UnregisterDevice(pseudonym=P3)])),
         a.tx(a.gw2, device_msg(P3))],
        [a.tx(a.gw2, batch_of([pb.UnregisterDevice(pseudonym=P1), device_msg(P3, cls=pb.UpdateDevice, k=3),
                               pb.ReportLiveness(entries=[pb.LivenessEntry(pseudonym=P3, last_seen=live)])])),
         a.tx(a.gw1, batch_of([pb.RevokeToken(tag_hash=revocation_hash(b"x" * 32), expires_at=T0 + 130),
                               pb.UnregisterDevice(pseudonym=P2), device_msg(P2)]))],
        [a.tx(a.gw1, batch_of([pb.UnregisterDevice(pseudonym=P1)]))],
        [],  # the revocation expires: pruned
    ]


def test_two_apps_fed_the_same_blocks_agree(tmp_path):
    """Fresh apps given the same batch blocks give equal results and app hashes at every height."""
    a = Actors()
    blocks = _blocks(a)
    runs = []
    for name in ("one", "two"):
        app = RegistryApp(tmp_path / name)
        driver = Driver(app, a.genesis())
        trace = []
        for txs_ in blocks:
            for tx in txs_:
                app.check_tx(abci.RequestCheckTx(tx=tx))  # CheckTx on one app only must not matter
            resp = driver.block(txs_, dt=40)
            trace.append((resp.app_hash, [r.SerializeToString(deterministic=True) for r in resp.tx_results]))
        runs.append(trace)
        app.close()
    assert runs[0] == runs[1]
    assert len({h for h, _ in runs[0]}) == len(blocks)  # every block changed the state
    codes = [list(pb.BatchResult.FromString(abci.ExecTxResult.FromString(r).data).codes)
             for _, results in runs[0][:3] for r in results
             if abci.ExecTxResult.FromString(r).events[0].type == "batch"]
    assert codes == [[0, 0, Code.DEVICE_NOT_FOUND], [Code.NOT_DEVICE_OWNER, 0, 0], [0, 0, 0], [0]]


def test_check_tx_admits_on_signature_and_nonce_and_the_block_decides_each_operation(world):
    """CheckTx (and RECHECK) admit a batch without running its operations; FinalizeBlock runs
    them with the block's time: a revocation expired by then fails alone."""
    a, app, driver = world
    tx = a.tx(a.gw1, batch_of([pb.RevokeToken(tag_hash=revocation_hash(b"r" * 32), expires_at=T0 + 8),
                               pb.UnregisterDevice(pseudonym=P2)]))
    assert app.check_tx(abci.RequestCheckTx(tx=tx)).code == 0
    assert [k for k in app._check.writes if not k.startswith(b"n/")] == []  # only the nonce is staged
    driver.block([], dt=20)
    assert app.check_tx(abci.RequestCheckTx(tx=tx, type=abci.RECHECK)).code == 0
    res = driver.block([tx]).tx_results[0]
    assert list(_result(res).codes) == [Code.ALREADY_EXPIRED, Code.DEVICE_NOT_FOUND]
    replay = app.check_tx(abci.RequestCheckTx(tx=tx))
    assert replay.code == Code.NONCE_REUSED


RAW_TAG = b"S" * 32  # a CAPLets tag: it derives children of its token, so it is never published


def _leaky_device(ps: bytes, cls=pb.RegisterDevice):
    """Sealed as a gateway seals it, plus the same fields in clear."""
    msg = device_msg(ps, cls=cls)
    f = device_fields()
    msg.services.extend(f.services)
    msg.cell = f.cell
    return msg


FORBIDDEN = {
    "register_in_clear": lambda: _leaky_device(P2),
    "update_in_clear": lambda: _leaky_device(P1, pb.UpdateDevice),
    "raw_tag": lambda: pb.RevokeToken(tag=RAW_TAG, expires_at=T0 + 10_000),
}


def _proposal(app: RegistryApp, txs_: list[bytes]) -> int:
    return app.process_proposal(abci.RequestProcessProposal(txs=txs_, height=app.height + 1)).status


def _prepared(app: RegistryApp, txs_: list[bytes]) -> list[bytes]:
    return list(app.prepare_proposal(abci.RequestPrepareProposal(max_tx_bytes=1 << 22, txs=txs_,
                                                                 height=app.height + 1)).txs)


@pytest.mark.parametrize("what", sorted(FORBIDDEN))
def test_a_batch_holding_what_may_never_be_on_chain_never_reaches_a_block(world, what):
    """A block's bytes are public for ever, whatever an operation's code says: a batch with
    one device op carrying its fields in clear, or a raw revocation tag, is refused whole by
    CheckTx (before its nonce), dropped by PrepareProposal and makes ProcessProposal reject
    the block, as a single tx of that kind is."""
    a, app, driver = world
    driver.block([a.tx(a.gw1, device_msg(P1))])
    clean = a.tx(a.gw2, batch_of([device_msg(P3)]))
    bad = a.tx(a.gw1, batch_of([pb.UnregisterDevice(pseudonym=P3), FORBIDDEN[what]()]), nonce=2)
    check = app.check_tx(abci.RequestCheckTx(tx=bad))
    assert check.code == Code.INVALID_FIELD and check.log.startswith("batch operation 1 ("), check.log
    assert _prepared(app, [clean, bad]) == [clean]
    assert _proposal(app, [clean, bad]) == abci.ResponseProcessProposal.REJECT
    assert _proposal(app, [clean]) == abci.ResponseProcessProposal.ACCEPT
    # the nonce was not consumed: the gateway's next batch takes it
    assert app.check_tx(abci.RequestCheckTx(tx=a.tx(a.gw1, batch_of([device_msg(P2)]), nonce=2))).code == 0
    # a block committed by a byzantine majority anyway replays as before: the op fails alone
    res = driver.block([bad]).tx_results[0]
    assert res.code == 0 and list(_result(res).codes) == [Code.DEVICE_NOT_FOUND, Code.INVALID_FIELD]


def test_a_single_raw_tag_revocation_never_reaches_a_block(world):
    """CheckTx refused it already; a proposer who includes it anyway is rejected."""
    a, app, driver = world
    driver.block([])
    bad = a.tx(a.gw1, pb.RevokeToken(tag=RAW_TAG, expires_at=T0 + 10_000))
    good = a.tx(a.gw2, pb.RevokeToken(tag_hash=revocation_hash(RAW_TAG), expires_at=T0 + 10_000))
    assert app.check_tx(abci.RequestCheckTx(tx=bad)).code == Code.INVALID_FIELD
    assert _prepared(app, [bad, good]) == [good]
    assert _proposal(app, [good, bad]) == abci.ResponseProcessProposal.REJECT
    assert _proposal(app, [good]) == abci.ResponseProcessProposal.ACCEPT


def test_below_the_revocation_activation_a_batch_may_carry_a_tag_and_leaves_the_mempool_at_it(tmp_path):
    """An older chain's rule: below the activation height a raw tag is allowed, in a batch
    too. The RECHECK before the first hash-only block runs in full and evicts it."""
    a = Actors()
    genesis = a.genesis()
    genesis.revocation_hash_height = 3
    app = RegistryApp(tmp_path / "reg")
    driver = Driver(app, genesis)
    driver.block([])  # height 1; the next is 2, below the activation
    tx = a.tx(a.gw1, batch_of([pb.RevokeToken(tag=RAW_TAG, expires_at=T0 + 10_000)]))
    assert app.check_tx(abci.RequestCheckTx(tx=tx)).code == 0
    assert _prepared(app, [tx]) == [tx]
    driver.block([])  # height 2: the next block takes only hashes
    recheck = app.check_tx(abci.RequestCheckTx(tx=tx, type=abci.RECHECK))
    assert recheck.code == Code.INVALID_FIELD and "raw tag" in recheck.log
    assert _prepared(app, [tx]) == []
    assert _proposal(app, [tx]) == abci.ResponseProcessProposal.REJECT
    app.close()


def test_every_searchable_event_kind_is_one_a_handler_emits():
    """A misspelt kind in SEARCHABLE_EVENTS would silently leave that event unindexed."""
    import inspect
    import re

    from edgistry.abci_app import handlers

    emitted = set(re.findall(r'\bevent\("([a-z_]+)"', inspect.getsource(handlers)))
    assert handlers.SEARCHABLE_EVENTS <= emitted, handlers.SEARCHABLE_EVENTS - emitted
    assert "device_registered" in emitted and "device_registered" not in handlers.SEARCHABLE_EVENTS


def test_admissibility_is_checked_once_per_tx_bytes_and_revocation_form(world, monkeypatch):
    """CheckTx, PrepareProposal and ProcessProposal see the same bytes: the pass of the
    first is remembered (its verdict is a function of the bytes and the height's form), so
    the proposals do not walk a batch's operations again (~55 us per 60 operations)."""
    from edgistry.abci_app import batch as batch_module

    a, app, driver = world
    driver.block([])
    calls = {"n": 0}
    real = batch_module.check_no_cleartext

    def counting(msg):
        calls["n"] += 1
        return real(msg)
    monkeypatch.setattr(batch_module, "check_no_cleartext", counting)
    tx = a.tx(a.gw1, batch_of([device_msg(bytes([i]) * 16) for i in range(1, 11)]))
    assert app.check_tx(abci.RequestCheckTx(tx=tx)).code == 0
    assert calls["n"] == 10
    assert _prepared(app, [tx]) == [tx]
    assert _proposal(app, [tx]) == abci.ResponseProcessProposal.ACCEPT
    assert calls["n"] == 10
    res = driver.block([tx]).tx_results[0]
    assert res.code == 0 and not any(_result(res).codes)
