"""The registry app behind a real CometBFT: one validator, and a 4-validator localnet.

Runs when ``cometbft`` is on PATH or ``EDGISTRY_COMETBFT`` names it
(``EDGISTRY_COMETBFT=/path/to/cometbft pytest tests/test_cometbft_integration.py``);
skipped otherwise. Every process is started and killed by pid (cluster_helpers.Procs).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import tomllib
from pathlib import Path

import h3
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cluster_helpers import (
    Procs, app_hashes, free_base_port, header_app_hashes, height, rpc, set_toml_values, start_app,
    start_cometbft, start_pair, stop_pair, wait_for_height, wait_until,
)
from edgistry.abci_app.codes import Code
from edgistry.abci_app.txs import gateway_id_for
from edgistry.cli import main
from edgistry.cluster.cometbft import HOW_TO_GET, cometbft_version, find_cometbft
from edgistry.cluster.cometbft_files import CONFIG_VERSION, ConsensusSettings, config_toml, render_config
from edgistry.cluster.localnet import NodeLayout, generate_localnet
from edgistry.config import NodeConfig, load_ed25519_pem, public_bytes
from edgistry.chain import ChainClient, TxRejected
from edgistry.proto import registry_pb2 as pb

BINARY = find_cometbft()
VERSION = cometbft_version(BINARY) if BINARY else CONFIG_VERSION  # the files follow the binary in use
pytestmark = [
    pytest.mark.cometbft,
    pytest.mark.slow,
    pytest.mark.skipif(BINARY is None, reason=HOW_TO_GET),
]

FAST = ConsensusSettings.fast()
START_TIMEOUT = 60  # seconds for a fresh chain to commit its first blocks
RESOLUTION = 7


def device_msg(seed: int) -> pb.RegisterDevice:
    """A valid RegisterDevice: 16-byte pseudonym, one service, an H3 cell at the policy resolution."""
    cell = h3.str_to_int(h3.latlng_to_cell(52.0 + seed / 100, 4.3, RESOLUTION))
    return pb.RegisterDevice(
        pseudonym=os.urandom(16),
        services=[pb.ServiceDescriptor(type="temperature", methods=[pb.ServiceMethod(name="read")])],
        cell=cell, policy=pb.PrivacyPolicy(resolution=RESOLUTION, k=1), duty_cycle_s=60)


async def submit(url: str, key: Ed25519PrivateKey, msg) -> int:
    async with ChainClient(url) as chain:
        return (await chain.submit(key, msg)).height


async def devices(url: str) -> list[pb.DeviceRecord]:
    async with ChainClient(url) as chain:
        return await chain.devices()


def cli(*args: str) -> str:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


def test_generated_config_matches_cometbft_init(tmp_path: Path):
    """config_toml for the binary's version lists exactly the settings its `cometbft init`
    writes, with its defaults except for the loopback p2p rules (no drift from the binary in use)."""
    subprocess.run([BINARY, "init", "--home", str(tmp_path)], check=True, capture_output=True, timeout=60)
    theirs = _flatten(tomllib.loads((tmp_path / "config" / "config.toml").read_text()))
    ours = _flatten(tomllib.loads(render_config(config_toml(
        moniker=theirs["moniker"], proxy_app=theirs["proxy_app"], rpc_laddr=theirs["rpc.laddr"],
        p2p_laddr=theirs["p2p.laddr"], prometheus_laddr=theirs["instrumentation.prometheus_listen_addr"],
        version=VERSION))))
    assert set(ours) == set(theirs)
    differ = {k for k in theirs if theirs[k] != ours[k]}
    assert differ <= {"version", "p2p.addr_book_strict", "p2p.allow_duplicate_ip"}, differ


def _flatten(table: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in table.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


# ---- one validator ----


def _single_node_homes(tmp_path: Path) -> tuple[Path, Path, str]:
    """`edgistry init --cometbft-home` (runs `cometbft init`), then free loopback ports for both."""
    home, chome = tmp_path / "home", tmp_path / "cometbft"
    cli("init", "--home", str(home), "--cometbft-home", str(chome), "--chain-id", "edg-single")
    base = free_base_port(10)
    rpc_url, abci = f"http://127.0.0.1:{base + 1}", f"tcp://127.0.0.1:{base + 2}"
    set_toml_values(chome / "config" / "config.toml", {
        "proxy_app": abci, "rpc.laddr": f"tcp://127.0.0.1:{base + 1}", "p2p.laddr": f"tcp://127.0.0.1:{base}",
        "instrumentation.prometheus_listen_addr": f"127.0.0.1:{base + 6}",
        "consensus.timeout_commit": FAST.timeout_commit, "consensus.timeout_propose": FAST.timeout_propose,
    })
    cfg = NodeConfig.load(home)
    assert cfg.cometbft_home == str(chome.resolve())
    cfg.abci_listen, cfg.rpc_url, cfg.rpc_listen = abci, rpc_url, f"127.0.0.1:{base + 1}"
    cfg.grpc_listen, cfg.link_listen, cfg.http_listen = (f"127.0.0.1:{base + i}" for i in (3, 4, 5))
    cfg.save()
    return home, chome, rpc_url


def test_single_validator_txs_queries_and_app_crash(tmp_path: Path, procs: Procs):
    """Txs commit and read back through CLI and ChainClient; a bad signer gets its code;
    after kill -9 of the app CometBFT stops, and on restart the chain goes on with
    the same app hash at every height."""
    home, chome, url = _single_node_homes(tmp_path)
    genesis = json.loads((chome / "config" / "genesis.json").read_text())
    assert genesis["chain_id"] == "edg-single" and len(genesis["app_state"]["gateways"]) == 1

    start_app(procs, "app", home)
    start_cometbft(procs, "cmt", BINARY, chome)
    wait_for_height(url, 2, START_TIMEOUT)

    # a second gateway, registered by the admin through the CLI
    other = Ed25519PrivateKey.generate()
    out = json.loads(cli("registry", "add-gateway", "--home", str(home), "--endpoint", "127.0.0.1:40001",
                         "--pubkey", public_bytes(other).hex(), "--operator", "second", "--json"))
    assert out["action"] == "registered" and out["gateway_id"] == gateway_id_for(public_bytes(other))
    listed = json.loads(cli("registry", "ls", "gateways", "--home", str(home), "--json"))
    assert {g["endpoint"] for g in listed} == {genesis["app_state"]["gateways"][0]["endpoint"], "127.0.0.1:40001"}

    # a device, registered by that gateway through ChainClient
    device = device_msg(1)
    committed_at = asyncio.run(submit(url, other, device))
    assert committed_at > 0
    listed = json.loads(cli("registry", "ls", "devices", "--rpc", url, "--json"))
    assert [d["pseudonym"] for d in listed] == [device.pseudonym.hex()]  # hex, as the table and pair print it
    assert listed[0]["gateway_id"] == gateway_id_for(public_bytes(other))
    assert [d.pseudonym for d in asyncio.run(devices(url))] == [device.pseudonym]

    # an unknown signer is refused at CheckTx with its code
    with pytest.raises(TxRejected) as rejected:
        asyncio.run(submit(url, Ed25519PrivateKey.generate(), device_msg(2)))
    assert rejected.value.code == Code.UNKNOWN_SIGNER and rejected.value.stage == "CheckTx"

    # kill -9 the app: CometBFT must stop by itself
    before = wait_for_height(url, committed_at + 2, 30)
    headers = header_app_hashes(url, 1, before)
    app_view = app_hashes(url, 1, before - 1)
    assert all(app_view[h] == headers[h + 1] for h in app_view)  # header h+1 carries the state after h
    procs.kill("app")
    status = procs.wait_exit("cmt", 30)
    assert status is not None, "cometbft kept running after its ABCI app was killed"
    print(f"cometbft exited with status {status} after its app was killed")
    procs.stop("cmt")

    # restart both: the chain goes on from where it stopped, with the same history
    start_app(procs, "app", home)
    start_cometbft(procs, "cmt", BINARY, chome)
    after = wait_for_height(url, before + 3, START_TIMEOUT, "the restarted node to make new blocks")
    assert header_app_hashes(url, 1, before) == headers
    assert app_hashes(url, 1, before - 1) == app_view
    new_headers, new_view = header_app_hashes(url, before + 1, after), app_hashes(url, before, after - 1)
    assert all(new_view[h] == new_headers[h + 1] for h in new_view)
    assert [d.pseudonym for d in asyncio.run(devices(url))] == [device.pseudonym]


# ---- four validators ----


def _node_key(node: NodeLayout, name: str) -> Ed25519PrivateKey:
    return load_ed25519_pem(node.edgistry_home / "keys" / name)


def _wait_all(nodes: list[NodeLayout], target: int, timeout: float) -> None:
    for node in nodes:
        wait_for_height(node.rpc_url, target, timeout, f"{node.moniker} to reach height {target}")


def test_four_validators_survive_one_node_stopping(tmp_path: Path, procs: Procs):
    """A 4-validator localnet commits, serves txs written on one node from another, keeps
    committing with one node stopped, lets that node catch up, and all four agree on the
    app hash at every height."""
    nodes = generate_localnet(tmp_path / "net", 4, "edg-quad", base_port=free_base_port(40), consensus=FAST,
                              cometbft_version=VERSION)
    for node in nodes:
        start_pair(procs, node.moniker, BINARY, node.edgistry_home, node.cometbft_home)
    _wait_all(nodes, 2, START_TIMEOUT)
    first, last, victim = nodes[0], nodes[3], nodes[2]

    # write through node 0, read through node 3
    newcomer = Ed25519PrivateKey.generate()
    asyncio.run(submit(first.rpc_url, _node_key(first, "admin.pem"),
                       pb.RegisterGateway(pubkey=public_bytes(newcomer), endpoint="127.0.0.1:40002", operator="x")))
    device = device_msg(3)
    at = asyncio.run(submit(first.rpc_url, _node_key(nodes[1], "gateway.pem"), device))
    wait_for_height(last.rpc_url, at, 30)
    seen = asyncio.run(devices(last.rpc_url))
    assert [(d.pseudonym, d.gateway_id) for d in seen] == [
        (device.pseudonym, gateway_id_for(nodes[1].gateway_pubkey))]
    gateways = rpc(last.rpc_url, "abci_query", path="/gateways", data="", height="0", prove=False)
    assert len(pb.GatewayList.FromString(base64.b64decode(gateways["response"]["value"])).gateways) == 5

    # stop node 2 (SIGTERM to both processes); the other three keep committing
    stop_pair(procs, victim.moniker, signal.SIGTERM)
    assert height(victim.rpc_url) is None
    stopped_at = wait_for_height(first.rpc_url, 1, 10)
    while_down = device_msg(4)
    asyncio.run(submit(first.rpc_url, _node_key(first, "gateway.pem"), while_down))
    _wait_all([n for n in nodes if n is not victim], stopped_at + 5, 60)

    # restart it: it catches up and sees what was written while it was down
    start_pair(procs, victim.moniker, BINARY, victim.edgistry_home, victim.cometbft_home)
    target = wait_for_height(first.rpc_url, 1, 10)
    wait_for_height(victim.rpc_url, target, 60, f"{victim.moniker} to catch up to {target}")
    wait_until(lambda: len(asyncio.run(devices(victim.rpc_url))) == 2, 30, "node2 to see both devices")

    # all four agree on every height: headers, and each app's own record of its hash
    top = min(wait_for_height(n.rpc_url, target + 2, 30) for n in nodes)
    headers = [header_app_hashes(n.rpc_url, 1, top) for n in nodes]
    assert all(h == headers[0] for h in headers[1:])
    views = [app_hashes(n.rpc_url, 1, top - 1) for n in nodes]
    assert all(v == views[0] for v in views[1:])
    assert all(views[0][h] == headers[0][h + 1] for h in views[0])
