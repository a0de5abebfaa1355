"""Creating a node home and its genesis (``edgistry init``).

A fresh home gets its keys (0600; the gateway's TLS key and certificate too),
config.toml and a genesis whose app_state names this home's admin key and
registers this home's gateway with its TLS certificate, so that clients can
pin it from the first block. Given a
CometBFT home, the same app_state is written into CometBFT's genesis.json
(running ``cometbft init`` there first when the binary is available) and the
node config points at that node's RPC and proxy_app.
"""

from __future__ import annotations

import json
import re
import tomllib
from datetime import datetime, timezone
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ..abci_app.genesis import Genesis, GatewaySpec
from ..gateway.tls import ensure_identity
from .cometbft import HOW_TO_GET, cometbft_init, find_cometbft
from ..gateway.discovery.sealbox import load_seal_key
from ..config import (
    DEFAULT_CHAIN_ID, HomeError, NodeConfig, load_ed25519_pem, new_ed25519_pem, new_secret, private_dir,
    public_bytes, write_ed25519_pem,
)

CHAIN_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,50}$")


def now_rfc3339() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def prepare_home(home: Path, chain_id: str | None = None, moniker: str = "node0",
                 admin: Ed25519PrivateKey | None = None,
                 keep_admin: bool = True) -> tuple[NodeConfig, Ed25519PrivateKey, Ed25519PrivateKey]:
    """Create a home directory and its keys (0600); write neither config.toml nor genesis.

    Returns the (unsaved) config, the admin key and the gateway key (its TLS
    key and certificate are written beside it). ``admin`` given, that key
    becomes keys/admin.pem (a cluster shares one admin) unless ``keep_admin`` is
    False (the cluster's other homes: only the admin machine's keeps it);
    otherwise a new one is made. Callers finish the home with ``cfg.save()``.
    """
    home = home.expanduser().resolve()
    if (home / "config.toml").exists():
        raise HomeError(f"{home} is already initialised (config.toml exists)")
    if chain_id is not None and not CHAIN_ID_RE.match(chain_id):
        raise HomeError(f"chain id {chain_id!r} must be 1-50 characters of A-Z a-z 0-9 . _ -")
    private_dir(home, 0o755)  # ours, and no one else's to write: a home someone else made is refused
    private_dir(home / "keys")
    cfg = NodeConfig(home=home, chain_id=chain_id or DEFAULT_CHAIN_ID, moniker=moniker)
    if admin is None:
        admin = new_ed25519_pem(cfg.keys_dir / "admin.pem")
    elif keep_admin:
        write_ed25519_pem(cfg.keys_dir / "admin.pem", admin)
    gateway = new_ed25519_pem(cfg.keys_dir / "gateway.pem")
    new_secret(cfg.keys_dir / "gateway.secret")
    load_seal_key(cfg.keys_dir, create=True)  # X25519: registry data keys are wrapped to it (sealed registry)
    ensure_identity(cfg.tls_key_path, cfg.tls_cert_path, gateway)
    return cfg, admin, gateway


def gateway_spec(cfg: NodeConfig, endpoint: str, operator: str, peer_endpoint: str) -> GatewaySpec:
    """This home's gateway as genesis registers it: key, endpoints and TLS certificate."""
    key = gateway_key(cfg)
    tls = ensure_identity(cfg.tls_key_path, cfg.tls_cert_path, key)
    return GatewaySpec(public_bytes(key), endpoint, operator, tls_cert=tls.cert_der, tls_cert_signature=tls.signature,
                       peer_endpoint=peer_endpoint)


def init_home(home: Path, chain_id: str | None = None, cometbft_home: Path | None = None,
              moniker: str = "node0", listen: dict[str, str] | None = None) -> NodeConfig:
    """Create a complete home; ``listen`` overrides addresses (grpc_listen, link_listen, ...)."""
    cfg, admin, gateway = prepare_home(home, chain_id, moniker)
    for name, value in (listen or {}).items():
        if value:
            setattr(cfg, name, value)
    if listen and listen.get("rpc_listen"):
        cfg.rpc_url = "http://" + cfg.rpc_listen
    genesis = Genesis(
        admins=[public_bytes(admin)],
        gateways=[gateway_spec(cfg, cfg.grpc_listen, moniker, cfg.peer_listen)],
    )
    doc = {"genesis_time": now_rfc3339(), "chain_id": cfg.chain_id, "initial_height": "1",
           "app_state": genesis.to_json()}
    if cometbft_home is not None:
        doc = attach_cometbft(cfg, cometbft_home.expanduser().resolve(), genesis, chain_id)
    cfg.genesis_path.write_text(json.dumps(doc, indent=2) + "\n")
    cfg.save()
    return cfg


def attach_cometbft(cfg: NodeConfig, chome: Path, genesis: Genesis, chain_id: str | None) -> dict:
    """Write our app_state into CometBFT's genesis; adopt its RPC and proxy_app."""
    gpath = chome / "config" / "genesis.json"
    if not gpath.exists():
        binary = find_cometbft()
        if binary is None:
            raise HomeError(f"{gpath} does not exist and {HOW_TO_GET}")
        cometbft_init(binary, chome)
    doc = json.loads(gpath.read_text())
    if chain_id is not None:
        doc["chain_id"] = chain_id
    cfg.chain_id = doc["chain_id"]
    doc["app_state"] = genesis.to_json()
    gpath.write_text(json.dumps(doc, indent=2) + "\n")
    cfg.cometbft_home = str(chome)
    ctoml = chome / "config" / "config.toml"
    if ctoml.exists():
        conf = tomllib.loads(ctoml.read_text())
        laddr = conf.get("rpc", {}).get("laddr", "tcp://127.0.0.1:26657")
        cfg.rpc_url = "http://" + laddr.split("://", 1)[-1].replace("0.0.0.0", "127.0.0.1")
        cfg.abci_listen = conf.get("proxy_app", cfg.abci_listen)
    return doc


def load_genesis_doc(cfg: NodeConfig) -> dict:
    path = Path(cfg.cometbft_home) / "config" / "genesis.json" if cfg.cometbft_home else cfg.genesis_path
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise HomeError(f"cannot read genesis {path}: {exc}") from exc
    gt = str(doc.get("genesis_time", ""))
    try:  # RFC 3339 with up to nanoseconds; the app needs whole seconds
        base = datetime.fromisoformat(gt.rstrip("Z").split(".")[0]).replace(tzinfo=timezone.utc)
        doc["genesis_time_s"] = int(base.timestamp())
    except ValueError:
        doc["genesis_time_s"] = 0
    return doc


def admin_key(cfg: NodeConfig):
    return load_ed25519_pem(cfg.keys_dir / "admin.pem")


def gateway_key(cfg: NodeConfig):
    return load_ed25519_pem(cfg.keys_dir / "gateway.pem")
