"""Changing a running localnet's membership: join by state sync, promote, demote.

Joining: the new node gets the cluster's genesis and admin key, every node as
a persistent peer, and CometBFT ``[statesync]`` settings: two running nodes'
RPC as light-client witnesses, a trusted height and header hash read from a
running node, and a trust period. Its app, empty, accepts a registry
snapshot (taken every ``snapshot_interval`` blocks by the running apps and
served through the ABCI snapshot methods); CometBFT verifies the snapshot's
app hash with the light client and the app checks it against the restored
records; then the node block-syncs to the tip. Its gateway key is registered
on chain by the admin so the new node's gateway can sign.

Promotion and removal are one admin ``SetValidator`` registry transaction
(power > 0 adds or reweights, 0 removes); the app returns a ValidatorUpdate
and CometBFT applies it at H+2.
"""

from __future__ import annotations

import asyncio
import time
import tomllib
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path

from .. import chain as rpc
from .cometbft_files import ConsensusSettings
from .launcher import Launcher
from .localnet import HOST, NodeLayout, add_localnet_node, load_localnet
from .ops import ClusterError, Progress, _quiet, start_node
from ..config import NodeConfig, load_ed25519_pem

TRUST_PERIOD = "168h0m0s"
DISCOVERY_TIME = "5s"  # CometBFT's minimum
SET_POWER_TIMEOUT = 60.0


class MembershipError(Exception):
    """The cluster's membership cannot be changed as asked."""


def running_nodes(layouts: list[NodeLayout]) -> list[tuple[NodeLayout, rpc.NodeStatus]]:
    """Nodes whose RPC answers and that are not catching up, with their status."""
    out = []
    for node in layouts:
        try:
            st = rpc.status(node.rpc_url, timeout=2.0)
        except (rpc.NodeUnreachable, rpc.RpcFailed):
            continue
        if not st.catching_up:
            out.append((node, st))
    return out


def _consensus_of(node: NodeLayout) -> ConsensusSettings:
    table = tomllib.loads((node.cometbft_home / "config" / "config.toml").read_text())["consensus"]
    names = {f.name for f in fields(ConsensusSettings)}
    return ConsensusSettings(**{k: v for k, v in table.items() if k in names})


def statesync_settings(directory: Path, snapshot_interval: int, timeout: float = 60.0,
                       progress: Progress = _quiet) -> dict:
    """``[statesync]`` for a joining node, from two running nodes; waits (bounded) until
    the chain has a snapshot height and two blocks above it."""
    layouts = load_localnet(directory)
    deadline = time.monotonic() + timeout
    while True:
        live = running_nodes(layouts)
        if len(live) >= 2:
            height = min(st.height for _, st in live)
            snap = height // snapshot_interval * snapshot_interval if snapshot_interval else 0
            if snap >= 1 and height >= snap + 2:
                break
        if time.monotonic() > deadline:
            raise MembershipError("state sync needs two running nodes and a snapshot "
                                  f"(every {snapshot_interval} blocks); not there after {timeout:.0f} s")
        progress(f"waiting for two running nodes and a snapshot height (every {snapshot_interval} blocks)")
        time.sleep(1.0)
    (first, _), (second, _) = live[:2]
    return {
        "enable": True,
        "rpc_servers": f"{first.rpc_url},{second.rpc_url}",
        "trust_height": snap,
        "trust_hash": rpc.block_hash(first.rpc_url, snap),
        "trust_period": TRUST_PERIOD,
        "discovery_time": DISCOVERY_TIME,
    }


def prepare_node(directory: Path, host: str = HOST, bind: str | None = None,
                 progress: Progress = _quiet) -> NodeLayout:
    """Write a node that will join the running cluster by state sync (reached at ``host``,
    listening on ``bind``) and register its gateway on chain; start nothing."""
    directory = directory.expanduser().resolve()
    layouts = load_localnet(directory)
    reference = NodeConfig.load(layouts[0].edgistry_home)
    interval = int(reference.extra.get("snapshot_interval", 0))
    if not interval:
        raise MembershipError("the cluster's apps take no snapshots (snapshot_interval is 0): cannot state-sync")
    statesync = statesync_settings(directory, interval, progress=progress)
    node = add_localnet_node(directory, statesync, _consensus_of(layouts[0]), snapshot_interval=interval,
                             host=host, bind=bind)
    progress(f"{node.moniker}: state sync from height {statesync['trust_height']} via {statesync['rpc_servers']}")
    _register_gateway(layouts, node)
    return node


