"""The localnet generator (edgistry.cluster.localnet): files, keys, ports, genesis, peers."""

from __future__ import annotations

import base64
import hashlib
import json
import stat
import tomllib
from pathlib import Path

import pytest

from edgistry.abci_app.genesis import Genesis
from edgistry.cluster.cometbft_files import ConsensusSettings, priv_key_from_json
from edgistry.cluster.localnet import LocalnetError, generate_localnet, load_localnet
from edgistry.config import NodeConfig, load_ed25519_pem, public_bytes

NODES = 4
BASE = 21000

COMETBFT_FILES = ["config/config.toml", "config/genesis.json", "config/priv_validator_key.json",
                  "config/node_key.json", "data/priv_validator_state.json"]
SECRET_FILES = ["cometbft/config/priv_validator_key.json", "cometbft/config/node_key.json",
                "cometbft/data/priv_validator_state.json", "edgistry/keys/admin.pem",
                "edgistry/keys/gateway.pem", "edgistry/keys/gateway.secret"]


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory):
    directory = tmp_path_factory.mktemp("localnet")
    layouts = generate_localnet(directory, NODES, "edg-unit", base_port=BASE,
                                consensus=ConsensusSettings.fast(create_empty_blocks=False))
    return directory, layouts


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _toml(path: Path) -> dict:
    return tomllib.loads(path.read_text())


def test_every_node_has_its_files(net):
    """Each node gets a complete CometBFT home and an Edgistry home."""
    directory, layouts = net
    assert [n.root for n in layouts] == [directory / f"node{i}" for i in range(NODES)]
    for node in layouts:
        for rel in COMETBFT_FILES:
            assert (node.cometbft_home / rel).is_file(), rel
        assert (node.edgistry_home / "config.toml").is_file()
        assert (node.edgistry_home / "genesis.json").is_file()


def test_secret_files_are_owner_only(net):
    """Private keys and signing state are 0600."""
    _, layouts = net
    for node in layouts:
        for rel in SECRET_FILES:
            if rel.endswith("admin.pem") and node.index:
                continue  # node0's alone
            assert _mode(node.root / rel) == 0o600, rel


def test_ports_are_distinct_and_loopback(net):
    """No two listeners share a port, and every address is 127.0.0.1."""
    _, layouts = net
    ports = [p for node in layouts for p in node.ports.all()]
    assert len(ports) == len(set(ports))
    for node in layouts:
        conf = _toml(node.cometbft_home / "config" / "config.toml")
        cfg = NodeConfig.load(node.edgistry_home)
        listeners = [conf["proxy_app"], conf["rpc"]["laddr"], conf["p2p"]["laddr"],
                     conf["instrumentation"]["prometheus_listen_addr"], cfg.abci_listen, cfg.rpc_url,
                     cfg.grpc_listen, cfg.link_listen, cfg.http_listen, cfg.peer_listen]
        assert all("127.0.0.1:" in addr for addr in listeners), listeners
        assert conf["proxy_app"] == cfg.abci_listen == node.proxy_app
        assert conf["rpc"]["laddr"].endswith(f":{node.ports.rpc}") and cfg.rpc_url == node.rpc_url
        assert cfg.cometbft_home == str(node.cometbft_home)
        assert conf["instrumentation"]["prometheus"] is False


def test_genesis_is_identical_and_names_every_validator(net):
    """One genesis on every node: each validator with power 10, the shared admin, every gateway."""
    _, layouts = net
    texts = {(n.cometbft_home / "config" / "genesis.json").read_text() for n in layouts}
    texts |= {(n.edgistry_home / "genesis.json").read_text() for n in layouts}
    assert len(texts) == 1
    doc = json.loads(texts.pop())
    assert doc["chain_id"] == "edg-unit" and doc["initial_height"] == "1" and doc["app_hash"] == ""
    assert [v["address"] for v in doc["validators"]] == [n.validator_address for n in layouts]
    assert {v["power"] for v in doc["validators"]} == {"10"}
    genesis = Genesis.from_json(doc["app_state"])
    # the one admin key of genesis is on node0 (the admin machine's) and on no other node
    assert genesis.admins == [public_bytes(load_ed25519_pem(layouts[0].edgistry_home / "keys" / "admin.pem"))]
    assert [n.moniker for n in layouts if (n.edgistry_home / "keys" / "admin.pem").exists()] == ["node0"]
    assert [(g.pubkey, g.endpoint, g.operator) for g in genesis.gateways] == [
        (public_bytes(load_ed25519_pem(n.edgistry_home / "keys" / "gateway.pem")), n.grpc_endpoint, n.moniker)
        for n in layouts]


