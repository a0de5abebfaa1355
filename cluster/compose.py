"""A Docker Compose project for an N-node Edgistry: official CometBFT image + an Edgistry image.

``write_compose(DIR, N)`` generates the same localnet as ``cluster up`` (keys,
one genesis, per-node homes) and then rewrites what differs inside containers:

* CometBFT listens on 0.0.0.0 (p2p 26656, RPC 26657), its ``proxy_app`` is
  ``tcp://abci{i}:26658`` and ``persistent_peers`` name the peers by service
  (``ID@node{j}:26656``);
* ``edgistry node`` listens on ``tcp://0.0.0.0:26658``; clients in the home
  reach the chain at ``http://node{i}:26657``; the gateway (when this Edgistry
  has one) listens on 0.0.0.0 and is registered in genesis as ``gateway{i}:26670``.

Services per node: ``abci{i}`` (the registry app), ``node{i}`` (cometbft, image
``cometbft/cometbft:v0.38.25``, started after its app is healthy) and, with a
gateway, ``gateway{i}``. Node homes are bind-mounted volumes; containers run
as the user who generated the files (keys are 0600). Host ports keep the
localnet scheme (node i: BASE+10*i+offset) and are published on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from .localnet import DEFAULT_BASE_PORT, NodeLayout, generate_localnet
from ..config import DEFAULT_CHAIN_ID, NodeConfig

COMETBFT_IMAGE = "cometbft/cometbft:v0.38.25"  # the official image; tags are v-prefixed releases
EDGISTRY_IMAGE = "edgistry:local"
P2P, RPC, ABCI, PROMETHEUS = 26656, 26657, 26658, 26660
GRPC, LINK, HTTP = 26670, 26671, 26672
COMPOSE_FILE = "docker-compose.yml"

DOCKERFILE = """\
# Edgistry: the registry app (`edgistry node`) and the gateway, built from the project source.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY . ./
RUN pip install --no-cache-dir . && rm -rf /src
WORKDIR /
EXPOSE 26658 26670 26671 26672
ENTRYPOINT ["edgistry"]
"""


def project_root() -> Path:
    """The Edgistry source tree (where pyproject.toml is): the image's build context."""
    return Path(__file__).resolve().parent.parent  # the edgistry package


def services(layouts: list[NodeLayout], gateway: bool, user: str, dockerfile: str) -> dict[str, Any]:
    """The compose services of every node (abci{i}, node{i}, gateway{i})."""
    out: dict[str, Any] = {}
    for node in layouts:
        i, p = node.index, node.ports
        out[f"abci{i}"] = {
            "image": EDGISTRY_IMAGE,
            "build": {"context": str(project_root()), "dockerfile": dockerfile},
            "user": user,
            "command": ["node", "--home", "/edgistry", "--listen", f"tcp://0.0.0.0:{ABCI}"],
            "volumes": [f"./{node.moniker}/edgistry:/edgistry"],
            "healthcheck": {
                "test": ["CMD", "python", "-c", f"import socket; socket.create_connection(('127.0.0.1', {ABCI}), 2)"],
                "interval": "2s", "timeout": "3s", "retries": 30, "start_period": "5s",
            },
            "restart": "unless-stopped",
        }
        out[node.moniker] = {
            "image": COMETBFT_IMAGE,
            "user": user,
            "entrypoint": ["cometbft"],  # the image's entrypoint would run `cometbft init` on a fresh volume
            "command": ["start", "--home", "/cometbft", "--proxy_app", f"tcp://abci{i}:{ABCI}"],
            "volumes": [f"./{node.moniker}/cometbft:/cometbft"],
            "ports": [f"{p.p2p}:{P2P}", f"127.0.0.1:{p.rpc}:{RPC}"],
            "depends_on": {f"abci{i}": {"condition": "service_healthy"}},
            "healthcheck": {
                "test": ["CMD", "curl", "-fsS", f"http://127.0.0.1:{RPC}/health"],
                "interval": "2s", "timeout": "3s", "retries": 30, "start_period": "10s",
            },
            "restart": "unless-stopped",
        }
        if gateway:
            out[f"gateway{i}"] = {
                "image": EDGISTRY_IMAGE,
                "user": user,
                "command": ["gateway", "--home", "/edgistry"],
                "volumes": [f"./{node.moniker}/edgistry:/edgistry"],
                "ports": [f"127.0.0.1:{p.grpc}:{GRPC}", f"127.0.0.1:{p.link}:{LINK}", f"127.0.0.1:{p.http}:{HTTP}"],
                "depends_on": {node.moniker: {"condition": "service_healthy"}},
                "healthcheck": {
                    "test": ["CMD", "python", "-c",
                             f"import urllib.request; urllib.request.urlopen('http://127.0.0.1:{HTTP}/healthz', timeout=2)"],
                    "interval": "5s", "timeout": "3s", "retries": 12, "start_period": "10s",
                },
                "restart": "unless-stopped",
            }
    return out


