"""The gateway's TLS record on chain (SetGatewayTls): who may set it, what it must look like,
that it reads back through /gateway and genesis, and that clients check its binding."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgistry.abci_app import keys, txs
from edgistry.abci_app.overlay import Overlay
from edgistry.abci_app.app import RegistryApp
from edgistry.abci_app.codes import Code
from edgistry.abci_app.genesis import Genesis, GatewaySpec
from edgistry.gateway.tls import Pin, PinError, ensure_identity, sign_binding
from edgistry.proto import registry_pb2 as pb
from registry_helpers import Actors, Driver, pub


@pytest.fixture
def env(tmp_path):
    actors = Actors()
    app = RegistryApp(tmp_path / "reg")
    driver = Driver(app, actors.genesis())
    yield actors, app, driver, tmp_path
    app.close()


def tls_msg(tmp_path, key: Ed25519PrivateKey, peer: str = "127.0.0.1:26673", name: str = "tls") -> pb.SetGatewayTls:
    ident = ensure_identity(tmp_path / f"{name}.key", tmp_path / f"{name}.crt", key)
    return pb.SetGatewayTls(cert=ident.cert_der, cert_signature=ident.signature, peer_endpoint=peer)


def record(driver, gateway_id: str) -> pb.GatewayRecord:
    resp = driver.query("/gateway", gateway_id.encode())
    assert resp.code == 0, resp.log
    return pb.GatewayRecord.FromString(resp.value)


def test_gateway_publishes_its_certificate_and_clients_pin_it(env):
    """A gateway's SetGatewayTls lands in its record; the record yields a pin bound to its key."""
    a, app, d, tmp = env
    msg = tls_msg(tmp, a.gw1)
    res = d.block([a.tx(a.gw1, msg)]).tx_results[0]
    assert res.code == 0, res.log
    assert [e.type for e in res.events] == ["gateway_tls_set"]
    rec = record(d, a.gw1_id)
    assert (rec.tls_cert, rec.tls_cert_signature, rec.peer_endpoint) == (msg.cert, msg.cert_signature,
                                                                         "127.0.0.1:26673")
    pin = Pin.from_record(rec.id, rec.pubkey, rec.tls_cert, rec.tls_cert_signature)
    assert pin.gateway_id == a.gw1_id and pin.name == f"{a.gw1_id}.gateway.edgistry"
    assert record(d, a.gw2_id).tls_cert == b""  # the other gateway's record is untouched


def test_same_record_again_changes_nothing(env, monkeypatch):
    """Publishing the same certificate twice does not rewrite the record the second time (no event)."""
    a, app, d, tmp = env
    msg = tls_msg(tmp, a.gw1)
    d.block([a.tx(a.gw1, msg)])
    before = record(d, a.gw1_id)
    written: list[bytes] = []
    real_put = Overlay.put
    monkeypatch.setattr(Overlay, "put", lambda self, k, v: (written.append(k), real_put(self, k, v))[1])
    res = d.block([a.tx(a.gw1, msg)]).tx_results[0]
    assert res.code == 0 and list(res.events) == []
    assert record(d, a.gw1_id) == before
    assert keys.nonce(pub(a.gw1)) in written  # the hook sees the tx's writes...
    assert keys.gateway(a.gw1_id) not in written  # ...and the record is not among them


@pytest.mark.parametrize("signer, code", [("admin", Code.UNAUTHORIZED), ("stranger", Code.UNKNOWN_SIGNER)])
def test_only_the_gateway_itself_sets_its_certificate(env, signer, code):
    """An admin or an unknown key cannot publish a TLS record (it is the gateway's own)."""
    a, app, d, tmp = env
    res = d.block([a.tx(getattr(a, signer), tls_msg(tmp, a.gw1))]).tx_results[0]
    assert res.code == code


