"""A Jepsen-style history of client operations, and the checks run on it after healing.

Every client operation is recorded when it is attempted and again when it
ends, with its outcome in Jepsen's three kinds:

* ``ok``   acknowledged: the system said it happened;
* ``fail`` refused before any effect (a definite error: the device is unknown,
           the token is refused, the queue is full);
* ``info`` indeterminate: a timeout, an unreachable node, a dropped connection.
           It may or may not have taken effect, now or later.

The checks are pure functions of the history and of what was read from the
system afterwards (no I/O here), so they are tested on hand-made histories:

* registry writes (pairings): every acknowledged one is present on every node,
  owned by the gateway that acknowledged it, at its commit height and at the tip;
* the chain: no height has two different blocks, and every node's app reports
  the same app hash at every height, equal to the next header's;
* invocations, counted on the devices: an acknowledged invoke ran exactly once
  (not lost, not twice) and its answer is its own; no operation ran twice
  (delivery is at-least-once, the device de-duplicates by request id); a definite
  failure never ran; nothing ran that no client asked for.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

OK, FAIL, INFO = "ok", "fail", "info"


@dataclass
class Op:
    """One client operation: what was asked, through which node, and how it ended."""

    id: int
    kind: str  # "pair" | "invoke"
    via: int  # the node whose gateway the client called
    key: str  # pair: the device name; invoke: the operation key the device records
    start: float
    end: float | None = None
    outcome: str | None = None  # OK, FAIL, INFO; None while in flight
    detail: str = ""
    value: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Fault:
    at: float
    what: str


class History:
    """Thread-safe record of operations and injected faults, times from ``clock``."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.t0 = clock()
        self.ops: list[Op] = []
        self.faults: list[Fault] = []
        self._lock = threading.Lock()

    def now(self) -> float:
        return round(self.clock() - self.t0, 3)

    def begin(self, kind: str, via: int, key: str, **value: Any) -> Op:
        with self._lock:
            op = Op(len(self.ops), kind, via, key, self.now(), value=dict(value))
            self.ops.append(op)
        return op

    def finish(self, op: Op, outcome: str, detail: str = "", **value: Any) -> None:
        assert outcome in (OK, FAIL, INFO), outcome
        op.end, op.outcome, op.detail = self.now(), outcome, detail[:300]
        op.value.update(value)

    def fault(self, what: str) -> None:
        with self._lock:
            self.faults.append(Fault(self.now(), what))

    def of(self, kind: str, outcome: str | None = None) -> list[Op]:
        return [op for op in self.ops if op.kind == kind and (outcome is None or op.outcome == outcome)]

    def counts(self) -> dict[str, Counter]:
        """Per kind: attempted and each outcome (in flight counts as info)."""
        out: dict[str, Counter] = {}
        for op in self.ops:
            c = out.setdefault(op.kind, Counter())
            c["attempted"] += 1
            c[op.outcome or INFO] += 1
        return out


# ---- registry writes ----


@dataclass(frozen=True)
class RegistryRead:
    """What one node's registry held: pseudonym -> owning gateway id, at the tip and at
    the heights of acknowledged writes (None where the node no longer keeps that height)."""

    tip: Mapping[str, str]
    at_height: Mapping[tuple[str, int], str | None]


def check_registry(history: History, reads: Mapping[int, RegistryRead]) -> list[str]:
    """Lost registry writes: an acknowledged pairing missing (or owned by another
    gateway) on some node, at its commit height or at the tip."""
    problems = []
    for op in history.of("pair", OK):
        ps, owner, height = op.value["pseudonym"], op.value["gateway_id"], op.value["height"]
        for node, read in sorted(reads.items()):
            at_tip = read.tip.get(ps)
            if at_tip != owner:
                problems.append(f"pair#{op.id} {ps[:12]} (acked by node{op.via} at h={height}): "
                                f"node{node} tip has {at_tip!r}, not {owner!r}")
            at_h = read.at_height.get((ps, height), owner)
            if at_h is not None and at_h != owner:
                problems.append(f"pair#{op.id} {ps[:12]}: node{node} at h={height} has {at_h!r}, not {owner!r}")
    return problems


