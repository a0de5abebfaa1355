"""gc_policy: what a server process's collector scans once startup is done.

Each check runs in a fresh interpreter: freezing is process-wide and must not
reach the test process."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = r"""
import gc, json, sys
import edgistry.gateway.app, edgistry.gateway.api.grpc_server  # the gateway's startup imports
from edgistry import gc_policy
before = len(gc.get_objects())
getattr(gc_policy, sys.argv[1])()
print(json.dumps({"before": before, "after": len(gc.get_objects()), "frozen": gc.get_freeze_count(),
                  "thresholds": list(gc.get_threshold())}))
"""


def probe(fn: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, fn], capture_output=True, text=True, timeout=60, check=True)
    return json.loads(out.stdout)


def test_startup_objects_leave_the_collectors_sight():
    got = probe("freeze_startup_objects")
    assert got["before"] > 20_000  # what every full collection scanned before
    assert got["after"] < 100 and got["frozen"] > 20_000
    assert got["thresholds"] == [700, 10, 10]  # CPython's default: the gateway keeps it


def test_a_node_also_raises_the_first_threshold():
    from edgistry.gc_policy import NODE_GC_THRESHOLDS

    got = probe("tune_gc_for_node")
    assert got["after"] < 100
    assert got["thresholds"] == list(NODE_GC_THRESHOLDS)
