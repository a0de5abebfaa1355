"""The sealed registry on 4 real CometBFT validators, a state-sync join, and a rotation.

`edgistry cluster up --fast` (cometbft + `edgistry node` + `edgistry gateway` per node):
devices are paired with three gateways; `edgistry cluster add-node` brings a 5th node in by
state sync, and its gateway is granted the data key by an online gateway (its `registry ls
devices --home` opens every record) and pairs a device of its own. An outsider then reads
every block, result, tx, query path and snapshot chunk of two nodes (tests/outsider.py) and
finds no service type, no cell at any resolution in any encoding, and no coordinates.
Last, the newcomer's device is unpaired and its gateway removed: the remaining gateways open a
new epoch and re-seal their own devices under it, which the removed gateway's key cannot open.
"""

from __future__ import annotations

import json
from pathlib import Path

import h3
import pytest
from click.testing import CliRunner

from cluster_helpers import free_base_port, wait_until
from edgistry.chain import call
from edgistry.cli import main
from edgistry.cluster import ops
from edgistry.cluster.cometbft import HOW_TO_GET, find_cometbft
from edgistry.cluster.localnet import load_localnet
from edgistry.proto import registry_pb2 as pb
from gateway_helpers import make_device_home
from outsider import Corpus, KnownDevice, leaks, needles, read_everything, read_snapshots

BINARY = find_cometbft()
pytestmark = [
    pytest.mark.cometbft,
    pytest.mark.slow,
    pytest.mark.timeout(420),
    pytest.mark.skipif(BINARY is None, reason=HOW_TO_GET),
]

# (node index, types, lat, lon, resolution, k)
PLAN = [
    (0, ("hygromk7q",), -33.8688, 151.2093, 7, 2),
    (1, ("hygromk7q",), -33.8687, 151.2092, 7, 2),
    (2, ("sirenxb4v", "hygromk7q"), 64.1466, -21.9426, 6, 4),  # alone with k=4: withheld by discovery
]


def cli_ok(*args: str) -> str:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, f"edgistry {' '.join(args)} -> {result.exit_code}:\n{result.output}"
    return result.stdout


def pair(node, home: Path, types, lat, lon, res, k) -> tuple[dict, KnownDevice]:
    make_device_home(home, {"duty_cycle_s": 60, "encrypt": False, "location": {"lat": lat, "lon": lon},
                            "services": [{"type": t, "methods": [{"name": "read", "mutating": False}]} for t in types]})
    code_file = node.edgistry_home / "commission.code"
    code = wait_until(lambda: code_file.exists() and code_file.read_text().strip(), 30, str(code_file))
    out = cli_ok("pair", "--device", str(home), "--gateway", node.grpc_endpoint, "--code", code,
                 "--resolution", str(res), "--k", str(k), "--rpc", node.rpc_url, "--json")
    return json.loads(out), KnownDevice(tuple(types), h3.str_to_int(h3.latlng_to_cell(lat, lon, res)), lat, lon)


def opened_with(node, url: str) -> list[dict]:
    out = cli_ok("registry", "ls", "devices", "--rpc", url, "--home", str(node.edgistry_home), "--json")
    return json.loads(out[:out.rindex("]") + 1])


def seal_state(url: str) -> pb.SealState:
    import base64

    res = call(url, "abci_query", path="/seal", data="", height="0", prove=False)["response"]
    return pb.SealState.FromString(base64.b64decode(res.get("value") or ""))


def gateway_record(url: str, gateway_id: str) -> pb.GatewayRecord:
    import base64

    res = call(url, "abci_query", path="/gateway", data=gateway_id.encode().hex(), height="0", prove=False)["response"]
    return pb.GatewayRecord.FromString(base64.b64decode(res.get("value") or ""))


def rpc_of(url: str):
    return lambda method, **params: call(url, method, timeout=10.0, **params)


@pytest.fixture
def cluster(tmp_path: Path):
    directory = tmp_path / "net"
    try:
        out = cli_ok("cluster", "up", "--nodes", "4", "--dir", str(directory), "--fast", "--snapshot-interval", "10",
                     "--base-port", str(free_base_port(60)), "--wait", "90")
        assert "4 nodes agree at height" in out
        yield directory
    finally:
        stopped = ops.down(directory)
        assert not any(o.startswith("still running") for o in stopped.values()), stopped


