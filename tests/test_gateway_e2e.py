"""The gateway with real processes on loopback: pairing against the embedded node, the
device link, durability across kill -9, expiry and overflow, and two gateways.

The device side is a scripted device (gateway_helpers.ScriptedDevice) speaking the real
link through the sans-I/O DeviceSession, one wake at a time, so each test decides
exactly when the device is awake.
"""

from __future__ import annotations

import json
import shutil
import ssl
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgistry.cli import main
from edgistry.config import load_ed25519_pem, public_bytes
from edgistry.gateway.api.peer import sign_forward
from edgistry.gateway.tls import Pin, ensure_identity
from edgistry.proto import gateway_pb2 as gw
from edgistry.proto import gateway_pb2_grpc as gw_grpc
from gateway_helpers import ScriptedDevice, make_device_home, node_home, wait_file
from proc_helpers import edgistry, kill9, stop, wait_for_port
from tls_helpers import pinned_channel

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]


def cli(*args: str) -> tuple[int, str]:
    """(exit status, stdout on success; stdout and stderr otherwise: progress lines go to stderr)."""
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout if result.exit_code == 0 else result.output


def cli_json(*args: str) -> dict:
    code, out = cli(*args, "--json")
    assert code == 0, out
    return json.loads(out)


def start_up(cfg, log: Path):
    proc = edgistry("up", "--home", str(cfg.home), log=log)
    wait_for_port(int(cfg.grpc_listen.rsplit(":", 1)[1]), proc=proc)
    return proc


def pair(cfg, dev, *extra: str) -> tuple[int, str]:
    code = wait_file(cfg.home / "commission.code")
    return cli("pair", "--device", str(dev.path), "--gateway", cfg.grpc_listen, "--code", code, *extra)


def devices_on_chain(cfg) -> list[dict]:
    """The registry's devices, sealed fields opened with this gateway home's seal key."""
    code, out = cli("registry", "ls", "devices", "--rpc", cfg.rpc_url, "--home", str(cfg.home), "--json")
    assert code == 0, out
    return json.loads(out[:out.rindex("]") + 1])


def _counter(metrics: str, name: str) -> float:
    """A sample's value in a Prometheus text exposition (0 when absent)."""
    for line in metrics.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def via(cfg) -> list[str]:
    """The CLI options reaching this home's gateway: its address and its certificate (the pin)."""
    return ["--gateway", cfg.grpc_listen, "--pin", str(cfg.tls_cert_path)]


def http_get(cfg, port: int, path: str, operator: bool = False) -> str:
    """GET over HTTPS, trusting only the gateway's certificate; with ``operator``, as its
    operator (/metrics needs it)."""
    context = ssl.create_default_context(cafile=str(cfg.tls_cert_path))
    headers = {"Authorization": "Bearer " + (cfg.home / "keys" / "operator.secret").read_text().strip()} \
        if operator else {}
    request = urllib.request.Request(f"https://127.0.0.1:{port}{path}", headers=headers)
    with urllib.request.urlopen(request, timeout=5, context=context) as resp:
        return resp.read().decode()


