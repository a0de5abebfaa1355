"""An N-node Edgistry as containers: the project that Compose (v1 and v2) and the Docker runtime run.

``write_project(DIR, N)`` generates the same localnet as ``cluster up`` (keys, one
genesis, per-node homes), rewrites what differs inside containers, and writes::

    DIR/docker-compose.yml        services abci{i}, node{i}, gateway{i}; no top-level `name:`
                                  (Compose v1 rejects it): the project name goes in with -p
    DIR/containers.json           the project record (name, images, user): the Docker runtime's input
    DIR/image/Dockerfile          Edgistry from the wheels beside it: pip --no-index, no source tree
    DIR/image/wheels/*.whl        the installed Edgistry and its dependencies (see wheels.py)
    DIR/node{i}/abci/             the ABCI unix socket, shared by node i's app and cometbft only

Per node, three containers, all running as the user who generated the files (keys are 0600),
with no capabilities and no way to gain privileges (``cap_drop: [ALL]``,
``no-new-privileges``). The cluster's admin key is in node0's home only, and hidden from
node0's app and gateway by an empty read-only file mounted over it: no running node needs
it, and a gateway taken over would otherwise hold the key to the whole chain.

* ``abci{i}``: ``edgistry node`` (the registry app), with NO network at all
  (``network_mode: none``). CometBFT reaches it through the unix socket
  ``/abci/abci.sock`` in the bind-mounted ``DIR/node{i}/abci`` (mode 0700): no other
  container and no host process of another user can speak ABCI to it.
* ``node{i}``: cometbft (``cometbft/cometbft:v0.38.25``), started once its app is
  healthy; p2p and RPC on the project network, peers named by service (``ID@node{j}:26656``).
* ``gateway{i}``: ``edgistry gateway``, reaching its chain at ``http://node{i}:26657``;
  registered (in genesis and by itself) as ``gateway{i}:26670`` for clients and
  ``gateway{i}:26673`` (mutual TLS, not published) where other gateways forward; it
  tells devices to link to ``127.0.0.1:<link port>`` (published, below).

Published ports, on 127.0.0.1 only, node i's from the localnet scheme
(``BASE + 10*i + offset``, BASE 26600 by default): see :func:`published_ports`.
Not published: p2p (26656; nodes peer on the project network), ABCI (a unix socket,
never on a network), the gateways' peer port (26673) and Prometheus (26660).

The images the compose file names are the official CometBFT image and
``edgistry:VERSION``, built (``build:``, network "none") from ``python:X.Y-slim-bookworm``:
X.Y is the Python the wheels were made for, bookworm pins the C library they need.
A test (or an offline site) puts local images under those tags and nothing is pulled.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..config import DEFAULT_CHAIN_ID, NodeConfig
from .cometbft_files import ConsensusSettings
from .localnet import DEFAULT_BASE_PORT, LocalnetError, NodeLayout, generate_localnet, load_localnet
from .wheels import WheelSet, collect_wheels, copy_wheels

COMETBFT_IMAGE = "cometbft/cometbft:v0.38.25"  # the official image; tags are v-prefixed releases
EDGISTRY_REPOSITORY = "edgistry"  # the image is edgistry:<version of the wheel>
P2P, RPC, PROMETHEUS = 26656, 26657, 26660
GRPC, LINK, HTTP, PEER = 26670, 26671, 26672, 26673
PUBLISH = "127.0.0.1"  # published ports listen on this host's loopback only
ABCI_DIR = "/abci"
ABCI_SOCKET = f"unix://{ABCI_DIR}/abci.sock"
COMPOSE_FILE = "docker-compose.yml"
PROJECT_FILE = "containers.json"
IMAGE_DIR = "image"
LABEL_PROJECT = "io.edgistry.project"  # every container of a project carries these labels,
LABEL_SERVICE = "io.edgistry.service"  # whether Compose or the Docker runtime created it
LABEL_WHEELS = "io.edgistry.wheels"  # on the image: the digest of the wheels it was built from

DOCKERFILE = """\
# Edgistry {version} from the wheels beside this file (made by `edgistry cluster compose` from
# the installed distribution): no source tree, no network (pip --no-index; compose builds
# with network "none"). {base}: the Python the wheels were made for.
FROM {base} AS build
COPY wheels /wheels
RUN python3 -m venv /opt/edgistry \\
 && /opt/edgistry/bin/pip install --no-cache-dir --no-index --find-links /wheels "edgistry=={version}" \\
 && /opt/edgistry/bin/edgistry --help > /dev/null

