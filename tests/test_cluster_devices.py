"""Devices on a 4-validator Edgistry when a node dies and returns.

A real cluster (`edgistry cluster up --fast`: cometbft + `edgistry node` + `edgistry gateway`
per node, all on loopback) and real device processes (`edgistry device init`, `edgistry pair`
with a gateway's one-time code from <node home>/commission.code, `edgistry device run` on a
2 s duty cycle): one device paired with node2's gateway, one with each of node0, node1 and
node3, all in one place so that discovery (k = 3) has a group to disclose.

  (a) node2's device answers through node0's gateway (a signed cross-gateway forward) and
      through node2's own gateway;
  (b) a request is queued at node2's gateway (its device paused, as if asleep), then node2's
      cometbft, app and gateway are killed with SIGKILL. Meanwhile discovery through node0
      and node1 keeps answering, devices on the surviving gateways keep answering (locally
      and forwarded), and an invoke of node2's device *fails fast with UNAVAILABLE* both
      through node0 (the forward cannot connect) and at node2's address: nothing queues it
      elsewhere, and the client never waits out its deadline;
  (c) the device wakes, cannot reach its gateway and retries with backoff; `edgistry cluster
      up --dir DIR` restarts what is not running (node2's three processes, nothing else); the
      device reconnects by itself; the request queued before the kill (node2's gateway store
      is durable) is answered; the device answers again directly and through node0. (The
      device stays paused through the outage, as if asleep, because its backoff is full
      jitter up to 2**failures s: retrying through all of a T s outage it may come back only
      2T..4T s later, which would dominate this test's time.)
  (d) all four nodes agree on the app hash at every height.

Runs when cometbft is on PATH or EDGISTRY_COMETBFT names it; skipped with how to get one
otherwise. Every process is killed by pid at teardown: the cluster's through its pid
records (`cluster down`), the devices through the `procs` fixture.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from cluster_helpers import (
    EDGISTRY,
    Procs,
    free_base_port,
    header_app_hashes,
    height,
    summary_app_hash,
    wait_until,
)
from edgistry.abci_app.txs import gateway_id_for
from edgistry.cli import main
from edgistry.cluster import ops
from edgistry.cluster.cometbft import HOW_TO_GET, find_cometbft
from edgistry.cluster.launcher import Launcher
from edgistry.cluster.localnet import NodeLayout, load_localnet

BINARY = find_cometbft()
pytestmark = [
    pytest.mark.cometbft,
    pytest.mark.slow,
    pytest.mark.timeout(240),
    pytest.mark.skipif(BINARY is None, reason=HOW_TO_GET),
]

NODES = 4
VICTIM = 2  # node2: its device is the one that must come back
LOCATION = (46.52, 6.57)  # every device here: one group of 4 in one cell
NEAR = f"{LOCATION[0]},{LOCATION[1]}"
K = 3
DUTY_CYCLE_S = 2
UP_WAIT_S = 90
INVOKE_TIMEOUT_S = 20  # a device on a 2 s cycle answers well within this
FAIL_FAST_S = 8.0  # an invoke of the dead node's device must fail at least this fast
RETURN_TIMEOUT_S = 60  # the device's backoff is full jitter, up to 2**failures s


def cli(*args: str) -> tuple[int, str]:
    """`edgistry ARGS` in process; (exit status, stdout on success; stdout and stderr interleaved
    otherwise: progress lines go to stderr)."""
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout if result.exit_code == 0 else result.output


def cli_ok(*args: str) -> str:
    """`edgistry ARGS` in process, which must succeed; its stdout (progress goes to stderr)."""
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, f"edgistry {' '.join(args)} -> {result.exit_code}:\n{result.output}"
    return result.stdout


class Device:
    """One device home paired with one node's gateway."""

    def __init__(self, name: str, home: Path, node: NodeLayout, paired: dict) -> None:
        self.name, self.home, self.node = name, home, node
        self.handle: str = paired["owner_handle"]
        self.token: str = paired["app_token_file"]
        self.pseudonym: str = paired["pseudonym"]

    def invoke(self, via: NodeLayout, method: str = "actuator.get", timeout: float = INVOKE_TIMEOUT_S,
               *extra: str) -> tuple[int, str]:
        return cli("invoke", self.handle, method, "--gateway", via.grpc_endpoint, "--pin", str(via.tls_cert),
                   "--token", self.token, "--timeout", str(timeout), "--json", *extra)

    def answers(self, via: NodeLayout, timeout: float = INVOKE_TIMEOUT_S) -> dict:
        """actuator.get (read-only, never cached: it always reaches the device) through ``via``."""
        code, out = self.invoke(via, timeout=timeout)
        assert code == 0, f"{self.name} through {via.moniker}'s gateway: {out}"
        res = json.loads(out)
        assert res["state"] == "DONE" and res["payload"]["on"] is False, res
        return res


