"""No way around discovery: a gateway's application token reaches devices only through discovery.

A gateway-issued application token (anonymous regional access) may invoke a device through a
discovery handle or invoke-any; naming the device by its on-chain pseudonym (the owner handle)
needs a token derived from the device's root, at the gateway the client calls and at the
device's own gateway when the call is forwarded (the forwarding gateway never vouches for an
application token on a pseudonym call). In process first (what is forwarded, with what
attestation), then end to end with two real gateways on one chain.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from edgistry.firmware.caplets import api as cl
from edgistry.gateway.api.service import Call, GatewayService, HandleGrant, Result, owner_handle
from edgistry.gateway.errors import Unauthorized
from edgistry.gateway.store.store import GatewayStore, State
from edgistry.gateway.tokens import auth
from edgistry.gateway.tokens.app_tokens import mint_app_token
from edgistry.config import load_ed25519_pem, public_bytes
from gateway_helpers import ScriptedDevice, make_device_home, node_home
from proc_helpers import edgistry, stop, wait_for_port

GATEWAY_SECRET = b"s" * 32


class RecordingForwarder:
    """Stands in for the peer client: every device belongs to gateway "gw-b"; calls are recorded."""

    def __init__(self) -> None:
        self.calls: list[Call] = []

    async def owner_of(self, pseudonym: bytes) -> str | None:
        return "gw-b"

    async def call(self, gateway_id: str, kind: str, call: Call | None = None, request_id: str = "",
                   token: bytes = b"") -> Result:
        self.calls.append(call)
        return Result("00" * 16, State.QUEUED)


@pytest.fixture
async def forwarding(tmp_path):
    store = GatewayStore(tmp_path / "gw")
    forwarder = RecordingForwarder()
    service = GatewayService(store, "gw-a", GATEWAY_SECRET, forwarder=forwarder)
    yield service, forwarder
    store.close()


async def test_a_pseudonym_call_is_forwarded_without_attestation(forwarding):
    """A client's call by owner handle (with any token, even claiming attestation) goes to the owner
    unattested: the forwarding gateway vouches only for what discovery resolved."""
    service, forwarder = forwarding
    app = mint_app_token(GATEWAY_SECRET, "roamer").to_bytes()
    ps = b"\x42" * 16
    await service.submit(Call(owner_handle(ps), "read", token=app, service="sensor", attested=True))
    await service.invoke(Call(ps.hex(), "read", token=app, service="sensor"))
    assert [c.attested for c in forwarder.calls] == [False, False]
    assert all(c.target == owner_handle(ps) for c in forwarder.calls)
    service.resolvers.append(lambda target, token: HandleGrant(ps, "sensor", lambda *a: True)
                             if target == "handle-7" else None)
    await service.submit(Call("handle-7", "read", token=app, service="sensor"))
    await service.invoke(Call(owner_handle(ps), "read", token=app, service="sensor"), attested=True)  # invoke-any
    assert [c.attested for c in forwarder.calls[2:]] == [True, True]


async def test_the_owner_gateway_refuses_its_own_app_token_on_an_unattested_forward(tmp_path):
    """At the device's gateway, a forwarded pseudonym call carrying that gateway's own application
    token is refused; the owner's token goes through; an attested forward (discovery) reads."""
    from edgistry.gateway.store.store import Device, new_id

    store = GatewayStore(tmp_path / "gw")
    try:
        service = GatewayService(store, "gw-b", GATEWAY_SECRET)
        root = cl.root(cl.new_secret())
        manifest = {"duty_cycle_s": 5, "services": [{"type": "sensor", "methods": ["read"]}]}
        dev = Device(new_id(), auth.pseudonym_for(root.to_bytes()), root.to_bytes(), manifest, 0, 7, 1)
        await store.put_device(dev)
        app = mint_app_token(GATEWAY_SECRET, "local-app").to_bytes()
        fwd = lambda token, attested: Call(owner_handle(dev.pseudonym), "read", token=token,  # noqa: E731
                                           service="sensor", attested=attested, request_id=new_id().hex())
        with pytest.raises(Unauthorized, match="pseudonym"):
            await service.serve_forward("submit", fwd(app, False))
        owner = auth.app_token(root.to_bytes(), {"sensor": ["read"]}).to_bytes()
        assert (await service.serve_forward("submit", fwd(owner, False))).state == State.QUEUED
        assert (await service.serve_forward("submit", fwd(app, True))).state == State.QUEUED
        assert store.depth(dev.link_id) == 2
    finally:
        store.close()