FROM {base}
COPY --from=build /opt/edgistry /opt/edgistry
ENV PATH=/opt/edgistry/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \\
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
LABEL {label}="{digest}"
ENTRYPOINT ["edgistry"]
"""


@dataclass(frozen=True)
class ContainerProject:
    """What a container project is made of, recorded in ``DIR/containers.json``."""

    name: str  # the Compose project name (-p) and the value of the project label
    edgistry_image: str
    cometbft_image: str
    base_image: str  # the Dockerfile's FROM
    wheels_digest: str  # WheelSet.digest(): the Edgistry image is current when its label has it
    user: str  # uid:gid the containers run as
    gateway: bool = True

    def save(self, directory: Path) -> None:
        (directory / PROJECT_FILE).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, directory: Path) -> ContainerProject:
        path = directory.expanduser().resolve() / PROJECT_FILE
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError) as exc:
            raise LocalnetError(f"cannot read the container project record {path}: {exc}") from exc

    @staticmethod
    def exists(directory: Path) -> bool:
        return (directory.expanduser().resolve() / PROJECT_FILE).is_file()


def project_name(directory: Path) -> str:
    """A Compose project name for ``directory``: its name, plus a hash of its path (two
    folders called ``net`` get two projects). Lower case, [a-z0-9_-], as v1 and v2 accept."""
    slug = re.sub(r"[^a-z0-9_-]+", "-", directory.name.lower()).strip("-_") or "edgistry"
    return f"{slug[:40]}-{hashlib.sha256(str(directory).encode()).hexdigest()[:6]}"


def base_image(python: tuple[int, int]) -> str:
    return f"python:{python[0]}.{python[1]}-slim-bookworm"


# ---- services ----


def published_ports(node: NodeLayout) -> list[tuple[str, int, int, str]]:
    """Node i's published ports: (service, host port on 127.0.0.1, container port, what it exposes)."""
    p, i = node.ports, node.index
    return [
        (node.moniker, p.rpc, RPC, "CometBFT RPC: status, blocks, registry queries, tx broadcast (unsafe routes off)"),
        (f"gateway{i}", p.grpc, GRPC, "gateway gRPC over TLS: client API (discover, invoke, results) and pairing"),
        (f"gateway{i}", p.link, LINK, "device link: devices connect out to it (authenticated, encrypted frames)"),
        (f"gateway{i}", p.http, HTTP, "gateway HTTPS: /healthz and /metrics (Prometheus)"),
    ]


NO_ADMIN_KEY = ".no-admin-key"  # an empty file mounted read-only over keys/admin.pem
HARDENING = {"cap_drop": ["ALL"], "security_opt": ["no-new-privileges:true"]}


def services(layouts: list[NodeLayout], project: ContainerProject) -> dict[str, Any]:
    """The compose services of every node (abci{i}, node{i}, gateway{i}); the Docker runtime
    creates its containers from the same dictionaries."""
    out: dict[str, Any] = {}
    build = {"context": f"./{IMAGE_DIR}", "network": "none"}
    for node in layouts:
        i = node.index
        ports: dict[str, list[str]] = {}
        for service, host, container, _ in published_ports(node):
            ports.setdefault(service, []).append(f"{PUBLISH}:{host}:{container}")
        abci_volume = f"./{node.moniker}/abci:{ABCI_DIR}"
        home = [f"./{node.moniker}/edgistry:/edgistry"]
        if (node.edgistry_home / "keys" / "admin.pem").exists():
            home.append(f"./{NO_ADMIN_KEY}:/edgistry/keys/admin.pem:ro")
        out[f"abci{i}"] = {
            "image": project.edgistry_image,
            "build": build,
            "user": project.user,
            "init": True,
            "network_mode": "none",  # the app needs no network: CometBFT speaks to it over the socket
            "command": ["node", "--home", "/edgistry", "--listen", ABCI_SOCKET],
            "volumes": [*home, abci_volume],
            **HARDENING,
            "labels": _labels(project, f"abci{i}"),
            "healthcheck": {
                "test": ["CMD", "python", "-c",
                         f"import socket; socket.socket(socket.AF_UNIX).connect('{ABCI_DIR}/abci.sock')"],
                "interval": "2s", "timeout": "3s", "retries": 30, "start_period": "5s",
            },
            "restart": "unless-stopped",
        }
        out[node.moniker] = {
            "image": project.cometbft_image,
            "user": project.user,
            "init": True,
            "entrypoint": ["cometbft"],  # the image's entrypoint would run `cometbft init` on a fresh volume
            "command": ["start", "--home", "/cometbft", "--proxy_app", ABCI_SOCKET],
            "volumes": [f"./{node.moniker}/cometbft:/cometbft", abci_volume],
            **HARDENING,
            "ports": ports[node.moniker],
            "labels": _labels(project, node.moniker),
            "depends_on": {f"abci{i}": {"condition": "service_healthy"}},
            "healthcheck": {
                "test": ["CMD", "curl", "-fsS", f"http://127.0.0.1:{RPC}/health"],
                "interval": "2s", "timeout": "3s", "retries": 30, "start_period": "10s",
            },
            "restart": "unless-stopped",
        }
        if project.gateway:
            out[f"gateway{i}"] = {
                "image": project.edgistry_image,
                "build": build,
                "user": project.user,
                "init": True,
                "command": ["gateway", "--home", "/edgistry"],
                "volumes": list(home),
                **HARDENING,
                "ports": ports[f"gateway{i}"],
                "labels": _labels(project, f"gateway{i}"),
                "depends_on": {node.moniker: {"condition": "service_healthy"}},
                "healthcheck": {
                    "test": ["CMD", "python", "-c",
                             "import ssl, urllib.request; urllib.request.urlopen("
                             f"'https://127.0.0.1:{HTTP}/healthz', timeout=2, "
                             "context=ssl.create_default_context(cafile='/edgistry/keys/tls.crt'))"],
                    "interval": "2s", "timeout": "3s", "retries": 30, "start_period": "10s",
                },
                "restart": "unless-stopped",
            }
    return out


