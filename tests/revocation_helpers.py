"""Adversarial revocation scenarios, played the same way on the embedded node and on
4 real CometBFT validators (test_revocation_adversarial.py, test_revocation_cluster.py).

Each scenario talks to real gateways over gRPC and the real CLI (`edgistry pair`,
`edgistry token revoke --home`), and wakes real device runtimes in this process, so it
can count what actually ran on the device (``WakeReport.executed``, the actuator state).
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
from click.testing import CliRunner

from edgistry.cli import main
from edgistry.firmware.caplets import api as cl
from edgistry.firmware.runtime.device import Device
from edgistry.proto import gateway_pb2 as gw
from edgistry.proto import gateway_pb2_grpc as gw_grpc

REVOKED = gw.REVOKED
LOCATION = "46.52,6.57"


def cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def cli_ok(*args: str) -> str:
    """`edgistry ARGS`, which must succeed; its stdout (progress goes to stderr)."""
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, f"edgistry {' '.join(args)} -> {result.exit_code}:\n{result.output}"
    return result.stdout


@dataclass
class Gw:
    """One gateway: its node home (for `token revoke --home`), gRPC endpoint and chain RPC."""

    home: Path
    grpc: str
    rpc: str

    def stub(self) -> gw_grpc.GatewayStub:
        return gw_grpc.GatewayStub(grpc.insecure_channel(self.grpc))


@dataclass
class Dev:
    home: Path
    handle: str
    root: cl.Token
    app: cl.Token  # the read-only token pairing printed

    def owner(self) -> cl.Token:
        """A fresh token derived from the device's root with sensor/actuator rights
        (each call a distinct token: its expiry differs)."""
        return cl.derive(self.root, [cl.Service("actuator", ["*"]), cl.Service("sensor", ["*"])],
                         [cl.ExpiresAt(_fresh_expiry())])

    def reader(self) -> cl.Token:
        """A fresh sensor-only token derived from the device's root."""
        return cl.derive(self.root, [cl.Service("sensor", ["*"])], [cl.ExpiresAt(_fresh_expiry())])

    def wake(self) -> object:
        """One wake of the device runtime in this process; its report."""
        return asyncio.run(asyncio.wait_for(Device(self.home, wake_timeout=5.0).wake_with_fallback(), 30))


_EXPIRY = [0]


def _fresh_expiry() -> int:
    _EXPIRY[0] += 1
    return int(time.time()) + 3600 + _EXPIRY[0]


def pair(tmp: Path, name: str, g: Gw, code_file: Path) -> Dev:
    home = tmp / name
    cli_ok("device", "init", "--home", str(home), "--service", "sensor", "--service", "actuator",
           "--location", LOCATION, "--duty-cycle", "3600")
    code = _wait(lambda: code_file.exists() and code_file.read_text().strip(), 20)
    out = json.loads(cli_ok("pair", "--device", str(home), "--gateway", g.grpc, "--code", code, "--rpc", g.rpc,
                            "--k", "1", "--json"))
    return Dev(home, out["owner_handle"], cl.load((home / "root.token").read_text()),
               cl.from_text(Path(out["app_token_file"]).read_text()))


def _wait(predicate, timeout: float):
    deadline = time.monotonic() + timeout
    while True:
        got = predicate()
        if got:
            return got
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def submit(g: Gw, dev: Dev, method: str, token: cl.Token, args: bytes = b"", ttl_s: int = 600) -> gw.Result:
    service, _, name = method.partition(".")
    return g.stub().Submit(gw.InvokeRequest(target=dev.handle, service=service, method=name, args=args,
                                            token=token.to_bytes(), ttl_s=ttl_s), timeout=10)


def invoke(g: Gw, dev: Dev, method: str, token: cl.Token, timeout_ms: int = 20_000) -> gw.Result:
    service, _, name = method.partition(".")
    return g.stub().Invoke(gw.InvokeRequest(target=dev.handle, service=service, method=name,
                                            token=token.to_bytes(), timeout_ms=timeout_ms),
                           timeout=timeout_ms / 1000 + 10)


def result(g: Gw, rid: str, token: cl.Token) -> gw.Result:
    return g.stub().GetResult(gw.ResultRequest(request_id=rid, token=token.to_bytes()), timeout=10)


def refusal(call) -> grpc.RpcError:
    """The gRPC error ``call()`` raises (the test fails when it succeeds)."""
    try:
        got = call()
    except grpc.RpcError as exc:
        return exc
    raise AssertionError(f"expected a refusal, got {got}")


