"""CometBFT's on-disk formats, written from Python: keys, genesis, config.toml.

Targets CometBFT v0.38 and v1.x: :func:`config_toml`, :func:`genesis_doc` and
:func:`default_consensus_params` take the version of the binary that will run
the files (``cluster.cometbft.cometbft_version``) and write what that line's
``cometbft init`` writes (checked against v0.38.25 and v1.0.1; a test compares
:func:`config_toml` with the output of the binary in use). The differences:

* config.toml: v1.x drops event_bus_buffer_capacity, rpc.grpc_laddr,
  rpc.grpc_max_open_connections, mempool.max_batch_bytes,
  statesync.max_snapshot_chunks and consensus.block_time_tolerance; adds a
  [grpc] section, consensus.peer_gossip_intraloop_sleep_duration and
  storage.{experimental_db_key_layout, compact, compaction_interval,
  pruning.*}; and changes three defaults (db_backend pebbledb,
  mempool.max_txs_bytes 64 MiB, p2p.flush_throttle_timeout 10ms).
* genesis.json: v1.x's consensus_params replace ``abci`` by ``feature``
  (vote extensions and PBTS enable heights), add ``synchrony``, and default to
  4 MiB blocks with max_gas 10,000,000.
* Key files are the same in both.

Key files (privval/file.go, p2p/key.go, crypto/ed25519 in CometBFT):

* a private key is ``{"type": "tendermint/PrivKeyEd25519", "value": b64(seed32 || pub32)}``,
  a public key ``{"type": "tendermint/PubKeyEd25519", "value": b64(pub32)}``;
* a validator address is the first 20 bytes of SHA-256(pubkey), upper-case hex;
* a node ID is the same 20 bytes of the *node* key, lower-case hex.

Nothing here starts a process or needs the binary.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import tomli_w
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

PRIV_KEY_TYPE = "tendermint/PrivKeyEd25519"
PUB_KEY_TYPE = "tendermint/PubKeyEd25519"
CONFIG_VERSION = "0.38.25"  # the default release: the v0.38 line's `init` output
V1_VERSION = "1.0.1"  # the v1.x release the v1 shapes were checked against
DEFAULT_POWER = 10


def is_v1(version: str) -> bool:
    """True for a CometBFT v1.x version string ("1.0.1"), False for v0.38 ("0.38.25").

    Raises ValueError for other lines: their files differ in ways not written here."""
    v = version.strip().lstrip("v")
    if v.startswith("1."):
        return True
    if v.startswith("0.38"):
        return False
    raise ValueError(f"CometBFT {version!r} is not supported: use v0.38.x or v1.x")


# ---- keys ----


def _pub(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes_raw()


def address_of(pubkey: bytes) -> str:
    """A validator address: upper-case hex of SHA-256(pubkey)[:20]."""
    return hashlib.sha256(pubkey).digest()[:20].hex().upper()


def node_id_of(pubkey: bytes) -> str:
    """A p2p node ID: lower-case hex of SHA-256(node pubkey)[:20]."""
    return hashlib.sha256(pubkey).digest()[:20].hex()


def pub_key_json(pubkey: bytes) -> dict[str, str]:
    return {"type": PUB_KEY_TYPE, "value": base64.b64encode(pubkey).decode()}


def priv_key_json(key: Ed25519PrivateKey) -> dict[str, str]:
    # Go's ed25519.PrivateKey is the 32-byte seed followed by the public key.
    return {"type": PRIV_KEY_TYPE, "value": base64.b64encode(key.private_bytes_raw() + _pub(key)).decode()}


def priv_key_from_json(obj: dict[str, str]) -> Ed25519PrivateKey:
    """Read a ``priv_key`` object back (checks type and that the halves match)."""
    if obj.get("type") != PRIV_KEY_TYPE:
        raise ValueError(f"not an Ed25519 private key: type {obj.get('type')!r}")
    raw = base64.b64decode(obj["value"])
    if len(raw) != 64:
        raise ValueError(f"an Ed25519 private key is 64 bytes, got {len(raw)}")
    key = Ed25519PrivateKey.from_private_bytes(raw[:32])
    if _pub(key) != raw[32:]:
        raise ValueError("the private key's public half does not match its seed")
    return key


def priv_validator_key_json(key: Ed25519PrivateKey) -> dict[str, Any]:
    """Contents of config/priv_validator_key.json."""
    pub = _pub(key)
    return {"address": address_of(pub), "pub_key": pub_key_json(pub), "priv_key": priv_key_json(key)}


def node_key_json(key: Ed25519PrivateKey) -> dict[str, Any]:
    """Contents of config/node_key.json."""
    return {"priv_key": priv_key_json(key)}


def priv_validator_state_json() -> dict[str, Any]:
    """Contents of a fresh data/priv_validator_state.json (nothing signed yet)."""
    return {"height": "0", "round": 0, "step": 0}


# ---- genesis ----


def default_consensus_params(version: str = CONFIG_VERSION) -> dict[str, Any]:
    """Consensus params as `cometbft init` of ``version`` writes them; int64s are JSON strings."""
    evidence = {"max_age_num_blocks": "100000", "max_age_duration": "172800000000000", "max_bytes": "1048576"}
    if is_v1(version):
        return {
            "block": {"max_bytes": "4194304", "max_gas": "10000000"},
            "evidence": evidence,
            "validator": {"pub_key_types": ["ed25519"]},
            "version": {"app": "0"},
            "synchrony": {"precision": "505000000", "message_delay": "15000000000"},
            "feature": {"vote_extensions_enable_height": "0", "pbts_enable_height": "0"},
        }
    return {
        "block": {"max_bytes": "22020096", "max_gas": "-1"},
        "evidence": evidence,
        "validator": {"pub_key_types": ["ed25519"]},
        "version": {"app": "0"},
        "abci": {"vote_extensions_enable_height": "0"},
    }


@dataclass(frozen=True)
class GenesisValidator:
    pubkey: bytes
    name: str = ""
    power: int = DEFAULT_POWER

    def to_json(self) -> dict[str, Any]:
        return {"address": address_of(self.pubkey), "pub_key": pub_key_json(self.pubkey),
                "power": str(self.power), "name": self.name}


def genesis_doc(chain_id: str, genesis_time: str, validators: list[GenesisValidator],
                app_state: Any, initial_height: int = 1, version: str = CONFIG_VERSION) -> dict[str, Any]:
    """A complete genesis.json document for CometBFT ``version`` (the app_state is the application's)."""
    return {
        "genesis_time": genesis_time,
        "chain_id": chain_id,
        "initial_height": str(initial_height),
        "consensus_params": default_consensus_params(version),
        "validators": [v.to_json() for v in validators],
        "app_hash": "",
        "app_state": app_state,
    }


# ---- config.toml ----


@dataclass(frozen=True)
class ConsensusSettings:
    """The [consensus] timing knobs (CometBFT duration strings)."""

    timeout_propose: str = "3s"
    timeout_propose_delta: str = "500ms"
    timeout_prevote: str = "1s"
    timeout_prevote_delta: str = "500ms"
    timeout_precommit: str = "1s"
    timeout_precommit_delta: str = "500ms"
    timeout_commit: str = "1s"
    create_empty_blocks: bool = True
    create_empty_blocks_interval: str = "0s"

    @classmethod
    def fast(cls, **overrides: Any) -> ConsensusSettings:
        """Short timeouts for tests and demos on one machine (blocks every ~0.3 s)."""
        values = dict(timeout_propose="1s", timeout_propose_delta="200ms", timeout_prevote="300ms",
                      timeout_prevote_delta="200ms", timeout_precommit="300ms",
                      timeout_precommit_delta="200ms", timeout_commit="300ms")
        values.update(overrides)
        return cls(**values)


def config_toml(*, moniker: str, proxy_app: str, rpc_laddr: str, p2p_laddr: str,
                persistent_peers: Sequence[str] = (), consensus: ConsensusSettings = ConsensusSettings(),
                pex: bool = True, prometheus_laddr: str = "127.0.0.1:26660", log_level: str = "info",
                external_address: str = "", version: str = CONFIG_VERSION) -> dict[str, Any]:
    """Every setting of the config.toml of CometBFT ``version``, defaults as its
    `cometbft init` writes them, with the given values for the node-specific ones
    and loopback-friendly p2p rules (no strict address book, duplicate IPs
    allowed). Prometheus stays off."""
    config = _config_v038(moniker=moniker, proxy_app=proxy_app, rpc_laddr=rpc_laddr, p2p_laddr=p2p_laddr,
                          persistent_peers=persistent_peers, consensus=consensus, pex=pex,
                          prometheus_laddr=prometheus_laddr, log_level=log_level, external_address=external_address)
    config["version"] = version.strip().lstrip("v")
    return _to_v1(config) if is_v1(version) else config


def _to_v1(config: dict[str, Any]) -> dict[str, Any]:
    """The v1.x config.toml from the v0.38 one: keys dropped, added and re-defaulted,
    sections in the order v1.x's `cometbft init` writes them."""
    del config["event_bus_buffer_capacity"]
    for key in ("grpc_laddr", "grpc_max_open_connections"):
        del config["rpc"][key]
    del config["mempool"]["max_batch_bytes"]
    del config["statesync"]["max_snapshot_chunks"]
    del config["consensus"]["block_time_tolerance"]
    config["db_backend"] = "pebbledb"
    config["mempool"]["max_txs_bytes"] = 67108864
    config["p2p"]["flush_throttle_timeout"] = "10ms"
    config["consensus"]["peer_gossip_intraloop_sleep_duration"] = "0s"
    config["storage"].update({
        "experimental_db_key_layout": "v1", "compact": False, "compaction_interval": "1000",
        "pruning": {"interval": "10s", "data_companion": {
            "enabled": False, "initial_block_retain_height": 0, "initial_block_results_retain_height": 0}},
    })
    grpc = {"laddr": "", "version_service": {"enabled": True}, "block_service": {"enabled": True},
            "block_results_service": {"enabled": True},
            "privileged": {"laddr": "", "pruning_service": {"enabled": False}}}
    ordered: dict[str, Any] = {}
    for key, value in config.items():
        ordered[key] = value
        if key == "rpc":
            ordered["grpc"] = grpc
    return ordered


def _config_v038(*, moniker: str, proxy_app: str, rpc_laddr: str, p2p_laddr: str, persistent_peers: Sequence[str],
                 consensus: ConsensusSettings, pex: bool, prometheus_laddr: str, log_level: str,
                 external_address: str) -> dict[str, Any]:
    return {
        "version": CONFIG_VERSION,
        "proxy_app": proxy_app,
        "moniker": moniker,
        "db_backend": "goleveldb",
        "db_dir": "data",
        "log_level": log_level,
        "log_format": "plain",
        "genesis_file": "config/genesis.json",
        "priv_validator_key_file": "config/priv_validator_key.json",
        "priv_validator_state_file": "data/priv_validator_state.json",
        "priv_validator_laddr": "",
        "node_key_file": "config/node_key.json",
        "abci": "socket",
        "filter_peers": False,
        "event_bus_buffer_capacity": 0,
        "rpc": {
            "laddr": rpc_laddr,
            "cors_allowed_origins": [],
            "cors_allowed_methods": ["HEAD", "GET", "POST"],
            "cors_allowed_headers": ["Origin", "Accept", "Content-Type", "X-Requested-With", "X-Server-Time"],
            "grpc_laddr": "",
            "grpc_max_open_connections": 900,
            "unsafe": False,
            "max_open_connections": 900,
            "max_subscription_clients": 100,
            "max_subscriptions_per_client": 5,
            "experimental_subscription_buffer_size": 200,
            "experimental_websocket_write_buffer_size": 200,
            "experimental_close_on_slow_client": False,
            "timeout_broadcast_tx_commit": "10s",
            "max_request_batch_size": 10,
            "max_body_bytes": 1000000,
            "max_header_bytes": 1048576,
            "tls_cert_file": "",
            "tls_key_file": "",
            "pprof_laddr": "",
        },
        "p2p": {
            "laddr": p2p_laddr,
            "external_address": external_address,
            "seeds": "",
            "persistent_peers": ",".join(persistent_peers),
            "addr_book_file": "config/addrbook.json",
            "addr_book_strict": False,
            "max_num_inbound_peers": 40,
            "max_num_outbound_peers": 10,
            "unconditional_peer_ids": "",
            "persistent_peers_max_dial_period": "0s",
            "flush_throttle_timeout": "100ms",
            "max_packet_msg_payload_size": 1024,
            "send_rate": 5120000,
            "recv_rate": 5120000,
            "pex": pex,
            "seed_mode": False,
            "private_peer_ids": "",
            "allow_duplicate_ip": True,
            "handshake_timeout": "20s",
            "dial_timeout": "3s",
        },
        "mempool": {
            "type": "flood",
            "recheck": True,
            "recheck_timeout": "1s",
            "broadcast": True,
            "wal_dir": "",
            "size": 5000,
            "max_txs_bytes": 1073741824,
            "cache_size": 10000,
            "keep-invalid-txs-in-cache": False,
            "max_tx_bytes": 1048576,
            "max_batch_bytes": 0,
            "experimental_max_gossip_connections_to_persistent_peers": 0,
            "experimental_max_gossip_connections_to_non_persistent_peers": 0,
        },
        "statesync": {
            "enable": False,
            "rpc_servers": "",
            "trust_height": 0,
            "trust_hash": "",
            "trust_period": "168h0m0s",
            "discovery_time": "15s",
            "temp_dir": "",
            "chunk_request_timeout": "10s",
            "chunk_fetchers": "4",
            "max_snapshot_chunks": 100000,
        },
        "blocksync": {"version": "v0"},
        "consensus": {
            "wal_file": "data/cs.wal/wal",
            "timeout_propose": consensus.timeout_propose,
            "timeout_propose_delta": consensus.timeout_propose_delta,
            "timeout_prevote": consensus.timeout_prevote,
            "timeout_prevote_delta": consensus.timeout_prevote_delta,
            "timeout_precommit": consensus.timeout_precommit,
            "timeout_precommit_delta": consensus.timeout_precommit_delta,
            "timeout_commit": consensus.timeout_commit,
            "double_sign_check_height": 0,
            "skip_timeout_commit": False,
            "create_empty_blocks": consensus.create_empty_blocks,
            "create_empty_blocks_interval": consensus.create_empty_blocks_interval,
            "peer_gossip_sleep_duration": "100ms",
            "peer_query_maj23_sleep_duration": "2s",
            "block_time_tolerance": "1m0s",
        },
        "storage": {"discard_abci_responses": False},
        "tx_index": {"indexer": "kv", "psql-conn": ""},
        "instrumentation": {
            "prometheus": False,
            "prometheus_listen_addr": prometheus_laddr,
            "max_open_connections": 3,
            "namespace": "cometbft",
        },
    }


CONFIG_HEADER = (
    "# CometBFT node configuration, generated by Edgistry (edgistry.cluster).\n"
    "# Every setting of this version's config.toml is listed; see CometBFT's configuration manual.\n\n"
)


def render_config(config: dict[str, Any]) -> str:
    return CONFIG_HEADER + tomli_w.dumps(config)
