"""Cluster benchmark: committed txs/s and commit latency on a 4-validator local
CometBFT cluster for the registry, beside CometBFT's built-in kvstore app and two
ceilings, all on the same cluster configuration, in the same run.

Run: EDGISTRY_COMETBFT=/path/to/cometbft python benchmarks/cluster.py [--duration 20] [--rounds 1]
     [EDGISTRY_ABCI_CLI=/path/to/abci-cli for the Go socket kvstore row]

Rows (each its own fresh cluster from one generated localnet shape: same
validators, port scheme, consensus timeouts, mempool and p2p settings):

* kvstore   -- ``cometbft start --proxy_app kvstore``: CometBFT's in-process
               kvstore (no socket), the reference of the target ratio;
* registry  -- ``edgistry node`` over the ABCI socket, every tx an Ed25519-signed
               RegisterDevice (CheckTx verifies it, FinalizeBlock applies it);
* null      -- a Python ABCI app on Edgistry's own socket server
               (abci_app/server.py) that accepts every tx and does no work: the
               ceiling of any Python socket app on this machine;
* kvstore-go-socket -- CometBFT's Go kvstore behind the same socket protocol
               (``abci-cli kvstore``, which persists to goleveldb), when
               EDGISTRY_ABCI_CLI names an abci-cli binary: the cost of the
               socket itself, without Python.

One load generator for all: S submitters, each sending pre-built txs with
``broadcast_tx_sync`` one after another, with at most W of its txs sent but not
yet committed (S x W txs in flight at most: 256 x 12 = 3072 by default; when
a row's blocks hold all of them, "max txs/blk" = 3072, that row is capped by
the offered load, not by its capacity); a poller reads every new block from
node 0 and marks its txs committed. Latency is from the broadcast call to the poller seeing the block
(poll period 20 ms). Throughput counts txs in the blocks committed during the
measured window, divided by the window. Registry txs are pre-signed by S
gateway keys that are in genesis (one key per submitter, nonces 1, 2, 3, ... in
order), so signing is not measured; the other rows get ``key=value`` txs of
the same size. With ``--rounds N`` every row runs N times, interleaved, and
the table shows medians. ``--p2p-rate BYTES`` lifts CometBFT's per-connection
p2p send and receive limit (default 5 MB/s) on every CometBFT row alike; etcd has
no such limiter. ``--p2p-packet BYTES`` sets ``p2p.max_packet_msg_payload_size``
(default 1024) the same way. CPU seconds by role (cometbft, app, load generator)
are read from /proc over the measured window. Ends with one ``RESULT {json}``
line.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import aiohttp
import h3
import tomli_w
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from batch_load import LEAD_OPS, UNIT, UNITS_PER_BATCH, batch_load, mix_statement
from bench_util import open_bench_epoch, sealed_device, wait_for_port
from edgistry.config import load_ed25519_pem
from edgistry.abci_app import txs as registry_txs
from edgistry.abci_app.genesis import GatewaySpec
from edgistry.cluster import ops
from edgistry.cluster.cometbft import HOW_TO_GET, cometbft_version, find_cometbft
from edgistry.cluster.cometbft_files import CONFIG_VERSION, ConsensusSettings, config_toml, default_consensus_params
from edgistry.cluster.launcher import Launcher
from edgistry.cluster.localnet import generate_localnet
from edgistry.proto import abci_pb2 as abci
from edgistry.proto import registry_pb2 as pb

CHAIN = "edg-bench"
POLL_S = 0.02
LOST_AFTER_S = 20.0  # a tx not committed this long after broadcast counts as lost (slot freed)
ABCI_CLI_ENV = "EDGISTRY_ABCI_CLI"
APPS = ("kvstore", "registry", "registry-batch", "etcd", "null", "kvstore-go-socket")
DESCRIPTION = {
    "kvstore": "CometBFT's kvstore, in process (--proxy_app kvstore)",
    "registry": "edgistry node over the ABCI socket (Ed25519-signed RegisterDevice txs)",
    "registry-batch": "edgistry node, batch txs of registry operations (one signature per batch; mix below)",
    "etcd": "3-member etcd cluster (Debian etcd-server, default fsync durability), concurrent Put clients",
    "null": "Python null app on abci_app/server.py: accepts every tx, no work (Python socket ceiling)",
    "kvstore-go-socket": "CometBFT's Go kvstore over the ABCI socket (abci-cli kvstore, persists to goleveldb)",
}


@dataclass
class RunResult:
    app: str
    duration_s: float
    committed: int
    tx_per_s: float
    p50_ms: float
    p99_ms: float
    blocks: int
    max_block_txs: int
    rejected: int
    lost: int
    exhausted: bool
    tx_bytes: int
    sync_rtt_p50_ms: float = 0.0  # broadcast_tx_sync round trip (the node's CheckTx included)
    cpu_s: dict[str, float] = field(default_factory=dict)  # CPU seconds used in the run, by role
    ops_committed: int = 0  # registry operations applied (code 0) or etcd Puts acknowledged; = committed otherwise
    ops_failed: int = 0  # batch operations committed with a non-zero code
    ops_per_s: float = 0.0
    latencies: list[float] = field(default_factory=list, repr=False)


# ---- transactions ----


def registry_load(keys: list[Ed25519PrivateKey], per_submitter: int) -> list[list[bytes]]:
    out = []
    for k, key in enumerate(keys):
        batch = []
        for n in range(1, per_submitter + 1):
            cell = h3.str_to_int(h3.latlng_to_cell(30 + (n % 3000) / 100, k + (n // 3000) / 100, 7))
            msg = sealed_device(pb.RegisterDevice, hashlib.sha256(f"{k}/{n}".encode()).digest()[:16], pb.DeviceFields(
                services=[pb.ServiceDescriptor(type="meter", methods=[pb.ServiceMethod(name="read")])],
                cell=cell, policy=pb.PrivacyPolicy(resolution=7, k=1), duty_cycle_s=60))
            batch.append(registry_txs.sign_tx(key, CHAIN, n, msg))
        out.append(batch)
    return out


def kvstore_load(submitters: int, per_submitter: int, size: int) -> list[list[bytes]]:
    out = []
    for k in range(submitters):
        batch = []
        for n in range(per_submitter):
            key = f"k{k}-{n}=".encode()
            batch.append(key + os.urandom(max(1, (size - len(key)) // 2)).hex().encode()[: max(1, size - len(key))])
        out.append(batch)
    return out


def tx_key(tx: bytes) -> str:
    return hashlib.sha256(tx).hexdigest().upper()


# ---- the load generator ----


class LoadRun:
    """S closed-loop submitters (window W each) and one block poller."""

    def __init__(self, urls: list[str], poll_url: str, loads: list[list[bytes]], window: int,
                 duration: float, warmup: float, cpu_probe=dict, count_ops: bool = False) -> None:
        self.urls, self.poll_url, self.loads = urls, poll_url, loads
        self.window, self.duration, self.warmup = window, duration, warmup
        self.sent: dict[str, tuple[float, int]] = {}
        self.slots = [asyncio.Semaphore(window) for _ in loads]
        self.latencies: list[float] = []
        self.rtts: list[float] = []  # broadcast_tx_sync round trips (CheckTx included)
        self.committed = self.rejected = self.lost = self.blocks = self.max_block = 0
        self.count_ops = count_ops  # batch txs: read block_results and count operations by their codes
        self.ops_ok = self.ops_failed = 0
        self.exhausted = False
        self.cpu_probe = cpu_probe  # called at the start and at the end of the measured window
        self.cpu_start: dict[str, float] | None = None
        self.cpu_used: dict[str, float] = {}
        self.t_start = self.t_measure = self.t_end = 0.0

    async def _rpc(self, session: aiohttp.ClientSession, url: str, method: str, **params) -> dict:
        body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
        async with session.post(url + "/", json=body) as resp:
            msg = await resp.json(content_type=None)
        if "error" in msg:
            raise RuntimeError(f"{method}: {msg['error']}")
        return msg["result"]

    async def _block_results(self, session: aiohttp.ClientSession, height: int) -> dict:
        """block_results of ``height``: CometBFT stores the block before the app's results, so a
        height that `status` already reports may need a moment more."""
        for _ in range(250):
            try:
                return await self._rpc(session, self.poll_url, "block_results", height=str(height))
            except RuntimeError as exc:
                if "could not find results" not in str(exc):
                    raise
                await asyncio.sleep(POLL_S)
        raise RuntimeError(f"no block_results for height {height}")

    async def _submitter(self, session: aiohttp.ClientSession, k: int) -> None:
        url = self.urls[k % len(self.urls)]
        for tx in self.loads[k]:
            await self.slots[k].acquire()
            now = time.monotonic()
            if now >= self.t_end:
                return
            try:
                res = await self._rpc(session, url, "broadcast_tx_sync", tx=base64.b64encode(tx).decode())
            except (aiohttp.ClientError, asyncio.TimeoutError, RuntimeError):
                res = {"code": -1}
            if now >= self.t_measure:
                self.rtts.append(time.monotonic() - now)
            if res.get("code", 0) != 0:
                self.rejected += 1
                self.slots[k].release()
                continue
            self.sent[tx_key(tx)] = (now, k)
        self.exhausted = True

    async def _poller(self, session: aiohttp.ClientSession) -> None:
        last = int((await self._rpc(session, self.poll_url, "status"))["sync_info"]["latest_block_height"])
        while time.monotonic() < self.t_end:
            await asyncio.sleep(POLL_S)
            if self.cpu_start is None and time.monotonic() >= self.t_measure:
                self.cpu_start = self.cpu_probe()
            top = int((await self._rpc(session, self.poll_url, "status"))["sync_info"]["latest_block_height"])
            for h in range(last + 1, top + 1):
                block = (await self._rpc(session, self.poll_url, "block", height=str(h)))["block"]
                seen = time.monotonic()
                txs = block["data"]["txs"] or []
                measured = seen >= self.t_measure
                if measured:
                    self.blocks += 1
                    self.max_block = max(self.max_block, len(txs))
                counted = []
                for index, b64 in enumerate(txs):
                    entry = self.sent.pop(tx_key(base64.b64decode(b64)), None)
                    if entry is None:
                        continue
                    sent_at, k = entry
                    self.slots[k].release()
                    if measured and seen <= self.t_end:
                        self.committed += 1
                        self.latencies.append(seen - sent_at)
                        counted.append(index)
                if self.count_ops and counted:
                    results = await self._block_results(session, h)
                    for index in counted:
                        res = (results.get("txs_results") or [])[index]
                        if int(res.get("code", 0)):
                            continue
                        codes = pb.BatchResult.FromString(base64.b64decode(res.get("data") or "")).codes
                        # the batch's leading catalog slot write is the gateway's upkeep, not a registry
                        # operation of the mix: not counted, but a failed one counts as a failure
                        put, codes = codes[:LEAD_OPS], codes[LEAD_OPS:]
                        failed = sum(1 for c in codes if c)
                        self.ops_ok += len(codes) - failed
                        self.ops_failed += failed + sum(1 for c in put if c)
            last = top
            self._reap()
        end = self.cpu_probe()
        self.cpu_used = {k: round(v - (self.cpu_start or {}).get(k, 0.0), 2) for k, v in end.items()}

    def _reap(self) -> None:
        old = time.monotonic() - LOST_AFTER_S
        for key, (sent_at, k) in list(self.sent.items()):
            if sent_at < old:
                del self.sent[key]
                self.lost += 1
                self.slots[k].release()

    async def run(self) -> None:
        self.t_start = time.monotonic()
        self.t_measure = self.t_start + self.warmup
        self.t_end = self.t_measure + self.duration
        conn = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=30)) as session:
            poller = asyncio.create_task(self._poller(session))
            subs = [asyncio.create_task(self._submitter(session, k)) for k in range(len(self.loads))]
            await poller
            for k, task in enumerate(subs):
                for _ in range(self.window):  # unblock submitters waiting on a slot
                    self.slots[k].release()
            await asyncio.gather(*subs)


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


# ---- one cluster run ----


def _cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def cpu_by_role(launcher: Launcher) -> dict[str, float]:
    """CPU seconds so far of the cluster's processes (cometbft, app) and of this load generator."""
    out = {"cometbft": 0.0, "app": 0.0, "loadgen": _cpu_seconds(os.getpid())}
    for rec in launcher.records():
        out["cometbft" if rec.name.endswith("-cmt") else "app"] += _cpu_seconds(rec.pid)
    return out


