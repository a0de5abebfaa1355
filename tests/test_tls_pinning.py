"""Where clients get a gateway's pin, and what an attacker can do about it, against a real
``edgistry up``: registry nodes must agree, a lying node cannot make a client send its token
anywhere else, pairing through an active man in the middle is refused, and a wrong pin file
is refused."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgistry.cli import main
from edgistry.client import Client, ConfigError, NotFound, Pin, PinMismatch, Unavailable, pin_from_registry
from edgistry.config import NodeConfig, load_ed25519_pem
from edgistry.gateway.tls import ensure_identity
from edgistry.proto import registry_pb2 as pb
from gateway_helpers import make_device_home, node_home, wait_file
from proc_helpers import edgistry, stop, wait_for_port
from tls_helpers import FakePeer, LyingRegistry, TlsMitm

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]
RID = "00" * 16


@dataclass
class Node:
    cfg: NodeConfig
    pin: Pin
    token: Path

    @property
    def record(self) -> pb.GatewayRecord:
        """This gateway's registry record, as the honest registry holds it."""
        key = load_ed25519_pem(self.cfg.keys_dir / "gateway.pem")
        return pb.GatewayRecord(id=self.pin.gateway_id, pubkey=key.public_key().public_bytes_raw(),
                                endpoint=self.cfg.grpc_listen, tls_cert=self.pin.cert_der,
                                tls_cert_signature=ensure_identity(self.cfg.tls_key_path, self.cfg.tls_cert_path,
                                                                   key).signature)


