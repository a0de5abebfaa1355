"""An N-validator CometBFT testnet on loopback, generated in pure Python.

``generate_localnet(DIR, N, chain_id)`` writes, for every node i::

    DIR/localnet.json                      manifest: chain id, base port, every node's layout
    DIR/node{i}/cometbft/config/config.toml          ports, peers, timeouts of node i
    DIR/node{i}/cometbft/config/genesis.json         one genesis, identical on every node
    DIR/node{i}/cometbft/config/priv_validator_key.json  (0600)
    DIR/node{i}/cometbft/config/node_key.json            (0600)
    DIR/node{i}/cometbft/data/priv_validator_state.json  (0600)
    DIR/node{i}/edgistry/                  an Edgistry node home (keys 0600, config.toml)

Every node is a validator of power 10. The genesis app_state names one admin
key, shared by the cluster and written to node0's home only as keys/admin.pem, and
registers every node's gateway (its key, its gRPC endpoint, operator node{i},
its TLS certificate and peer endpoint).

Addresses: by default every node lives on this machine and listens on
127.0.0.1 only. Given ``hosts`` (one per node), node i is *reached at*
``hosts[i]`` (its advertised address: peers' persistent_peers, CometBFT's
p2p external_address, the gateway endpoint in genesis, the device link
endpoint pairing hands out, RPC URLs) and *listens on* ``bind`` (default:
the same address; ``0.0.0.0`` on a machine behind NAT). A node on another
machine keeps ABCI off the network: its app and CometBFT meet on a unix
socket in the node directory.

Ports: the k-th node on one host owns the block ``base_port + 10*k ..
base_port + 10*k + 9`` (offsets in :class:`NodePorts`), so nodes sharing a
machine never collide and nodes on machines of their own all use the same
ports. Nothing here starts a process or needs the binary; ``edgistry cluster
up``, the operator on each machine and the integration tests start what this
writes.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ..abci_app.genesis import GatewaySpec, Genesis
from .home import CHAIN_ID_RE, gateway_spec, now_rfc3339, prepare_home
from .cometbft_files import (
    CONFIG_VERSION, ConsensusSettings, GenesisValidator, address_of, config_toml, genesis_doc, is_v1, node_id_of,
    node_key_json, priv_validator_key_json, priv_validator_state_json, render_config,
)
from ..gateway.tls import ensure_identity
from ..config import (
    DEFAULT_CHAIN_ID, HomeError, NodeConfig, load_ed25519_pem, own_dir, public_bytes, write_secret_file,
)

HOST = "127.0.0.1"  # where a one-machine localnet listens and is reached
WILDCARD = "0.0.0.0"
DEFAULT_BASE_PORT = 26600
PORTS_PER_NODE = 10
MANIFEST = "localnet.json"
MAX_NODES = 100
ABCI_SOCKET = "abci/abci.sock"  # in a 0700 folder of the node directory, for nodes reached from other machines
MAX_UNIX_PATH = 107  # sun_path is 108 bytes with its terminating NUL
HOSTNAME_RE = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                         r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")


class LocalnetError(Exception):
    """The localnet cannot be generated or read (bad arguments, existing files)."""


@dataclass(frozen=True)
class NodePorts:
    """The loopback ports of one node: ``base_port + 10*index + offset``."""

    p2p: int  # offset 0: CometBFT p2p
    rpc: int  # offset 1: CometBFT RPC
    abci: int  # offset 2: `edgistry node` ABCI socket
    grpc: int  # offset 3: gateway gRPC
    link: int  # offset 4: gateway device link
    http: int  # offset 5: gateway HTTP
    prometheus: int  # offset 6: CometBFT metrics (off unless enabled)
    peer: int = 0  # offset 7: gateway-to-gateway mutual TLS (0: a manifest from before it existed)

    @classmethod
    def for_node(cls, base_port: int, index: int) -> NodePorts:
        start = base_port + PORTS_PER_NODE * index
        return cls(*(start + offset for offset in range(8)))

    def all(self) -> list[int]:
        return list(asdict(self).values())


@dataclass(frozen=True)
class NodeLayout:
    """Where one node's files live and how to reach it."""

    index: int
    moniker: str
    root: Path  # DIR/node{i}
    node_id: str  # CometBFT p2p ID (lower-case hex)
    validator_address: str  # upper-case hex
    validator_pubkey: bytes
    gateway_pubkey: bytes
    ports: NodePorts
    host: str = HOST  # advertised: where peers, clients and devices reach this node
    bind: str = HOST  # where its listeners bind (the host itself, or 0.0.0.0)

    @property
    def cometbft_home(self) -> Path:
        return self.root / "cometbft"

    @property
    def edgistry_home(self) -> Path:
        return self.root / "edgistry"

    @property
    def local_host(self) -> str:
        """The address its own machine reaches its listeners at."""
        return HOST if self.bind == WILDCARD else self.bind

    @property
    def rpc_url(self) -> str:
        """CometBFT's RPC as other machines reach it."""
        return f"http://{self.host}:{self.ports.rpc}"

    @property
    def local_rpc_url(self) -> str:
        """CometBFT's RPC as the node's own gateway reaches it (never through the network)."""
        return f"http://{self.local_host}:{self.ports.rpc}"

    @property
    def proxy_app(self) -> str:
        """Where CometBFT finds the app: loopback TCP on a one-machine localnet, a unix
        socket in the node directory otherwise (ABCI never listens on a network)."""
        if _is_loopback(self.host):
            return f"tcp://{HOST}:{self.ports.abci}"
        return f"unix://{self.root / ABCI_SOCKET}"

    @property
    def p2p_address(self) -> str:
        """``id@host:port``, as persistent_peers names this node."""
        return f"{self.node_id}@{self.host}:{self.ports.p2p}"

    @property
    def external_address(self) -> str:
        """CometBFT's p2p.external_address: empty when it binds the address it is reached at."""
        return "" if self.bind == self.host else f"{self.host}:{self.ports.p2p}"

    @property
    def grpc_endpoint(self) -> str:
        return f"{self.host}:{self.ports.grpc}"

    @property
    def link_endpoint(self) -> str:
        return f"{self.host}:{self.ports.link}"

    @property
    def http_url(self) -> str:
        """The gateway's HTTPS side (/healthz, /metrics): trust :attr:`tls_cert` to read it."""
        return f"https://{self.host}:{self.ports.http}"

    @property
    def tls_cert(self) -> Path:
        """The gateway's certificate: the pin of its gRPC, peer and HTTPS ports."""
        return self.edgistry_home / "keys" / "tls.crt"

    @property
    def peer_endpoint(self) -> str:
        return f"{self.host}:{self.ports.peer}"

    def to_json(self, directory: Path) -> dict[str, Any]:
        return {
            "index": self.index, "moniker": self.moniker, "root": str(self.root.relative_to(directory)),
            "node_id": self.node_id, "validator_address": self.validator_address,
            "validator_pubkey": self.validator_pubkey.hex(), "gateway_pubkey": self.gateway_pubkey.hex(),
            "ports": asdict(self.ports), "host": self.host, "bind": self.bind,
        }

    @classmethod
    def from_json(cls, directory: Path, data: dict[str, Any]) -> NodeLayout:
        return cls(
            index=int(data["index"]), moniker=data["moniker"], root=directory / data["root"],
            node_id=data["node_id"], validator_address=data["validator_address"],
            validator_pubkey=bytes.fromhex(data["validator_pubkey"]),
            gateway_pubkey=bytes.fromhex(data["gateway_pubkey"]), ports=NodePorts(**data["ports"]),
            host=data.get("host", HOST), bind=data.get("bind", HOST),
        )