@pytest.mark.parametrize("mutate, why", [
    (lambda m: setattr(m, "cert", b"\x30\x03abcd"), "DER"),  # length says 3, 4 bytes follow
    (lambda m: setattr(m, "cert", b"\x04\x02ab"), "DER"),  # not a SEQUENCE
    (lambda m: setattr(m, "cert", b"\x30\x82" + (5000).to_bytes(2, "big") + b"x" * 5000), "4096"),
    (lambda m: setattr(m, "cert_signature", b"s" * 63), "64-byte"),
    (lambda m: (m.ClearField("cert")), "without a cert"),
    (lambda m: setattr(m, "peer_endpoint", "no-port"), "HOST:PORT"),
    (lambda m: setattr(m, "peer_endpoint", ""), "HOST:PORT"),
])
def test_malformed_records_are_refused_statelessly(env, mutate, why):
    """Bad certificate shapes, signature lengths and peer endpoints fail validate_basic (INVALID_FIELD)."""
    a, app, d, tmp = env
    msg = tls_msg(tmp, a.gw1)
    mutate(msg)
    with pytest.raises(txs.TxError) as err:
        txs.decode_tx(a.tx(a.gw1, msg))
    assert err.value.code == Code.INVALID_FIELD and why in err.value.log


def test_an_insecure_gateway_publishes_only_its_peer_endpoint(env):
    """An empty certificate is valid (a gateway run with --insecure); a client refuses to pin it."""
    a, app, d, tmp = env
    res = d.block([a.tx(a.gw1, pb.SetGatewayTls(peer_endpoint="10.0.0.1:26673"))]).tx_results[0]
    assert res.code == 0, res.log
    rec = record(d, a.gw1_id)
    with pytest.raises(PinError, match="publishes no TLS certificate"):
        Pin.from_record(rec.id, rec.pubkey, rec.tls_cert, rec.tls_cert_signature)


def test_a_bad_binding_is_stored_but_never_pinned(env):
    """The chain does not verify the binding (validators never disagree on it); clients do, and refuse."""
    a, app, d, tmp = env
    msg = tls_msg(tmp, a.gw1)
    msg.cert_signature = sign_binding(a.gw2, msg.cert)  # signed by another gateway's key
    assert d.block([a.tx(a.gw1, msg)]).tx_results[0].code == 0
    rec = record(d, a.gw1_id)
    with pytest.raises(PinError, match="not signed by gateway"):
        Pin.from_record(rec.id, rec.pubkey, rec.tls_cert, rec.tls_cert_signature)
    with pytest.raises(PinError, match="another gateway's key"):  # a record whose id is not its key's
        Pin.from_record(a.gw2_id, rec.pubkey, rec.tls_cert, rec.tls_cert_signature)
    other = tls_msg(tmp, a.gw2, name="two")  # gateway two's certificate, bound by two: not gateway one's
    with pytest.raises(PinError, match="is named"):
        Pin.from_record(a.gw1_id, pub(a.gw1), other.cert, sign_binding(a.gw1, other.cert))


def test_genesis_carries_the_tls_record_and_exports_it(env, tmp_path):
    """A gateway registered in genesis with its certificate is pinnable from the first block; export keeps it."""
    a, _, _, tmp = env
    msg = tls_msg(tmp, a.gw1)
    genesis = Genesis(admins=[pub(a.admin)], gateways=[
        GatewaySpec(pub(a.gw1), "127.0.0.1:26670", "one", tls_cert=msg.cert, tls_cert_signature=msg.cert_signature,
                    peer_endpoint=msg.peer_endpoint)])
    assert Genesis.from_json(genesis.to_json()) == genesis
    app = RegistryApp(tmp_path / "g")
    try:
        d = Driver(app, genesis)
        d.block([])
        rec = record(d, a.gw1_id)
        assert rec.tls_cert == msg.cert and rec.peer_endpoint == msg.peer_endpoint
        with app.store.reader() as r:
            assert Genesis.export(r).gateways == genesis.gateways
    finally:
        app.close()
    bad = genesis.to_json()
    bad["gateways"][0]["peer_endpoint"] = "nowhere"
    with pytest.raises(ValueError, match="HOST:PORT"):
        Genesis.from_json(bad)


@pytest.mark.parametrize("der, ok", [
    (b"\x30\x00", True), (b"\x30\x01\x00", True), (b"\x30\x81\x80" + b"x" * 128, True),
    (b"\x30\x81\x7f" + b"x" * 127, False),  # long form for a short length: not DER
    (b"\x30\x82\x00\x80" + b"x" * 128, False),  # leading zero length byte
    (b"\x30\x02\x00", False), (b"\x30", False), (b"", False), (b"\x31\x00", False),
])
def test_der_shape_check(der, ok):
    """The chain's own DER check accepts exactly one minimal-length SEQUENCE."""
    assert txs.der_sequence_ok(der) is ok