def _start_socket_app(launcher: Launcher, node, argv: list[str], binary: str) -> None:
    """An ABCI socket app for ``node``, then its cometbft once the app listens."""
    app = ops.proc_name(node, "app")
    launcher.start(app, argv)
    wait_for_port(node.ports.abci, timeout=30)
    launcher.start(ops.proc_name(node, "cmt"), [binary, "start", "--home", str(node.cometbft_home)])


def set_p2p(config_path: Path, rate: int, packet: int) -> None:
    """Raise one node's p2p send_rate and recv_rate (bytes/s per peer connection) and its
    packet payload size, where given. CometBFT's default rate, 5 MB/s, is set for the
    Internet; in a LAN or one machine it, not CPU, bounds how fast megabyte blocks and the
    mempool's gossip of large txs move. The packet size (default 1 KiB) is here to be
    measured (16 KiB gained nothing: docs/STATUS.md); every node of a network needs the same."""
    config = tomllib.loads(config_path.read_text())
    if rate:
        config["p2p"]["send_rate"] = config["p2p"]["recv_rate"] = rate
    if packet:
        config["p2p"]["max_packet_msg_payload_size"] = packet
    config_path.write_text(tomli_w.dumps(config))


def run_cluster(kind: str, binary: str, directory: Path, args, consensus: ConsensusSettings,
                loads: list[list[bytes]], extra_gateways: list[GatewaySpec], abci_cli: str | None) -> RunResult:
    nodes = generate_localnet(directory, args.nodes, CHAIN, base_port=args.base_port, consensus=consensus,
                              log_level="error", extra_gateways=extra_gateways, cometbft_version=args.cometbft_version)
    if args.p2p_rate or args.p2p_packet:
        for node in nodes:
            set_p2p(node.cometbft_home / "config" / "config.toml", args.p2p_rate, args.p2p_packet)
    launcher = Launcher(directory)
    try:
        for node in nodes:
            if kind in ("registry", "registry-batch"):
                ops.start_node(launcher, node, binary, gateway=False)
            elif kind == "kvstore":
                launcher.start(ops.proc_name(node, "cmt"),
                               [binary, "start", "--home", str(node.cometbft_home), "--proxy_app", "kvstore"])
            elif kind == "null":
                _start_socket_app(launcher, node, [sys.executable, str(Path(__file__).resolve()), "--serve-null",
                                                   node.proxy_app], binary)
            elif kind == "kvstore-go-socket":
                _start_socket_app(launcher, node, [abci_cli, "kvstore", "--address", node.proxy_app, "--persist",
                                                   str(node.root / "abci-cli-kvstore"), "--log_level", "error"],
                                  binary)
        ops.wait_agreement(nodes, 2, 120, launcher=launcher)
        if kind in ("registry", "registry-batch"):  # device txs are sealed under data key epoch 1 (no gateway)
            open_bench_epoch(nodes[0].rpc_url, load_ed25519_pem(nodes[0].edgistry_home / "keys" / "admin.pem"))
        window = args.batch_window if kind == "registry-batch" else args.window
        load = LoadRun([n.rpc_url for n in nodes], nodes[0].rpc_url, loads, window, args.duration, args.warmup,
                       cpu_probe=lambda: cpu_by_role(launcher), count_ops=kind == "registry-batch")
        asyncio.run(load.run())
        cpu = load.cpu_used
    finally:
        ops.down(directory)
    tx_bytes = round(statistics.mean(len(tx) for tx in loads[0][:100]))
    ops_ok = load.ops_ok if kind == "registry-batch" else load.committed
    return RunResult(kind, args.duration, load.committed, load.committed / args.duration,
                     percentile(load.latencies, 50) * 1000, percentile(load.latencies, 99) * 1000,
                     load.blocks, load.max_block, load.rejected, load.lost, load.exhausted, tx_bytes,
                     percentile(load.rtts, 50) * 1000, cpu, latencies=load.latencies, ops_committed=ops_ok,
                     ops_failed=load.ops_failed, ops_per_s=ops_ok / args.duration)


