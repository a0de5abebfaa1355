"""``edgistry cluster up | status | down | compose | add-node | promote | demote``.

A local multi-node Edgistry on one machine: every node a CometBFT validator
with the registry app (and the gateway when this Edgistry has one) beside it,
all on loopback, logs and pid records in the cluster directory.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import click

from ..clikit import UserError

dir_option = click.option("--dir", "directory", type=click.Path(path_type=Path), required=True,
                          help="Cluster directory (configs, data, logs/, run/).")


def _binary() -> str:
    from .cometbft import HOW_TO_GET, find_cometbft

    binary = find_cometbft()
    if binary is None:
        raise UserError(HOW_TO_GET)
    return binary


def _progress(message: str) -> None:
    click.echo(message, err=True)


def _print_endpoints(layouts) -> None:
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
def up_cmd(directory: Path, nodes: int, base_port: int | None, timeout_commit: str | None, fast: bool,
           snapshot_interval: int, chain_id: str | None, timeout: float) -> None:
    """Generate and start a localnet, or restart what is not running in an existing one.

    Waits until every node commits and all agree on the app hash, then prints
    every endpoint. Processes keep running after this command returns; stop
    them with `edgistry cluster down`.
    """
    from .cometbft_files import ConsensusSettings
    from .localnet import LocalnetError
    from .ops import ClusterError, up

    binary = _binary()
    consensus = ConsensusSettings.fast() if fast else ConsensusSettings()
    if timeout_commit:
        consensus = dataclasses.replace(consensus, timeout_commit=timeout_commit)
    try:
        layouts, agreed = up(directory, nodes, binary, base_port, consensus, snapshot_interval, chain_id,
                             timeout, progress=_progress)
    except (ClusterError, LocalnetError) as exc:
        raise UserError(f"{exc}\n(processes that did start keep running: `edgistry cluster down --dir {directory}`)") from exc
    click.echo(f"{len(layouts)} nodes agree at height {agreed.height} (app hash {agreed.app_hash or '-'})")
    _print_endpoints(layouts)
    click.echo(f"logs: {directory.resolve() / 'logs'}   stop: edgistry cluster down --dir {directory}")


@cluster_group.command("status")
@dir_option
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def status_cmd(directory: Path, as_json: bool) -> None:
    """Per node: processes, height, app hash, peers and gateway health."""
    from .localnet import LocalnetError
    from .ops import status

    try:
        report = status(directory)
    except LocalnetError as exc:
        raise UserError(str(exc)) from exc
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    for node in report["nodes"]:
        procs = " ".join(f"{role}:{'up' if p['running'] else 'DOWN'}" + (f"({p['pid']})" if p["running"] else "")
                         for role, p in node["processes"].items())
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


@cluster_group.command("down")
@dir_option
def down_cmd(directory: Path) -> None:
    """Stop every process of the cluster by recorded pid (SIGTERM, then SIGKILL)."""
    from .ops import down

    if not directory.exists():
        raise UserError(f"{directory} does not exist")
    outcomes = down(directory)
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
def compose_cmd(nodes: int, directory: Path, chain_id: str | None, snapshot_interval: int) -> None:
    """Write a Docker Compose project (official cometbft image + an Edgistry image)."""
    from .compose import write_compose
    from .localnet import LocalnetError

    try:
        path = write_compose(directory, nodes, chain_id=chain_id, snapshot_interval=snapshot_interval)
    except LocalnetError as exc:
        raise UserError(str(exc)) from exc
    click.echo(f"wrote {path}")
    click.echo(f"run: docker compose -f {path} up --build")


@cluster_group.command("add-node")
@dir_option
@click.option("--wait", "timeout", type=float, default=180, show_default=True,
              help="Seconds to wait for the new node to state-sync and catch up.")
def add_node_cmd(directory: Path, timeout: float) -> None:
    """Add a (non-validator) node that joins the running cluster by state sync."""
    from .membership import MembershipError, add_node
    from .ops import ClusterError

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
