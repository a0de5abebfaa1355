"""The embedded single-node mode end to end through the CLI (real processes, real RPC)."""

from __future__ import annotations

import json
import stat
import time
import urllib.request

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgistry.cli import main
from edgistry.config import NodeConfig
from proc_helpers import edgistry, free_port, kill9, stop, wait_for_port

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]


def rpc(port: int, method: str, **params) -> dict:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def wait_height(port: int, height: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if int(rpc(port, "status")["result"]["sync_info"]["latest_block_height"]) >= height:
            return
        time.sleep(0.05)
    raise TimeoutError(f"height {height} not reached")


def cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout if result.exit_code == 0 else result.output  # progress: stderr


def test_init_creates_private_keys_and_refuses_twice(tmp_path):
    """init writes 0600 keys and config; a second init exits 1 with a clear message."""
    code, out = cli("init", "--home", str(tmp_path / "h"), "--chain-id", "demo-1")
    assert code == 0 and "demo-1" in out
    for name in ("admin.pem", "gateway.pem", "gateway.secret"):
        assert stat.S_IMODE((tmp_path / "h" / "keys" / name).stat().st_mode) == 0o600
    assert NodeConfig.load(tmp_path / "h").chain_id == "demo-1"
    code, out = cli("init", "--home", str(tmp_path / "h"))
    assert code == 1 and "already initialised" in out
    code, _ = cli("init", "--home", str(tmp_path / "x"), "--chain-id", "bad id!")
    assert code == 1


def test_init_with_missing_cometbft_says_how_to_get_one(tmp_path, monkeypatch):
    """--cometbft-home without a genesis and without the binary fails with instructions."""
    monkeypatch.setenv("EDGISTRY_COMETBFT", str(tmp_path / "no-such-binary"))
    code, out = cli("init", "--home", str(tmp_path / "h"), "--cometbft-home", str(tmp_path / "c"))
    assert code == 1 and "EDGISTRY_COMETBFT" in out


def test_up_serves_rpc_survives_kill9_and_keeps_state(tmp_path):
    """up prints the single-node warning, serves RPC, and is durable across kill -9."""
    home, port = tmp_path / "home", free_port()
    args = ("up", "--home", str(home), "--rpc-listen", f"127.0.0.1:{port}")
    proc = edgistry(*args, log=tmp_path / "up.log")
    try:
        wait_for_port(port, proc=proc)
        wait_height(port, 1)
        assert "NO fault tolerance" in (tmp_path / "up.log").read_text()
        url = f"http://127.0.0.1:{port}"
        code, out = cli("registry", "ls", "gateways", "--rpc", url, "--json")
        assert code == 0 and len(json.loads(out.split("\n1 gateways")[0])) == 1
        other = Ed25519PrivateKey.generate().public_key().public_bytes_raw().hex()
        code, out = cli("registry", "add-gateway", "--home", str(home), "--endpoint", "127.0.0.1:36670",
                        "--pubkey", other, "--rpc", url, "--json")
        assert code == 0, out
        added = json.loads(out)
        code, out = cli("registry", "add-gateway", "--home", str(home), "--endpoint", "127.0.0.1:36670",
                        "--pubkey", other, "--rpc", url)
        assert code == 1 and "already registered" in out
        status = rpc(port, "status")["result"]["sync_info"]
        height, app_hash = int(status["latest_block_height"]), status["latest_app_hash"]
        results = rpc(port, "block_results", height=str(added["height"]))["result"]
        # the block may also hold the gateway's own txs (its seal key, the data key's grant)
        assert "gateway_registered" in {e["type"] for r in results["txs_results"] for e in r["events"]}
        kill9(proc)

        proc = edgistry(*args, log=tmp_path / "up2.log")
        wait_for_port(port, proc=proc)
        status = rpc(port, "status")["result"]["sync_info"]
        assert int(status["latest_block_height"]) >= height
        again = rpc(port, "abci_query", path="/summary", data="", height=str(height))["result"]["response"]
        assert again["code"] == 0 and again["height"] == str(height)
        code, out = cli("registry", "ls", "gateways", "--home", str(home), "--rpc", url, "--json")
        ids = {g["id"] for g in json.loads(out.split("\n2 gateways")[0])}
        assert added["gateway_id"] in ids and len(ids) == 2
        assert app_hash  # the committed hash was reported
        bad = rpc(port, "broadcast_tx_sync", tx="AAAA")["result"]
        assert bad["code"] == 1 and bad["log"]
        assert "error" in rpc(port, "no_such_method")
        assert stop(proc) == 0
    finally:
        kill9(proc)


def test_node_serves_abci_on_its_listen_address(tmp_path):
    """`edgistry node` answers Info over ABCI at the configured address."""
    import asyncio

    from edgistry.abci_app.client import AbciClient
    from edgistry.proto import abci_pb2 as abci

    home, port = tmp_path / "home", free_port()
    cli("init", "--home", str(home))
    proc = edgistry("node", "--home", str(home), "--listen", f"tcp://127.0.0.1:{port}", log=tmp_path / "node.log")
    try:
        wait_for_port(port, proc=proc)

        async def info():
            c = await AbciClient.connect(f"tcp://127.0.0.1:{port}")
            r = await c.call("info", abci.RequestInfo())
            await c.close()
            return r

        assert asyncio.run(info()).last_block_height == 0
    finally:
        assert stop(proc) == 0


def test_token_revoke_on_the_registry(tmp_path):
    """`token revoke --home` records the tag on chain with the token's expiry."""
    home, port = tmp_path / "home", free_port()
    proc = edgistry("up", "--home", str(home), "--rpc-listen", f"127.0.0.1:{port}", log=tmp_path / "up.log")
    try:
        wait_for_port(port, proc=proc)
        wait_height(port, 1)
        secret = tmp_path / "dev.secret"
        code, root = cli("token", "root", "--secret-file", str(secret), "--generate")
        assert code == 0
        code, child = cli("token", "derive", root.strip(), "--service", "sensor:read", "--expires", "+1h")
        assert code == 0
        code, out = cli("token", "revoke", child.strip(), "--home", str(home), "--rpc", f"http://127.0.0.1:{port}")
        assert code == 0, out
        tag = out.split()[-1]
        resp = rpc(port, "abci_query", path="/revocation", data=tag)["result"]["response"]
        assert resp["code"] == 0
        code, out = cli("token", "revoke", child.strip())
        assert code == 2  # neither --list nor --home
    finally:
        kill9(proc)


def test_rpc_wants_int64_params_as_strings_like_cometbft(tmp_path):
    """A JSON number for `height` is refused, as CometBFT refuses it; a string is fine."""
    home, port = tmp_path / "home", free_port()
    proc = edgistry("up", "--home", str(home), "--rpc-listen", f"127.0.0.1:{port}", log=tmp_path / "up.log")
    try:
        wait_for_port(port, proc=proc)
        wait_height(port, 1)
        bad = rpc(port, "block_results", height=1)
        assert "expected string" in bad["error"]["data"]
        assert rpc(port, "block_results", height="1")["result"]["height"] == "1"
    finally:
        kill9(proc)
