"""Clusters whose nodes live on other machines: bind vs advertised addresses in every
generated file, ports per host, ABCI off the network, and `edgistry cluster generate`."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgistry.cli import main
from edgistry.cluster.localnet import (
    HOST, LocalnetError, NodePorts, add_localnet_node, generate_localnet, load_localnet,
)
from edgistry.cluster.cometbft_files import ConsensusSettings
from edgistry.cluster.ops import endpoints
from edgistry.config import NodeConfig

HOSTS = ["10.20.0.1", "10.20.0.2", "node3.example.org"]
BASE = 26600


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory):
    directory = tmp_path_factory.mktemp("hosts")
    return directory, generate_localnet(directory, 3, "edg-hosts", base_port=BASE, hosts=HOSTS, bind="0.0.0.0",
                                        snapshot_interval=10)


def _cometbft(node) -> dict:
    return tomllib.loads((node.cometbft_home / "config" / "config.toml").read_text())


def test_nodes_bind_one_address_and_advertise_another(net):
    """CometBFT and the gateway listen on the bind address; peers, genesis and devices get the host."""
    _, layouts = net
    for node, host in zip(layouts, HOSTS):
        conf, cfg = _cometbft(node), NodeConfig.load(node.edgistry_home)
        assert (node.host, node.bind) == (host, "0.0.0.0")
        assert conf["p2p"]["laddr"] == f"tcp://0.0.0.0:{BASE}" and conf["rpc"]["laddr"] == f"tcp://0.0.0.0:{BASE + 1}"
        assert conf["p2p"]["external_address"] == f"{host}:{BASE}"
        others = [n for n in layouts if n is not node]
        assert conf["p2p"]["persistent_peers"].split(",") == [f"{n.node_id}@{n.host}:{BASE}" for n in others]
        assert (cfg.grpc_listen, cfg.link_listen, cfg.http_listen) == (
            f"0.0.0.0:{BASE + 3}", f"0.0.0.0:{BASE + 4}", f"0.0.0.0:{BASE + 5}")
        assert cfg.extra["gateway"] == {  # the certificate names the host devices and peers dial
            "grpc_advertise": f"{host}:{BASE + 3}", "link_advertise": f"{host}:{BASE + 4}",
            "peer_advertise": f"{host}:{BASE + 7}", "tls_hosts": [host]}
        assert cfg.rpc_url == f"http://127.0.0.1:{BASE + 1}"  # its own node, never across the network
        assert node.rpc_url == f"http://{host}:{BASE + 1}"
    genesis = json.loads((layouts[0].cometbft_home / "config" / "genesis.json").read_text())
    assert [g["endpoint"] for g in genesis["app_state"]["gateways"]] == [f"{h}:{BASE + 3}" for h in HOSTS]


def test_abci_stays_on_the_machine(net):
    """A node reached from other machines meets its app on a unix socket in its directory."""
    _, layouts = net
    for node in layouts:
        sock = f"unix://{node.root / 'abci' / 'abci.sock'}"
        assert _cometbft(node)["proxy_app"] == sock == NodeConfig.load(node.edgistry_home).abci_listen
        assert endpoints(node)["abci"] == sock and endpoints(node)["grpc"] == node.grpc_endpoint


def test_nodes_on_one_host_get_distinct_port_blocks(tmp_path: Path):
    """Ports repeat across hosts and never within one: the k-th node on a host takes block k."""
    layouts = generate_localnet(tmp_path, 4, "edg-ports", base_port=BASE, hosts=["a.example", "b.example",
                                                                              "a.example", "a.example"])
    assert [n.ports for n in layouts] == [NodePorts.for_node(BASE, k) for k in (0, 0, 1, 2)]
    assert _cometbft(layouts[2])["p2p"]["external_address"] == ""  # binds the address it is reached at
    assert _cometbft(layouts[2])["p2p"]["laddr"] == f"tcp://a.example:{BASE + 10}"


def test_v1_files_bind_and_advertise_too(tmp_path: Path):
    """The v1.x config.toml carries the same bind, external address and unix ABCI socket."""
    [node, _] = generate_localnet(tmp_path, 2, "edg-v1", base_port=BASE, cometbft_version="1.0.1",
                                  hosts=["10.40.0.1", "10.40.0.2"], bind="127.0.0.1")
    conf = _cometbft(node)
    assert conf["version"].startswith("1.") and conf["p2p"]["laddr"] == f"tcp://127.0.0.1:{BASE}"
    assert conf["p2p"]["external_address"] == f"10.40.0.1:{BASE}"
    assert conf["proxy_app"] == f"unix://{node.root / 'abci' / 'abci.sock'}"


def test_loopback_stays_the_default(tmp_path: Path):
    """Without hosts nothing changes: 127.0.0.1 everywhere, TCP ABCI, no external address."""
    [node] = generate_localnet(tmp_path, 1, "edg-loop", base_port=BASE)
    conf = _cometbft(node)
    assert (node.host, node.bind) == (HOST, HOST)
    assert conf["proxy_app"] == f"tcp://127.0.0.1:{BASE + 2}" and conf["p2p"]["external_address"] == ""
    assert "gateway" not in NodeConfig.load(node.edgistry_home).extra


def test_manifest_round_trips_hosts(net):
    """load_localnet reads back each node's host and bind address."""
    directory, layouts = net
    assert load_localnet(directory) == layouts