def generate_localnet(directory: Path, nodes: int, chain_id: str = DEFAULT_CHAIN_ID,
                      base_port: int = DEFAULT_BASE_PORT, consensus: ConsensusSettings = ConsensusSettings(),
                      pex: bool = True, log_level: str = "info", genesis_time: str | None = None,
                      power: int = 10, snapshot_interval: int = 0,
                      extra_gateways: Sequence[GatewaySpec] = (),
                      cometbft_version: str = CONFIG_VERSION, hosts: Sequence[str] = (),
                      bind: str | None = None) -> list[NodeLayout]:
    """Write an N-validator testnet into ``directory``; return the node layouts.

    ``consensus`` sets the timeouts and create_empty_blocks (``ConsensusSettings.fast()``
    for tests); ``base_port`` the first port of node 0's block of ten. Every app
    takes a state-sync snapshot each ``snapshot_interval`` blocks (0: never);
    ``extra_gateways`` are registered in genesis beside the nodes' own (load
    generators sign with them). ``cometbft_version`` is the release that will run
    the nodes (``cometbft.cometbft_version``): config.toml and genesis.json take
    its shapes. ``hosts`` (one per node; default: all on 127.0.0.1) are the
    addresses the nodes are reached at, ``bind`` what they listen on (default:
    their host). Refuses to overwrite an existing localnet or node directory.
    """
    _check_arguments(nodes, chain_id, base_port)
    try:
        is_v1(cometbft_version)
    except ValueError as exc:
        raise LocalnetError(str(exc)) from exc
    hosts = list(hosts) or [HOST] * nodes
    if len(hosts) != nodes:
        raise LocalnetError(f"{nodes} nodes need {nodes} hosts, not {len(hosts)}")
    for host in hosts:
        _check_host(host, bind)
    directory = directory.expanduser().resolve()
    if (directory / MANIFEST).exists():
        raise LocalnetError(f"{directory} already holds a localnet ({MANIFEST} exists)")
    for i in range(nodes):
        if (directory / f"node{i}").exists():
            raise LocalnetError(f"{directory / f'node{i}'} already exists")
    try:  # this user's, closed to others' writes: it holds the keys, run records and logs
        own_dir(directory, 0o755)
    except PermissionError as exc:
        raise LocalnetError(str(exc)) from exc

    admin = Ed25519PrivateKey.generate()
    layouts: list[NodeLayout] = []
    validator_keys: list[Ed25519PrivateKey] = []
    for i in range(nodes):
        layout, validator_key = _make_node(directory, i, chain_id, _ports(base_port, hosts[:i], hosts[i]), admin,
                                           snapshot_interval, hosts[i], bind or hosts[i])
        layouts.append(layout)
        validator_keys.append(validator_key)

    app_state = Genesis(
        admins=[public_bytes(admin)],
        gateways=[gateway_spec(NodeConfig.load(n.edgistry_home), n.grpc_endpoint, n.moniker, n.peer_endpoint)
                  for n in layouts] + list(extra_gateways),
    ).to_json()
    validators = [GenesisValidator(n.validator_pubkey, n.moniker, power) for n in layouts]
    genesis = genesis_doc(chain_id, genesis_time or now_rfc3339(), validators, app_state, version=cometbft_version)
    genesis_text = json.dumps(genesis, indent=2) + "\n"

    for node, validator_key in zip(layouts, validator_keys):
        peers = [other.p2p_address for other in layouts if other.index != node.index]
        _write_node_files(node, validator_key, genesis_text, peers, consensus, pex, log_level,
                          version=cometbft_version)

    manifest = {"chain_id": chain_id, "base_port": base_port, "cometbft_version": cometbft_version,
                "nodes": [n.to_json(directory) for n in layouts]}
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return layouts