# ---- etcd: a 3-member cluster and concurrent Put clients, in loader processes ----


def run_etcd(directory: Path, args, value_size: int) -> RunResult:
    """A fresh 3-member etcd cluster; ``--etcd-procs`` loader processes of ``--etcd-clients``
    concurrent writers each; CPU of members and loaders over the measured window."""
    from etcd_kv import EtcdCluster

    directory.mkdir(parents=True, exist_ok=True)
    cluster = EtcdCluster(directory, args.etcd_port, members=3)
    loaders: list = []
    try:
        cluster.start()
        cluster.wait_ready()
        spec = {"endpoints": cluster.endpoints, "clients": args.etcd_clients, "value_size": value_size,
                "warmup": args.warmup, "duration": args.duration}
        import subprocess

        for i in range(args.etcd_procs):
            loaders.append(subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--etcd-load",
                                             json.dumps({**spec, "tag": f"p{i}"})], stdout=subprocess.PIPE))
        time.sleep(args.warmup)
        members0 = sum(_cpu_seconds(pid) for pid in cluster.pids)
        time.sleep(args.duration)
        members1 = sum(_cpu_seconds(pid) for pid in cluster.pids)
        outs = [json.loads(p.communicate(timeout=120)[0].decode().strip().splitlines()[-1]) for p in loaders]
    finally:
        for p in loaders:
            if p.poll() is None:
                p.kill()
                p.wait(5)
        cluster.stop()
    lat = [x for o in outs for x in o["lat"]]
    writes = sum(o["writes"] for o in outs)
    cpu = {"etcd": round(members1 - members0, 2), "loadgen": round(sum(o["cpu_s"] for o in outs), 2)}
    return RunResult("etcd", args.duration, writes, writes / args.duration, percentile(lat, 50) * 1000,
                     percentile(lat, 99) * 1000, 0, 0, sum(o["errors"] for o in outs), 0, False, value_size,
                     0.0, cpu, ops_committed=writes, ops_per_s=writes / args.duration)