def test_a_joining_node_gets_its_own_host(net):
    """add_localnet_node on a new host: the host's first port block, every node as a peer."""
    directory, layouts = net
    node = add_localnet_node(directory, {"enable": True}, ConsensusSettings(), snapshot_interval=10,
                             host="10.20.0.9", bind="0.0.0.0")
    assert (node.host, node.ports) == ("10.20.0.9", NodePorts.for_node(BASE, 0))
    conf = _cometbft(node)
    assert conf["p2p"]["external_address"] == f"10.20.0.9:{BASE}" and conf["statesync"]["enable"] is True
    assert conf["p2p"]["persistent_peers"].split(",") == [n.p2p_address for n in layouts]
    assert load_localnet(directory)[-1] == node


@pytest.mark.parametrize("kwargs, message", [
    ({"hosts": ["10.0.0.1"]}, "2 nodes need 2 hosts"),
    ({"hosts": ["10.0.0.1", "bad host"]}, "not a DNS name"),
    ({"hosts": ["10.0.0.1", "0.0.0.0"]}, "not a DNS name"),
    ({"hosts": ["10.0.0.1", "fe80::1"]}, "IPv6"),
    ({"hosts": ["10.0.0.1", "10.0.0.2"], "bind": "everywhere"}, "bind address"),
])
def test_bad_hosts_are_refused(tmp_path: Path, kwargs: dict, message: str):
    """Hosts other machines cannot dial, and bind addresses that are not addresses, are refused."""
    with pytest.raises(LocalnetError, match=message):
        generate_localnet(tmp_path, 2, "edg-bad", **kwargs)
    assert not (tmp_path / "localnet.json").exists()


def test_a_unix_socket_path_too_long_is_refused(tmp_path: Path):
    """A cluster directory too deep for a unix socket path fails with what to do, before writing keys."""
    deep = tmp_path / ("d" * 60) / ("e" * 40)
    with pytest.raises(LocalnetError, match="shorter cluster directory"):
        generate_localnet(deep, 1, "edg-deep", hosts=["10.0.0.1"])
    assert not (deep / "node0" / "edgistry" / "keys").exists()


def test_generate_command_writes_and_explains(tmp_path: Path):
    """`edgistry cluster generate` writes one directory per host and says what to open and run."""
    result = CliRunner().invoke(main, ["cluster", "generate", "--dir", str(tmp_path / "c"), "--host", "10.30.0.1",
                                       "--host", "10.30.0.2", "--bind", "0.0.0.0"])
    assert result.exit_code == 0, result.output
    assert [n.host for n in load_localnet(tmp_path / "c")] == ["10.30.0.1", "10.30.0.2"]
    assert f"open inbound TCP {BASE} (p2p), {BASE + 3} (gateway gRPC), {BASE + 4} (device link)" in result.output
    assert f"run: cometbft start --home {tmp_path / 'c' / 'node1' / 'cometbft'}" in result.output
    again = CliRunner().invoke(main, ["cluster", "generate", "--dir", str(tmp_path / "c"), "--host", "10.30.0.1"])
    assert again.exit_code == 1 and "already holds a localnet" in again.output
