"""Helpers for the multi-host tests: nodes on hosts of their own, a WAN between them, and
a Jepsen-style workload of clients and devices.

:class:`Multihost` stands up N nodes, each (CometBFT + `edgistry node` + `edgistry
gateway`) in its own network namespace (netns_helpers.WanNet) with its own address.
Every node binds 127.0.0.1 inside its host and is *reached at* its host address,
where a WAN relay (wan_relay.py, in the same namespace) listens: p2p, gateway gRPC
and the device link are delayed 50 ± 10 ms each way, and device link connections
are reset at random (2 % of chunks: a device's session may die after it took a
request and before the gateway heard the answer, so the gateway delivers again and
the device must answer from its store); RPC and gateway HTTP (what operators and
this checker poll) are relayed without delay. Every host drops 1 % of what it
receives. So the generated configs must advertise what they do not
bind, exactly as on machines behind NAT: a node that advertised its bind address
would send its peers, devices and other gateways to their own loopback.

The workload runs in this process on one asyncio loop: devices (the real firmware
runtime, over real sockets) that count every execution of ``counter.apply`` by the
operation key in its arguments; pairing clients (one per gateway, each pairing a
fresh device: a registry write); invoking clients (any device through any
gateway, client-chosen request ids, one retry of an indeterminate call through
another gateway with the same id). Every operation goes into a
multihost_checker.History.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import grpc

from edgistry import chain as rpc
from edgistry.chain import ChainClient, ChainError
from edgistry.abci_app.codes import Code
from edgistry.cluster import membership, ops
from edgistry.cluster.cometbft import cometbft_version
from edgistry.cluster.cometbft_files import ConsensusSettings
from edgistry.cluster.launcher import Launcher
from edgistry.cluster.localnet import NodeLayout, generate_localnet
from edgistry.firmware.caplets import api as cl
from edgistry.firmware.runtime.device import Device
from edgistry.firmware.runtime.home import DeviceHome
from edgistry.firmware.runtime.services import ServiceRegistry
from edgistry.gateway.pairing.client import PairError, pair_device
from edgistry.proto import gateway_pb2 as gw
from edgistry.proto import gateway_pb2_grpc as gw_grpc
from edgistry.proto import registry_pb2 as pb
from multihost_checker import FAIL, INFO, OK, ChainRead, History, RegistryRead
from netns_helpers import WanNet

RELAY = Path(__file__).with_name("wan_relay.py")
DELAY_MS, JITTER_MS, LOSS = 50, 10, 0.01
LINK_RESET = 0.02  # device links: a chunk resets its connection with this probability (at-least-once at work)
BASE_PORT = 26600  # every host has the same ports: they are separate machines
BIND = "127.0.0.1"  # inside each host; the relay on the host address is the way in
# 50 ms one-way: a round trip of votes takes ~0.15 s with gossip; the fast timeouts still fit
WAN_CONSENSUS = ConsensusSettings.fast(timeout_propose="2s")
UP_TIMEOUT = 120.0
RELAY_READY_S = 20.0
CHAIN_ID = "edgistry-multihost"
LOCATION = {"lat": 46.52, "lon": 6.57}
DUTY_CYCLE_S = 1
PAIR_TIMEOUT_S = 25.0  # broadcast_tx_commit gives up after 10 s; the commissioning exchange adds RTTs
INVOKE_TIMEOUT_S = 6.0
# definite refusals: the gateway said no before queueing anything
DEFINITE = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED,
            grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.FAILED_PRECONDITION,
            grpc.StatusCode.RESOURCE_EXHAUSTED}
DEFINITE_NAMES = {c.name for c in DEFINITE}
CHANNEL_OPTIONS = (("grpc.initial_reconnect_backoff_ms", 300), ("grpc.max_reconnect_backoff_ms", 2000))


def wait_for(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.25):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


class Multihost:
    """N nodes on N hosts with a WAN between them; see the module docstring."""

    def __init__(self, directory: Path, binary: str, nodes: int, seed: int, spare_hosts: int = 0) -> None:
        self.dir = directory
        self.binary = binary
        self.validators = nodes
        self.net = WanNet(nodes + spare_hosts, random.Random(seed))  # spare hosts: for nodes that join later
        self.launcher = Launcher(directory)
        self.nodes: list[NodeLayout] = []
        self.seed = seed

    # ---- up and down ----
    def up(self, snapshot_interval: int = 0) -> None:
        self.net.up()
        self.net.set_loss(LOSS)
        self.nodes = generate_localnet(
            self.dir, self.validators, CHAIN_ID, base_port=BASE_PORT, consensus=WAN_CONSENSUS,
            snapshot_interval=snapshot_interval, cometbft_version=cometbft_version(self.binary),
            hosts=[self.net.address(i) for i in range(self.validators)], bind=BIND)
        for node in self.nodes:
            self.start_relay(node)
        for node in self.nodes:
            ops.start_node(self.launcher, node, self.binary, gateway=False, wrap=self.net.wrap(node.index))
        ops.wait_agreement(self.nodes, 2, UP_TIMEOUT, launcher=self.launcher)
        for node in self.nodes:
            ops.start_node(self.launcher, node, self.binary, gateway=True, wrap=self.net.wrap(node.index))
        ops.wait_gateways(self.nodes, self.launcher, UP_TIMEOUT)

    def start_relay(self, node: NodeLayout) -> None:
        """The WAN in front of ``node``: its host address -> its loopback listeners."""
        name, p, host = f"{node.moniker}-wan", node.ports, node.host
        argv = [*self.net.wrap(node.index), sys.executable, str(RELAY), "--delay-ms", str(DELAY_MS),
                "--jitter-ms", str(JITTER_MS), "--seed", str(self.seed * 100 + node.index)]
        for port in (p.p2p, p.grpc):
            argv += ["--route", f"{host}:{port}={BIND}:{port}"]
        argv += ["--flaky", f"{host}:{p.link}={BIND}:{p.link}", "--reset-probability", str(LINK_RESET)]
        for port in (p.rpc, p.http):
            argv += ["--direct", f"{host}:{port}={BIND}:{port}"]
        self.launcher.start(name, argv)
        log = self.launcher.log_path(name)
        wait_for(lambda: "relay ready" in log.read_text(errors="replace") or not self.launcher.alive(name),
                 RELAY_READY_S, f"{name} to listen")
        assert self.launcher.alive(name), f"{name} exited:\n{ops.log_tail(self.launcher, name)}"

    def join(self, timeout: float) -> NodeLayout:
        """A new node on the next spare host, written as an operator would for another machine
        (`edgistry cluster prepare-node --host ADDRESS --bind 127.0.0.1`), started there; it
        joins by state sync over the WAN. Returns once it has caught up."""
        host = len(self.nodes)
        node = membership.prepare_node(self.dir, self.net.address(host), BIND)
        assert node.index == host and node.host == self.net.address(host), node
        self.nodes.append(node)
        self.start_relay(node)
        ops.start_node(self.launcher, node, self.binary, wrap=self.net.wrap(host))
        membership.wait_caught_up(node, self.nodes[:-1], timeout)
        ops.wait_gateways([node], self.launcher, timeout)
        return node

    def down(self) -> tuple[dict[str, str], list[str]]:
        """Stop every recorded process by pid, then delete the hosts; (outcomes, leftovers)."""
        outcomes = ops.down(self.dir) if self.dir.exists() else {}
        return outcomes, self.net.down()

    def logs(self) -> list[Path]:
        return sorted((self.dir / "logs").glob("*.log"))

    # ---- faults (by pid, through the launcher's records) ----
    def _signal(self, i: int, sig: int, roles=("gw", "cmt", "app")) -> None:
        for role in roles:
            name = ops.proc_name(self.nodes[i], role)
            assert self.launcher.send(name, sig), f"{name} is not running"

    def kill(self, i: int) -> None:
        """kill -9 the node's gateway, CometBFT and app."""
        self._signal(i, signal.SIGKILL)
        for role in ("gw", "cmt", "app"):
            name = ops.proc_name(self.nodes[i], role)
            assert self.launcher.wait_exit(name, 10), f"{name} outlived SIGKILL"

    def restart(self, i: int) -> list[str]:
        return ops.start_node(self.launcher, self.nodes[i], self.binary, wrap=self.net.wrap(i))

    def pause(self, i: int) -> None:
        self._signal(i, signal.SIGSTOP)

    def resume(self, i: int) -> None:
        self._signal(i, signal.SIGCONT)

    # ---- observing the chain ----
    def height(self, i: int, attempts: int = 3) -> int | None:
        """Node i's height; None when its RPC does not answer (a lost SYN costs a second: retried)."""
        for _ in range(attempts):
            try:
                return rpc.status(self.nodes[i].rpc_url, timeout=2.0).height
            except (rpc.NodeUnreachable, rpc.RpcFailed):
                continue
        return None

    def heights(self, which=None) -> dict[int, int | None]:
        return {i: self.height(i) for i in (range(len(self.nodes)) if which is None else which)}

    def tip(self, which) -> int:
        return max((h for h in self.heights(which).values() if h is not None), default=0)

    def wait_height(self, which, target: int, timeout: float, what: str) -> None:
        for i in which:
            wait_for(lambda i=i: (self.height(i) or 0) >= target, timeout, f"node{i} {what} (height {target})")

    def converge(self, timeout: float) -> ops.Agreement:
        """Every node at the others' tip, and all agree on the app hash there."""
        tip = self.tip(range(len(self.nodes)))
        return ops.wait_agreement(self.nodes, tip, timeout, launcher=self.launcher)


