"""Stopping asyncio tasks for sure.

On Python 3.11, ``asyncio.wait_for`` swallows a cancellation that arrives just as
its inner awaitable finishes (CPython gh-86296, fixed in 3.12): a loop task that
calls it (a watchdog, a block producer) then carries on as if never cancelled,
and a shutdown that cancels it once and awaits it waits forever. Shutdown paths
use :func:`cancel_and_wait`, which cancels again until every task has ended.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

RECANCEL_S = 0.5  # how long one round waits before cancelling the survivors again


async def cancel_and_wait(tasks: Iterable[asyncio.Future], rounds: int = 20) -> set[asyncio.Future]:
    """Cancel ``tasks`` and wait until all have ended, cancelling again every
    :data:`RECANCEL_S` (at most ``rounds`` times). Returns the tasks still running
    after that (empty unless one ignores cancellation on purpose); their results
    and exceptions are consumed, never raised here."""
    pending = {t for t in tasks if not t.done()}
    for _ in range(rounds):
        if not pending:
            break
        for t in pending:
            t.cancel()
        _, pending = await asyncio.wait(pending, timeout=RECANCEL_S)
    for t in tasks:
        if t.done() and not t.cancelled():
            t.exception()  # retrieved: no "exception was never retrieved" at exit
    return pending
