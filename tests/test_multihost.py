"""Edgistry on four hosts with a WAN between them, under faults, checked as Jepsen would.

Each node (CometBFT, `edgistry node`, `edgistry gateway`) runs in a network namespace
of its own with its own address; between the hosts, 50 ± 10 ms each way and 1 % loss
(multihost_helpers.py). The generated configs bind 127.0.0.1 and advertise the host
address, so every advertised endpoint is exercised: CometBFT's p2p external
address, the gateways' gRPC endpoints in the registry (peers forward there), the
device link endpoint pairing hands to devices, the RPC the clients and this checker
read.

The full run (CometBFT v0.38 by default) injects what CometBFT's own e2e tests do:
one node partitioned away (the rest commit, it does not), two against two (the
chain halts: no side has more than 2/3 of the power), healing (all catch up), kill -9
and restart under load, and a paused node (SIGSTOP/SIGCONT). All the while clients
pair new devices through every gateway (registry writes) and invoke devices through
gateways other than their own. Then the checker (multihost_checker.py) reads every
node back and asserts: no acknowledged registry write is missing anywhere, no height
has two blocks, every node's app hash agrees at every height, and no acknowledged
invocation was lost or ran twice on its device. The smoke run does the same on the
other CometBFT with one partition.

Binaries: EDGISTRY_COMETBFT (or cometbft on PATH) is v0.38; EDGISTRY_COMETBFT_V1
names a v1.x binary. EDGISTRY_MULTIHOST_FULL=v1 gives v1 the full run and v0.38 the
smoke run. Needs root and network namespaces: skipped without them, and (as every
skip) a failure under CI=true.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from pathlib import Path

import pytest

from cluster_helpers import Procs
from edgistry.cluster import membership, ops
from edgistry.cluster.cometbft import cometbft_version, find_cometbft
from multihost_checker import OK, History, check_chain, check_invokes, check_registry, summary_lines
from multihost_helpers import (
    DELAY_MS, JITTER_MS, LINK_RESET, LOSS, Clients, Fleet, Multihost, advertised_problems, invoke_worker,
    pair_initial, pair_worker, read_chain, read_registry,
)
from netns_helpers import netns_unavailable

pytestmark = [pytest.mark.multihost, pytest.mark.cometbft, pytest.mark.slow]

NODES = 4
FULL_ON = os.environ.get("EDGISTRY_MULTIHOST_FULL", "v0.38")
VERSIONS = {"v0.38": "0.38.", "v1": "1."}
INVOKERS = 6
DEVICES_PER_NODE = 2
SNAPSHOT_INTERVAL = 10  # a joining node state-syncs from one of these
JOIN_TIMEOUT_S = 120.0
CONVERGE_S = 120.0
SETTLE_QUIET_S = 4.0  # the devices have run nothing new for this long: queues are drained
SETTLE_MAX_S = 30.0
WORKERS_STOP_S = 60.0  # an operation is bounded (pairing 25 s; an invoke and its retry ~35 s)


def _binary(version: str) -> str:
    """The CometBFT binary for ``version``, checked to be that version (skip when absent)."""
    if version == "v1":
        binary = os.environ.get("EDGISTRY_COMETBFT_V1")
        how = "EDGISTRY_COMETBFT_V1=/path/to/cometbft-v1.x (GOBIN=DIR go install " \
              "github.com/cometbft/cometbft/cmd/cometbft@v1.0.1)"
    else:
        binary = find_cometbft()
        how = "EDGISTRY_COMETBFT=/path/to/cometbft-v0.38 (or cometbft v0.38 on PATH)"
    if not binary or not Path(binary).is_file():
        pytest.skip(f"no CometBFT {version} binary: set {how}")
    found = cometbft_version(binary)
    if not found.startswith(VERSIONS[version]):
        pytest.skip(f"{binary} is CometBFT {found}, not {version}: set {how}")
    return binary


@pytest.fixture
def multihost(tmp_path: Path, procs: Procs):
    """A factory of Multihost runs; every process stopped by pid and every namespace deleted."""
    reason = netns_unavailable()
    if reason:
        pytest.skip(reason)
    runs: list[Multihost] = []

    def make(binary: str, seed: int, spare_hosts: int = 0) -> Multihost:
        run = Multihost(tmp_path / "net", binary, NODES, seed, spare_hosts)
        runs.append(run)
        return run

    try:
        yield make
    finally:
        for run in runs:
            procs.logs.extend(run.logs())  # their tails go into a failure report
            outcomes, left = run.down()
            assert not any(o.startswith("still running") for o in outcomes.values()), outcomes
            assert not left, f"left behind: {left}"


# ---- the nemesis (blocking: runs in a thread beside the workload's loop) ----


def partition_one(run: Multihost, history: History, lone: int, hold_s: float) -> None:
    """One node cut off: the others keep committing, it commits nothing; healed, it catches up."""
    rest = [i for i in range(NODES) if i != lone]
    history.fault(f"partition: node{lone} | " + " ".join(f"node{i}" for i in rest))
    run.net.isolate(lone)
    time.sleep(1.0)  # a block in flight may still reach it
    alone_at, started = run.height(lone), time.monotonic()
    assert alone_at is not None, f"node{lone}'s RPC does not answer (clients are never partitioned)"
    run.wait_height(rest, run.tip(rest) + 3, 60, f"to commit without node{lone}")
    time.sleep(max(0.0, hold_s - (time.monotonic() - started)))
    assert run.height(lone) == alone_at, f"node{lone} committed while partitioned ({alone_at} -> {run.height(lone)})"
    history.fault("heal")
    run.net.heal()
    run.wait_height([lone], run.tip(rest), 90, "to catch up after the partition")


def partition_halves(run: Multihost, history: History, hold_s: float) -> None:
    """Two against two: neither side has more than 2/3 of the power, so nothing commits."""
    history.fault("partition: node0 node1 | node2 node3")
    run.net.partition([{0, 1}, {2, 3}])
    time.sleep(3.0)  # a block whose precommits were already out may still land
    before = run.heights()
    time.sleep(hold_s)
    after = run.heights()
    seen = [i for i in before if before[i] is not None and after[i] is not None]
    assert len(seen) >= NODES - 1, f"node RPCs do not answer: {before} -> {after}"
    # a node that lagged when the split came may still fetch blocks its half already holds,
    # so the chain moved only if some node passes the highest block committed before it
    top = max(before[i] for i in seen)
    assert all(after[i] <= top for i in seen), f"the chain moved while split 2|2: {before} -> {after}"
    history.fault("heal")
    run.net.heal()
    run.wait_height(range(NODES), max(h for h in after.values() if h is not None) + 2, 120,
                    "to commit again after the 2|2 partition")


def kill_and_restart(run: Multihost, history: History, victim: int) -> None:
    """kill -9 a node's three processes under load: the rest commit; restarted, it catches up."""
    rest = [i for i in range(NODES) if i != victim]
    history.fault(f"kill -9 node{victim} (gateway, cometbft, app)")
    run.kill(victim)
    run.wait_height(rest, run.tip(rest) + 3, 60, f"to commit with node{victim} dead")
    history.fault(f"restart node{victim}")
    run.restart(victim)
    run.wait_height([victim], run.tip(rest), 90, "to catch up after its restart")
    ops.wait_gateways([run.nodes[victim]], run.launcher, 60)