def _labels(project: ContainerProject, service: str) -> dict[str, str]:
    return {LABEL_PROJECT: project.name, LABEL_SERVICE: service}


def _containerise(layouts: list[NodeLayout]) -> None:
    """Rewrite the loopback configs for containers (service names, 0.0.0.0, the ABCI socket)."""
    peers = {n.index: f"{n.node_id}@{n.moniker}:{P2P}" for n in layouts}
    for node in layouts:
        path = node.cometbft_home / "config" / "config.toml"
        text = path.read_text()
        text = _set(text, "proxy_app", ABCI_SOCKET)
        text = _set(text, "laddr", f"tcp://0.0.0.0:{RPC}", section="rpc")
        text = _set(text, "laddr", f"tcp://0.0.0.0:{P2P}", section="p2p")
        text = _set(text, "persistent_peers", ",".join(v for k, v in peers.items() if k != node.index))
        text = _set(text, "prometheus_listen_addr", f":{PROMETHEUS}")
        path.write_text(text)
        (node.root / "abci").mkdir(mode=0o700, exist_ok=True)
        cfg = NodeConfig.load(node.edgistry_home)
        cfg.abci_listen = ABCI_SOCKET
        cfg.rpc_url = f"http://{node.moniker}:{RPC}"
        cfg.rpc_listen = f"0.0.0.0:{RPC}"
        cfg.grpc_listen, cfg.link_listen, cfg.http_listen, cfg.peer_listen = (
            f"0.0.0.0:{port}" for port in (GRPC, LINK, HTTP, PEER))
        cfg.cometbft_home = ""  # in its own container, not beside this home
        # what peers are told (the registry endpoint) and what devices are told (the published link)
        cfg.extra["gateway"] = {**cfg.extra.get("gateway", {}), "grpc_advertise": f"gateway{node.index}:{GRPC}",
                                "peer_advertise": f"gateway{node.index}:{PEER}",
                                "link_advertise": f"{PUBLISH}:{node.ports.link}"}
        cfg.save()
    # genesis: gateways are reached by service name
    first = layouts[0].cometbft_home / "config" / "genesis.json"
    genesis = json.loads(first.read_text())
    by_key = {n.gateway_pubkey.hex(): n for n in layouts}
    for entry in genesis["app_state"]["gateways"]:
        node = by_key.get(entry["pubkey"])
        if node is not None:
            entry["endpoint"] = f"gateway{node.index}:{GRPC}"
            entry["peer_endpoint"] = f"gateway{node.index}:{PEER}"
    text = json.dumps(genesis, indent=2) + "\n"
    for node in layouts:
        (node.cometbft_home / "config" / "genesis.json").write_text(text)
        (node.edgistry_home / "genesis.json").write_text(text)


def _set(toml_text: str, key: str, value: str, section: str | None = None) -> str:
    """Replace ``key = ...`` (in ``[section]`` if given) in generated TOML text."""
    lines = toml_text.splitlines()
    current, done = None, False
    for i, line in enumerate(lines):
        header = re.match(r"^\[([^\]]+)\]\s*$", line)
        if header:
            current = header.group(1)
            continue
        if (section is None or current == section) and re.match(rf"^{re.escape(key)}\s*=", line):
            lines[i] = f"{key} = {json.dumps(value)}"
            done = True
            break
    if not done:
        raise KeyError(f"no {key!r} in [{section or ''}]")
    return "\n".join(lines) + "\n"


