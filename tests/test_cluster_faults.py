"""Fault tolerance of a 4-validator Edgistry on real CometBFT, and joining by state sync.

Runs when ``cometbft`` is on PATH or ``EDGISTRY_COMETBFT`` names it; skipped
with how to get one otherwise. The cluster is started with the cluster
tooling (edgistry.cluster.ops / launcher): every process in its own session,
recorded by pid, and stopped by pid in the fixture's teardown. The faults are
those of CometBFT's own e2e perturbations: kill (SIGKILL + restart), pause
(SIGSTOP/SIGCONT), and the ABCI app dying under its node.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path

import h3
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cluster_helpers import app_hashes, free_base_port, header_app_hashes, rpc, wait_until
from edgistry.cluster import ops
from edgistry.cluster.cometbft import HOW_TO_GET, cometbft_version, find_cometbft
from edgistry.cluster.cometbft_files import CONFIG_VERSION, ConsensusSettings
from edgistry.cluster.launcher import Launcher
from edgistry.cluster.localnet import NodeLayout, generate_localnet
from edgistry.cluster.membership import add_node, set_power
from edgistry.config import load_ed25519_pem
from edgistry.chain import ChainClient, ChainError
from edgistry.proto import registry_pb2 as pb
from registry_helpers import device_msg as sealed_device_msg
from registry_helpers import open_test_epoch

BINARY = find_cometbft()
VERSION = cometbft_version(BINARY) if BINARY else CONFIG_VERSION  # the files follow the binary in use
pytestmark = [
    pytest.mark.cometbft,
    pytest.mark.slow,
    pytest.mark.skipif(BINARY is None, reason=HOW_TO_GET),
]

FAST = ConsensusSettings.fast()
# A snapshot must outlive state-sync discovery (5 s) plus the light-client checks: the app
# keeps its last 2 snapshots, so at ~0.4 s blocks an interval of 25 keeps each for >= 10 s.
SNAPSHOT_INTERVAL = 25
START_TIMEOUT = 60
CATCH_UP_TIMEOUT = 60
RESOLUTION = 7
SUBMIT_TIMEOUT = 8.0  # per broadcast_tx_commit (CometBFT's own limit is 10 s)


@dataclass
class Cluster:
    dir: Path
    nodes: list[NodeLayout]
    launcher: Launcher

    def height(self, node: NodeLayout) -> int | None:
        try:
            return int(rpc(node.rpc_url, "status", timeout=2)["sync_info"]["latest_block_height"])
        except Exception:
            return None

    def wait_height(self, node: NodeLayout, target: int, timeout: float, what: str = "") -> int:
        return wait_until(lambda: (h := self.height(node)) is not None and h >= target and h, timeout,
                          what or f"{node.moniker} to reach height {target}")

    def tip(self, nodes: list[NodeLayout]) -> int:
        return max(h for n in nodes if (h := self.height(n)) is not None)

    def advances(self, nodes: list[NodeLayout], blocks: int, timeout: float = 30) -> int:
        """Wait until every node in ``nodes`` is ``blocks`` past the current tip; return it."""
        target = self.tip(nodes) + blocks
        for node in nodes:
            self.wait_height(node, target, timeout, f"{node.moniker} to reach {target} (others committing)")
        return target

    def catch_up(self, node: NodeLayout, others: list[NodeLayout]) -> None:
        target = self.tip(others)
        self.wait_height(node, target, CATCH_UP_TIMEOUT, f"{node.moniker} to catch up to {target}")


@pytest.fixture
def cluster(tmp_path: Path):
    directory = tmp_path / "net"
    nodes = generate_localnet(directory, 4, "edg-faults", base_port=free_base_port(60), consensus=FAST,
                              snapshot_interval=SNAPSHOT_INTERVAL, cometbft_version=VERSION)
    launcher = Launcher(directory)
    try:
        for node in nodes:
            ops.start_node(launcher, node, BINARY, gateway=False)
        ops.wait_agreement(nodes, 2, START_TIMEOUT, launcher=launcher)
        open_test_epoch(nodes[0].rpc_url, load_ed25519_pem(nodes[0].edgistry_home / "keys" / "admin.pem"))
        yield Cluster(directory, nodes, launcher)
    finally:
        stopped = ops.down(directory)  # every recorded pid: SIGTERM, then SIGKILL
        assert not any(o.startswith("still running") for o in stopped.values()), stopped


# ---- a steady load of registry transactions ----


def device_msg(seed: int) -> pb.RegisterDevice:
    """A RegisterDevice sealed under the test data key (epoch 1, opened by the fixture)."""
    cell = h3.str_to_int(h3.latlng_to_cell(40.0 + (seed % 1000) / 100, 2.0 + seed // 1000 / 100, RESOLUTION))
    return sealed_device_msg(os.urandom(16), cell, ("meter",), res=RESOLUTION, k=1)


@dataclass
class Load:
    """Worker threads' worth of RegisterDevice txs through broadcast_tx_commit, each
    worker signing with its own gateway key and sending to a healthy node; every tx
    the node acknowledged as committed (code 0) is recorded."""

    nodes: list[NodeLayout]
    keys: list[Ed25519PrivateKey]
    healthy: set[int] = field(default_factory=set)
    acked: list[bytes] = field(default_factory=list)
    failures: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self.healthy = set(range(len(self.nodes)))
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(SUBMIT_TIMEOUT + 5)
        assert not self._thread.is_alive(), "the load generator did not stop"

    def mark(self, index: int, healthy: bool) -> None:
        with self._lock:
            (self.healthy.add if healthy else self.healthy.discard)(index)

    def count(self) -> int:
        with self._lock:
            return len(self.acked)

    async def _main(self) -> None:
        await asyncio.gather(*(self._worker(w, key) for w, key in enumerate(self.keys)))

    async def _worker(self, w: int, key: Ed25519PrivateKey) -> None:
        clients = {i: ChainClient(n.rpc_url, timeout=SUBMIT_TIMEOUT) for i, n in enumerate(self.nodes)}
        seq = 0
        try:
            while not self._stop.is_set():
                with self._lock:
                    targets = sorted(self.healthy)
                seq += 1
                if not targets:
                    await asyncio.sleep(0.1)
                    continue
                msg = device_msg(seq * len(self.keys) + w)
                try:
                    await clients[targets[seq % len(targets)]].submit(key, msg)
                except ChainError:  # includes TxRejected: not acknowledged, so not counted
                    with self._lock:
                        self.failures += 1
                    await asyncio.sleep(0.2)
                    continue
                with self._lock:
                    self.acked.append(msg.pseudonym)
        finally:
            for client in clients.values():
                await client.close()


def _gateway_key(node: NodeLayout) -> Ed25519PrivateKey:
    return load_ed25519_pem(node.edgistry_home / "keys" / "gateway.pem")


async def _device_pseudonyms(url: str) -> set[bytes]:
    async with ChainClient(url) as chain:
        return {d.pseudonym for d in await chain.devices()}


async def _each_device_found(url: str, pseudonyms: list[bytes]) -> list[bytes]:
    """The pseudonyms a point query (/device) does not find on this node."""
    missing = []
    async with ChainClient(url) as chain:
        for p in pseudonyms:
            res = await chain.query("/device", pb.DeviceQuery(pseudonym=p).SerializeToString())
            if res.code != 0 or pb.DeviceRecord.FromString(res.value).pseudonym != p:
                missing.append(p)
    return missing


def test_four_validators_under_load_survive_kill_pause_and_app_crash(cluster: Cluster):
    """Under a steady tx load: kill -9 of a node, SIGSTOP/SIGCONT of a cometbft and kill -9
    of an ABCI app alone never stop the other three from committing; each victim catches up
    after it returns; at the end all four nodes agree at every height and every
    acknowledged transaction is on every node."""
    c, nodes = cluster, cluster.nodes
    load = Load(nodes, [_gateway_key(n) for n in nodes])
    load.start()
    try:
        wait_until(lambda: load.count() >= 5, 30, "the first acknowledged txs")

        # 1. kill -9 node3 (cometbft and app): the other three keep committing txs
        victim, rest = nodes[3], nodes[:3]
        load.mark(3, False)
        c.launcher.kill(ops.proc_name(victim, "cmt"))
        c.launcher.kill(ops.proc_name(victim, "app"))
        acked = load.count()
        c.advances(rest, 5)
        wait_until(lambda: load.count() > acked + 3, 30, "txs acknowledged while node3 is down")

        # ... restart it: it replays and block-syncs to the tip
        assert ops.start_node(c.launcher, victim, BINARY, gateway=False) == ["node3-app", "node3-cmt"]
        c.catch_up(victim, rest)
        load.mark(3, True)

        # 2. SIGSTOP node2's cometbft: the rest commit; SIGCONT: it catches up
        paused, rest = nodes[2], [nodes[0], nodes[1], nodes[3]]
        load.mark(2, False)
        assert c.launcher.send(ops.proc_name(paused, "cmt"), signal.SIGSTOP)
        acked = load.count()
        c.advances(rest, 5)
        wait_until(lambda: load.count() > acked + 3, 30, "txs acknowledged while node2 is paused")
        assert c.launcher.send(ops.proc_name(paused, "cmt"), signal.SIGCONT)
        c.catch_up(paused, rest)
        load.mark(2, True)

        # 3. kill -9 node1's ABCI app alone: its cometbft notices and shuts itself down. That
        # shutdown can stall on a loaded machine (seen: stuck after stopping its consensus
        # state), so what must hold is that it commits nothing more, and the restart below
        # reaps a stalled one (start_node stops a cometbft whose app is gone).
        orphan, rest = nodes[1], [nodes[0], nodes[2], nodes[3]]
        load.mark(1, False)
        c.launcher.kill(ops.proc_name(orphan, "app"))
        cmt_log = c.launcher.log_path(ops.proc_name(orphan, "cmt"))
        wait_until(lambda: "Did the application crash?" in cmt_log.read_text(errors="replace"), 30,
                   "node1's cometbft to notice its app is gone")
        exited = c.launcher.wait_exit(ops.proc_name(orphan, "cmt"), 30)
        stalled_at = None if exited else c.height(orphan)
        acked = load.count()
        c.advances(rest, 5)
        assert exited or c.height(orphan) in (None, stalled_at), "node1 committed without its app"
        wait_until(lambda: load.count() > acked + 3, 30, "txs acknowledged while node1 is down")
        # ... restart both: it recovers and catches up
        assert ops.start_node(c.launcher, orphan, BINARY, gateway=False) == ["node1-app", "node1-cmt"]
        c.catch_up(orphan, rest)
        load.mark(1, True)
        c.advances(nodes, 3)
    finally:
        load.stop()

    # every node at every height: identical headers, and each app's own record agrees
    agreed = ops.wait_agreement(nodes, c.tip(nodes), 60)
    top = agreed.height
    headers = [header_app_hashes(n.rpc_url, 1, top) for n in nodes]
    assert all(h == headers[0] for h in headers[1:]), "nodes disagree on some header app hash"
    views = [app_hashes(n.rpc_url, 1, top - 1) for n in nodes]
    assert all(v == views[0] for v in views[1:]), "apps disagree on some app hash"
    assert all(views[0][h] == headers[0][h + 1] for h in views[0])

    # no acknowledged transaction lost, on any node
    print(f"{len(load.acked)} txs acknowledged, {load.failures} not, {top} heights")
    assert len(load.acked) >= 20
    for node in nodes:
        present = asyncio.run(_device_pseudonyms(node.rpc_url))
        lost = [p.hex() for p in load.acked if p not in present]
        assert not lost, f"{node.moniker} lost {len(lost)} acknowledged devices: {lost[:3]}"
        assert not asyncio.run(_each_device_found(node.rpc_url, load.acked))


def test_node_joins_by_state_sync_and_is_promoted_then_demoted(cluster: Cluster):
    """A 5th node restores a registry snapshot by state sync (not from genesis), catches up
    and agrees; an admin SetValidator makes it a validator (its power shows in /validators
    and it signs blocks), and SetValidator with power 0 removes it again."""
    c, nodes = cluster, cluster.nodes
    keys = [_gateway_key(n) for n in nodes]

    async def some_devices(count: int) -> list[bytes]:
        done = []
        async with ChainClient(nodes[0].rpc_url) as chain:
            for i in range(count):
                msg = device_msg(10_000 + i)
                await chain.submit(keys[i % len(keys)], msg)
                done.append(msg.pseudonym)
        return done

    before = asyncio.run(some_devices(6))
    c.wait_height(nodes[0], SNAPSHOT_INTERVAL + 2, START_TIMEOUT)

    newcomer = add_node(c.dir, BINARY, timeout=120, gateway=False)
    assert newcomer.moniker == "node4"
    log = c.launcher.log_path("node4-app").read_text()
    assert "restored snapshot at height" in log, "node4 did not restore a snapshot"
    status = rpc(newcomer.rpc_url, "status")["sync_info"]
    assert int(status["earliest_block_height"]) > 1, "node4 has blocks from genesis: not state-synced"
    assert asyncio.run(_device_pseudonyms(newcomer.rpc_url)) >= set(before)
    everyone = [*nodes, newcomer]
    agreed = ops.wait_agreement(everyone, c.tip(everyone) + 1, 60)
    assert agreed.app_hash

    # promotion: SetValidator(power 10) by the admin; CometBFT applies it at H+2
    effective = set_power(c.dir, "node4", 10)
    c.wait_height(nodes[0], effective, 30)
    vals = {v["address"]: int(v["voting_power"])
            for v in rpc(nodes[0].rpc_url, "validators", height=str(effective))["validators"]}
    before_effective = rpc(nodes[0].rpc_url, "validators", height=str(effective - 1))["validators"]
    assert newcomer.validator_address not in {v["address"] for v in before_effective}
    assert vals.get(newcomer.validator_address) == 10 and len(vals) == 5
    assert int(rpc(newcomer.rpc_url, "status")["validator_info"]["voting_power"]) == 10
    after = c.advances(everyone, 3)

    def signed_by_newcomer() -> bool:
        commit = rpc(nodes[0].rpc_url, "commit", height=str(after))["signed_header"]["commit"]
        return any(s.get("validator_address") == newcomer.validator_address for s in commit["signatures"])

    assert after > effective
    wait_until(signed_by_newcomer, 10, "node4's signature in a commit")

    # removal: SetValidator(power 0)
    removed = set_power(c.dir, "node4", 0)
    c.wait_height(nodes[0], removed, 30)
    vals = {v["address"] for v in rpc(nodes[0].rpc_url, "validators", height=str(removed))["validators"]}
    assert newcomer.validator_address not in vals and len(vals) == 4
    c.advances(everyone, 3)
    final = ops.wait_agreement(everyone, c.tip(everyone), 60)
    assert final.height > agreed.height
