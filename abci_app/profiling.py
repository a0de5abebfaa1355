"""Where an ABCI app's CPU goes under real load (benchmarks only).

:class:`MethodProfile` wraps an app so that every ABCI method call adds its CPU
time (``time.process_time``) and request count to a per-method tally; the
server's own work (framing, protobuf, the event loop, syscalls) is what the
process used beyond the sum. ``edgistry node`` turns it on with
``EDGISTRY_PROFILE=PREFIX`` and writes ``PREFIX.PID.json`` at exit.
"""

from __future__ import annotations

import gc
import json
import os
import time
from typing import Any


class _Timed:
    __slots__ = ("_app", "_tally")

    def __init__(self, app: Any, tally: dict[str, list[float]]) -> None:
        self._app, self._tally = app, tally

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._app, name)
        if name.startswith("_") or not callable(method):
            return method
        tally = self._tally

        def timed(req: Any) -> Any:
            t0 = time.process_time()
            try:
                return method(req)
            finally:
                entry = tally.setdefault(_kind(name, req), [0, 0.0])
                entry[0] += 1
                entry[1] += time.process_time() - t0

        return timed


def _kind(name: str, req: Any) -> str:
    if name == "check_tx" and (getattr(req, "type", 0) == 1 or getattr(req, "type_v1", 0) == 1):
        return "recheck_tx"
    return name


class MethodProfile:
    """``app`` wrapped to tally CPU by method; ``dump()`` writes the tallies."""

    def __init__(self, app: Any, prefix: str, cprofile: bool = False) -> None:
        self.tally: dict[str, list[float]] = {}
        self.app = _Timed(app, self.tally)
        self.gc = [[0, 0.0], [0, 0.0], [0, 0.0]]  # per generation: collections, CPU seconds
        self._gc_start = 0.0
        gc.callbacks.append(self._on_gc)
        self.prefix = prefix
        self.t0 = time.process_time()
        self.cprofile = None
        if cprofile:
            import cProfile

            self.cprofile = cProfile.Profile()
            self.cprofile.enable()

    def _on_gc(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._gc_start = time.process_time()
        else:
            entry = self.gc[info["generation"]]
            entry[0] += 1
            entry[1] += time.process_time() - self._gc_start

    def dump(self) -> None:
        pid = os.getpid()
        if self.cprofile is not None:
            self.cprofile.disable()
            self.cprofile.dump_stats(f"{self.prefix}.{pid}.prof")
        total = time.process_time() - self.t0
        out = {"process_cpu_s": round(total, 3), "gc": [[n, round(t, 3)] for n, t in self.gc],
               "methods": {k: {"calls": n, "cpu_s": round(s, 3)} for k, (n, s) in sorted(self.tally.items())}}
        with open(f"{self.prefix}.{pid}.json", "w") as f:
            f.write(json.dumps(out, indent=1) + "\n")