def revoke(g: Gw, token: cl.Token, *extra: str) -> str:
    """`edgistry token revoke TOKEN --home` for this gateway's home: returns once in force."""
    return cli_ok("token", "revoke", cl.to_text(token), "--home", str(g.home), "--rpc", g.rpc, *extra)


# ---- the scenarios -------------------------------------------------------------------

def queued_work_never_runs(g: Gw, dev: Dev) -> None:
    """Queue a mutating call and 8 reads with two tokens, revoke both, wake the device:
    nothing runs; the client learns of the revocation, the owner reads REVOKED."""
    toggler = dev.owner()
    reader = dev.reader()
    toggle = submit(g, dev, "actuator.set", toggler, b'{"on": true}')
    reads = [submit(g, dev, "sensor.info", reader) for _ in range(8)]
    revoke(g, toggler)
    revoke(g, reader)
    report = dev.wake()
    assert report.executed == 0, f"revoked work ran on the device: {report}"
    err = refusal(lambda: result(g, toggle.request_id, toggler))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED and "revocation" in err.details().lower(), err.details()
    for res in [toggle, *reads]:
        assert result(g, res.request_id, dev.root).state == REVOKED
    fresh = dev.owner()  # the device still serves other tokens (and the actuator never toggled)
    got = submit(g, dev, "actuator.get", fresh)
    report = dev.wake()
    assert report.executed == 1
    assert json.loads(result(g, got.request_id, fresh).payload)["on"] is False


def submit_right_after_revoke(g: Gw, dev: Dev, n: int = 20) -> None:
    """Every submit made after `token revoke` returned is refused (none is accepted late)."""
    token = dev.owner()
    submit(g, dev, "sensor.info", token)
    revoke(g, token)
    for _ in range(n):
        err = refusal(lambda: submit(g, dev, "sensor.info", token))
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED and "Revoked" in err.details(), err.details()


def cached_answers_not_served(g: Gw, dev: Dev) -> None:
    """A cacheable read answered once is not served from cache to the token once revoked."""
    token = dev.reader()
    first = submit(g, dev, "sensor.read", token)
    dev.wake()
    assert result(g, first.request_id, token).state == gw.DONE
    hit = invoke(g, dev, "sensor.read", token)
    assert hit.from_cache
    revoke(g, token)
    for call in (lambda: invoke(g, dev, "sensor.read", token), lambda: submit(g, dev, "sensor.read", token)):
        err = refusal(call)
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED and "Revoked" in err.details()


def children_of_a_revoked_token(g: Gw, dev: Dev) -> None:
    """A child derived from a revoked token (as anyone holding it can) is refused by the gateway."""
    token = dev.owner()
    revoke(g, token)
    child = cl.derive(token, [cl.Service("sensor", ["info"])])
    err = refusal(lambda: submit(g, dev, "sensor.info", child))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED and "Revoked" in err.details()


def chain_holds_no_raw_tag(rpc_url: str, tokens: list[cl.Token], blocks: bool = True) -> int:
    """Read every block's txs (``blocks``: the node serves ``block``; the embedded node
    does not), every block's results and events and the revocation queries: no revoked
    tag appears (raw or hex); the hashes do. Returns how many heights were read."""
    import urllib.request

    def call(method: str, **params):
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode()
        req = urllib.request.Request(rpc_url, body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())["result"]

    tags = [t.tag for t in tokens]
    seen = b""
    top = int(call("status")["sync_info"]["latest_block_height"])
    for h in range(1, top + 1):
        if blocks:
            for tx in call("block", height=str(h))["block"]["data"]["txs"] or []:
                seen += base64.b64decode(tx)
        seen += json.dumps(call("block_results", height=str(h))).encode()
    res = call("abci_query", path="/revocations", data="")["response"]
    seen += base64.b64decode(res.get("value") or "") + json.dumps(res).encode()
    for tag in tags:
        assert tag not in seen and tag.hex().encode() not in seen, "a revoked tag is readable on chain"
        res = call("abci_query", path="/revocation", data=cl.revocation_hash(tag).hex())["response"]
        seen += base64.b64decode(res.get("value") or "") + json.dumps(res).encode()
    for tag in tags:
        assert tag not in seen and tag.hex().encode() not in seen, "a revoked tag is readable on chain"
        assert cl.revocation_hash(tag) in seen or cl.revocation_hash(tag).hex().encode() in seen
    return top
