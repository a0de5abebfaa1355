"""What keeps the gateway from serving now: faults by cause (pure; no I/O).

Whoever sees a fault calls :meth:`Health.fail` with its cause word and a
one-line reason; whoever sees it gone calls :meth:`Health.clear`. /healthz
answers 503 naming every cause in force, ``edgistry_faults{cause}`` counts
each onset (``on_fault``), and ``edgistry_fault_active{cause}`` shows the
ones in force. Causes:

* ``disk_full``, ``map_full``: the gateway's store has no room; writes are
  refused with RESOURCE_EXHAUSTED, nothing is acknowledged;
* ``store_writer``: the store's writer process died; writes are refused with
  UNAVAILABLE until it is back;
* ``store_io``: a commit failed with another I/O error (UNAVAILABLE);
* ``chain_unreachable``: the node's RPC does not answer;
* ``chain_lagging``: the node answers but its latest block is old (the chain
  has stalled), or the discovery replica is far behind it.

Clearing is by observation, never by timer: a store fault clears on the next
write that succeeds, a chain fault on the next good status read.
"""

from __future__ import annotations

import time
from collections.abc import Callable

CAUSES = ("disk_full", "map_full", "store_writer", "store_io", "chain_unreachable", "chain_lagging")


class Health:
    """Faults in force: cause -> (one-line reason, since when)."""

    def __init__(self, on_fault: Callable[[str], None] = lambda cause: None,
                 clock: Callable[[], float] = time.time) -> None:
        self.on_fault, self.clock = on_fault, clock
        self._active: dict[str, tuple[str, float]] = {}

    def fail(self, cause: str, reason: str) -> None:
        """``cause`` is in force (counted once per onset; the reason is kept fresh)."""
        since = self._active[cause][1] if cause in self._active else None
        if since is None:
            self.on_fault(cause)
            since = self.clock()
        self._active[cause] = (reason, since)

    def clear(self, *causes: str) -> None:
        for cause in causes:
            self._active.pop(cause, None)

    @property
    def ok(self) -> bool:
        return not self._active

    def active(self) -> dict[str, str]:
        """cause -> reason, for the faults in force."""
        return {cause: reason for cause, (reason, _) in sorted(self._active.items())}

    def report(self) -> list[dict]:
        """The faults in force for /healthz: cause, reason, seconds in force."""
        now = self.clock()
        return [{"cause": c, "reason": r, "for_s": round(now - t, 1)} for c, (r, t) in sorted(self._active.items())]