def add_node(directory: Path, binary: str, timeout: float = 180.0, progress: Progress = _quiet,
             gateway: bool = True, host: str = HOST, bind: str | None = None,
             wrap: Sequence[str] = ()) -> NodeLayout:
    """Add a node that joins the running cluster by state sync, start it here (under the
    command prefix ``wrap``) and wait until it is caught up."""
    layouts = load_localnet(directory.expanduser().resolve())
    node = prepare_node(directory, host, bind, progress)
    started = start_node(Launcher(directory.expanduser().resolve()), node, binary, gateway, wrap)
    progress(f"{node.moniker}: started {', '.join(started)}")
    wait_caught_up(node, layouts, timeout, progress)
    return node


def _register_gateway(layouts: list[NodeLayout], node: NodeLayout) -> None:
    from ..chain import ChainClient
    from ..proto import registry_pb2 as pb

    url = _any_rpc(layouts)
    admin = load_ed25519_pem(layouts[0].edgistry_home / "keys" / "admin.pem")  # the admin machine's node0
    msg = pb.RegisterGateway(pubkey=node.gateway_pubkey, endpoint=node.grpc_endpoint, operator=node.moniker)

    async def go() -> None:
        async with ChainClient(url) as chain:
            await chain.submit(admin, msg)

    _run_chain(go())


def wait_caught_up(node: NodeLayout, others: list[NodeLayout], timeout: float, progress: Progress = _quiet) -> int:
    """Wait until ``node`` is not catching up and is at the others' height; return it."""
    deadline = time.monotonic() + timeout
    last = 0.0
    while True:
        try:
            st = rpc.status(node.rpc_url, timeout=2.0)
        except (rpc.NodeUnreachable, rpc.RpcFailed):
            st = None
        tip = max((s.height for _, s in running_nodes(others)), default=0)
        if st is not None and not st.catching_up and st.height >= tip > 0:
            return st.height
        if time.monotonic() > deadline:
            raise ClusterError(f"{node.moniker} did not catch up within {timeout:.0f} s "
                               f"(at {st.height if st else 'no RPC'}, tip {tip})")
        if time.monotonic() - last >= 2.0:
            progress(f"{node.moniker}: {'no RPC yet' if st is None else f'h={st.height}'}"
                     f"{' catching up' if st and st.catching_up else ''}, tip {tip}")
            last = time.monotonic()
        time.sleep(0.25)


def _any_rpc(layouts: list[NodeLayout]) -> str:
    live = running_nodes(layouts)
    if not live:
        raise MembershipError("no node of the cluster answers on its RPC")
    return live[0][0].rpc_url


def _run_chain(coro):
    from ..chain import ChainError

    try:
        return asyncio.run(coro)
    except ChainError as exc:
        raise MembershipError(str(exc)) from exc


def set_power(directory: Path, moniker: str, power: int, timeout: float = SET_POWER_TIMEOUT,
              progress: Progress = _quiet) -> int:
    """Give ``moniker`` voting ``power`` (0 removes it) through an admin SetValidator tx;
    wait until CometBFT's validator set shows it; return the height it takes effect."""
    from ..chain import ChainClient
    from ..proto import registry_pb2 as pb

    layouts = load_localnet(directory)
    try:
        node = next(n for n in layouts if n.moniker == moniker)
    except StopIteration:
        raise MembershipError(f"no node {moniker!r} in {directory}") from None
    url = _any_rpc([n for n in layouts if n is not node] or layouts)
    admin = load_ed25519_pem(layouts[0].edgistry_home / "keys" / "admin.pem")
    msg = pb.SetValidator(pubkey=node.validator_pubkey, power=power)

    async def go() -> int:
        async with ChainClient(url) as chain:
            return (await chain.submit(admin, msg)).height

    committed = _run_chain(go())
    progress(f"SetValidator({moniker}, {power}) committed at height {committed}; effective at {committed + 2}")
    deadline = time.monotonic() + timeout
    while True:
        try:
            current = rpc.validators(url).get(node.validator_address, 0)
            if current == power:
                return committed + 2
        except (rpc.NodeUnreachable, rpc.RpcFailed):
            pass
        if time.monotonic() > deadline:
            raise MembershipError(f"{moniker}'s voting power is not {power} {timeout:.0f} s after height {committed}")
        time.sleep(0.25)