def test_outsider_of_four_validators_and_a_state_synced_node_learns_nothing(cluster: Path, tmp_path: Path):
    """Sealed fields on a 4-validator chain: a state-synced gateway gets the key, the outsider finds
    no type, cell or place, and removing a gateway rotates the key and re-seals the others' devices."""
    nodes = load_localnet(cluster)
    devices = []
    for i, (n, types, lat, lon, res, k) in enumerate(PLAN):
        _, known = pair(nodes[n], tmp_path / f"dev{i}", types, lat, lon, res, k)
        devices.append(known)
    epoch = seal_state(nodes[0].rpc_url).current_epoch
    assert epoch >= 1
    # node3 holds the key too (and, a block after node0 perhaps, every record)
    wait_until(lambda: len(opened_with(nodes[3], nodes[3].rpc_url)) == len(PLAN), 30, "node3 opens every record")

    # a 5th node joins by state sync; an online gateway grants its gateway the data key
    cli_ok("cluster", "add-node", "--dir", str(cluster), "--wait", "180")
    newcomer = load_localnet(cluster)[4]
    wait_until(lambda: any(w.epoch == epoch and w.gateway_id == newcomer_id(newcomer)
                           for w in seal_state(newcomer.rpc_url).wraps), 60, "a wrap for node4's gateway")
    # its gateway publishes its TLS certificate in a tx of its own, which pairing checks against
    wait_until(lambda: gateway_record(newcomer.rpc_url, newcomer_id(newcomer)).tls_cert, 60,
               "node4's TLS certificate in the registry")
    rows = opened_with(newcomer, newcomer.rpc_url)
    assert {s["type"] for r in rows for s in r.get("services", [])} == {"hygromk7q", "sirenxb4v"}
    paired4, known4 = pair(newcomer, tmp_path / "dev4", ("lumenqz8w",), -22.9068, -43.1729, 5, 1)
    devices.append(known4)

    # the outsider: two nodes, every read path, every snapshot chunk on disk
    corpus = Corpus()
    probe = [(t, d.cell) for d in devices for t in d.types]
    counts = {}
    for node in (nodes[1], newcomer):
        counts[node.moniker] = read_everything(rpc_of(node.rpc_url), corpus, probe)
    chunks = read_snapshots([n.edgistry_home for n in load_localnet(cluster)], corpus)
    assert counts["node1"]["register_device_txs"] >= len(PLAN) + 1
    assert counts["node1"]["device_records"] == len(PLAN) + 1 and chunks >= 1
    assert all(c["by_cell_refused"] == len(probe) for c in counts.values())
    found = leaks(corpus, devices)
    print(f"outsider read {counts}, {chunks} snapshot chunks ({len(corpus.items)} items, "
          f"{sum(len(b) for _, b in corpus.items)} bytes), searched {sum(len(needles(d)) for d in devices)} "
          f"secrets: {len(found)} found")
    assert found == [], found[:10]

    # removal: node4's device is unpaired, its gateway removed; a new epoch opens and the others re-seal
    cli_ok("pair", "--device", str(tmp_path / "dev4"), "--gateway", newcomer.grpc_endpoint, "--unpair")
    admin = nodes[0].edgistry_home
    cli_ok("registry", "remove-gateway", "--home", str(admin), "--gateway-id", newcomer_id(newcomer),
           "--rpc", nodes[0].rpc_url)
    wait_until(lambda: seal_state(nodes[0].rpc_url).current_epoch > epoch, 60, "a new epoch after the removal")
    new_epoch = seal_state(nodes[0].rpc_url).current_epoch

    def resealed() -> bool:
        rows = json.loads(cli_ok("registry", "ls", "devices", "--rpc", nodes[0].rpc_url, "--json"))
        return len(rows) == len(PLAN) and all(r["sealed"]["epoch"] == new_epoch for r in rows)

    wait_until(resealed, 90, "every device re-sealed under the new epoch")
    assert len(opened_with(nodes[2], nodes[0].rpc_url)[0].get("services", [])) >= 1
    assert all(not r.get("services") for r in opened_with(newcomer, nodes[0].rpc_url))  # the old key opens nothing
    assert not seal_state(nodes[0].rpc_url).rotation_due


def newcomer_id(node) -> str:
    from edgistry.abci_app.txs import gateway_id_for

    return gateway_id_for(node.gateway_pubkey)
