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
import stat
import tempfile
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
class Limits:
    """Overload protection of the gateway: the ``[limits]`` table of ``config.toml``.

    Rates are calls a second, bursts the calls a full bucket allows at once
    (token buckets). Refusals answer RESOURCE_EXHAUSTED with a ``retry-after-ms``
    trailer; checks run cheapest first: the gRPC core's caps (no Python runs),
    then the source address (before any token is verified), calls in flight,
    then the token's issuer and the target device (after verification, so that
    nobody can spend another client's or a device's budget). Set a rate to 0 to
    turn that limit off. The defaults suit one gateway on a small machine
    (a few thousand admitted calls a second) and a few hundred clients.
    """

    # gRPC core: calls open at once, refused without running Python beyond it;
    # and HTTP/2 streams one connection may open at once (the client waits)
    grpc_max_concurrent_rpcs: int = 1024
    grpc_max_streams_per_connection: int = 32
    # short calls (Submit, GetResult, Discover...) running at once in the gateway
    max_in_flight: int = 256
    # calls waiting on a device (Invoke, WatchResult): futures, cheap, but bounded
    max_waiting: int = 4096
    # per source address (IPv6 by /64), before token verification; a SubmitBatch
    # costs one per item. Generous: many clients may share one NAT address.
    source_rate: float = 2000.0
    source_burst: float = 4000.0
    # per client: the token's issuing frame (the first tag of its chain: the
    # gateway-issued identity, or the device root it derives from), which a
    # client cannot mint for itself
    client_rate: float = 200.0
    client_burst: float = 400.0
    # per target device: what all clients together may queue for one device
    device_rate: float = 200.0
    device_burst: float = 400.0
    # a rate-limit refusal (source, client, device) is answered after this long,
    # so a client that ignores the retry-after hint keeps its HTTP/2 streams busy
    # and the per-connection stream cap bounds its rate at no CPU cost; at most
    # max_held refusals wait at once (beyond it they are answered at once)
    refusal_hold_ms: int = 500
    max_held: int = 256
    # keys remembered per bucket table (least recently used dropped beyond it)
    max_tracked: int = 65536
    # device link connections (handshakes included): per source address and in total
    link_per_source: int = 256
    link_total: int = 8192
    # datagram link: datagrams a second (and burst) per source address, checked before any crypto
    link_dgram_rate: float = 20.0
    link_dgram_burst: int = 40
    # commissioning attempts (Begin and Complete), per source and in total; the
    # total does not apply to loopback, so the owner can pair from the node itself
    # (an owner pairing a batch of devices: 15 at once, then one a second; a guesser
    # meanwhile faces an 80-bit code replaced after 5 wrong guesses)
    commission_source_rate: float = 2.0
    commission_source_burst: float = 30.0
    commission_total_rate: float = 20.0
    commission_total_burst: float = 100.0
    # the chain: /healthz turns 503 when the last good contact is older than this
    chain_stale_s: float = 60.0


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
    link_udp: bool = True  # also serve the datagram link (UDP) on link_listen's port number
    http_listen: str = DEFAULT_HTTP_LISTEN
    peer_listen: str = DEFAULT_PEER_LISTEN
    insecure: bool = False  # the gateway serves plaintext (development only; logged loudly)
    cometbft_home: str = ""  # set when a real CometBFT node serves this home
    block_interval_ms: int = 200  # embedded node: how long txs wait to be batched
    empty_block_interval_s: int = 30  # embedded node: idle blocks so block time moves
    limits: Limits = field(default_factory=Limits)
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
        cfg = cls(home=home, **{k: v for k, v in data.items() if k in known and k != "limits"})
        cfg.limits = _limits(data.get("limits", {}), path)
        cfg.extra = {k: v for k, v in data.items() if k not in known}
        return cfg


def _limits(table: object, path: Path) -> Limits:
    """The ``[limits]`` table: known keys only, each of its default's type."""
    if not isinstance(table, dict):
        raise HomeError(f"{path}: [limits] must be a table")
    defaults = Limits()
    out = {}
    for key, value in table.items():
        if not hasattr(defaults, key):
            raise HomeError(f"{path}: unknown limit {key!r}")
        kind = type(getattr(defaults, key))
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 \
                or (kind is int and not isinstance(value, int)):
            raise HomeError(f"{path}: limits.{key} must be a non-negative {kind.__name__}")
        out[key] = kind(value)
    return Limits(**out)
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


def own_dir(path: Path, mode: int = 0o700) -> None:
    """Make ``path`` (with ``mode``) or check the one there: a directory, not a symlink,
    of this user, that no one else may write to. Secrets go into it by replacing files,
    so whoever else could write to it could swap or plant them; a directory someone
    else made beforehand (e.g. in a shared /tmp) is refused, never adopted."""
    path = Path(path)
    path.mkdir(mode=mode, parents=True, exist_ok=True)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise PermissionError(f"{path} must be a directory of this user that others cannot write to "
                              f"(it is {'not a directory' if not stat.S_ISDIR(st.st_mode) else oct(st.st_mode & 0o777)}"
                              f", owner uid {st.st_uid})")


def private_dir(path: Path, mode: int = 0o700) -> None:
    """:func:`own_dir`, with a HomeError saying what is wrong."""
    try:
        own_dir(path, mode)
    except PermissionError as exc:
        raise HomeError(str(exc)) from exc


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` durably: temp file, fsync, rename, fsync dir."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix="." + path.name + ".")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def write_secret_file(path: Path, data: bytes) -> None:
    """Write ``data`` as a new file readable by its owner only: 0600 from creation, in a
    directory of this user, replacing whatever was at ``path`` (a file or a symlink
    planted there is never written through)."""
    private_dir(path.parent)
    atomic_write(path, data, 0o600)


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