def etcd_load_main(spec_json: str) -> int:
    from etcd_kv import put_load

    spec = json.loads(spec_json)
    out = asyncio.run(put_load(spec["endpoints"], spec["clients"], spec["value_size"], spec["warmup"],
                               spec["duration"], spec["tag"]))
    print(json.dumps(out))
    return 0


# ---- the null app: a Python socket app that does nothing ----


class NullApp:
    """Accepts every tx and keeps no state beyond its height: the least any ABCI app
    can do per request, served by Edgistry's own socket server. Not restartable
    (Info forgets nothing only while the process lives), which a benchmark does not need."""

    APP_HASH = b"\x00" * 32

    def __init__(self) -> None:
        self.height = 0

    def info(self, req: abci.RequestInfo) -> abci.ResponseInfo:
        return abci.ResponseInfo(data="null", last_block_height=self.height,
                                 last_block_app_hash=self.APP_HASH if self.height else b"")

    def init_chain(self, req: abci.RequestInitChain) -> abci.ResponseInitChain:
        return abci.ResponseInitChain()

    def check_tx(self, req: abci.RequestCheckTx) -> abci.ResponseCheckTx:
        return abci.ResponseCheckTx()

    def prepare_proposal(self, req: abci.RequestPrepareProposal) -> abci.ResponsePrepareProposal:
        out, total = [], 0
        for tx in req.txs:
            total += len(tx)
            if total > req.max_tx_bytes:
                break
            out.append(tx)
        return abci.ResponsePrepareProposal(txs=out)

    def process_proposal(self, req: abci.RequestProcessProposal) -> abci.ResponseProcessProposal:
        return abci.ResponseProcessProposal(status=abci.ResponseProcessProposal.ACCEPT)

    def verify_vote_extension(self, req) -> abci.ResponseVerifyVoteExtension:
        return abci.ResponseVerifyVoteExtension(status=abci.ResponseVerifyVoteExtension.ACCEPT)

    def finalize_block(self, req: abci.RequestFinalizeBlock) -> abci.ResponseFinalizeBlock:
        resp = abci.ResponseFinalizeBlock(app_hash=self.APP_HASH)
        add = resp.tx_results.add
        for _ in range(len(req.txs)):
            add()
        return resp

    def commit(self, req: abci.RequestCommit) -> abci.ResponseCommit:
        self.height += 1
        return abci.ResponseCommit()

    def __getattr__(self, name: str):
        """Every other method: an empty response of the method's type."""
        response = getattr(abci, "Response" + "".join(w.title() for w in name.split("_")), None)
        if response is None:
            raise AttributeError(name)
        return lambda req: response()