def _write_node_files(node: NodeLayout, validator_key: Ed25519PrivateKey, genesis_text: str, peers: list[str],
                      consensus: ConsensusSettings, pex: bool, log_level: str,
                      statesync: dict[str, Any] | None = None, version: str = CONFIG_VERSION) -> None:
    """Node i's validator key, genesis (both homes), config.toml and signing state."""
    config = node.cometbft_home / "config"
    write_secret_file(config / "priv_validator_key.json", _json_bytes(priv_validator_key_json(validator_key)))
    (config / "genesis.json").write_text(genesis_text)
    settings = config_toml(
        moniker=node.moniker, proxy_app=node.proxy_app, rpc_laddr=f"tcp://{node.bind}:{node.ports.rpc}",
        p2p_laddr=f"tcp://{node.bind}:{node.ports.p2p}", persistent_peers=peers, consensus=consensus,
        pex=pex, prometheus_laddr=f"{node.bind}:{node.ports.prometheus}", log_level=log_level,
        external_address=node.external_address, version=version)
    if statesync:
        settings["statesync"].update(statesync)
    (config / "config.toml").write_text(render_config(settings))
    write_secret_file(node.cometbft_home / "data" / "priv_validator_state.json",
                      _json_bytes(priv_validator_state_json()))
    (node.edgistry_home / "genesis.json").write_text(genesis_text)