def pause_and_resume(run: Multihost, history: History, victim: int) -> None:
    """SIGSTOP a node's three processes: the rest commit; after SIGCONT it catches up."""
    rest = [i for i in range(NODES) if i != victim]
    history.fault(f"pause node{victim} (SIGSTOP gateway, cometbft, app)")
    run.pause(victim)
    try:
        run.wait_height(rest, run.tip(rest) + 3, 60, f"to commit with node{victim} paused")
    finally:
        history.fault(f"resume node{victim} (SIGCONT)")
        run.resume(victim)
    run.wait_height([victim], run.tip(rest), 90, "to catch up after the pause")


def join_and_promote(run: Multihost, history: History) -> None:
    """A fifth machine joins by state sync (as docs/DEPLOY_MULTIHOST.md says) and becomes a validator."""
    history.fault(f"join node{len(run.nodes)} on a new host by state sync")
    node = run.join(JOIN_TIMEOUT_S)
    history.fault(f"promote {node.moniker} to validator")
    membership.set_power(run.dir, node.moniker, 10)
    run.wait_height(range(len(run.nodes)), run.tip(range(NODES)) + 3, 60, "to commit with five validators")


def full_nemesis(run: Multihost, history: History) -> None:
    time.sleep(8)  # load on a healthy (if slow and lossy) network first
    partition_one(run, history, lone=3, hold_s=12)
    partition_halves(run, history, hold_s=10)
    kill_and_restart(run, history, victim=1)
    pause_and_resume(run, history, victim=0)
    kill_and_restart(run, history, victim=2)
    join_and_promote(run, history)
    time.sleep(5)


FULL_FAULTS = ("WAN", "partition: node3", "heal", "partition: node0 node1 | node2 node3", "kill -9 node1",
               "restart node1", "pause node0", "resume node0", "kill -9 node2", "restart node2", "join node4",
               "promote node4")


def smoke_nemesis(run: Multihost, history: History) -> None:
    time.sleep(5)
    partition_one(run, history, lone=2, hold_s=6)
    time.sleep(3)


# ---- a run: workload + nemesis, then the checker ----


async def settle(fleet: Fleet) -> None:
    """Let the devices drain what is still queued for them (indeterminate calls may run now)."""
    deadline = time.monotonic() + SETTLE_MAX_S
    last, quiet_since = sum(fleet.executions.values()), time.monotonic()
    while time.monotonic() - quiet_since < SETTLE_QUIET_S and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        now = sum(fleet.executions.values())
        if now != last:
            last, quiet_since = now, time.monotonic()


