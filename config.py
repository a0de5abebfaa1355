"""A node home: its ``config.toml``, its keys and where its stores live.

Layout of a home directory::

    config.toml           this node's settings (NodeConfig)
    genesis.json          the chain's genesis (CometBFT shape; app_state is ours)
    keys/admin.pem        Ed25519 admin key named in genesis (0600)
    keys/gateway.pem      Ed25519 key the gateway signs registry txs with (0600)
    keys/gateway.secret   32-byte HMAC secret: origin of gateway-issued tokens (0600)
    keys/tls.key          P-256 key of the gateway's TLS ports (0600; gateway/tls.py)
    keys/tls.crt          its self-signed certificate, the pin clients trust (public)
    data/registry/        the ABCI app's LMDB store
    data/embedded/        the embedded node's block store (single-node mode only)
    data/gateway/         the gateway's LMDB store: paired devices, queues, responses (gateway/store/)
    commission.code       the gateway's current one-time commissioning code (0600; rotates on use)
    revoked.json          optional local revocation list the gateway merges with the registry's
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import secrets
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import tomli_w
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

DEFAULT_CHAIN_ID = "edgistry-local"
DEFAULT_ABCI_LISTEN = "tcp://127.0.0.1:26658"
DEFAULT_RPC_LISTEN = "127.0.0.1:26657"
DEFAULT_GRPC_LISTEN = "127.0.0.1:26670"
DEFAULT_LINK_LISTEN = "127.0.0.1:26671"
DEFAULT_HTTP_LISTEN = "127.0.0.1:26672"
DEFAULT_PEER_LISTEN = "127.0.0.1:26673"  # mutual TLS between gateways


class HomeError(Exception):
    """The node home is missing or malformed."""


@dataclass
class NodeConfig:
    """Settings of one node (registry app, embedded node and gateway)."""

    home: Path
    chain_id: str = DEFAULT_CHAIN_ID
    moniker: str = "node0"
    abci_listen: str = DEFAULT_ABCI_LISTEN
    rpc_listen: str = DEFAULT_RPC_LISTEN  # the embedded node's RPC
    rpc_url: str = "http://" + DEFAULT_RPC_LISTEN  # where clients reach the chain
    grpc_listen: str = DEFAULT_GRPC_LISTEN
    link_listen: str = DEFAULT_LINK_LISTEN
    http_listen: str = DEFAULT_HTTP_LISTEN
    peer_listen: str = DEFAULT_PEER_LISTEN
    insecure: bool = False  # the gateway serves plaintext (development only; logged loudly)
    cometbft_home: str = ""  # set when a real CometBFT node serves this home
    block_interval_ms: int = 200  # embedded node: how long txs wait to be batched
    empty_block_interval_s: int = 30  # embedded node: idle blocks so block time moves
    extra: dict = field(default_factory=dict)

    @property
    def config_path(self) -> Path:
        return self.home / "config.toml"

    @property
    def genesis_path(self) -> Path:
        return self.home / "genesis.json"

    @property
    def keys_dir(self) -> Path:
        return self.home / "keys"

    @property
    def tls_key_path(self) -> Path:
        return self.keys_dir / "tls.key"

    @property
    def tls_cert_path(self) -> Path:
        return self.keys_dir / "tls.crt"

    @property
    def registry_dir(self) -> Path:
        return self.home / "data" / "registry"

    @property
    def embedded_dir(self) -> Path:
        return self.home / "data" / "embedded"

    @property
    def gateway_dir(self) -> Path:
        return self.home / "data" / "gateway"

    def save(self) -> None:
        data = {k: v for k, v in dataclasses.asdict(self).items() if k not in ("home", "extra")}
        data.update(self.extra)
        self.config_path.write_text(tomli_w.dumps(data))

    @classmethod
    def load(cls, home: Path | str) -> NodeConfig:
        home = Path(home).expanduser().resolve()
        path = home / "config.toml"
        if not path.exists():
            raise HomeError(f"{home} is not an Edgistry home (no config.toml); run `edgistry init --home {home}`")
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise HomeError(f"{path}: {exc}") from exc
        known = {f.name for f in dataclasses.fields(cls)} - {"home", "extra"}
        cfg = cls(home=home, **{k: v for k, v in data.items() if k in known})
        cfg.extra = {k: v for k, v in data.items() if k not in known}
        return cfg


def is_private_listen(address: str) -> bool:
    """True for a ``unix://`` socket or TCP on a loopback address: where ABCI may listen.

    ABCI has no authentication: whoever reaches it can feed the registry blocks."""
    if address.startswith("unix://"):
        return True
    host = address.split("://", 1)[-1].rpartition(":")[0].strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def write_secret_file(path: Path, data: bytes) -> None:
    """Write ``data`` to a new file readable by its owner only (0600 from creation)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)


def write_ed25519_pem(path: Path, key: Ed25519PrivateKey) -> None:
    """Write ``key`` as unencrypted PKCS#8 PEM, readable by its owner only."""
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    write_secret_file(path, pem)


def new_ed25519_pem(path: Path) -> Ed25519PrivateKey:
    key = Ed25519PrivateKey.generate()
    write_ed25519_pem(path, key)
    return key


def load_ed25519_pem(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise HomeError(f"cannot read key {path}: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise HomeError(f"{path} is not an Ed25519 key")
    return key


def new_secret(path: Path) -> bytes:
    secret = secrets.token_bytes(32)
    write_secret_file(path, secret)
    return secret


def public_bytes(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