@pytest.fixture
def cluster(tmp_path: Path, procs: Procs):
    directory = tmp_path / "net"
    base = free_base_port(10 * NODES)
    try:
        out = cli_ok("cluster", "up", "--nodes", str(NODES), "--dir", str(directory), "--fast",
                     "--base-port", str(base), "--wait", str(UP_WAIT_S))
        assert f"{NODES} nodes agree at height" in out
        procs.logs.extend(sorted((directory / "logs").glob("*.log")))  # their tails go into a failure report
        yield directory, load_localnet(directory)
    finally:
        stopped = ops.down(directory)  # every recorded pid: SIGTERM, then SIGKILL
        assert not any(o.startswith("still running") for o in stopped.values()), stopped


def make_device(procs: Procs, tmp_path: Path, name: str, node: NodeLayout) -> Device:
    """`device init`, `pair` with the node's gateway (its current one-time code, the key checked
    against the registry), then `device run` as a process of ``procs``."""
    home = tmp_path / name
    cli_ok("device", "init", "--home", str(home), "--service", "sensor", "--service", "actuator",
           "--location", NEAR, "--duty-cycle", str(DUTY_CYCLE_S))
    code_file = node.edgistry_home / "commission.code"
    code = wait_until(lambda: code_file.exists() and code_file.read_text().strip(), 20, f"{code_file}")
    out = cli_ok("pair", "--device", str(home), "--gateway", node.grpc_endpoint, "--code", code,
                 "--k", str(K), "--rpc", node.rpc_url, "--json")
    device = Device(name, home, node, json.loads(out))
    procs.start(name, [*EDGISTRY, "device", "run", "--home", str(home)])
    return device


def discover(via: NodeLayout, token_file: Path) -> list[dict]:
    # the gateway's certificate as the registry holds it, read from that node's own RPC
    out = cli_ok("discover", "sensor", "--near", NEAR, "--radius-km", "2", "--gateway", via.grpc_endpoint,
                 "--tls-from-registry", via.rpc_url, "--gateway-id", gateway_id_for(via.gateway_pubkey),
                 "--token", str(token_file), "--json")
    return json.loads(out)


def app_token(tmp_path: Path, node: NodeLayout) -> Path:
    """`edgistry token app --home <node home> --name tester`: a token node's gateway accepts."""
    path = tmp_path / f"tester-{node.moniker}.token"
    path.write_text(cli_ok("token", "app", "--home", str(node.edgistry_home), "--name", "tester").strip() + "\n")
    return path


def fails_fast(device: Device, via: NodeLayout) -> str:
    """`edgistry invoke` of ``device`` through ``via``, as its own process (a hard bound on the
    wait, and no gRPC connection state shared with this process), must fail as unavailable
    (the gateway itself, or the device's gateway behind it) well before its deadline."""
    argv = [*EDGISTRY, "invoke", device.handle, "actuator.get", "--gateway", via.grpc_endpoint,
            "--pin", str(via.tls_cert), "--token", device.token, "--timeout", str(INVOKE_TIMEOUT_S), "--json"]
    started = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=INVOKE_TIMEOUT_S + 30,
                          check=False)
    took = time.monotonic() - started
    out = proc.stdout + proc.stderr
    said = ("cannot reach the gateway at", "is unavailable: the device's gateway")
    assert proc.returncode == 1 and any(s in out for s in said), f"through {via.moniker}: {proc.returncode} {out}"
    assert took < FAIL_FAST_S, f"through {via.moniker} it took {took:.1f} s to fail: {out}"
    print(f"invoke of {device.name} through {via.moniker}: exit 1 after {took:.1f} s: {out.strip()}")
    return out