async def test_a_peers_word_reaches_only_devices_discovery_discloses(tmp_path):
    """A registered peer's attested forward needs no client token the holder can check, so it
    is bounded by what discovery discloses: a withheld device (or another service of it) is
    refused, a disclosed one reads; writes need the owner's token whatever the peer says."""
    from edgistry.gateway.api.service import PEER_SCOPE
    from edgistry.gateway.store.store import Device, new_id

    store = GatewayStore(tmp_path / "gw")
    try:
        service = GatewayService(store, "gw-b", GATEWAY_SECRET)
        root = cl.root(cl.new_secret())
        manifest = {"duty_cycle_s": 5, "services": [{"type": "sensor", "methods": ["read"]},
                                                    {"type": "camera", "methods": ["snapshot"]}]}
        dev = Device(new_id(), auth.pseudonym_for(root.to_bytes()), root.to_bytes(), manifest, 0, 7, 1)
        await store.put_device(dev)
        shown = {(dev.pseudonym, "sensor")}
        service.disclosed = lambda ps, stype: (ps, stype) in shown
        fwd = lambda method, stype: Call(owner_handle(dev.pseudonym), method, token=b"",  # noqa: E731
                                         service=stype, attested=True, request_id=new_id().hex())
        assert (await service.serve_forward("submit", fwd("read", "sensor"), via="gw-a")).state == State.QUEUED
        with pytest.raises(Unauthorized, match=PEER_SCOPE):
            await service.serve_forward("submit", fwd("snapshot", "camera"), via="gw-a")
        shown.clear()  # its group fell below k
        with pytest.raises(Unauthorized, match=PEER_SCOPE):
            await service.serve_forward("submit", fwd("read", "sensor"), via="gw-a")
        assert store.depth(dev.link_id) == 1
    finally:
        store.close()


# ---- end to end: two gateways on one embedded chain ----