def add_localnet_node(directory: Path, statesync: dict[str, Any], consensus: ConsensusSettings,
                      snapshot_interval: int = 0, pex: bool = True, log_level: str = "info",
                      host: str = HOST, bind: str | None = None) -> NodeLayout:
    """Add node{N} to an existing localnet: same genesis and admin key, its own keys and
    ports, every existing node as a persistent peer, and the given ``[statesync]``
    settings (enable, rpc_servers, trust_height, trust_hash, ...); reached at ``host``,
    listening on ``bind`` (default: the host). It is not a validator until promoted.
    The manifest lists it afterwards."""
    directory = directory.expanduser().resolve()
    manifest = json.loads((directory / MANIFEST).read_text())
    layouts = load_localnet(directory)
    index = max(n.index for n in layouts) + 1
    _check_arguments(index + 1, manifest["chain_id"], manifest["base_port"])
    _check_host(host, bind)
    if (directory / f"node{index}").exists():
        raise LocalnetError(f"{directory / f'node{index}'} already exists")
    first = layouts[0]
    admin = load_ed25519_pem(first.edgistry_home / "keys" / "admin.pem")
    ports = _ports(manifest["base_port"], [n.host for n in layouts], host)
    node, validator_key = _make_node(directory, index, manifest["chain_id"], ports, admin, snapshot_interval,
                                     host, bind or host)
    genesis_text = (first.cometbft_home / "config" / "genesis.json").read_text()
    _write_node_files(node, validator_key, genesis_text, [n.p2p_address for n in layouts], consensus, pex,
                      log_level, statesync, version=manifest.get("cometbft_version", CONFIG_VERSION))
    manifest["nodes"].append(node.to_json(directory))
    tmp = directory / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    tmp.replace(directory / MANIFEST)
    return node


