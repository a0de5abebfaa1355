"""The gateway's TLS identity in its home: made by `init` (key 0600), bound to the gateway key,
kept across starts, remade only when it must be; and the peer port's set of trusted
certificates, built from registry records."""

from __future__ import annotations

import datetime
import json
import os

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edgistry.abci_app.genesis import Genesis
from edgistry.cli import main
from edgistry.cluster.home import gateway_key, init_home
from edgistry.config import NodeConfig
from edgistry.gateway.api.peer import PeerRoots
from edgistry.gateway.tls import CERT_DAYS, RENEW_BEFORE_DAYS, Pin, PinError, ensure_identity, sign_binding
from edgistry.proto import registry_pb2 as pb


def test_init_writes_the_tls_key_and_registers_the_certificate_in_genesis(tmp_path):
    """`init`: keys/tls.key is 0600 and P-256; keys/tls.crt names the gateway; genesis holds it, bound."""
    cfg = init_home(tmp_path / "home", "tls-test")
    assert oct(os.stat(cfg.tls_key_path).st_mode & 0o777) == "0o600"
    cert = x509.load_pem_x509_certificate(cfg.tls_cert_path.read_bytes())
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey) and cert.public_key().curve.name == "secp256r1"
    pin = Pin.from_file(cfg.tls_cert_path)
    key = gateway_key(cfg)
    [spec] = Genesis.from_json(json.loads(cfg.genesis_path.read_text())["app_state"]).gateways
    assert spec.tls_cert == pin.cert_der and spec.peer_endpoint == cfg.peer_listen
    assert Pin.from_record(pin.gateway_id, key.public_key().public_bytes_raw(), spec.tls_cert,
                           spec.tls_cert_signature) == pin
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH} <= set(usage)  # served and presented


def test_the_identity_is_kept_and_remade_only_when_it_must_be(tmp_path):
    """Same key and certificate across starts; a missing host, another gateway key or an end
    within the renewal window remakes the certificate, never the key."""
    key = Ed25519PrivateKey.generate()
    paths = (tmp_path / "tls.key", tmp_path / "tls.crt")
    first = ensure_identity(*paths, key)
    assert ensure_identity(*paths, key) == first
    wider = ensure_identity(*paths, key, ["gw.example.org", "10.1.2.3"])
    assert wider.cert_der != first.cert_der and wider.key_pem == first.key_pem
    sans = x509.load_der_x509_certificate(wider.cert_der).extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value
    assert "gw.example.org" in sans.get_values_for_type(x509.DNSName)
    assert ensure_identity(*paths, key, ["gw.example.org"]) == wider  # a subset needs nothing new
    late = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=CERT_DAYS - RENEW_BEFORE_DAYS + 1)
    renewed = ensure_identity(*paths, key, now=late)
    assert renewed.cert_der != wider.cert_der and renewed.key_pem == first.key_pem
    other = ensure_identity(*paths, Ed25519PrivateKey.generate())
    assert other.gateway_id != first.gateway_id and other.pin.gateway_id == other.gateway_id


def test_a_key_of_the_wrong_kind_is_refused(tmp_path):
    """An Ed25519 key where the P-256 TLS key belongs is a clear error (Ed25519 certificates fail in grpcio)."""
    from edgistry.config import write_ed25519_pem

    key = Ed25519PrivateKey.generate()
    write_ed25519_pem(tmp_path / "tls.key", key)
    with pytest.raises(PinError, match="not a P-256 key"):
        ensure_identity(tmp_path / "tls.key", tmp_path / "tls.crt", key)


def test_a_pin_file_must_be_a_gateway_certificate(tmp_path):
    """A file without a certificate, or with one that names no gateway, is not a pin."""
    (tmp_path / "junk.pem").write_text("hello")
    with pytest.raises(PinError, match="no PEM certificate"):
        Pin.from_file(tmp_path / "junk.pem")
    with pytest.raises(PinError, match="cannot read"):
        Pin.from_file(tmp_path / "missing.pem")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "www.example.org")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("www.example.org")]), critical=False)
            .sign(key, hashes.SHA256()))
    (tmp_path / "web.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(PinError, match="names no gateway"):
        Pin.from_file(tmp_path / "web.pem")


def test_peer_roots_follow_the_registry_and_skip_unbound_certificates(tmp_path):
    """The peer port trusts its own certificate and every registered one bound to its gateway's
    key; a change of the set, and only a change, hands gRPC a new configuration once."""
    own = ensure_identity(tmp_path / "a.key", tmp_path / "a.crt", Ed25519PrivateKey.generate())
    roots = PeerRoots(own)
    assert roots.fetch() is None and roots.certs == (own.cert_der,)

    def record(name: str, bind_with=None) -> pb.GatewayRecord:
        key = Ed25519PrivateKey.generate()
        ident = ensure_identity(tmp_path / f"{name}.key", tmp_path / f"{name}.crt", key)
        sig = sign_binding(bind_with or key, ident.cert_der)
        return pb.GatewayRecord(id=ident.gateway_id, pubkey=key.public_key().public_bytes_raw(),
                                tls_cert=ident.cert_der, tls_cert_signature=sig)

    b, forged, bare = record("b"), record("c", bind_with=Ed25519PrivateKey.generate()), pb.GatewayRecord(id="d")
    assert roots.update([b, forged, bare]) is True
    assert set(roots.certs) == {own.cert_der, b.tls_cert}
    assert roots.fetch() is not None and roots.fetch() is None  # handed over once
    assert roots.update([b, forged, bare]) is False and roots.fetch() is None
    assert roots.update([]) is True and roots.certs == (own.cert_der,)  # b removed: no longer trusted


def test_gateway_info_of_an_insecure_home_has_no_pin(tmp_path):
    """A home configured `insecure = true` reports no TLS pin (and says why)."""
    cfg = init_home(tmp_path / "home", "tls-test")
    cfg.insecure = True
    cfg.save()
    res = CliRunner().invoke(main, ["gateway", "info", "--home", str(cfg.home), "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["tls_pin"] is None
    res = CliRunner().invoke(main, ["gateway", "info", "--home", str(cfg.home)])
    assert "none: this gateway runs --insecure" in res.stdout
    assert NodeConfig.load(cfg.home).insecure is True
