"""Running a localnet: bring it up (or resume it), report its status, take it down.

A node is three processes, named after its moniker and recorded by
:class:`~edgistry.cluster.launcher.Launcher` in the cluster directory:

    node{i}-app   ``edgistry node --home DIR/node{i}/edgistry``   (the ABCI app)
    node{i}-cmt   ``cometbft start --home DIR/node{i}/cometbft``
    node{i}-gw    ``edgistry gateway --home DIR/node{i}/edgistry`` (when that command exists)

The app starts first and must be listening before its cometbft starts;
cometbft stops before its app (it needs the app to shut down cleanly).
``start_node(..., wrap=[...])`` runs each process under a command prefix
(the multi-host tests use ``ip netns exec NAME`` to start a node on its own
network).
Everything is judged by pid: CometBFT exits with status 0 when its app dies.
Every wait is bounded and reports progress through a callback.
"""

from __future__ import annotations

import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import chain as rpc
from .cometbft import cometbft_version
from .cometbft_files import CONFIG_VERSION, ConsensusSettings
from .launcher import Launcher
from .localnet import MANIFEST, NodeLayout, generate_localnet, load_localnet

EDGISTRY = [sys.executable, "-m", "edgistry"]
ROLES = ("app", "cmt", "gw")  # start order; stop order is the reverse
APP_READY_TIMEOUT = 30.0
DEFAULT_WAIT = 120.0
GATEWAY_WAIT = 60.0
PROGRESS_EVERY = 2.0

Progress = Callable[[str], None]


class ClusterError(Exception):
    """The cluster cannot be started or did not come up in time."""


def _quiet(_: str) -> None:
    pass


def proc_name(node: NodeLayout, role: str) -> str:
    return f"{node.moniker}-{role}"


def endpoints(node: NodeLayout) -> dict[str, str]:
    """Where the node is reached (its advertised addresses; ABCI is local to its machine)."""
    return {
        "rpc": node.rpc_url, "p2p": node.p2p_address, "abci": node.proxy_app,
        "grpc": node.grpc_endpoint, "link": node.link_endpoint, "http": node.http_url,
    }


def _argv(node: NodeLayout, role: str, binary: str) -> list[str]:
    if role == "app":
        return [*EDGISTRY, "-v", "node", "--home", str(node.edgistry_home)]
    if role == "cmt":
        return [binary, "start", "--home", str(node.cometbft_home)]
    return [*EDGISTRY, "-v", "gateway", "--home", str(node.edgistry_home)]


def log_tail(launcher: Launcher, name: str, lines: int = 15) -> str:
    path = launcher.log_path(name)
    text = path.read_text(errors="replace").splitlines() if path.exists() else []
    return "\n".join(f"  | {line}" for line in text[-lines:])


def _app_listening(node: NodeLayout) -> bool:
    """Whether the node's app accepts on its ABCI address (loopback TCP or a unix socket)."""
    address = node.proxy_app
    if address.startswith("unix://"):
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(0.5)
            return s.connect_ex(address[len("unix://"):]) == 0
    host, _, port = address[len("tcp://"):].rpartition(":")
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, int(port))) == 0


# ---- one node ----


def start_node(launcher: Launcher, node: NodeLayout, binary: str, gateway: bool = True,
               wrap: Sequence[str] = ()) -> list[str]:
    """Start whichever of the node's processes are not running, each under the command
    prefix ``wrap`` (none by default); return their names."""
    app, cmt, gw = (proc_name(node, r) for r in ROLES)
    started = []
    if not launcher.alive(app):
        if launcher.alive(cmt):  # its app is gone: this cometbft is about to exit anyway
            launcher.stop(cmt)
        launcher.start(app, [*wrap, *_argv(node, "app", binary)])
        deadline = time.monotonic() + APP_READY_TIMEOUT
        while not _app_listening(node):
            if not launcher.alive(app):
                raise ClusterError(f"{app} exited at start; its log:\n{log_tail(launcher, app)}")
            if time.monotonic() > deadline:
                raise ClusterError(f"{app} does not listen on {node.proxy_app} after {APP_READY_TIMEOUT:.0f} s")
            time.sleep(0.1)
        started.append(app)
    if not launcher.alive(cmt):
        launcher.start(cmt, [*wrap, *_argv(node, "cmt", binary)])
        started.append(cmt)
    if gateway and not launcher.alive(gw):
        launcher.start(gw, [*wrap, *_argv(node, "gw", binary)])
        started.append(gw)
    return started