def test_devices_survive_a_node_kill_and_return_with_it(cluster, procs: Procs, tmp_path: Path):
    directory, nodes = cluster
    launcher = Launcher(directory)
    victim, rest = nodes[VICTIM], [n for n in nodes if n.index != VICTIM]
    n0, n1, n3 = rest

    dev2 = make_device(procs, tmp_path, "dev2", victim)
    others = {n.index: make_device(procs, tmp_path, f"dev{n.index}", n) for n in rest}
    tokens = {n.index: app_token(tmp_path, n) for n in (n0, n1)}

    # every gateway's replica has all four devices: one group of 4 >= k in the cell
    for n in (n0, n1):
        wait_until(lambda n=n: len(discover(n, tokens[n.index])) >= NODES, 30,
                   f"discovery through {n.moniker} to show {NODES} devices")

    # (a) node2's device, forwarded by node0's gateway and directly at node2's
    dev2.answers(n0)
    dev2.answers(victim)
    for dev in others.values():
        dev.answers(dev.node)

    # a request queued at node2's gateway while its device sleeps (the device process is paused
    # with SIGSTOP, so it cannot wake and take the request before the kill)
    procs.running["dev2"].send_signal(signal.SIGSTOP)
    code, out = dev2.invoke(victim, "actuator.get", INVOKE_TIMEOUT_S, "--async")
    assert code == 0, out
    queued = json.loads(out)
    assert queued["state"] in ("QUEUED", "DELIVERED"), queued
    rid = queued["request_id"]

    # (b) kill -9 node2: its cometbft, app and gateway
    for role in ("gw", "cmt", "app"):
        assert launcher.send(ops.proc_name(victim, role), signal.SIGKILL), f"{victim.moniker}-{role} was not running"
    for role in ("gw", "cmt", "app"):
        assert launcher.wait_exit(ops.proc_name(victim, role), 10), f"{victim.moniker}-{role} outlived SIGKILL"

    # the other three keep committing
    tip = max(height(n.rpc_url) or 0 for n in rest)
    for n in rest:
        wait_until(lambda n=n: (height(n.rpc_url) or 0) >= tip + 3, 30, f"{n.moniker} to commit without node2")

    # discovery through node0 and node1 keeps answering (node2's device stays registered: still k)
    for n in (n0, n1):
        assert len(discover(n, tokens[n.index])) >= NODES

    # devices on the surviving gateways keep answering, locally and forwarded
    for dev in others.values():
        dev.answers(dev.node)
    others[n1.index].answers(n0)  # node0 -> node1
    others[n3.index].answers(n1)  # node1 -> node3

    # node2's device: UNAVAILABLE at once, through node0 (the forward cannot connect: nothing is
    # queued at node0) and at node2's own address
    fails_fast(dev2, n0)
    fails_fast(dev2, victim)
    fails_fast(dev2, n0)

    # (c) the device wakes (its sleep is over): it cannot reach its gateway and backs off (full
    # jitter, up to 2**failures s: it is resumed only now so that the backoff stays short)
    dev_log = procs.log_of("dev2")
    failed_wakes = lambda: dev_log.read_text(errors="replace").count("wake failed")
    before = failed_wakes()
    procs.running["dev2"].send_signal(signal.SIGCONT)
    wait_until(lambda: failed_wakes() > before, 15, "dev2 to fail a wake")

    # `cluster up` on the existing directory restarts node2's three processes, and nothing else
    result = CliRunner().invoke(main, ["cluster", "up", "--dir", str(directory), "--wait", str(UP_WAIT_S)])
    assert result.exit_code == 0, result.output
    assert "resuming" in result.stderr and f"{victim.moniker}: started" in result.stderr, result.output
    assert not any(f"{n.moniker}: started" in result.stderr for n in rest), result.output
    assert all(launcher.alive(ops.proc_name(n, r)) for n in nodes for r in ops.ROLES)

    # the request queued before the kill is answered once the device reconnects
    out = cli_ok("result", rid, "--gateway", victim.grpc_endpoint, "--pin", str(victim.tls_cert),
                 "--token", dev2.token, "--wait", str(RETURN_TIMEOUT_S), "--json")
    done = json.loads(out)
    assert done["state"] == "DONE" and done["payload"]["on"] is False, done
    assert procs.alive("dev2"), "the device process gave up"

    # ... and the device answers new invokes, directly and forwarded by node0
    dev2.answers(victim)
    dev2.answers(n0)  # node0 redials node2's gateway (its peer channel backs off at most 2 s)
    for n in (n0, n1):
        assert len(discover(n, tokens[n.index])) >= NODES

    # (d) all four nodes agree at every height
    agreed = ops.wait_agreement(nodes, max(height(n.rpc_url) or 0 for n in nodes), 60, launcher=launcher)
    headers = [header_app_hashes(n.rpc_url, 1, agreed.height) for n in nodes]
    assert all(h == headers[0] for h in headers[1:]), "nodes disagree on some header app hash"
    apps = {summary_app_hash(n.rpc_url, agreed.height - 1) for n in nodes}
    assert apps == {headers[0][agreed.height]}, apps
