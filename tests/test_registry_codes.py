"""One test per rejection code: CheckTx and FinalizeBlock both refuse, with that code."""

from __future__ import annotations

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from edgistry.abci_app import txs
from edgistry.abci_app.app import RegistryApp
from edgistry.abci_app.codes import Code
from edgistry.proto import abci_pb2 as abci
from edgistry.proto import registry_pb2 as pb
from edgistry.gateway.discovery import sealbox
from registry_helpers import CHAIN, T0, TEST_DATA_KEY, Actors, Driver, device_msg, pub

P1 = b"\x01" * 16


def _sign_raw_body(key, body: bytes) -> bytes:
    return pb.SignedTx(body=body, signer=pub(key), signature=key.sign(txs.SIGN_DOMAIN + body)).SerializeToString()


def _seal_pub(key) -> bytes:
    return key.public_key().public_bytes_raw()


def _wrap(a: Actors, epoch: int, to: str = "gw1"):
    gid, seal = (a.gw1_id, a.seal1) if to == "gw1" else (a.gw2_id, a.seal2)
    return sealbox.wrap_key(TEST_DATA_KEY, epoch, gid, _seal_pub(seal))


def _flip_sig(raw: bytes) -> bytes:
    tx = pb.SignedTx.FromString(raw)
    sig = bytearray(tx.signature)
    sig[0] ^= 1
    tx.signature = bytes(sig)
    return tx.SerializeToString()