# ---- devices that count what they run ----


def counter_manifest() -> dict:
    return {"services": [{"type": "counter", "methods": [{"name": "apply", "mutating": True,
                                                         "cache_max_age_s": 0}]}],
            "duty_cycle_s": DUTY_CYCLE_S, "encrypt": True, "location": LOCATION}


class Fleet:
    """Device homes, the in-process devices running some of them, and what each ran."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.executions: Counter[str] = Counter()  # operation key -> runs, on any device
        self.ran_on: dict[str, str] = {}
        self.paired: dict[str, dict] = {}  # device name -> pairing result
        self.paired_via: dict[str, int] = {}  # device name -> index of its gateway's node
        self.tokens: dict[str, bytes] = {}
        self.devices: dict[str, CountingDevice] = {}
        self.tasks: list[asyncio.Task] = []
        self.stop = asyncio.Event()
        self._made = 0

    def new_home(self) -> tuple[str, Path]:
        self._made += 1
        name = f"dev{self._made}"
        home = self.root / name
        DeviceHome(home).create(counter_manifest())
        return name, home

    def _registry(self, name: str) -> ServiceRegistry:
        def apply(args, call):
            key = args["op"]
            self.executions[key] += 1
            self.ran_on[key] = name
            return {"op": key, "device": name}

        reg = ServiceRegistry()
        reg.register("counter", "apply", apply, mutating=True)
        return reg

    def run(self, name: str) -> None:
        """Start the paired device ``name`` (wakes every DUTY_CYCLE_S, backs off when its gateway is away)."""
        home = self.root / name
        device = CountingDevice(home, self._registry(name), backoff_cap=10.0)
        self.devices[name] = device
        root = cl.load(DeviceHome(home).root_token())
        self.tokens[name] = cl.derive(root, [cl.Service("counter", ["apply"])]).to_bytes()
        self.tasks.append(asyncio.ensure_future(device.run(stop=self.stop)))

    async def close(self) -> None:
        self.stop.set()
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    def totals(self) -> Counter:
        """Over every wake of every device: requests received (with redeliveries), run, and
        answered again from the device's store instead of running twice."""
        out: Counter = Counter()
        for d in self.devices.values():
            out.update(d.totals)
        return out


