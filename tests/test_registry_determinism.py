"""What a tx result says is the same on every node: logs that quote a client's string
escape it to ASCII (repr() follows the Python version's Unicode tables), decoding failures
have one fixed text whatever the protobuf backend says, and a node refuses to start on a
protobuf backend that decodes differently. Block 1 is checked against the genesis rules."""

from __future__ import annotations

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from edgistry.abci_app import app as app_module
from edgistry.abci_app import txs
from edgistry.abci_app.app import FatalAppError, RegistryApp
from edgistry.abci_app.batch import batch_of
from edgistry.abci_app.codes import Code
from edgistry.proto import abci_pb2 as abci
from edgistry.proto import registry_pb2 as pb
from registry_helpers import T0, Actors, Driver, pub
from test_registry_batch import world  # noqa: F401 - the fixture: an app with genesis, and its driver

NEW_IN_UNICODE_15 = "\U0001fae8"  # printable for Python 3.12's repr(), escaped by 3.11's
ACCENT = "\u00e9"  # printable for every version's repr(): kept as it is, so not ASCII


def test_logs_quote_client_strings_in_ascii(world):
    a, app, driver = world
    wrong_chain = a.tx(a.gw1, pb.UnregisterDevice(pseudonym=b"\x01" * 16), chain="test-chain" + ACCENT + NEW_IN_UNICODE_15)
    bad_endpoint = a.tx(a.gw2, batch_of([pb.UpdateGateway(endpoint="gw" + ACCENT + NEW_IN_UNICODE_15 + ".example:443")]))
    res = driver.block([wrong_chain, bad_endpoint]).tx_results
    assert res[0].code == Code.WRONG_CHAIN and res[0].log.isascii() and "\\U0001fae8" in res[0].log
    op_logs = [a_.value for ev in res[1].events if ev.type == "batch_op" for a_ in ev.attributes if a_.key == "log"]
    assert op_logs and all(log.isascii() and "\\U0001fae8" in log for log in op_logs)


def test_a_string_field_that_is_not_utf8_is_malformed_with_a_fixed_log(world):
    a, app, driver = world
    body = pb.TxBody(nonce=1, unregister_device=pb.UnregisterDevice(pseudonym=b"\x01" * 16)).SerializeToString()
    body = b"\x0a\x01\x8a" + body  # chain_id (field 1) = one byte that is not UTF-8
    key = a.gw1
    tx = pb.SignedTx(body=body, signer=pub(key), signature=key.sign(txs.SIGN_DOMAIN + body)).SerializeToString()
    check = app.check_tx(abci.RequestCheckTx(tx=tx))
    assert check.code == Code.MALFORMED_TX and check.log == "TxBody does not decode"
    res = app.finalize_block(abci.RequestFinalizeBlock(txs=[tx], height=app.height + 1,
                                                       time=Timestamp(seconds=T0 + 100)))
    assert res.tx_results[0].code == Code.MALFORMED_TX and res.tx_results[0].log == "TxBody does not decode"
    app.commit(abci.RequestCommit())


def test_a_node_on_another_protobuf_backend_refuses_to_start(tmp_path, monkeypatch):
    from google.protobuf.internal import api_implementation

    monkeypatch.setattr(app_module, "_SELF_TESTED", False)
    monkeypatch.setattr(api_implementation, "Type", lambda: "python")
    with pytest.raises(FatalAppError, match="upb"):
        RegistryApp(tmp_path / "reg")


def test_block_1_is_checked_against_the_genesis_revocation_form(tmp_path):
    """With revocation_hash_height 1 in genesis, a raw tag is refused from the first block
    on: before, the proposal checks read the (still empty) committed state at height 0, and
    PrepareProposal kept, ProcessProposal accepted, a raw tag in block 1."""
    a = Actors()
    genesis = a.genesis()
    genesis.revocation_hash_height = 1
    app = RegistryApp(tmp_path / "reg")
    try:
        Driver(app, genesis)  # InitChain only: nothing committed yet
        raw = a.tx(a.gw1, pb.RevokeToken(tag=b"\x07" * 32, expires_at=T0 + 10_000))
        assert app.check_tx(abci.RequestCheckTx(tx=raw)).code == Code.INVALID_FIELD
        assert list(app.prepare_proposal(abci.RequestPrepareProposal(max_tx_bytes=1 << 20, txs=[raw],
                                                                     height=1)).txs) == []
        assert app.process_proposal(abci.RequestProcessProposal(txs=[raw], height=1)).status == \
            abci.ResponseProcessProposal.REJECT
    finally:
        app.close()