def stop_node(launcher: Launcher, node: NodeLayout, sig: int = signal.SIGTERM) -> dict[str, str]:
    """Stop the node's processes (gateway, cometbft, app); name -> what happened."""
    out = {}
    for role in reversed(ROLES):
        name = proc_name(node, role)
        if launcher.record(name) is not None or launcher.alive(name):
            out[name] = launcher.stop(name) if sig == signal.SIGTERM else launcher.kill(name)
    return out


# ---- the cluster ----


@dataclass(frozen=True)
class Agreement:
    height: int
    app_hash: str


def up(directory: Path, nodes: int = 4, binary: str = "", base_port: int | None = None,
       consensus: ConsensusSettings | None = None, snapshot_interval: int = 10, chain_id: str | None = None,
       timeout: float = DEFAULT_WAIT, gateway: bool = True,
       progress: Progress = _quiet) -> tuple[list[NodeLayout], Agreement]:
    """Generate (or resume) the localnet in ``directory``, start every process that is
    not running, and wait until all nodes commit and agree on the app hash."""
    from .localnet import DEFAULT_BASE_PORT
    from ..config import DEFAULT_CHAIN_ID

    directory = directory.expanduser().resolve()
    if (directory / MANIFEST).exists():
        layouts = load_localnet(directory)
        progress(f"resuming the {len(layouts)}-node localnet in {directory}")
    else:
        layouts = generate_localnet(directory, nodes, chain_id or DEFAULT_CHAIN_ID,
                                    base_port=base_port or DEFAULT_BASE_PORT, consensus=consensus or ConsensusSettings(),
                                    snapshot_interval=snapshot_interval,
                                    cometbft_version=cometbft_version(binary) if binary else CONFIG_VERSION)
        progress(f"generated a {nodes}-node localnet in {directory}")
    launcher = Launcher(directory)
    before = {n.moniker: _height(n) for n in layouts}
    for node in layouts:
        started = start_node(launcher, node, binary, gateway=False)
        if started:
            progress(f"{node.moniker}: started {', '.join(started)}")
    target = max([h for h in before.values() if h is not None] + [1]) + 1  # one new block at least
    agreed = wait_agreement(layouts, target, timeout, progress, launcher)
    if gateway:  # gateways once their registry is live
        for node in layouts:
            started = start_node(launcher, node, binary, gateway=True)
            if started:
                progress(f"{node.moniker}: started {', '.join(started)}")
        wait_gateways(layouts, launcher, min(timeout, GATEWAY_WAIT), progress)
    return layouts, agreed


def gateway_health(node: NodeLayout) -> tuple[bool, str]:
    return rpc.http_ok(f"{node.http_url}/healthz", timeout=2.0)


def wait_gateways(layouts: list[NodeLayout], launcher: Launcher, timeout: float, progress: Progress = _quiet) -> None:
    """Wait until every node's gateway answers /healthz; fail early if one exits."""
    deadline = time.monotonic() + timeout
    last_report = 0.0
    while True:
        health = {n.moniker: gateway_health(n) for n in layouts}
        if all(ok for ok, _ in health.values()):
            return
        for node in layouts:
            name = proc_name(node, "gw")
            if not launcher.alive(name):
                raise ClusterError(f"{name} is not running; its log ({launcher.log_path(name)}):\n"
                                   f"{log_tail(launcher, name)}")
        now = time.monotonic()
        waiting = ", ".join(f"{m} ({detail})" for m, (ok, detail) in health.items() if not ok)
        if now > deadline:
            raise ClusterError(f"gateways not healthy after {timeout:.0f} s: {waiting}")
        if now - last_report >= PROGRESS_EVERY:
            progress(f"waiting for gateways: {waiting}")
            last_report = now
        time.sleep(0.25)


def _height(node: NodeLayout) -> int | None:
    try:
        return rpc.status(node.rpc_url, timeout=1.0).height
    except (rpc.NodeUnreachable, rpc.RpcFailed):
        return None