# code -> (setup txs, the offending tx); each a function of Actors
CASES = {
    Code.MALFORMED_TX: (lambda a: [], lambda a: b"\xff\x01garbage"),
    Code.TX_TOO_LARGE: (lambda a: [], lambda a: b"\x00" * (txs.MAX_TX_BYTES + 1)),
    Code.BAD_SIGNATURE: (lambda a: [], lambda a: _flip_sig(a.tx(a.gw1, pb.UpdateGateway(endpoint="h:1")))),
    Code.INVALID_FIELD: (lambda a: [], lambda a: a.tx(a.gw1, pb.UpdateGateway(endpoint="no port"))),
    Code.NO_MESSAGE: (lambda a: [], lambda a: _sign_raw_body(a.gw1, pb.TxBody(chain_id=CHAIN, nonce=9).SerializeToString())),
    Code.BATCH_TOO_LARGE: (lambda a: [], lambda a: a.tx(a.gw1, pb.Batch(ops=[
        pb.BatchOp(unregister_device=pb.UnregisterDevice(pseudonym=P1))] * (txs.MAX_BATCH_OPS + 1)))),
    Code.WRONG_CHAIN: (lambda a: [], lambda a: a.tx(a.gw1, pb.UpdateGateway(endpoint="h:1"), chain="other")),
    Code.UNKNOWN_SIGNER: (lambda a: [], lambda a: a.tx(a.stranger, pb.UpdateGateway(endpoint="h:1"))),
    Code.STALE_NONCE: (lambda a: [a.tx(a.gw1, pb.UpdateGateway(endpoint="h:1"), nonce=50)],
                       lambda a: a.tx(a.gw1, pb.UpdateGateway(endpoint="h:2"), nonce=40)),
    Code.NONCE_REUSED: (lambda a: [a.tx(a.gw1, pb.UpdateGateway(endpoint="h:1"), nonce=50)],
                        lambda a: a.tx(a.gw1, pb.UpdateGateway(endpoint="h:2"), nonce=50)),
    Code.UNAUTHORIZED: (lambda a: [], lambda a: a.tx(a.gw1, pb.RegisterGateway(pubkey=pub(a.stranger), endpoint="h:1"))),
    Code.GATEWAY_EXISTS: (lambda a: [], lambda a: a.tx(a.admin, pb.RegisterGateway(pubkey=pub(a.gw1), endpoint="h:1"))),
    Code.GATEWAY_NOT_FOUND: (lambda a: [], lambda a: a.tx(a.admin, pb.RemoveGateway(gateway_id="0" * 32))),
    Code.GATEWAY_HAS_DEVICES: (lambda a: [a.tx(a.gw1, device_msg(P1))],
                               lambda a: a.tx(a.admin, pb.RemoveGateway(gateway_id=a.gw1_id))),
    Code.DEVICE_EXISTS: (lambda a: [a.tx(a.gw1, device_msg(P1))], lambda a: a.tx(a.gw2, device_msg(P1))),
    Code.DEVICE_NOT_FOUND: (lambda a: [], lambda a: a.tx(a.gw1, pb.UnregisterDevice(pseudonym=P1))),
    Code.NOT_DEVICE_OWNER: (lambda a: [a.tx(a.gw1, device_msg(P1))],
                            lambda a: a.tx(a.gw2, device_msg(P1, cls=pb.UpdateDevice))),
    Code.ALREADY_EXPIRED: (lambda a: [], lambda a: a.tx(a.gw1, pb.RevokeToken(tag_hash=b"t" * 32, expires_at=T0 - 100))),
    Code.FUTURE_LIVENESS: (lambda a: [a.tx(a.gw1, device_msg(P1))],
                           lambda a: a.tx(a.gw1, pb.ReportLiveness(entries=[pb.LivenessEntry(pseudonym=P1, last_seen=(T0 // 300 + 1000) * 300)]))),
    Code.LAST_VALIDATOR: (lambda a: [a.tx(a.admin, pb.SetValidator(pubkey=b"v" * 32, power=10))],
                          lambda a: a.tx(a.admin, pb.SetValidator(pubkey=b"v" * 32, power=0))),
    Code.NO_DATA_KEY: (lambda a: [], lambda a: a.tx(a.gw1, device_msg(P1))),  # genesis without a data key
    Code.STALE_EPOCH: (lambda a: [], lambda a: a.tx(a.gw1, device_msg(P1, epoch=2))),
    Code.WRAPS_INCOMPLETE: (lambda a: [], lambda a: a.tx(a.gw1, pb.PutDataKey(
        epoch=2, key_check=sealbox.key_check(TEST_DATA_KEY), wraps=[_wrap(a, 2)]))),
    Code.WRAP_EXISTS: (lambda a: [], lambda a: a.tx(a.gw1, pb.PutDataKey(epoch=1, wraps=[_wrap(a, 1, "gw2")]))),
}

TX_CODES = {c for c in Code if c != Code.OK and c < 40}


def test_every_tx_code_has_a_case():
    """The table covers every transaction rejection code."""
    assert set(CASES) == TX_CODES


@pytest.fixture
def setup(tmp_path):
    def make(code):
        actors = Actors()
        app = RegistryApp(tmp_path / f"reg-{code.name}")
        driver = Driver(app, actors.genesis(sealed=code != Code.NO_DATA_KEY))
        before, bad = CASES[code]
        results = driver.block(before(actors))
        assert all(r.code == 0 for r in results.tx_results), [r.log for r in results.tx_results]
        return app, driver, bad(actors)
    return make


@pytest.mark.parametrize("code", sorted(TX_CODES), ids=lambda c: c.name)
def test_check_tx_rejects_with_its_code(setup, code):
    """CheckTx refuses the offending tx with its own numbered code and a log line."""
    app, _, bad = setup(code)
    resp = app.check_tx(abci.RequestCheckTx(tx=bad))
    assert (resp.code, resp.codespace) == (code, "edgistry"), resp.log
    assert resp.log
    app.close()


@pytest.mark.parametrize("code", sorted(TX_CODES), ids=lambda c: c.name)
def test_finalize_block_rejects_with_its_code_and_changes_nothing_else(setup, code):
    """FinalizeBlock validates again: the tx fails with its code; state is as with an empty block."""
    app, driver, bad = setup(code)
    resp = app.finalize_block(abci.RequestFinalizeBlock(txs=[bad], height=app.height + 1,
                                                        time=Timestamp(seconds=driver.time + 5)))
    assert resp.tx_results[0].code == code
    writes = {k for k in app._block.writes if not k.startswith((b"n/", b"x/"))}
    assert writes == set(), "a rejected tx left writes behind"
    app.close()


@pytest.mark.parametrize("path,data,height,code", [
    ("/nope", b"", 0, Code.UNKNOWN_QUERY_PATH),
    ("/devices", b"\xff\xff", 0, Code.BAD_QUERY),
    ("/devices/by_gateway", pb.DeviceQuery().SerializeToString(), 0, Code.BAD_QUERY),
    ("/devices/by_cell", pb.DeviceQuery(service_type="sensor").SerializeToString(), 0, Code.MOVED_TO_GATEWAYS),
    ("/devices", b"", 99, Code.HEIGHT_UNAVAILABLE),
    ("/device", pb.DeviceQuery(pseudonym=b"x" * 16).SerializeToString(), 0, Code.NOT_FOUND),
])
def test_query_codes(tmp_path, path, data, height, code):
    """Queries fail with a code and a log, never an exception."""
    app = RegistryApp(tmp_path / "reg")
    driver = Driver(app, Actors().genesis())
    driver.block([])
    resp = driver.query(path, data, height)
    assert resp.code == code and resp.log
    app.close()