# ---- the project ----


def write_project(directory: Path, nodes: int, chain_id: str | None = None, snapshot_interval: int = 10,
                  gateway: bool = True, base_port: int = DEFAULT_BASE_PORT,
                  consensus: ConsensusSettings | None = None, wheel_dir: Path | None = None,
                  cometbft_image: str = COMETBFT_IMAGE) -> ContainerProject:
    """Generate the localnet, containerise its configs, write the image folder (Dockerfile and
    wheels: from ``wheel_dir``, else made from the installed Edgistry), the project record and
    docker-compose.yml. The wheels are made first: when that fails, nothing is written."""
    directory = directory.expanduser().resolve()
    with tempfile.TemporaryDirectory(prefix="edgistry-wheels-") as tmp:
        wheels = copy_wheels(wheel_dir, Path(tmp)) if wheel_dir else collect_wheels(Path(tmp))
        layouts = generate_localnet(directory, nodes, chain_id or DEFAULT_CHAIN_ID, base_port=base_port,
                                    consensus=consensus or ConsensusSettings(), snapshot_interval=snapshot_interval)
        image_dir = directory / IMAGE_DIR
        shutil.rmtree(image_dir, ignore_errors=True)
        shutil.copytree(tmp, image_dir / "wheels")
    wheels = WheelSet(image_dir / "wheels", wheels.edgistry, wheels.version, wheels.python)
    _containerise(layouts)
    project = ContainerProject(
        name=project_name(directory), edgistry_image=f"{EDGISTRY_REPOSITORY}:{wheels.version}",
        cometbft_image=cometbft_image, base_image=base_image(wheels.python), wheels_digest=wheels.digest(),
        user=f"{os.getuid()}:{os.getgid()}", gateway=gateway)
    (image_dir / "Dockerfile").write_text(DOCKERFILE.format(
        version=wheels.version, base=project.base_image, label=LABEL_WHEELS, digest=project.wheels_digest))
    project.save(directory)
    mask = directory / NO_ADMIN_KEY
    mask.write_bytes(b"")
    os.chmod(mask, 0o444)
    write_compose_file(directory, layouts, project)
    return project


def write_compose_file(directory: Path, layouts: list[NodeLayout], project: ContainerProject) -> Path:
    """docker-compose.yml, with how to run it and what every published port exposes."""
    path = directory / COMPOSE_FILE
    lines = [f"Edgistry on CometBFT: {len(layouts)} validators (generated by `edgistry cluster compose`).",
             f"Compose v2:  docker compose -p {project.name} -f {path} up -d",
             f"Compose v1:  docker-compose -p {project.name} -f {path} up -d",
             f"Without compose: edgistry cluster up --runtime docker --dir {directory}",
             f"Published on {PUBLISH} only (p2p, ABCI and metrics stay inside):"]
    for node in layouts:
        for service, host, container, what in published_ports(node):
            if service.startswith("gateway") and not project.gateway:
                continue
            lines.append(f"  {host:>5} -> {service}:{container}  {what}")
    header = "".join(f"# {line}\n" for line in lines)
    path.write_text(header + to_yaml({"services": services(layouts, project)}))
    return path


def load_project(directory: Path) -> tuple[list[NodeLayout], ContainerProject]:
    """The layouts and record of a container project written by :func:`write_project`."""
    return load_localnet(directory), ContainerProject.load(directory)


# ---- a small YAML writer (block style; strings JSON-quoted, which YAML accepts) ----


def to_yaml(value: Any, indent: int = 0) -> str:
    pad = "  " * indent
    if isinstance(value, dict):
        out = []
        for key, item in value.items():
            if isinstance(item, (dict, list)) and item:
                out.append(f"{pad}{key}:\n{to_yaml(item, indent + 1)}")
            else:
                out.append(f"{pad}{key}: {_scalar(item)}\n")
        return "".join(out)
    if isinstance(value, list):
        out = []
        for item in value:
            if isinstance(item, (dict, list)) and item:
                body = to_yaml(item, indent + 1)
                out.append(f"{pad}- {body.lstrip()}")
            else:
                out.append(f"{pad}- {_scalar(item)}\n")
        return "".join(out)
    return f"{pad}{_scalar(value)}\n"


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, dict):
        return "{}"
    if isinstance(value, list):
        return "[]"
    return json.dumps(str(value))
