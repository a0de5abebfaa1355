"""Several hosts on one machine: network namespaces on a switch, with WAN faults.

Topology (star), every name under one per-run prefix ``P`` (``emh`` + 5 hex)::

    host i  = netns P-n{i}: eth0 10.A.B.(i+1)/24, lo        (one per node)
    switch  = netns P-sw:   bridge br0, with P-h{i} (peer of host i's eth0) and P-rs
    client  = this process's namespace: P-r 10.A.B.254/24  (peer P-rs on the switch)

The bridge lives in a namespace of its own, so bridged traffic never meets the
machine's own firewall (br_netfilter would send it through the host's FORWARD
chain); the test process reaches every host as a client on the same segment.

Faults are iptables rules in each host's own tables (the machine's tables are
never touched), in two chains that INPUT jumps to: ``WAN-LOSS`` drops a random
fraction of everything arriving on eth0 (``-m statistic --mode random``);
``WAN-PART`` drops everything from hosts on the other side of a partition.
Drops are in INPUT, not OUTPUT: an OUTPUT drop makes send() fail with EPERM,
which no real network does. Clients (this namespace) are never partitioned.
Latency is not here (this kernel has no netem): see wan_relay.py.

``down()`` deletes the namespaces by name (their veths and rules go with them)
and checks that nothing under the prefix is left; processes inside must have
been stopped by pid first.
"""

from __future__ import annotations

import ipaddress
import os
import random
import subprocess
from collections.abc import Iterable, Sequence

IP_TIMEOUT_S = 15.0
LOSS_CHAIN, PART_CHAIN = "WAN-LOSS", "WAN-PART"
CLIENT_OCTET = 254


class NetnsError(Exception):
    """A namespace, link or rule could not be made (or removed)."""


def _run(argv: Sequence[str], check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=IP_TIMEOUT_S, check=False)
    if check and proc.returncode != 0:
        raise NetnsError(f"{' '.join(argv)}: exit {proc.returncode}: {proc.stderr.strip()}")
    return proc