def cli_stdout(*args: str) -> tuple[int, str]:
    """(exit status, stdout only: progress lines go to stderr)."""
    from click.testing import CliRunner as Runner

    from edgistry.cli import main as entry

    result = Runner().invoke(entry, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout if result.exit_code == 0 else result.output


def cli(*args: str) -> tuple[int, str]:
    from click.testing import CliRunner

    from edgistry.cli import main

    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def pair(cfg, home: Path, *extra: str) -> dict:
    from gateway_helpers import wait_file

    code = wait_file(cfg.home / "commission.code")
    status, out = cli_stdout("pair", "--device", str(home), "--gateway", cfg.grpc_listen, "--code", code, "--json", *extra)
    assert status == 0, out
    return json.loads(out)


def manifest(lat: float, lon: float) -> dict:
    return {"duty_cycle_s": 2, "encrypt": False, "location": {"lat": lat, "lon": lon},
            "services": [{"type": "sensor", "methods": [{"name": "info", "mutating": False}]}]}


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_app_tokens_reach_devices_only_through_discovery_across_gateways(tmp_path):
    """Gateway A's app token finds and invokes gateway B's devices through discovery and invoke-any,
    but invoking a withheld device by pseudonym is refused at A and at B, with A's or B's app token;
    the owner's token reaches it by pseudonym through either gateway."""
    a, _ = node_home(tmp_path / "a")
    b, b_ports = node_home(tmp_path / "b")
    proc_a = edgistry("up", "--home", str(a.home), log=tmp_path / "a.log")
    proc_b = None
    try:
        wait_for_port(int(a.grpc_listen.rsplit(":", 1)[1]), proc=proc_a)
        b_pub = public_bytes(load_ed25519_pem(b.keys_dir / "gateway.pem")).hex()
        code, out = cli("registry", "add-gateway", "--home", str(a.home), "--endpoint", b.grpc_listen,
                        "--pubkey", b_pub, "--rpc", a.rpc_url)
        assert code == 0, out
        proc_b = edgistry("gateway", "--home", str(b.home), "--rpc", a.rpc_url, log=tmp_path / "b.log")
        wait_for_port(b_ports["grpc"], proc=proc_b)
        grouped = []
        for i in range(2):  # two devices in one cell, k=2: discovery discloses them
            home = make_device_home(tmp_path / f"g{i}", manifest(-33.8688, 151.2093))
            grouped.append((home, pair(b, home.path, "--k", "2", "--resolution", "7")))
        lonely = make_device_home(tmp_path / "lonely", manifest(64.1466, -21.9426))
        withheld = pair(b, lonely.path, "--k", "5", "--resolution", "6")  # alone, k=5: never disclosed

        tokens = {}
        for name, cfg in (("a", a), ("b", b)):
            path = tmp_path / f"app-{name}.token"
            path.write_text(cli_stdout("token", "app", "--home", str(cfg.home), "--name", f"roamer-{name}")[1].strip()
                            + "\n")
            tokens[name] = str(path)

        near = ["--near", "-33.8688,151.2093", "--radius-km", "5", "--gateway", a.grpc_listen, "--pin", str(a.tls_cert_path), "--token", tokens["a"]]
        rows: list = []
        for _ in range(100):
            status, out = cli_stdout("discover", "sensor", *near, "--json")
            rows = json.loads(out) if status == 0 else []
            if len(rows) == 2:
                break
            threading.Event().wait(0.2)
        assert len(rows) == 2, out
        far = ["--near", "64.1466,-21.9426", "--radius-km", "50", "--gateway", a.grpc_listen, "--pin", str(a.tls_cert_path), "--token", tokens["a"]]
        assert json.loads(cli_stdout("discover", "sensor", *far, "--json")[1]) == []  # the lonely device is withheld

        # through a discovery handle at A: forwarded to B attested, the device answers
        device = ScriptedDevice(grouped[0][0], grouped[0][1]["link_endpoint"])
        other = ScriptedDevice(grouped[1][0], grouped[1][1]["link_endpoint"])
        box: dict = {}
        t = threading.Thread(target=lambda: box.update(r=cli_stdout("invoke", rows[0]["handle"], "sensor.info", "--timeout",
                                                            "20", "--gateway", a.grpc_listen, "--pin", str(a.tls_cert_path), "--token",
                                                            tokens["a"], "--json")))
        t.start()
        for _ in range(150):
            if device.wake() or other.wake() or not t.is_alive():
                break
        t.join(25)
        assert box["r"][0] == 0 and json.loads(box["r"][1])["state"] == "DONE", box

        # by pseudonym with an application token: refused at A (forwarded unattested) and at B
        handle = withheld["owner_handle"]
        for via, token in ((a, tokens["a"]), (a, tokens["b"]), (b, tokens["b"]), (b, tokens["a"])):
            status, out = cli("invoke", handle, "sensor.info", "--async", "--gateway", via.grpc_listen, "--pin", str(via.tls_cert_path),
                              "--token", token)
            assert status == 1 and "token" in out, (via.grpc_listen, token, out)
            if token == tokens["b"]:  # B's own app token: refused by the rule itself, also after A's forward
                assert "pseudonym" in out, out
        lonely_dev = ScriptedDevice(lonely, withheld["link_endpoint"])
        assert lonely_dev.wake() == []  # nothing reached its queue

        # the owner's token (derived from the device's root at pairing) reaches it by pseudonym
        for via in (a, b):
            status, out = cli("invoke", handle, "sensor.info", "--async", "--gateway", via.grpc_listen, "--pin", str(via.tls_cert_path),
                              "--token", withheld["app_token_file"])
            assert status == 0, out
        assert len(lonely_dev.wake()) == 2
    finally:
        if proc_b is not None:
            stop(proc_b)
        stop(proc_a)


async def test_a_gateway_token_learns_nothing_of_a_devices_methods_by_pseudonym(tmp_path):
    """Pseudonyms are public on chain and a device's services are sealed: a gateway
    application token, narrowed any way its holder likes, calling a device by pseudonym gets
    one and the same answer for every (service, method), present or not. Before, a method
    the device has answered "does not permit" and a missing one another error, which listed
    the device's services and methods."""
    from edgistry.gateway.store.store import Device, new_id

    secret = b"g" * 32
    store = GatewayStore(tmp_path / "gw")
    try:
        svc = GatewayService(store, "gw-a", secret)
        root = cl.root(cl.new_secret())
        manifest = {"duty_cycle_s": 5, "services": [{"type": "camera", "methods": ["snapshot"]},
                                                    {"type": "door-lock", "methods": [
                                                        {"name": "unlock", "mutating": True}]}]}
        dev = Device(new_id(), auth.pseudonym_for(root.to_bytes()), root.to_bytes(), manifest, 0, 7, 1)
        await store.put_device(dev)
        app = mint_app_token(secret, "anon-client")
        narrowed = cl.derive(app, [cl.Resource("/svc/zzz", cl.READ)])
        answers = set()
        for token in (app, narrowed):
            for stype, method in (("camera", "snapshot"), ("camera", "stream"), ("door-lock", "unlock"),
                                  ("door-lock", "lock"), ("thermostat", "read")):
                with pytest.raises(Unauthorized) as info:
                    await svc.submit(Call(owner_handle(dev.pseudonym), method, token=token.to_bytes(),
                                          service=stype))
                answers.add(str(info.value))
        assert len(answers) == 1, answers
    finally:
        store.close()