class CountingDevice(Device):
    """The firmware's device, keeping the sum of its wake reports."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.totals: Counter = Counter()

    async def wake(self):
        report = await super().wake()
        self.totals.update(received=report.received, executed=report.executed, deduplicated=report.deduplicated,
                           wakes=1)
        return report


async def pair_once(fleet: Fleet, node: NodeLayout, history: History | None = None) -> tuple[str, str]:
    """Pair a fresh device with ``node``'s gateway (its current one-time code): one registry
    write. Records the operation when ``history`` is given; returns (name, outcome)."""
    name, home = fleet.new_home()
    op = history.begin("pair", node.index, name) if history is not None else None
    code = (node.edgistry_home / "commission.code").read_text().strip()
    try:
        res = await asyncio.wait_for(pair_device(home, node.grpc_endpoint, code, resolution=7, k=1),
                                     PAIR_TIMEOUT_S)
    except TimeoutError:
        outcome, detail, res = INFO, f"no answer within {PAIR_TIMEOUT_S:.0f} s", None
    except PairError as exc:
        status = str(exc).split(":", 1)[0]
        outcome, detail, res = (FAIL if status in DEFINITE_NAMES else INFO), str(exc), None
    else:
        outcome, detail = OK, ""
        fleet.paired[name], fleet.paired_via[name] = res, node.index
    if op is not None:
        extra = {"pseudonym": res["pseudonym"], "gateway_id": res["gateway_id"], "height": res["height"]} if res else {}
        history.finish(op, outcome, detail, **extra)
    return name, outcome


async def pair_initial(fleet: Fleet, node: NodeLayout, attempts: int = 4) -> str:
    """Pair a device for the invoke workload (retried: the network drops packets)."""
    for _ in range(attempts):
        name, outcome = await pair_once(fleet, node)
        if outcome == OK:
            return name
        await asyncio.sleep(1.0)
    raise AssertionError(f"could not pair a device with {node.moniker} in {attempts} attempts")


class Clients:
    """gRPC channels to every gateway (reconnecting quickly after a node comes back)."""

    def __init__(self, nodes: list[NodeLayout]) -> None:
        self.channels = [grpc.aio.insecure_channel(n.grpc_endpoint, options=CHANNEL_OPTIONS) for n in nodes]
        self.stubs = [gw_grpc.GatewayStub(c) for c in self.channels]

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self.channels), return_exceptions=True)


async def invoke_attempt(clients: Clients, via: int, handle: str, token: bytes, key: str,
                         request_id: str) -> tuple[str, str, str | None]:
    """One Invoke of counter.apply {"op": key}: (outcome, detail, the op its answer names)."""
    req = gw.InvokeRequest(target=handle, service="counter", method="apply", args=json.dumps({"op": key}).encode(),
                           token=token, timeout_ms=int(INVOKE_TIMEOUT_S * 1000), request_id=request_id)
    try:
        res = await clients.stubs[via].Invoke(req, timeout=INVOKE_TIMEOUT_S + 10)
    except grpc.aio.AioRpcError as exc:
        outcome = FAIL if exc.code() in DEFINITE else INFO
        return outcome, f"{exc.code().name}: {exc.details()}", None
    if res.state == gw.DONE:
        return OK, "", json.loads(res.payload).get("op")
    return INFO, f"state {gw.RequestState.Name(res.state)}: {res.error}", None


async def invoke_worker(fleet: Fleet, clients: Clients, history: History, rng: random.Random,
                        names: list[str], nodes: int, stop: asyncio.Event, pause_s: float = 0.2) -> None:
    """Invoke random devices through random gateways until ``stop``; an indeterminate call is
    retried once, with the same request id, through another gateway."""
    while not stop.is_set():
        name = rng.choice(names)
        via = rng.randrange(nodes)
        key = f"op-{os.urandom(6).hex()}"
        rid = os.urandom(16).hex()
        handle = fleet.paired[name]["owner_handle"]
        op = history.begin("invoke", via, key, device=name, request_id=rid)
        outcome, detail, answered = await invoke_attempt(clients, via, handle, fleet.tokens[name], key, rid)
        if outcome == INFO:
            await asyncio.sleep(0.5)
            other = rng.choice([i for i in range(nodes) if i != via])
            again, detail2, answered = await invoke_attempt(clients, other, handle, fleet.tokens[name], key, rid)
            op.value["retried_via"] = other
            # one attempt may have taken effect: a definite refusal of the retry says nothing about it
            outcome = OK if again == OK else INFO
            detail = f"{detail}; retry via node{other}: {detail2 or 'ok'}"
        history.finish(op, outcome, detail, answered=answered)
        await asyncio.sleep(pause_s)


async def pair_worker(fleet: Fleet, node: NodeLayout, history: History, stop: asyncio.Event,
                      pause_s: float = 0.5) -> None:
    while not stop.is_set():
        await pair_once(fleet, node, history)
        await asyncio.sleep(pause_s)


# ---- reading the system back for the checker ----


async def read_registry(node: NodeLayout, history: History) -> RegistryRead:
    """All devices at the tip, and each acknowledged pairing's record at its commit height."""
    async with ChainClient(node.rpc_url, timeout=10) as chain:
        tip = {d.pseudonym.hex(): d.gateway_id for d in await chain.devices()}
        at: dict[tuple[str, int], str | None] = {}
        for op in history.of("pair", OK):
            ps, h = op.value["pseudonym"], op.value["height"]
            res = await chain.query("/device", pb.DeviceQuery(pseudonym=bytes.fromhex(ps)).SerializeToString(), h)
            if res.code == Code.HEIGHT_UNAVAILABLE:  # before a state-synced node's first height
                at[(ps, h)] = None
            else:
                at[(ps, h)] = pb.DeviceRecord.FromString(res.value).gateway_id if res.code == 0 else ""
    return RegistryRead(tip, at)