def _containerise(directory: Path, layouts: list[NodeLayout], gateway: bool) -> None:
    """Rewrite the loopback configs for the compose network (service names, 0.0.0.0)."""
    peers = {n.index: f"{n.node_id}@{n.moniker}:{P2P}" for n in layouts}
    for node in layouts:
        path = node.cometbft_home / "config" / "config.toml"
        text = path.read_text()
        text = _set(text, "proxy_app", f"tcp://abci{node.index}:{ABCI}")
        text = _set(text, "laddr", f"tcp://0.0.0.0:{RPC}", section="rpc")
        text = _set(text, "laddr", f"tcp://0.0.0.0:{P2P}", section="p2p")
        text = _set(text, "persistent_peers", ",".join(v for k, v in peers.items() if k != node.index))
        text = _set(text, "prometheus_listen_addr", f":{PROMETHEUS}")
        path.write_text(text)
        cfg = NodeConfig.load(node.edgistry_home)
        cfg.abci_listen = f"tcp://0.0.0.0:{ABCI}"
        cfg.rpc_url = f"http://{node.moniker}:{RPC}"
        cfg.rpc_listen = f"0.0.0.0:{RPC}"
        cfg.grpc_listen, cfg.link_listen, cfg.http_listen = (f"0.0.0.0:{port}" for port in (GRPC, LINK, HTTP))
        cfg.cometbft_home = ""  # in its own container, not beside this home
        cfg.save()
    # genesis: gateways are reached by service name
    first = layouts[0].cometbft_home / "config" / "genesis.json"
    genesis = json.loads(first.read_text())
    by_key = {n.gateway_pubkey.hex(): n for n in layouts}
    for entry in genesis["app_state"]["gateways"]:
        node = by_key.get(entry["pubkey"])
        if node is not None:
            entry["endpoint"] = f"gateway{node.index}:{GRPC}"
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


def write_compose(directory: Path, nodes: int, chain_id: str | None = None, snapshot_interval: int = 10,
                  gateway: bool = True, base_port: int = DEFAULT_BASE_PORT) -> Path:
    """Generate the localnet, containerise its configs, write Dockerfile and docker-compose.yml."""

    directory = directory.expanduser().resolve()
    layouts = generate_localnet(directory, nodes, chain_id or DEFAULT_CHAIN_ID, base_port=base_port,
                                snapshot_interval=snapshot_interval)
    _containerise(directory, layouts, gateway)
    (directory / "Dockerfile").write_text(DOCKERFILE)
    user = f"{os.getuid()}:{os.getgid()}"
    svc = services(layouts, gateway, user, str(directory / "Dockerfile"))
    project = {"name": re.sub(r"[^a-z0-9_-]", "-", directory.name.lower()) or "edgistry", "services": svc}
    header = (f"# Edgistry on CometBFT: {nodes} validators (generated by `edgistry cluster compose`).\n"
              f"# Run: docker compose -f {directory / COMPOSE_FILE} up --build\n")
    path = directory / COMPOSE_FILE
    path.write_text(header + to_yaml(project))
    return path


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