def load_localnet(directory: Path) -> list[NodeLayout]:
    """The node layouts of a localnet written by :func:`generate_localnet`."""
    directory = directory.expanduser().resolve()
    path = directory / MANIFEST
    try:
        manifest = json.loads(path.read_text())
        return [NodeLayout.from_json(directory, n) for n in manifest["nodes"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise LocalnetError(f"cannot read the localnet manifest {path}: {exc}") from exc


def _check_arguments(nodes: int, chain_id: str, base_port: int) -> None:
    if not 1 <= nodes <= MAX_NODES:
        raise LocalnetError(f"a localnet has 1..{MAX_NODES} nodes, not {nodes}")
    if not CHAIN_ID_RE.match(chain_id):
        raise LocalnetError(f"chain id {chain_id!r} must be 1-50 characters of A-Z a-z 0-9 . _ -")
    last = base_port + PORTS_PER_NODE * nodes - 1
    if base_port < 1024 or last > 65535:
        raise LocalnetError(f"ports {base_port}..{last} are outside 1024..65535")


def _check_host(host: str, bind: str | None) -> None:
    """A host is a DNS name or an IPv4 address; a bind address an IPv4 address (or 0.0.0.0)."""
    if not HOSTNAME_RE.match(host) or host == WILDCARD:
        raise LocalnetError(f"host {host!r} is not a DNS name or an IPv4 address (what other machines dial; "
                            "IPv6 literals are not supported: use a name)")
    if bind is not None:
        try:
            ipaddress.IPv4Address(bind)
        except ValueError:
            raise LocalnetError(f"bind address {bind!r} is not an IPv4 address (e.g. 0.0.0.0)") from None


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _ports(base_port: int, earlier_hosts: Sequence[str], host: str) -> NodePorts:
    """The port block of a node: the k-th node on its host takes block k."""
    return NodePorts.for_node(base_port, sum(1 for h in earlier_hosts if h == host))


def _make_node(directory: Path, index: int, chain_id: str, ports: NodePorts, admin: Ed25519PrivateKey,
               snapshot_interval: int = 0, host: str = HOST,
               bind: str = HOST) -> tuple[NodeLayout, Ed25519PrivateKey]:
    """Node i's key files, CometBFT directories and Edgistry home (config saved)."""
    moniker = f"node{index}"
    root = directory / moniker
    if not _is_loopback(host) and len(str(root / ABCI_SOCKET).encode()) > MAX_UNIX_PATH:
        raise LocalnetError(f"{root / ABCI_SOCKET} is longer than a unix socket path may be "
                            f"({MAX_UNIX_PATH} bytes): choose a shorter cluster directory")
    validator_key, node_key = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    validator_pub = validator_key.public_key().public_bytes_raw()
    try:
        # the admin key stays on node0 (the admin machine's): no running node needs it, and
        # every other home (and its gateway) would otherwise hold the key to the whole chain
        cfg, _, gateway = prepare_home(root / "edgistry", chain_id, moniker, admin=admin, keep_admin=index == 0)
    except HomeError as exc:
        raise LocalnetError(str(exc)) from exc
    layout = NodeLayout(
        index=index, moniker=moniker, root=root,
        node_id=node_id_of(node_key.public_key().public_bytes_raw()),
        validator_address=address_of(validator_pub), validator_pubkey=validator_pub,
        gateway_pubkey=public_bytes(gateway), ports=ports, host=host, bind=bind,
    )
    for sub in ("config", "data"):
        (root / "cometbft" / sub).mkdir(mode=0o700, parents=True)
    # whoever reaches ABCI can feed the registry blocks: its socket is the user's alone,
    # whatever the umask would have made of the socket file
    (root / "abci").mkdir(mode=0o700, exist_ok=True)
    os.chmod(root / "abci", 0o700)
    write_secret_file(root / "cometbft" / "config" / "node_key.json", _json_bytes(node_key_json(node_key)))

    cfg.abci_listen = layout.proxy_app
    cfg.rpc_listen = f"{bind}:{ports.rpc}"
    cfg.rpc_url = layout.local_rpc_url
    cfg.grpc_listen = f"{bind}:{ports.grpc}"
    cfg.link_listen = f"{bind}:{ports.link}"
    cfg.http_listen = f"{bind}:{ports.http}"
    cfg.peer_listen = f"{bind}:{ports.peer}"
    if bind != host:  # what the registry and paired devices are told (gateway/app.py)
        cfg.extra["gateway"] = {"grpc_advertise": layout.grpc_endpoint, "link_advertise": layout.link_endpoint,
                                "peer_advertise": layout.peer_endpoint}
    if host != HOST:  # the certificate names the advertised host too (HTTPS checks it; gRPC checks the id)
        cfg.extra.setdefault("gateway", {})["tls_hosts"] = [host]
        ensure_identity(cfg.tls_key_path, cfg.tls_cert_path, gateway, [host])
    cfg.cometbft_home = str(root / "cometbft")
    if snapshot_interval:
        cfg.extra["snapshot_interval"] = snapshot_interval
    cfg.save()
    return layout, validator_key


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2) + "\n").encode()