# ---- the chain ----


@dataclass(frozen=True)
class ChainRead:
    """One node's chain: block hash and header app hash per height, and the app hash its
    own app reports after each height (abci_query /summary)."""

    blocks: Mapping[int, str]
    header_app_hash: Mapping[int, str]
    app_hash: Mapping[int, str]


def check_chain(reads: Mapping[int, ChainRead]) -> list[str]:
    """Forks (two blocks at one height), nodes whose headers or apps disagree, and an
    app whose hash after h is not the one the block at h+1 commits to."""
    problems = []
    heights = sorted(set().union(*(r.blocks for r in reads.values())))
    for h in heights:
        blocks = {n: r.blocks[h] for n, r in reads.items() if h in r.blocks}
        if len(set(blocks.values())) > 1:
            problems.append(f"FORK at height {h}: {blocks}")
        headers = {n: r.header_app_hash[h] for n, r in reads.items() if h in r.header_app_hash}
        if len(set(headers.values())) > 1:
            problems.append(f"header app hashes differ at height {h}: {headers}")
    for n, r in sorted(reads.items()):
        for h, app in sorted(r.app_hash.items()):
            committed = {x.header_app_hash.get(h + 1) for x in reads.values()} - {None}
            if committed and committed != {app}:
                problems.append(f"node{n}'s app hash after height {h} is {app[:16]}, the chain committed "
                                f"{sorted(c[:16] for c in committed)}")
    return problems


# ---- invocations ----


def check_invokes(history: History, executions: Mapping[str, int]) -> dict[str, list[str]]:
    """``executions``: operation key -> times a device ran it. Returns problems by kind:
    lost (acknowledged, never ran), duplicated (ran twice), wrong answer (the answer
    names another operation), failed but ran (a definite failure had an effect),
    phantom (ran, and no client asked for it)."""
    out: dict[str, list[str]] = {"lost": [], "duplicated": [], "wrong_answer": [], "failed_but_ran": [],
                                 "phantom": []}
    asked = {op.key: op for op in history.of("invoke")}
    for key, n in sorted(executions.items()):
        if n > 1:
            out["duplicated"].append(f"{key} ran {n} times (op {asked[key].id if key in asked else '?'})")
        if key not in asked:
            out["phantom"].append(f"{key} ran {n} times and no client asked for it")
    for op in asked.values():
        ran = executions.get(op.key, 0)
        if op.outcome == OK:
            if ran == 0:
                out["lost"].append(f"invoke#{op.id} {op.key} via node{op.via} acknowledged, never ran")
            if op.value.get("answered") != op.key:
                out["wrong_answer"].append(f"invoke#{op.id} {op.key} was answered with {op.value.get('answered')!r}")
        elif op.outcome == FAIL and ran:
            out["failed_but_ran"].append(f"invoke#{op.id} {op.key} failed ({op.detail}) but ran {ran} times")
    return out


def summary_lines(history: History, problems: Mapping[str, Iterable[str]]) -> list[str]:
    """The report a run prints: operations by kind and outcome, lost = 0?, faults injected."""
    lines = []
    for kind, c in sorted(history.counts().items()):
        took = sorted(op.end - op.start for op in history.of(kind, OK))
        latency = f"  ack latency p50 {took[len(took) // 2]:.2f} s, max {took[-1]:.2f} s" if took else ""
        lines.append(f"{kind:7s} attempted {c['attempted']:4d}  acknowledged {c[OK]:4d}  failed {c[FAIL]:4d}  "
                     f"indeterminate {c[INFO]:4d}{latency}")
    counts = {name: len(list(found)) for name, found in problems.items()}
    lines.append("checks: " + "  ".join(f"{name} = {n}" for name, n in counts.items()))
    lines.append(f"faults injected: {len(history.faults)}")
    lines.extend(f"  t={f.at:7.2f}s  {f.what}" for f in history.faults)
    return lines