def serve_null(address: str) -> int:
    """Run the null app on ``address`` until SIGTERM or SIGINT."""
    from edgistry.clikit import wait_for_signal
    from edgistry.abci_app.server import AbciServer

    async def main() -> None:
        server = AbciServer(NullApp())
        await server.start(address)
        try:
            await wait_for_signal()
        finally:
            await server.close()

    asyncio.run(main())
    return 0


# ---- the whole run ----


def settings_statement(consensus: ConsensusSettings, p2p_rate: int = 0,
                       version: str = CONFIG_VERSION, p2p_packet: int = 0) -> dict[str, dict]:
    """The CometBFT settings every row shares that bear on throughput (from the generated config)."""
    cfg = config_toml(moniker="x", proxy_app="x", rpc_laddr="x", p2p_laddr="x", consensus=consensus, version=version)
    if p2p_rate:
        cfg["p2p"]["send_rate"] = cfg["p2p"]["recv_rate"] = p2p_rate
    if p2p_packet:
        cfg["p2p"]["max_packet_msg_payload_size"] = p2p_packet
    pick = {
        "consensus": ("timeout_propose", "timeout_prevote", "timeout_precommit", "timeout_commit",
                      "create_empty_blocks"),
        "mempool": ("type", "recheck", "broadcast", "size", "cache_size", "max_tx_bytes"),
        "p2p": ("send_rate", "recv_rate", "flush_throttle_timeout", "max_packet_msg_payload_size"),
        "tx_index": ("indexer",),
        "storage": ("discard_abci_responses",),
    }
    out = {section: {k: cfg[section][k] for k in names} for section, names in pick.items()}
    out["genesis"] = {"block.max_bytes": int(default_consensus_params(version)["block"]["max_bytes"]),
                      "validators": 4}
    return out


