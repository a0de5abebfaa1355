"""Two small loops that watch the gateway from the side (started by app.py).

* :func:`watch_chain`: reads the node's status every few seconds; no answer
  is ``chain_unreachable``, a latest block older than ``stale_s`` is
  ``chain_lagging`` (the chain stalled, or the node is catching up); a good
  read clears both. What the chain is for (registry writes, pairing,
  revocation refresh) fails with UNAVAILABLE meanwhile; discovery keeps
  answering from its replica and tells how old it is.
* :class:`LoopLag`: how late the event loop runs a timer: the delay any
  device link step or the chain follower waits behind client calls. It is a
  metric (``edgistry_event_loop_lag_seconds``), so that claim is measured.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import datetime

from ..chain import ChainClient, ChainError
from .health import Health

CHAIN_CHECK_S = 2.0
CHAIN_READ_TIMEOUT_S = 5.0


def block_age_s(latest_block_time: str, now: float) -> float | None:
    """Seconds since an RFC 3339 block time (CometBFT's nanoseconds cut to micro); None if unreadable."""
    text = latest_block_time.strip()
    if not text:
        return None
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    head, dot, rest = text.partition(".")
    if dot:  # fractional seconds: keep at most 6 digits
        digits = "".join(ch for ch in rest if ch.isdigit())
        text = f"{head}.{digits[:6]}{rest[len(digits):]}"
    try:
        return now - datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def chain_verdict(status: dict | Exception, now: float, stale_s: float) -> tuple[str, str] | None:
    """(cause, reason) of a chain fault seen in one status read, or None when it is fine."""
    if isinstance(status, Exception):
        return "chain_unreachable", f"the chain node does not answer: {status}"
    info = status.get("sync_info") or {}
    age = block_age_s(str(info.get("latest_block_time", "")), now)
    if info.get("catching_up"):
        return "chain_lagging", "the chain node is catching up with its peers"
    if age is not None and age > stale_s:
        return "chain_lagging", (f"the chain's latest block ({info.get('latest_block_height')}) is "
                                 f"{age:.0f} s old (limit {stale_s:g} s)")
    return None


async def watch_chain(chain: ChainClient, health: Health, stale_s: float, on_ok: Callable[[], None],
                      every_s: float = CHAIN_CHECK_S,
                      sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
    """Forever: read the node's status, set or clear the chain faults."""
    while True:
        try:
            async with asyncio.timeout(CHAIN_READ_TIMEOUT_S):  # unlike 3.11's wait_for, never eats a cancel
                status: dict | Exception = await chain.status()
        except (ChainError, asyncio.TimeoutError) as exc:
            status = exc if str(exc) else ChainError(f"no answer within {CHAIN_READ_TIMEOUT_S:g} s")
        verdict = chain_verdict(status, time.time(), stale_s)
        if verdict is None:
            health.clear("chain_unreachable", "chain_lagging")
            on_ok()
        else:
            health.clear(*({"chain_unreachable", "chain_lagging"} - {verdict[0]}))
            health.fail(*verdict)
        await sleep(every_s)


class LoopLag:
    """The worst timer delay of the event loop over the last ``window_s``."""

    def __init__(self, tick_s: float = 0.05, window_s: float = 1.0) -> None:
        self.tick_s, self.window_s = tick_s, window_s
        self.worst = 0.0
        self._current, self._since = 0.0, 0.0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self._since = loop.time()
        while True:
            before = loop.time()
            await asyncio.sleep(self.tick_s)
            now = loop.time()
            self._current = max(self._current, now - before - self.tick_s)
            if now - self._since >= self.window_s:
                self.worst, self._current, self._since = self._current, 0.0, now
