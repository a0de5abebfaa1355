"""``edgistry cluster up | status | down | compose | add-node | promote | demote``.

A local multi-node Edgistry on one machine: every node a CometBFT validator
with the registry app (and the gateway when this Edgistry has one) beside it,
all on loopback, logs and pid records in the cluster directory. The same
cluster runs as containers: ``compose`` writes a Compose project, and
``up --runtime docker`` drives that project through the Docker SDK; a
directory remembers which it holds, so ``status``, ``down`` and ``up`` again
(resume) need no flag.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import click

from ..clikit import UserError, progress_echo

dir_option = click.option("--dir", "directory", type=click.Path(path_type=Path), required=True,
                          help="Cluster directory (configs, data, logs/, run/).")


wheel_dir_option = click.option(
    "--wheel-dir", type=click.Path(path_type=Path, file_okay=False, exists=True), default=None,
    help="Container image: install these wheels (an edgistry wheel and its dependencies) instead of "
         "wheels made from the installed Edgistry.")
cometbft_image_option = click.option(
    "--cometbft-image", default=None, help="Container image of CometBFT (default: the official v0.38 image).")


def _binary() -> str:
    from .cometbft import HOW_TO_GET, find_cometbft

    binary = find_cometbft()
    if binary is None:
        raise UserError(HOW_TO_GET)
    return binary


def _progress(message: str) -> None:
    progress_echo(message)  # stderr, stamped with the seconds elapsed


def _is_container_project(directory: Path) -> bool:
    from .compose import ContainerProject

    return ContainerProject.exists(directory)


def _print_endpoints(layouts, containers: bool = False) -> None:
    if containers:
        from .docker_runtime import endpoints
    else:
        from .ops import endpoints

    for node in layouts:
        ends = endpoints(node)
        click.echo(f"{node.moniker}: " + "  ".join(f"{k.upper()} {v}" for k, v in ends.items()))


@click.group("cluster")
def cluster_group() -> None:
    """Run a multi-node Edgistry on CometBFT on this machine."""


@cluster_group.command("up")
@click.option("--nodes", type=click.IntRange(1, 100), default=4, show_default=True,
              help="Validators in a new cluster (ignored when resuming).")
@dir_option
@click.option("--base-port", type=int, default=None, help="First port; node i uses BASE+10*i .. +9 (default 26600).")
@click.option("--timeout-commit", default=None, help="CometBFT consensus.timeout_commit (default 1s; 300ms with --fast).")
@click.option("--fast", is_flag=True, help="Short consensus timeouts for demos and tests (~0.3 s blocks).")
@click.option("--snapshot-interval", type=int, default=10, show_default=True,
              help="Take a state-sync snapshot every N blocks (0: never).")
@click.option("--chain-id", default=None, help="Chain id of a new cluster.")
@click.option("--wait", "timeout", type=float, default=120, show_default=True,
              help="Seconds to wait for all nodes to commit and agree.")
@click.option("--runtime", type=click.Choice(["processes", "docker"]), default=None,
              help="Run nodes as local processes, or as containers through the Docker SDK "
                   "(default: what the directory holds; processes for a new one).")
@wheel_dir_option
@cometbft_image_option
def up_cmd(directory: Path, nodes: int, base_port: int | None, timeout_commit: str | None, fast: bool,
           snapshot_interval: int, chain_id: str | None, timeout: float, runtime: str | None,
           wheel_dir: Path | None, cometbft_image: str | None) -> None:
    """Generate and start a localnet, or restart what is not running in an existing one.

    Waits until every node commits and all agree on the app hash, then prints
    every endpoint. Processes (or containers) keep running after this command
    returns; stop them with `edgistry cluster down`.
    """
    from .localnet import MANIFEST, LocalnetError
    from .ops import ClusterError
    from .wheels import WheelError

    containers = _is_container_project(directory)
    if runtime is None:
        runtime = "docker" if containers else "processes"
    if runtime == "processes" and containers:
        raise UserError(f"{directory} holds a container project: use --runtime docker, or Compose")
    if runtime == "processes" and (wheel_dir or cometbft_image):
        raise click.UsageError("--wheel-dir and --cometbft-image are for --runtime docker")
    if runtime == "docker" and not containers and (directory / MANIFEST).exists():
        raise UserError(f"{directory} holds a localnet of processes: run it without --runtime docker")
    consensus = _consensus(fast, timeout_commit)
    try:
        if runtime == "docker":
            from . import docker_runtime

            layouts, agreed = docker_runtime.up(directory, nodes, base_port, consensus, snapshot_interval, chain_id,
                                                timeout, wheel_dir, cometbft_image, progress=_progress)
        else:
            from .ops import up

            layouts, agreed = up(directory, nodes, _binary(), base_port, consensus, snapshot_interval, chain_id,
                                 timeout, progress=_progress)
    except (ClusterError, LocalnetError, WheelError) as exc:
        what = "containers" if runtime == "docker" else "processes"
        raise UserError(f"{exc}\n({what} that did start keep running: `edgistry cluster down --dir {directory}`)") from exc
    click.echo(f"{len(layouts)} nodes agree at height {agreed.height} (app hash {agreed.app_hash or '-'})")
    _print_endpoints(layouts, containers=runtime == "docker")
    logs = "docker logs <container>" if runtime == "docker" else directory.resolve() / "logs"
    click.echo(f"logs: {logs}   stop: edgistry cluster down --dir {directory}")


def _consensus(fast: bool, timeout_commit: str | None):
    from .cometbft_files import ConsensusSettings

    consensus = ConsensusSettings.fast() if fast else ConsensusSettings()
    if timeout_commit:
        consensus = dataclasses.replace(consensus, timeout_commit=timeout_commit)
    return consensus


@cluster_group.command("status")
@dir_option
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def status_cmd(directory: Path, as_json: bool) -> None:
    """Per node: processes, height, app hash, peers and gateway health."""
    from .localnet import LocalnetError
    from .ops import ClusterError

    try:
        if _is_container_project(directory):
            from .docker_runtime import status
        else:
            from .ops import status
        report = status(directory)
    except (LocalnetError, ClusterError) as exc:
        raise UserError(str(exc)) from exc
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    for node in report["nodes"]:
        procs = " ".join(f"{role}:{'up' if p['running'] else 'DOWN'}" + _detail(p)
                         for role, p in node.get("processes", node.get("containers", {})).items())
        if node["height"] is None:
            chain = "RPC unreachable"
        else:
            peers = node["peers"] or []
            chain = (f"height {node['height']}  app hash {node['app_hash'][:16] or '-'}  "
                     f"peers {len(peers)} [{','.join(peers)}]  power {node['voting_power']}"
                     + ("  CATCHING UP" if node["catching_up"] else ""))
        gw = node.get("gateway")
        health = "" if gw is None else f"  gateway {'healthy' if gw['healthy'] else 'UNHEALTHY'} ({gw['detail']})"
        click.echo(f"{node['node']}: {procs}  {chain}{health}")
    agreement = report["agreement"]
    if agreement:
        verdict = "agree" if agreement["agree"] else "DISAGREE"
        click.echo(f"at height {agreement['height']} the reachable nodes {verdict} on the app hash")


def _detail(proc: dict) -> str:
    """``(pid)`` of a running process; ``(health, N restarts)`` of a container."""
    if "pid" in proc:
        return f"({proc['pid']})" if proc["running"] else ""
    bits = [b for b in (proc.get("health") if proc["running"] else proc.get("state"),
                        f"{proc['restarts']} restarts" if proc.get("restarts") else "") if b]
    return f"({', '.join(bits)})" if bits else ""


@cluster_group.command("down")
@dir_option
def down_cmd(directory: Path) -> None:
    """Stop every process of the cluster by recorded pid (SIGTERM, then SIGKILL); for a
    container project, stop and remove its containers and network (data stays in DIR)."""
    from .ops import ClusterError

    if not directory.exists():
        raise UserError(f"{directory} does not exist")
    if _is_container_project(directory):
        from .docker_runtime import down
    else:
        from .ops import down
    try:
        outcomes = down(directory)
    except ClusterError as exc:
        raise UserError(str(exc)) from exc
    for name, outcome in outcomes.items():
        click.echo(f"{name}: {outcome}")
    if not outcomes:
        click.echo("nothing was running")
    if any(o.startswith("still running") for o in outcomes.values()):
        raise UserError("some processes did not stop")


@cluster_group.command("compose")
@click.option("--nodes", type=click.IntRange(1, 50), default=4, show_default=True, help="Validators.")
@dir_option
@click.option("--chain-id", default=None, help="Chain id.")
@click.option("--snapshot-interval", type=int, default=10, show_default=True,
              help="Take a state-sync snapshot every N blocks (0: never).")
@click.option("--base-port", type=int, default=None,
              help="First published port; node i uses BASE+10*i .. +9 (default 26600).")
@click.option("--timeout-commit", default=None, help="CometBFT consensus.timeout_commit (default 1s; 300ms with --fast).")
@click.option("--fast", is_flag=True, help="Short consensus timeouts for demos and tests (~0.3 s blocks).")
@wheel_dir_option
@cometbft_image_option
def compose_cmd(nodes: int, directory: Path, chain_id: str | None, snapshot_interval: int, base_port: int | None,
                timeout_commit: str | None, fast: bool, wheel_dir: Path | None, cometbft_image: str | None) -> None:
    """Write a Docker Compose project (official CometBFT image, an Edgistry image built from
    the installed distribution) that runs with Compose v1 and v2."""
    from .compose import COMETBFT_IMAGE, COMPOSE_FILE, write_project
    from .localnet import DEFAULT_BASE_PORT, LocalnetError
    from .wheels import WheelError

    try:
        project = write_project(directory, nodes, chain_id=chain_id, snapshot_interval=snapshot_interval,
                                base_port=base_port or DEFAULT_BASE_PORT, consensus=_consensus(fast, timeout_commit),
                                wheel_dir=wheel_dir, cometbft_image=cometbft_image or COMETBFT_IMAGE)
    except (LocalnetError, WheelError) as exc:
        raise UserError(str(exc)) from exc
    path = directory.resolve() / COMPOSE_FILE
    click.echo(f"wrote {path} (images {project.edgistry_image} from {directory.resolve() / 'image'}, "
               f"{project.cometbft_image})")
    click.echo(f"run (Compose v2): docker compose -p {project.name} -f {path} up -d")
    click.echo(f"run (Compose v1): docker-compose -p {project.name} -f {path} up -d")
    click.echo(f"or without compose: edgistry cluster up --runtime docker --dir {directory}")


@cluster_group.command("add-node")
@dir_option
@click.option("--wait", "timeout", type=float, default=180, show_default=True,
              help="Seconds to wait for the new node to state-sync and catch up.")
def add_node_cmd(directory: Path, timeout: float) -> None:
    """Add a (non-validator) node that joins the running cluster by state sync."""
    from .membership import MembershipError, add_node
    from .ops import ClusterError

    if _is_container_project(directory):
        raise UserError(f"{directory} holds a container project: add-node runs local processes only")
    binary = _binary()
    try:
        node = add_node(directory, binary, timeout=timeout, progress=_progress)
    except (MembershipError, ClusterError) as exc:
        raise UserError(str(exc)) from exc
    click.echo(f"{node.moniker} joined by state sync (validator address {node.validator_address})")
    _print_endpoints([node])


@cluster_group.command("promote")
@dir_option
@click.argument("node")
@click.option("--power", type=click.IntRange(1), default=10, show_default=True, help="Voting power.")
def promote_cmd(directory: Path, node: str, power: int) -> None:
    """Make NODE (e.g. node4) a validator through an admin SetValidator transaction."""
    _set_power(directory, node, power)


@cluster_group.command("demote")
@dir_option
@click.argument("node")
def demote_cmd(directory: Path, node: str) -> None:
    """Remove NODE from the validator set (SetValidator with power 0)."""
    _set_power(directory, node, 0)


def _set_power(directory: Path, node: str, power: int) -> None:
    from .membership import MembershipError, set_power

    try:
        height = set_power(directory, node, power, progress=_progress)
    except MembershipError as exc:
        raise UserError(str(exc)) from exc
    click.echo(f"{node} has voting power {power} (effective at height {height})")


# Nodes on other machines (generate, prepare-node) live in their own module.
from .hosts_cli import generate_cmd, prepare_node_cmd  # noqa: E402

cluster_group.add_command(generate_cmd)
cluster_group.add_command(prepare_node_cmd)
