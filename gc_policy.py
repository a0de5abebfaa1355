"""How a long-running server process sets up Python's cyclic garbage collector.

Objects made at startup (modules, protobuf descriptors, gRPC, cryptography,
the app's tables) live as long as the process, yet every full collection
scans all of them again: in a gateway that was some 35 ms with the event loop
stopped, every few seconds under load, and it showed as the tail of every
latency (benchmarks/invoke.py). Freezing them once startup is done moves them
out of the collector's sight; they are still freed by reference counting if
they ever die.

A node serving ABCI also raises the first-generation threshold: every tx
allocates a few dozen small containers that reference counting frees, yet
with the default threshold (700 allocations) the collector still ran every
few dozen txs and scanned the node's caches of pending txs, about 5 us per tx.
The gateway keeps the default: with a threshold of 10,000 its second-generation
collections grew to 10 ms, a latency tail of their own.
"""

from __future__ import annotations

import gc

NODE_GC_THRESHOLDS = (10_000, 10, 10)


def freeze_startup_objects() -> None:
    """Collect once and freeze what survives. Call it in a process's entry
    point once startup is done, never in a library (it is process-wide)."""
    gc.collect()
    gc.freeze()


def tune_gc_for_node() -> None:
    """An ABCI node's setting: startup objects frozen, first threshold raised."""
    freeze_startup_objects()
    gc.set_threshold(*NODE_GC_THRESHOLDS)
