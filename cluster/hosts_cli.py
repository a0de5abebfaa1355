"""``edgistry cluster generate | prepare-node``: a cluster whose nodes run on other machines.

``generate`` writes one directory per machine (keys, one genesis, configs that
bind one address and advertise another); ``prepare-node`` writes one more for
a machine that joins a running cluster by state sync. Neither starts anything:
each directory is copied to its machine, to the same path, and run there (the
printed commands). docs/DEPLOY_MULTIHOST.md walks through it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from ..clikit import UserError

DIR_HELP = ("Cluster directory; use the path the node directories will have on every machine "
            "(configs name absolute paths), e.g. /srv/edgistry.")


def _run_lines(node) -> list[str]:
    return [f"edgistry node --home {node.edgistry_home}",
            f"cometbft start --home {node.cometbft_home}",
            f"edgistry gateway --home {node.edgistry_home}"]


def _describe(node) -> str:
    """What the operator of the node's machine needs: where it listens, what to open, what to run."""
    p = node.ports
    lines = [f"{node.moniker}: copy {node.root} to {node.host}, same path; it listens on {node.bind}",
             (f"  open inbound TCP {p.p2p} (p2p), {p.grpc} (gateway gRPC), {p.link} (device link); "
              f"to operators and clients as needed: {p.rpc} (RPC), {p.http} (gateway HTTP)"),
             *(f"  run: {line}" for line in _run_lines(node))]
    if (node.edgistry_home / "keys" / "admin.pem").exists():
        lines.insert(1, f"  it holds the cluster's admin key ({node.edgistry_home / 'keys' / 'admin.pem'}), which no "
                        "running node needs: leave it out unless that machine administers the cluster "
                        "(rsync -a --exclude edgistry/keys/admin.pem ...)")
    return "\n".join(lines)


@click.command("generate")
@click.option("--dir", "directory", type=click.Path(path_type=Path), required=True, help=DIR_HELP)
@click.option("--host", "hosts", multiple=True, required=True, metavar="ADDRESS",
              help="The address (DNS name or IPv4) node i is reached at; once per node, in order.")
@click.option("--bind", default=None, metavar="IPV4",
              help="The address every node listens on (default: its host; 0.0.0.0 behind NAT).")
@click.option("--base-port", type=int, default=None,
              help="First port (default 26600); nodes sharing a host take blocks of ten from there.")
@click.option("--chain-id", default=None, help="Chain id.")
@click.option("--fast", is_flag=True, help="Short consensus timeouts (~0.3 s blocks; for a LAN, not a WAN).")
@click.option("--timeout-commit", default=None, help="CometBFT consensus.timeout_commit (default 1s).")
@click.option("--snapshot-interval", type=int, default=10, show_default=True,
              help="Take a state-sync snapshot every N blocks (0: never; joining nodes need snapshots).")
@click.option("--cometbft-version", default=None, metavar="VERSION",
              help="The CometBFT release the machines run (0.38.x or 1.x): the files take its shapes "
                   "(default: the version of the cometbft found here, else 0.38).")
def generate_cmd(directory: Path, hosts: tuple[str, ...], bind: str | None, base_port: int | None,
                 chain_id: str | None, fast: bool, timeout_commit: str | None, snapshot_interval: int,
                 cometbft_version: str | None) -> None:
    """Write the node directories of a cluster with one node per --host; start nothing."""
    from .cometbft import cometbft_version as version_of, find_cometbft
    from .cometbft_files import CONFIG_VERSION, ConsensusSettings
    from .localnet import DEFAULT_BASE_PORT, LocalnetError, generate_localnet
    from ..config import DEFAULT_CHAIN_ID

    consensus = ConsensusSettings.fast() if fast else ConsensusSettings()
    if timeout_commit:
        consensus = dataclasses.replace(consensus, timeout_commit=timeout_commit)
    if cometbft_version is None:
        binary = find_cometbft()
        cometbft_version = version_of(binary) if binary else CONFIG_VERSION
    try:
        layouts = generate_localnet(directory, len(hosts), chain_id or DEFAULT_CHAIN_ID,
                                    base_port=base_port or DEFAULT_BASE_PORT, consensus=consensus,
                                    snapshot_interval=snapshot_interval, cometbft_version=cometbft_version,
                                    hosts=hosts, bind=bind)
    except LocalnetError as exc:
        raise UserError(str(exc)) from exc
    click.echo(f"wrote {len(layouts)} nodes in {directory.resolve()} for CometBFT {cometbft_version} "
               "(one genesis, every node a validator)")
    for node in layouts:
        click.echo(_describe(node))
    click.echo(f"keep {directory.resolve()} (manifest, admin key) on the admin machine: "
               f"`edgistry cluster status --dir {directory}` reads every node's RPC from there")


@click.command("prepare-node")
@click.option("--dir", "directory", type=click.Path(path_type=Path, exists=True, file_okay=False), required=True,
              help="The running cluster's directory (on the admin machine).")
@click.option("--host", required=True, metavar="ADDRESS", help="The address the new node is reached at.")
@click.option("--bind", default=None, metavar="IPV4", help="The address it listens on (default: its host).")
def prepare_node_cmd(directory: Path, host: str, bind: str | None) -> None:
    """Write a node that joins the running cluster by state sync, for another machine; start nothing.

    Its gateway is registered on chain now (admin key); the node is not a
    validator until `edgistry cluster promote`.
    """
    from .localnet import LocalnetError
    from .membership import MembershipError, prepare_node

    try:
        node = prepare_node(directory, host, bind, progress=lambda m: click.echo(m, err=True))
    except (MembershipError, LocalnetError) as exc:
        raise UserError(str(exc)) from exc
    click.echo(_describe(node))
    click.echo(f"once it has caught up: edgistry cluster promote --dir {directory} {node.moniker}")