def test_validator_keys_match_their_addresses(net):
    """priv_validator_key.json is consistent: address = sha256(pubkey)[:20], priv = seed || pub."""
    _, layouts = net
    for node in layouts:
        doc = json.loads((node.cometbft_home / "config" / "priv_validator_key.json").read_text())
        pub = base64.b64decode(doc["pub_key"]["value"])
        assert doc["pub_key"]["type"] == "tendermint/PubKeyEd25519"
        assert doc["address"] == hashlib.sha256(pub).hexdigest()[:40].upper() == node.validator_address
        assert public_bytes(priv_key_from_json(doc["priv_key"])) == pub == node.validator_pubkey
        state = json.loads((node.cometbft_home / "data" / "priv_validator_state.json").read_text())
        assert state == {"height": "0", "round": 0, "step": 0}


def test_persistent_peers_name_the_other_nodes(net):
    """Each node dials every other node by its node ID (sha256 of its node key)."""
    _, layouts = net
    for node in layouts:
        key = json.loads((node.cometbft_home / "config" / "node_key.json").read_text())["priv_key"]
        pub = public_bytes(priv_key_from_json(key))
        assert node.node_id == hashlib.sha256(pub).hexdigest()[:40]
    for node in layouts:
        p2p = _toml(node.cometbft_home / "config" / "config.toml")["p2p"]
        peers = set(p2p["persistent_peers"].split(","))
        assert peers == {f"{o.node_id}@127.0.0.1:{o.ports.p2p}" for o in layouts if o is not node}
        assert p2p["addr_book_strict"] is False and p2p["allow_duplicate_ip"] is True


def test_consensus_settings_are_written(net):
    """The timeouts and create_empty_blocks given to the generator reach config.toml."""
    _, layouts = net
    consensus = _toml(layouts[0].cometbft_home / "config" / "config.toml")["consensus"]
    assert consensus["timeout_commit"] == "300ms" and consensus["create_empty_blocks"] is False


def test_manifest_round_trips(net):
    """load_localnet reads back exactly the layouts generate_localnet returned."""
    directory, layouts = net
    assert load_localnet(directory) == layouts


@pytest.mark.parametrize("kwargs, message", [
    ({"nodes": 0}, "1..100 nodes"),
    ({"chain_id": "bad chain"}, "chain id"),
    ({"base_port": 65530}, "outside"),
    ({"base_port": 80}, "outside"),
])
def test_bad_arguments_are_refused(tmp_path: Path, kwargs: dict, message: str):
    """Impossible node counts, chain ids and port ranges raise LocalnetError before writing."""
    args = {"nodes": 2, "chain_id": "edg", "base_port": BASE} | kwargs
    with pytest.raises(LocalnetError, match=message):
        generate_localnet(tmp_path / "net", **args)
    assert not (tmp_path / "net").exists()


def test_existing_localnet_is_not_overwritten(net):
    """Generating into a directory that holds a localnet fails and changes nothing."""
    directory, layouts = net
    before = (layouts[0].cometbft_home / "config" / "genesis.json").read_text()
    with pytest.raises(LocalnetError, match="already"):
        generate_localnet(directory, NODES, "edg-unit", base_port=BASE)
    assert (layouts[0].cometbft_home / "config" / "genesis.json").read_text() == before


def test_v1_localnet_files_take_the_v1_shapes(tmp_path):
    """For CometBFT v1.x the config has the [grpc] section and v1 defaults, not the keys
    v1 dropped; genesis has feature and synchrony params, not abci; the manifest says which."""
    layouts = generate_localnet(tmp_path / "net", 2, "edg-v1", base_port=BASE + 500, cometbft_version="1.0.1")
    conf = _toml(layouts[0].cometbft_home / "config" / "config.toml")
    assert conf["version"] == "1.0.1" and conf["db_backend"] == "pebbledb"
    assert conf["grpc"]["laddr"] == "" and conf["storage"]["pruning"]["interval"] == "10s"
    assert "event_bus_buffer_capacity" not in conf and "grpc_laddr" not in conf["rpc"]
    assert "block_time_tolerance" not in conf["consensus"] and "max_batch_bytes" not in conf["mempool"]
    params = json.loads((layouts[0].cometbft_home / "config" / "genesis.json").read_text())["consensus_params"]
    assert set(params) == {"block", "evidence", "validator", "version", "synchrony", "feature"}
    assert params["feature"] == {"vote_extensions_enable_height": "0", "pbts_enable_height": "0"}
    assert json.loads((tmp_path / "net" / "localnet.json").read_text())["cometbft_version"] == "1.0.1"


@pytest.mark.parametrize("version", ["0.37.5", "2.0.0", "banana"])
def test_unsupported_cometbft_versions_are_refused(tmp_path, version):
    """Only the v0.38 and v1.x file shapes are known: other versions are refused up front."""
    with pytest.raises(LocalnetError, match="not supported"):
        generate_localnet(tmp_path / "net", 1, "edg-x", base_port=BASE + 600, cometbft_version=version)