def _spread(values: list[float]) -> tuple[float, float, float]:
    return (min(values), statistics.median(values), max(values)) if values else (0.0, 0.0, 0.0)


def median_result(runs: list[RunResult]) -> RunResult:
    """The run with the median throughput (its own latencies and CPU figures)."""
    ordered = sorted(runs, key=lambda r: r.tx_per_s)
    return ordered[(len(ordered) - 1) // 2]


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--serve-null":  # one node's null app (started by this benchmark)
        return serve_null(sys.argv[2])
    if len(sys.argv) == 3 and sys.argv[1] == "--etcd-load":  # one etcd loader process (started by this benchmark)
        return etcd_load_main(sys.argv[2])
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds per app")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of load before measuring")
    # 256 x 12 = 3072 txs in flight, as the earlier 64 x 48: the same cap on offered load, but a
    # submitter sends one tx at a time (nonce order), so 64 of them were capped at 64 / (broadcast_tx_sync
    # round trip), about 1000 tx/s once CheckTx answers took 60 ms under load
    parser.add_argument("--submitters", type=int, default=256)
    parser.add_argument("--window", type=int, default=12,
                        help="max uncommitted txs per submitter (kvstore may still be capped by it: see max txs/blk)")
    parser.add_argument("--per-submitter", type=int, default=1000, help="pre-built txs per submitter")
    parser.add_argument("--timeout-commit", default="500ms")
    parser.add_argument("--base-port", type=int, default=28000)
    parser.add_argument("--apps", default=",".join(APPS), help=f"rows to run, in order (of {', '.join(APPS)})")
    parser.add_argument("--only", choices=APPS, default=None, help="run one row (same as --apps NAME)")
    parser.add_argument("--rounds", type=int, default=1, help="run every row this many times, interleaved; medians")
    parser.add_argument("--batch-submitters", type=int, default=16, help="registry-batch: gateway keys sending batches")
    parser.add_argument("--batch-window", type=int, default=4, help="registry-batch: batches in flight per submitter")
    parser.add_argument("--batches-per-submitter", type=int, default=150)
    parser.add_argument("--p2p-rate", type=int, default=0,
                        help="p2p send_rate and recv_rate in bytes/s for every CometBFT row (0: CometBFT's default)")
    parser.add_argument("--p2p-packet", type=int, default=0,
                        help="p2p max_packet_msg_payload_size for every CometBFT row (0: CometBFT's default)")
    parser.add_argument("--etcd-port", type=int, default=22000, help="etcd: first of 6 loopback ports")
    parser.add_argument("--etcd-procs", type=int, default=2, help="etcd: loader processes")
    parser.add_argument("--etcd-clients", type=int, default=128, help="etcd: concurrent writers per loader process")
    args = parser.parse_args()

    binary = find_cometbft()
    if binary is None:
        print(HOW_TO_GET, file=sys.stderr)
        return 1
    # config.toml and genesis take the shapes of the release that runs them (v0.38 or v1.x)
    args.cometbft_version = cometbft_version(binary)
    apps = [args.only] if args.only else [a.strip() for a in args.apps.split(",") if a.strip()]
    unknown = [a for a in apps if a not in APPS]
    if unknown:
        parser.error(f"unknown app(s) {', '.join(unknown)}; choose from {', '.join(APPS)}")
    skipped: dict[str, str] = {}
    abci_cli = os.environ.get(ABCI_CLI_ENV)
    if "kvstore-go-socket" in apps and not (abci_cli and Path(abci_cli).is_file() and os.access(abci_cli, os.X_OK)):
        skipped["kvstore-go-socket"] = (f"{ABCI_CLI_ENV} does not name an abci-cli binary (build it from the CometBFT "
                                        "source: go build ./abci/cmd/abci-cli)")
        apps.remove("kvstore-go-socket")

    consensus = ConsensusSettings(timeout_commit=args.timeout_commit)
    keys = [Ed25519PrivateKey.generate() for _ in range(args.submitters)]
    batch_keys = [Ed25519PrivateKey.generate() for _ in range(args.batch_submitters)]
    extra = [GatewaySpec(k.public_key().public_bytes_raw(), f"127.0.0.1:{40000 + i}", f"load{i}")
             for i, k in enumerate(keys + batch_keys)]
    t0 = time.perf_counter()
    registry_txs_ = registry_load(keys, args.per_submitter) if "registry" in apps else []
    if registry_txs_:
        print(f"pre-signed {args.submitters * args.per_submitter} registry txs in {time.perf_counter() - t0:.1f} s",
              file=sys.stderr)
    size = len(registry_txs_[0][0]) if registry_txs_ else len(registry_load(keys[:1], 1)[0][0])
    kv_txs = kvstore_load(args.submitters, args.per_submitter, size)
    batch_txs = []
    if "registry-batch" in apps:
        t0 = time.perf_counter()
        batch_txs = batch_load(batch_keys, args.batches_per_submitter, CHAIN)
        print(f"pre-signed {args.batch_submitters * args.batches_per_submitter} batch txs "
              f"({UNITS_PER_BATCH * UNIT} ops each) in {time.perf_counter() - t0:.1f} s", file=sys.stderr)

    runs: dict[str, list[RunResult]] = {a: [] for a in apps}
    with tempfile.TemporaryDirectory(prefix="edg-bench-") as tmp:
        for rnd in range(args.rounds):
            for kind in apps:
                label = f" (round {rnd + 1}/{args.rounds})" if args.rounds > 1 else ""
                print(f"running {kind} for {args.warmup:.0f}+{args.duration:.0f} s{label} ...", file=sys.stderr)
                if kind == "etcd":
                    runs[kind].append(run_etcd(Path(tmp) / f"etcd-{rnd}", args, size))
                    continue
                loads = {"registry": registry_txs_, "registry-batch": batch_txs}.get(kind, kv_txs)
                runs[kind].append(run_cluster(kind, binary, Path(tmp) / f"{kind}-{rnd}", args, consensus, loads,
                                              extra, abci_cli))
    results = [median_result(runs[a]) for a in apps]
    in_flight = args.submitters * args.window
    batch_in_flight = args.batch_submitters * args.batch_window
    by = {r.app: r for r in results}
    base = by.get("kvstore")
    ratio = {r.app: r.tx_per_s / base.tx_per_s for r in results if base is not None and base.tx_per_s}

    settings = settings_statement(consensus, args.p2p_rate, args.cometbft_version, args.p2p_packet)
    print(f"\n{args.nodes} validators on 127.0.0.1, CometBFT {binary}; {args.submitters} submitters x window "
          f"{args.window} (broadcast_tx_sync + block polling); {args.duration:.0f} s measured after "
          f"{args.warmup:.0f} s warm-up" + (f"; medians of {args.rounds} interleaved rounds" if args.rounds > 1 else ""))
    print("every row runs the same generated CometBFT config (defaults of `cometbft init` "
          f"v{args.cometbft_version} except ports, peers, timeouts):")
    for section, values in settings.items():
        print(f"  [{section}] " + ", ".join(f"{k}={v}" for k, v in values.items()))
    for a in APPS:
        if a in by or a in skipped:
            print(f"  {a:<18} {DESCRIPTION[a]}" + (f"  -- SKIPPED: {skipped[a]}" if a in skipped else ""))
    print(f"{'app':<18} {'tx bytes':>8} {'committed':>10} {'tx/s':>8} {'vs kvstore':>10} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'blocks':>6} {'max txs/blk':>11} {'rejected':>8} {'lost':>5} {'sync RTT ms':>11}")
    for r in results:
        rel = f"{ratio[r.app]:.2f}x" if r.app in ratio else "-"
        print(f"{r.app:<18} {r.tx_bytes:>8} {r.committed:>10} {r.tx_per_s:>8.1f} {rel:>10} {r.p50_ms:>7.0f} "
              f"{r.p99_ms:>7.0f} {r.blocks:>6} {r.max_block_txs:>11} {r.rejected:>8} {r.lost:>5} "
              f"{r.sync_rtt_p50_ms:>11.1f}" + ("  (ran out of pre-built txs)" if r.exhausted else "")
              + ("  (load-capped: a block held every tx in flight)"
                 if r.app != "etcd" and r.max_block_txs >= (batch_in_flight if r.app == "registry-batch" else in_flight)
                 else ""))
    if args.rounds > 1:
        for a in apps:
            print(f"  {a:<18} tx/s by round: " + ", ".join(f"{r.tx_per_s:.0f}" for r in runs[a]))
    print(f"CPU seconds used in the measured window ({os.cpu_count()} CPUs = {os.cpu_count() * args.duration:.0f} "
          f"CPU-seconds available), per committed tx:")
    for r in results:
        total = sum(r.cpu_s.values())
        print(f"  {r.app:<18} " + "  ".join(f"{role} {sec:.1f} s ({1e3 * sec / max(r.committed, 1):.2f} ms/tx)"
                                            for role, sec in r.cpu_s.items()) + f"  total {total:.1f} s")
    if "registry" in ratio:
        print(f"registry / kvstore = {ratio['registry']:.2f} (target >= 0.8)")
    print("\ncommitted writes/s (registry-batch: registry operations applied with code 0; etcd: Puts acknowledged; "
          "kvstore and registry: txs), min/median/max over rounds, and the load generator's CPU per write:")
    if "registry-batch" in apps:
        print(f"  registry-batch: {args.batch_submitters} gateway keys x {args.batch_window} batches in flight, "
              + mix_statement())
    if "etcd" in apps:
        print(f"  etcd: {args.etcd_procs} loader processes x {args.etcd_clients} concurrent Put clients, values of "
              f"{size} bytes, 3 members on this machine")
    spread = {a: _spread([r.ops_per_s for r in runs[a]]) for a in apps}
    for a in apps:
        lo, mid, hi = spread[a]
        r = by[a]
        print(f"  {a:<18} {lo:>8.0f} / {mid:>8.0f} / {hi:>8.0f} writes/s   loadgen CPU "
              f"{r.cpu_s.get('loadgen', 0.0):.1f} s ({1e3 * r.cpu_s.get('loadgen', 0.0) / max(r.ops_committed, 1):.3f}"
              f" ms/write)" + (f"   ops failed {r.ops_failed}" if a == "registry-batch" else ""))
    goals = {}
    if "registry-batch" in apps:
        for other in ("etcd", "kvstore"):
            if other in apps and spread[other][1]:
                goals[other] = round(spread["registry-batch"][1] / spread[other][1], 3)
                print(f"registry-batch ops/s / {other} writes/s = {goals[other]:.2f} (goal >= 1.0: "
                      f"{'met' if goals[other] >= 1.0 else 'missed'})")
    result = {
        "nodes": args.nodes, "submitters": args.submitters, "window": args.window, "duration_s": args.duration,
        "rounds": args.rounds, "in_flight": in_flight, "settings": settings,
        "load_capped": [r.app for r in results if r.max_block_txs >= in_flight], "consensus": asdict(consensus),
        "ratio": round(ratio["registry"], 3) if "registry" in ratio else None, "target_ratio": 0.8,
        "ratios_vs_kvstore": {a: round(v, 3) for a, v in ratio.items()},
        "skipped": skipped,
        "tx_per_s_by_round": {a: [round(r.tx_per_s, 1) for r in runs[a]] for a in apps},
        "writes_per_s_by_round": {a: [round(r.ops_per_s, 1) for r in runs[a]] for a in apps},
        "writes_per_s_min_median_max": {a: [round(v, 1) for v in spread[a]] for a in apps},
        "batch_goal_ratios": goals, "batch_mix": mix_statement() if "registry-batch" in apps else None,
        **{r.app: {k: (round(v, 1) if isinstance(v, float) else v) for k, v in asdict(r).items()
                   if k not in ("latencies", "app", "duration_s")} for r in results},
    }
    print("RESULT " + json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