async def read_chain(node: NodeLayout, top: int) -> ChainRead:
    """Blocks base..top (hash, header app hash) and the app's own hash after each but the last;
    base is 1, or later for a node that joined by state sync."""
    blocks, headers, apps = {}, {}, {}
    async with ChainClient(node.rpc_url, timeout=10) as chain:
        base = int((await chain.status())["sync_info"]["earliest_block_height"])
        hi = top
        while hi >= base:  # `blockchain` answers at most 20 metas, newest first
            res = await chain.call("blockchain", minHeight=str(max(base, hi - 19)), maxHeight=str(hi))
            for meta in res["block_metas"]:
                h = int(meta["header"]["height"])
                blocks[h], headers[h] = meta["block_id"]["hash"], meta["header"]["app_hash"]
            hi -= 20
        for h in range(base, top):
            try:
                summary = await chain.query_msg("/summary", pb.NodeSummary, b"", h)
            except ChainError:
                continue  # outside the app's retained window
            apps[h] = summary.app_hash.hex().upper()
    return ChainRead(blocks, headers, apps)


async def advertised_problems(run: Multihost, fleet: Fleet) -> list[str]:
    """Every address others learn must be the host address, never the bind address: peers'
    p2p listen addresses (CometBFT's external_address), the gateways' endpoints in the
    registry, the link endpoints pairing gave the devices."""
    problems = []
    hosts = {n.index: n.host for n in run.nodes}
    for node in run.nodes:
        async with ChainClient(node.rpc_url, timeout=10) as chain:
            info = await chain.call("net_info")
            listen = {p["node_info"]["listen_addr"].removeprefix("tcp://") for p in info["peers"]}
            expected = {f"{n.host}:{n.ports.p2p}" for n in run.nodes if n.index != node.index}
            if not listen or listen - expected:  # peers may still be (re)connecting: a subset is fine
                problems.append(f"{node.moniker}'s peers listen at {sorted(listen)}, not within {sorted(expected)}")
            gateways = {g.operator: g.endpoint for g in await chain.gateways()}
            if gateways != {n.moniker: n.grpc_endpoint for n in run.nodes}:
                problems.append(f"{node.moniker}'s registry has gateway endpoints {gateways}")
    for name, res in fleet.paired.items():
        if res["link_endpoint"] != f"{hosts[fleet.paired_via[name]]}:{run.nodes[0].ports.link}":
            problems.append(f"{name} was told to connect to {res['link_endpoint']}")
    return problems