def until(check, timeout: float = 10.0, every: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(every)


def test_pair_queue_durability_expiry_overflow_and_unpair(tmp_path):
    """Pair (wrong code refused), queue while asleep, kill -9 with queued work and stored
    responses, restart, nothing lost; expiry reported; overflow refused; metrics; re-pair; unpair."""
    cfg, ports = node_home(tmp_path / "node")
    cfg.extra["gateway"]["max_queue_depth"] = 3
    cfg.save()
    proc = start_up(cfg, tmp_path / "up.log")
    try:
        dev = make_device_home(tmp_path / "dev")
        code, out = cli("pair", "--device", str(dev.path), "--gateway", cfg.grpc_listen, "--code", "AAAA-BBBB")
        assert code == 1 and "wrong commissioning code" in out
        code, out = pair(cfg, dev, "--json", "--rpc", cfg.rpc_url)  # key checked against the registry
        assert code == 0, out
        paired = json.loads(out)
        token = paired["app_token_file"]
        handle = paired["owner_handle"]
        [record] = devices_on_chain(cfg)
        assert record["pseudonym"] == paired["pseudonym"] and record["policy"]["resolution"] == 7  # hex, as pair's
        assert int(record["cell"], 16) >> 52 & 0xF == 7  # coarse cell only: the exact one stays at the gateway

        device = ScriptedDevice(dev, paired["link_endpoint"])
        assert device.wake() == []  # "nothing queued": straight back to sleep
        submit = lambda *a: cli("invoke", handle, *a, "--async", *via(cfg), "--token", token)
        r1 = submit("sensor.info")[1].strip()
        r2 = submit("valve.get", "--arg", '{"x": 1}')[1].strip()
        assert len(device.wake()) == 2  # queued while it slept, answered now
        r3 = submit("sensor.info")[1].strip()
        until(lambda: devices_on_chain(cfg)[0].get("last_seen"))  # batched liveness reached the chain

        kill9(proc)
        proc = start_up(cfg, tmp_path / "up2.log")
        for rid, method in ((r1, "info"), (r2, "get")):
            res = cli_json("result", rid, *via(cfg), "--token", token)
            assert res["state"] == "DONE" and res["payload"]["method"] == method
        assert cli_json("result", r3, *via(cfg), "--token", token)["state"] == "QUEUED"
        got = device.wake()
        assert [g["request_id"].hex() for g in got] == [r3]  # answered ones are not redelivered
        assert cli_json("result", r3, *via(cfg), "--token", token)["state"] == "DONE"

        rid = cli("invoke", handle, "sensor.info", "--async", "--ttl", "1", *via(cfg), "--token", token)[1].strip()
        time.sleep(1.5)
        code, out = cli("result", rid, *via(cfg), "--token", token)
        assert code == 1 and "EXPIRED" in out and "dead-lettered" in out
        for _ in range(3):
            assert submit("sensor.info")[0] == 0
        code, out = submit("sensor.info")
        assert code == 1 and "queue is full" in out
        code, out = cli("invoke", handle, "valve.set", *via(cfg), "--token", token)
        assert code == 1 and "check --token" in out

        assert json.loads(http_get(cfg, ports["http"], "/healthz"))["status"] == "ok"
        from grpc_health.v1 import health_pb2, health_pb2_grpc
        from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

        with pinned_channel(cfg.grpc_listen, Pin.from_file(cfg.tls_cert_path)) as chan:
            check = health_pb2_grpc.HealthStub(chan).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert check.status == health_pb2.HealthCheckResponse.SERVING
            answers = reflection_pb2_grpc.ServerReflectionStub(chan).ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
            names = {s.name for s in next(answers).list_services_response.service}
            assert {"edgistry.gateway.v1.Gateway", "edgistry.gateway.v1.Commissioning"} <= names
        with pytest.raises(urllib.error.HTTPError) as refused:  # pairings show in its gauges: operators only
            http_get(cfg, ports["http"], "/metrics")
        assert refused.value.code == 401
        metrics = http_get(cfg, ports["http"], "/metrics", operator=True)
        for line in ("edgistry_queue_depth_total 3.0", 'edgistry_rejections_total{reason="queue_full"} 1.0',
                     "edgistry_requests_expired_total 1.0", 'edgistry_link_handshakes_total{kind="full"}'):
            assert line in metrics, line

        code, out = pair(cfg, dev, "--json")  # re-pair: same pseudonym, record updated, queue kept
        assert code == 0 and json.loads(out)["pseudonym"] == paired["pseudonym"], out
        assert len(device.wake()) == 3
        code, out = cli("pair", "--device", str(dev.path), "--gateway", cfg.grpc_listen, "--unpair")
        assert code == 0 and "unpaired" in out and not dev.paired_path.exists()
        assert devices_on_chain(cfg) == []
    finally:
        stop(proc)


def test_two_gateways_cross_invoke_and_forged_forwards(tmp_path):
    """A client at gateway A invokes a device paired with gateway B (only B talks to it);
    pairing the device at A is refused; forged, stale and replayed forwards are refused."""
    a, a_ports = node_home(tmp_path / "a")
    b, b_ports = node_home(tmp_path / "b")
    proc_a = start_up(a, tmp_path / "a.log")
    proc_b = None
    try:
        b_pub = public_bytes(load_ed25519_pem(b.keys_dir / "gateway.pem")).hex()
        code, out = cli("registry", "add-gateway", "--home", str(a.home), "--endpoint", b.grpc_listen,
                        "--pubkey", b_pub, "--rpc", a.rpc_url)
        assert code == 0, out
        proc_b = edgistry("gateway", "--home", str(b.home), "--rpc", a.rpc_url, log=tmp_path / "b.log")
        wait_for_port(b_ports["grpc"], proc=proc_b)
        # B, registered by the admin without a certificate, publishes its own at start
        until(lambda: registry_pin(a.rpc_url, paired_gateway_id(load_ed25519_pem(b.keys_dir / "gateway.pem")))
              == Pin.from_file(b.tls_cert_path))
        dev = make_device_home(tmp_path / "dev")
        code, out = pair(b, dev, "--json", "--k", "1")
        assert code == 0, out
        paired = json.loads(out)
        token, handle = paired["app_token_file"], paired["owner_handle"]

        code, out = pair(a, dev)  # the device home says gateway B: refused locally
        assert code == 1 and paired["gateway_id"] in out
        shutil.move(dev.paired_path, tmp_path / "paired.json")
        code, out = pair(a, dev)  # and by gateway A itself, from the registry
        assert code == 1 and "already paired with gateway" in out
        shutil.move(tmp_path / "paired.json", dev.paired_path)

        device = ScriptedDevice(dev, paired["link_endpoint"])
        assert paired["link_endpoint"] == b.link_listen
        box: dict = {}
        t = threading.Thread(target=lambda: box.update(r=cli_json(
            "invoke", handle, "sensor.info", "--timeout", "20", *via(a), "--token", token)))
        t.start()
        until(lambda: device.wake(), timeout=15, every=0.2)
        t.join(25)
        assert box["r"]["state"] == "DONE" and box["r"]["payload"]["method"] == "info"

        rid = cli("invoke", handle, "valve.get", "--async", *via(a), "--token", token)[1].strip()
        assert cli_json("result", rid, *via(a), "--token", token)["state"] == "QUEUED"
        device.wake()
        assert cli_json("result", rid, *via(a), "--token", token)["state"] == "DONE"

        a_key = load_ed25519_pem(a.keys_dir / "gateway.pem")
        a_id = paired_gateway_id(a_key)
        req = gw.InvokeRequest(target=handle, method="info", service="sensor", token=Path(token).read_bytes())
        # the hand-made forwards go where A's would: B's peer port, mutual TLS with A's certificate
        a_tls = ensure_identity(a.tls_key_path, a.tls_cert_path, a_key)
        with pinned_channel(b.peer_listen, Pin.from_file(b.tls_cert_path), a_tls) as chan:
            peer = gw_grpc.PeerStub(chan)
            forged = sign_forward(Ed25519PrivateKey.generate(), a_id, "submit", req)
            stale = sign_forward(a_key, a_id, "submit", req, now_ms=int(time.time() * 1000) - 120_000)
            for msg, why in ((forged, "signature"), (stale, "stale")):
                with pytest.raises(grpc.RpcError) as exc:
                    peer.Forward(msg, timeout=10)
                assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED and why in exc.value.details()
            good = sign_forward(a_key, a_id, "submit", _with_token(req, token))
            assert peer.Forward(good, timeout=10).state == gw.QUEUED
            with pytest.raises(grpc.RpcError) as exc:
                peer.Forward(good, timeout=10)
            assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED and "replayed" in exc.value.details()
            # a peer's attestation ("I authorised this client") covers reads, never writes
            write = gw.InvokeRequest(target=handle, method="set", service="valve", attested=True, args=b"{}")
            with pytest.raises(grpc.RpcError) as exc:
                peer.Forward(sign_forward(a_key, a_id, "submit", write), timeout=10)
            assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
        metrics = http_get(b, b_ports["http"], "/metrics", operator=True)
        assert 'edgistry_peer_forwards_total{direction="in",outcome="refused"} 3.0' in metrics
        accepted = _counter(metrics, 'edgistry_peer_forwards_total{direction="in",outcome="accepted"}')
        # the forwarding gateway counts what it sent (submit, watch, result...): B accepted each of
        # them, plus the one good hand-made forward above (a watch the client cancels as soon as
        # it has its answer may end uncounted at A, hence no equality)
        a_metrics = http_get(a, a_ports["http"], "/metrics", operator=True)
        sent = _counter(a_metrics, 'edgistry_peer_forwards_total{direction="out",outcome="ok"}')
        assert 3 <= sent <= accepted - 1, (sent, accepted)

        # an application of gateway A finds and invokes B's device by region (invoke-any); the
        # hand-made forward queued above is answered first, so the wakes below see only this call
        assert [r["method"] for r in device.wake()] == ["info"]
        app_token = tmp_path / "app.token"
        app_token.write_text(cli("token", "app", "--home", str(a.home), "--name", "roamer")[1].strip() + "\n")
        near = ["--near", "46.52,6.57", "--radius-km", "10", *via(a), "--token", str(app_token)]
        until(lambda: cli("discover", "sensor", *near)[1].count("cell=") == 1, timeout=15, every=0.3)
        box.clear()
        t = threading.Thread(target=lambda: box.update(r=cli_json(
            "invoke", "--any", "sensor", *near, "sensor.info", "--timeout", "20")))
        t.start()
        until(lambda: device.wake(), timeout=15, every=0.2)
        t.join(25)
        assert box["r"]["state"] == "DONE" and box["r"]["payload"]["method"] == "info"
    finally:
        if proc_b is not None:
            stop(proc_b)
        stop(proc_a)


def registry_pin(rpc_url: str, gateway_id: str) -> Pin | None:
    """The gateway's pin as the registry holds it (None while it holds no certificate)."""
    from edgistry.client import ConfigError, pin_from_registry

    try:
        return pin_from_registry(rpc_url, gateway_id=gateway_id)
    except ConfigError:
        return None


def paired_gateway_id(key) -> str:
    from edgistry.abci_app.txs import gateway_id_for

    return gateway_id_for(public_bytes(key))


def _with_token(req: gw.InvokeRequest, token_file: str) -> gw.InvokeRequest:
    from edgistry.firmware.caplets.mint import from_text

    out = gw.InvokeRequest()
    out.CopyFrom(req)
    out.token = from_text(Path(token_file).read_text()).to_bytes()
    return out