def cli(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    root = tmp_path_factory.mktemp("pins")
    cfg, ports = node_home(root / "a")
    proc = edgistry("up", "--home", str(cfg.home), log=root / "a.log")
    try:
        wait_for_port(ports["grpc"], proc=proc, timeout=30)
        wait_registered(cfg)
        minted = cli("token", "app", "--home", str(cfg.home), "--name", "pins")
        assert minted.exit_code == 0, minted.output
        token = root / "app.token"
        token.write_text(minted.stdout)
        yield Node(cfg, Pin.from_file(cfg.tls_cert_path), token)
    finally:
        stop(proc)


def wait_registered(cfg: NodeConfig, timeout: float = 20) -> None:
    """Until the registry holds the endpoints the gateway publishes at start (genesis has the defaults)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            pin = Pin.from_file(cfg.tls_cert_path)
            if pin_from_registry(cfg.rpc_url, gateway_id=pin.gateway_id) == pin:
                return
            raise PinMismatch("not the certificate the gateway serves yet")
        except PinMismatch:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def reaches(node: Node, **tls) -> None:
    """A call with the app token gets through to the gateway (which knows no such request)."""
    with Client(node.cfg.grpc_listen, token=node.token, timeout=10, **tls) as client:
        with pytest.raises(NotFound):
            client.result(RID)


def test_pins_from_agreeing_registry_nodes(node):
    """The registry's record of the gateway named by its id, read from nodes that agree, is the
    gateway's own certificate; clients made with it reach the gateway. Without an id there is
    no pin from the registry at all (a record found by address could be invented on the way)."""
    rpc = node.cfg.rpc_url
    gid = node.pin.gateway_id
    assert pin_from_registry([rpc, rpc], gateway_id=gid) == node.pin
    reaches(node, tls_from_registry=[rpc, rpc], gateway_id=gid)
    reaches(node, pin=node.cfg.tls_cert_path)
    with pytest.raises(ConfigError, match="needs the gateway's id"):
        pin_from_registry(rpc)
    with pytest.raises(ConfigError, match="needs the gateway's id"):
        reaches(node, tls_from_registry=rpc)
    res = cli("result", RID, "--gateway", node.cfg.grpc_listen, "--token", str(node.token),
              "--tls-from-registry", rpc)
    assert res.exit_code == 2 and "--gateway-id" in res.output
    with pytest.raises(PinMismatch, match="holds no gateway"):
        pin_from_registry(rpc, gateway_id="00" * 16)


def test_a_node_serving_an_old_record_is_outvoted(node, tmp_path):
    """A node that serves another certificate bound by the same gateway key (an old one, say)
    disagrees with an honest node: the client trusts neither and says so."""
    key = load_ed25519_pem(node.cfg.keys_dir / "gateway.pem")
    old = ensure_identity(tmp_path / "old.key", tmp_path / "old.crt", key)
    stale = pb.GatewayRecord()
    stale.CopyFrom(node.record)
    stale.tls_cert, stale.tls_cert_signature = old.cert_der, old.signature
    liar = LyingRegistry([stale])
    try:
        with pytest.raises(PinMismatch, match="disagree"):
            pin_from_registry([node.cfg.rpc_url, liar.url], gateway_id=node.pin.gateway_id)
        res = cli("result", RID, "--gateway", node.cfg.grpc_listen, "--token", str(node.token),
                  "--tls-from-registry", node.cfg.rpc_url, "--tls-from-registry", liar.url,
                  "--gateway-id", node.pin.gateway_id)
        assert res.exit_code == 1 and "disagree" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    finally:
        liar.close()


def test_a_lone_lying_node_cannot_divert_a_token(node, tmp_path):
    """Trusting one node that lies: a forged binding of the named gateway is refused outright,
    and a self-consistent record of the liar's own gateway is never taken for it, since the
    gateway is named by its id (the hash of its key). Finding the gateway by its address used
    to take such a record, and a liar that also answered for the address got the token."""
    forged = pb.GatewayRecord()
    forged.CopyFrom(node.record)
    attacker = FakePeer.make(tmp_path, "attacker")
    forged.tls_cert, forged.tls_cert_signature = attacker.tls.cert_der, attacker.tls.signature
    own = pb.GatewayRecord(id=attacker.gateway_id, pubkey=attacker.key.public_key().public_bytes_raw(),
                           endpoint=node.cfg.grpc_listen, tls_cert=attacker.tls.cert_der,
                           tls_cert_signature=attacker.tls.signature)
    for record, gid, expect in ((forged, node.pin.gateway_id, "not signed by gateway"), (own, None, None)):
        liar = LyingRegistry([record])
        try:
            if expect:
                with pytest.raises(ConfigError, match=expect):
                    pin_from_registry(liar.url, gateway_id=gid)
                continue
            with pytest.raises(PinMismatch):  # the liar holds no record under the real gateway's id
                pin_from_registry(liar.url, gateway_id=node.pin.gateway_id)
            with pytest.raises(ConfigError, match="needs the gateway's id"):
                Client(node.cfg.grpc_listen, token=node.token, tls_from_registry=liar.url, timeout=5)
        finally:
            liar.close()


def test_pairing_through_a_man_in_the_middle_is_refused(node, tmp_path):
    """An attacker who ends TLS with its own certificate and relays to the real gateway: the
    gateway's signed offer names the gateway's certificate, not the attacker's, so the pairing
    tool stops before sending anything; with the right pin it cannot even connect."""
    mitm = TlsMitm(("127.0.0.1", int(node.cfg.grpc_listen.rsplit(":", 1)[1])),
                   FakePeer.make(tmp_path, "mitm").tls, tmp_path)
    dev = make_device_home(tmp_path / "dev")
    code = wait_file(node.cfg.home / "commission.code")
    try:
        res = cli("pair", "--device", str(dev.path), "--gateway", mitm.address, "--code", code)
        assert res.exit_code == 1 and "names another TLS certificate" in res.stderr
        res = cli("pair", "--device", str(dev.path), "--gateway", mitm.address, "--code", code,
                  "--pin", str(node.cfg.tls_cert_path))
        assert res.exit_code == 1 and "certificate is not trusted" in res.stderr
    finally:
        mitm.close()
    assert not dev.paired_path.exists() and not (dev.path / "gateway.pem").exists()
    assert (node.cfg.home / "commission.code").read_text().strip() == code  # the code never reached anyone


def test_pairing_pins_and_a_wrong_pin_is_refused(node, tmp_path):
    """`pair` with another gateway's certificate as --pin fails to connect; without a pin it
    writes the gateway's own certificate as gateway.pem, which then pins the gateway for invoke."""
    dev = make_device_home(tmp_path / "dev")
    other = FakePeer.make(tmp_path, "other")
    (tmp_path / "other.pem").write_bytes(other.tls.cert_pem)
    code = wait_file(node.cfg.home / "commission.code")
    res = cli("pair", "--device", str(dev.path), "--gateway", node.cfg.grpc_listen, "--code", code,
              "--pin", str(tmp_path / "other.pem"))
    assert res.exit_code == 1 and "certificate is not trusted" in res.stderr
    res = cli("pair", "--device", str(dev.path), "--gateway", node.cfg.grpc_listen, "--code", code, "--k", "1",
              "--json")
    assert res.exit_code == 0, res.output
    paired = json.loads(res.stdout)
    assert Pin.from_file(paired["tls_pin_file"]) == node.pin and paired["tls_pin_sha256"] == node.pin.sha256
    res = cli("result", RID, "--gateway", node.cfg.grpc_listen, "--token", paired["app_token_file"],
              "--pin", paired["tls_pin_file"])
    assert res.exit_code == 1 and "no request" in res.stderr  # reached the gateway, which knows no such request