async def scenario(run: Multihost, history: History, devices_dir: Path, nemesis, seed: int) -> dict:
    """Workload and nemesis together; then converge, settle, read everything back and check."""
    rng = random.Random(seed)
    fleet = Fleet(devices_dir)
    names = [await pair_initial(fleet, node) for node in run.nodes for _ in range(DEVICES_PER_NODE)]
    for name in names:
        fleet.run(name)
    clients = Clients(run.nodes)
    stop = asyncio.Event()
    workers = [asyncio.ensure_future(invoke_worker(fleet, clients, history, random.Random(rng.random()), names,
                                                   NODES, stop)) for _ in range(INVOKERS)]
    workers += [asyncio.ensure_future(pair_worker(fleet, node, history, stop)) for node in run.nodes]
    wrong = await advertised_problems(run, fleet)
    assert not wrong, "advertised addresses:\n" + "\n".join(wrong)
    try:
        history.fault(f"WAN on every host: {DELAY_MS} +- {JITTER_MS} ms each way, {LOSS:.0%} loss; "
                      f"device links reset on {LINK_RESET:.0%} of chunks")
        await asyncio.to_thread(nemesis, run, history)
    finally:
        stop.set()
        done, pending = await asyncio.wait(workers, timeout=WORKERS_STOP_S)
        for task in pending:
            task.cancel()
    for task in done:
        task.result()  # a worker that crashed is a broken test, not a finding
    assert not pending, f"{len(pending)} workers did not stop within {WORKERS_STOP_S:.0f} s"
    agreed = await asyncio.to_thread(run.converge, CONVERGE_S)
    await settle(fleet)
    await fleet.close()
    await clients.close()

    assert not (wrong := await advertised_problems(run, fleet)), "advertised addresses:\n" + "\n".join(wrong)
    registry = {n.index: await read_registry(n, history) for n in run.nodes}
    chains = {n.index: await read_chain(n, agreed.height) for n in run.nodes}
    problems = {"lost_writes": check_registry(history, registry), "forks_or_hash_mismatch": check_chain(chains),
                **check_invokes(history, fleet.executions)}
    totals = fleet.totals()
    lines = summary_lines(history, problems)
    lines.insert(0, f"CometBFT {cometbft_version(run.binary)}, {len(run.nodes)} nodes on hosts of their own, "
                    f"heights 1..{agreed.height} "
                    f"agree (app hash {agreed.app_hash[:16]})")
    lines.append(f"devices: {len(names)} running; {sum(fleet.executions.values())} executions of "
                 f"{len(fleet.executions)} operations; in the {totals['wakes']} wakes that ended cleanly, "
                 f"{totals['deduplicated']} redeliveries answered from the device's store")
    print("\n".join(["", "==== multi-host checker ====", *lines]))
    (devices_dir.parent / "checker-summary.txt").write_text("\n".join(lines) + "\n")
    return {"problems": problems, "agreed": agreed, "fleet": fleet}


def _assert_clean(history: History, result: dict, min_pairs: int, min_invokes: int) -> None:
    problems = result["problems"]
    found = {k: v for k, v in problems.items() if v}
    assert not found, "the checker found:\n" + "\n".join(f"{k}: {p}" for k, ps in found.items() for p in ps[:10])
    counts = history.counts()
    assert counts["pair"][OK] >= min_pairs, f"too few acknowledged pairings to mean anything: {counts['pair']}"
    assert counts["invoke"][OK] >= min_invokes, f"too few acknowledged invokes to mean anything: {counts['invoke']}"
    vias = {op.via for op in history.of("invoke", OK)}
    assert vias == set(range(NODES)), f"acknowledged invokes came through gateways {sorted(vias)} only"
    forwarded = [op for op in history.of("invoke", OK)
                 if op.value.get("retried_via", op.via) != _owner(result["fleet"], op.value["device"])]
    assert forwarded, "no acknowledged invoke went through a gateway other than its device's"


def _owner(fleet: Fleet, device: str) -> int:
    return fleet.paired_via[device]


@pytest.mark.timeout(600)
def test_full_fault_run_loses_nothing_and_never_forks(multihost, tmp_path: Path):
    """Under WAN latency and loss, partitions, kill -9 and pauses, no acknowledged registry
    write or invocation is lost, nothing runs twice, and no node forks or diverges."""
    binary = _binary(FULL_ON)
    seed = random.randrange(1 << 30)
    print(f"seed {seed}")
    run = multihost(binary, seed, spare_hosts=1)
    run.up(snapshot_interval=SNAPSHOT_INTERVAL)
    history = History()
    result = asyncio.run(scenario(run, history, tmp_path / "devices", full_nemesis, seed))
    injected = " / ".join(f.what for f in history.faults)
    assert all(what in injected for what in FULL_FAULTS), injected
    _assert_clean(history, result, min_pairs=20, min_invokes=100)


@pytest.mark.timeout(300)
def test_smoke_run_on_the_other_cometbft(multihost, tmp_path: Path):
    """The same hosts, WAN, workload and checks on the other CometBFT, with one partition."""
    other = "v1" if FULL_ON == "v0.38" else "v0.38"
    binary = _binary(other)
    seed = random.randrange(1 << 30)
    print(f"seed {seed}")
    run = multihost(binary, seed)
    run.up()
    history = History()
    result = asyncio.run(scenario(run, history, tmp_path / "devices", smoke_nemesis, seed))
    _assert_clean(history, result, min_pairs=5, min_invokes=20)