def wait_agreement(layouts: list[NodeLayout], min_height: int, timeout: float, progress: Progress = _quiet,
                   launcher: Launcher | None = None) -> Agreement:
    """Wait until every node is at ``min_height`` or above and all agree on the app hash
    at their lowest common height. Fails early when a process of the cluster dies."""
    deadline = time.monotonic() + timeout
    last_report = 0.0
    while True:
        heights = {n.moniker: _height(n) for n in layouts}
        reachable = [h for h in heights.values() if h is not None]
        if len(reachable) == len(layouts) and min(reachable) >= max(min_height, 1):
            common = min(reachable)
            try:
                hashes = {n.moniker: rpc.header_app_hash(n.rpc_url, common) for n in layouts}
            except (rpc.NodeUnreachable, rpc.RpcFailed):
                hashes = {}
            if hashes and len(set(hashes.values())) == 1:
                return Agreement(common, next(iter(hashes.values())))
            if hashes:
                raise ClusterError(f"nodes disagree on the app hash at height {common}: {hashes}")
        if launcher is not None:
            _check_alive(launcher, layouts)
        now = time.monotonic()
        if now > deadline:
            raise ClusterError(f"timed out after {timeout:.0f} s waiting for all nodes to reach height "
                               f"{min_height} and agree: {_describe(heights)}")
        if now - last_report >= PROGRESS_EVERY:
            progress(f"waiting for height {max(min_height, 1)}: {_describe(heights)}")
            last_report = now
        time.sleep(0.25)


def _describe(heights: dict[str, int | None]) -> str:
    return ", ".join(f"{m} {'no RPC' if h is None else f'h={h}'}" for m, h in heights.items())


def _check_alive(launcher: Launcher, layouts: list[NodeLayout]) -> None:
    for node in layouts:
        for role in ("app", "cmt"):
            name = proc_name(node, role)
            if launcher.record(name) is not None and not launcher.alive(name):
                raise ClusterError(f"{name} is not running; its log ({launcher.log_path(name)}):\n"
                                   f"{log_tail(launcher, name)}")


def status(directory: Path) -> dict[str, Any]:
    """Per node: processes, height, app hash, peers, gateway health; and agreement."""
    directory = directory.expanduser().resolve()
    layouts = load_localnet(directory)
    launcher = Launcher(directory)
    out = []
    for node in layouts:
        entry: dict[str, Any] = {"node": node.moniker, "endpoints": endpoints(node), "processes": {}}
        for role in ROLES:
            name = proc_name(node, role)
            pid = launcher.pid(name)
            rec = launcher.record(name)
            entry["processes"][role] = {"name": name, "running": pid is not None,
                                        "pid": pid if pid is not None else (rec.pid if rec else None)}
        entry.update(chain_report(node))
        if "gw" in entry["processes"]:
            ok, detail = gateway_health(node)
            entry["gateway"] = {"healthy": ok, "detail": detail}
        out.append(entry)
    return {"dir": str(directory), "nodes": out, "agreement": agreement(layouts, out)}


def chain_report(node: NodeLayout) -> dict[str, Any]:
    """The node's height, app hash, catching-up flag, voting power and peers (None when its RPC
    does not answer, with the reason in ``rpc_error``)."""
    try:
        st = rpc.status(node.rpc_url)
        return dict(height=st.height, app_hash=st.app_hash, catching_up=st.catching_up,
                    voting_power=st.voting_power, peers=rpc.peers(node.rpc_url))
    except (rpc.NodeUnreachable, rpc.RpcFailed) as exc:
        return dict(height=None, app_hash=None, catching_up=None, voting_power=None, peers=None, rpc_error=str(exc))


def agreement(layouts: list[NodeLayout], entries: list[dict[str, Any]]) -> dict[str, Any] | None:
    """At the lowest height the reachable nodes report: whether their app hashes agree."""
    heights = [e["height"] for e in entries if e["height"] is not None]
    if not heights:
        return None
    common = min(heights)
    hashes = {}
    for node, entry in zip(layouts, entries):
        if entry["height"] is not None:
            try:
                hashes[node.moniker] = rpc.header_app_hash(node.rpc_url, common)
            except (rpc.NodeUnreachable, rpc.RpcFailed):
                pass
    return {"height": common, "agree": len(set(hashes.values())) == 1, "app_hashes": hashes}


def down(directory: Path) -> dict[str, str]:
    """Stop every process recorded for the cluster (SIGTERM, then SIGKILL); name -> outcome."""
    directory = directory.expanduser().resolve()
    launcher = Launcher(directory)
    try:
        layouts = load_localnet(directory)
    except Exception:  # no manifest: still stop whatever was recorded
        layouts = []
    out: dict[str, str] = {}
    for node in layouts:
        out.update(stop_node(launcher, node))
    for rec in launcher.records():  # anything recorded under another name
        out[rec.name] = launcher.stop(rec.name)
    return out