def netns_unavailable() -> str | None:
    """Why this machine cannot run the multi-host tests (None when it can)."""
    if os.geteuid() != 0:
        return "the multi-host tests need root (network namespaces, veths, iptables)"
    name = f"emhprobe{os.getpid() % 100000}"
    try:
        made = _run(["ip", "netns", "add", name], check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"cannot run `ip netns`: {exc}"
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    try:
        rule = _run(["ip", "netns", "exec", name, "iptables", "-A", "INPUT", "-m", "statistic", "--mode",
                     "random", "--probability", "0.5", "-j", "DROP"], check=False)
        if rule.returncode != 0:
            return f"iptables (statistic match) does not work in a namespace: {rule.stderr.strip()}"
    finally:
        _run(["ip", "netns", "del", name], check=False)
    return None


def _free_subnet(rng: random.Random) -> ipaddress.IPv4Network:
    """A 10.A.B.0/24 that no route or address of this namespace touches."""
    used = _run(["ip", "-4", "route", "show", "table", "all"]).stdout + _run(["ip", "-4", "addr"]).stdout
    for _ in range(200):
        net = ipaddress.IPv4Network(f"10.{rng.randrange(100, 250)}.{rng.randrange(0, 256)}.0/24")
        if f"10.{net.network_address.packed[1]}.{net.network_address.packed[2]}." not in used:
            return net
    raise NetnsError("no free 10.x.y.0/24 for the test network")


class WanNet:
    """``nodes`` hosts on one switch; see the module docstring."""

    def __init__(self, nodes: int, rng: random.Random | None = None) -> None:
        self.rng = rng or random.Random()
        self.nodes = nodes
        self.prefix = f"emh{self.rng.getrandbits(20):05x}"
        self.subnet: ipaddress.IPv4Network | None = None
        self.loss = 0.0
        self.partitioned: list[set[int]] = []

    # ---- names and addresses ----
    def ns(self, i: int) -> str:
        return f"{self.prefix}-n{i}"

    @property
    def switch(self) -> str:
        return f"{self.prefix}-sw"

    def address(self, i: int) -> str:
        return str(self.subnet.network_address + i + 1)

    @property
    def client_address(self) -> str:
        return str(self.subnet.network_address + CLIENT_OCTET)

    def wrap(self, i: int) -> list[str]:
        """The command prefix that runs a program on host i."""
        return ["ip", "netns", "exec", self.ns(i)]

    def names(self) -> list[str]:
        """Every namespace and link of ours that exists now (empty after down())."""
        spaces = [line.split()[0] for line in _run(["ip", "netns", "list"]).stdout.splitlines() if line.strip()]
        links = [line.split(":")[1].strip().split("@")[0] for line in _run(["ip", "-o", "link"]).stdout.splitlines()]
        return [n for n in spaces + links if n.startswith(self.prefix)]

    # ---- building and tearing down ----
    def up(self) -> None:
        """Make the switch, the hosts and this namespace's port on the switch."""
        self.subnet = _free_subnet(self.rng)
        try:
            self._build()
        except BaseException:
            self.down()
            raise

    def _build(self) -> None:
        sw, plen = self.switch, self.subnet.prefixlen
        _run(["ip", "netns", "add", sw])
        _run(["ip", "-n", sw, "link", "add", "br0", "type", "bridge"])
        for dev in ("br0", "lo"):
            _run(["ip", "-n", sw, "link", "set", dev, "up"])
        for i in range(self.nodes):
            ns, port = self.ns(i), f"{self.prefix}-h{i}"
            _run(["ip", "netns", "add", ns])
            _run(["ip", "link", "add", port, "netns", sw, "type", "veth", "peer", "name", "eth0", "netns", ns])
            _run(["ip", "-n", sw, "link", "set", port, "master", "br0", "up"])
            _run(["ip", "-n", ns, "addr", "add", f"{self.address(i)}/{plen}", "dev", "eth0"])
            for dev in ("lo", "eth0"):
                _run(["ip", "-n", ns, "link", "set", dev, "up"])
            self._iptables(i, [["-N", LOSS_CHAIN], ["-N", PART_CHAIN], ["-A", "INPUT", "-j", LOSS_CHAIN],
                               ["-A", "INPUT", "-j", PART_CHAIN]])
        mine, theirs = f"{self.prefix}-r", f"{self.prefix}-rs"
        _run(["ip", "link", "add", mine, "type", "veth", "peer", "name", theirs, "netns", sw])
        _run(["ip", "-n", sw, "link", "set", theirs, "master", "br0", "up"])
        _run(["ip", "addr", "add", f"{self.client_address}/{plen}", "dev", mine])
        _run(["ip", "link", "set", mine, "up"])

    def down(self) -> list[str]:
        """Delete every namespace of ours (their links and rules go with them); return what
        is still there afterwards (nothing, unless a process still holds a namespace)."""
        for i in range(self.nodes):
            _run(["ip", "netns", "del", self.ns(i)], check=False)
        _run(["ip", "netns", "del", self.switch], check=False)  # takes P-rs, and so P-r, with it
        _run(["ip", "link", "del", f"{self.prefix}-r"], check=False)
        return self.names()

    # ---- faults ----
    def _iptables(self, i: int, rules: Iterable[list[str]]) -> None:
        for rule in rules:
            _run([*self.wrap(i), "iptables", "-w", *rule])

    def set_loss(self, probability: float) -> None:
        """Every host drops this fraction of the packets it receives (0 to stop)."""
        for i in range(self.nodes):
            rules = [["-F", LOSS_CHAIN]]
            if probability > 0:
                rules.append(["-A", LOSS_CHAIN, "-i", "eth0", "-m", "statistic", "--mode", "random",
                              "--probability", f"{probability:.4f}", "-j", "DROP"])
            self._iptables(i, rules)
        self.loss = probability

    def partition(self, groups: Sequence[Iterable[int]]) -> None:
        """Hosts in different groups stop hearing each other (both ways); a host in no
        group hears nobody. Replaces any earlier partition."""
        sides = [set(g) for g in groups]
        side_of = {i: k for k, side in enumerate(sides) for i in side}
        for i in range(self.nodes):
            rules = [["-F", PART_CHAIN]]
            for j in range(self.nodes):
                if j != i and (i not in side_of or side_of.get(j) != side_of[i]):
                    rules.append(["-A", PART_CHAIN, "-s", self.address(j), "-j", "DROP"])
            self._iptables(i, rules)
        self.partitioned = sides

    def isolate(self, i: int) -> None:
        """Host i alone on one side, every other host on the other."""
        self.partition([{i}, set(range(self.nodes)) - {i}])

    def heal(self) -> None:
        for i in range(self.nodes):
            self._iptables(i, [["-F", PART_CHAIN]])
        self.partitioned = []

    def rules(self, i: int) -> str:
        """Host i's filter table as iptables -S prints it (for reports)."""
        return _run([*self.wrap(i), "iptables", "-w", "-S"]).stdout
