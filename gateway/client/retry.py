"""Retries with jittered exponential backoff: the one implementation for CPython code.

(The device firmware keeps its own tiny one: it must run on MicroPython.)

* :class:`RetryPolicy`: how many tries, how the delay grows, its cap.
* :class:`Backoff`: the delays of one series of tries, for loops that reconnect
  (``next()`` after a failure, ``reset()`` after a success).
* :func:`decide`: the pure rule: whether an error is retried, and after how long.
* :func:`call` / :func:`call_async`: run a function under a policy and an
  overall deadline.

Jitter is "equal jitter": each delay is half the exponential step plus a random
share of the other half, so clients that failed together do not come back
together, yet none retries at once. A server's retry-after hint is a floor: the
delay is the hint plus up to 20% (never earlier than the server asked).
What is retried: :class:`~.errors.Unavailable` (the gateway or its dependency
cannot be reached) and :class:`~.errors.ResourceExhausted` *with* a hint; never
anything else, and only calls the caller marked idempotent. Clock, sleep and
randomness are parameters, so tests run without real sleeps.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from .errors import EdgistryError, ResourceExhausted, Unavailable

T = TypeVar("T")
HINT_JITTER = 0.2  # a retry-after hint is stretched by up to this share (never shortened)


@dataclass(frozen=True)
class RetryPolicy:
    """How to retry: ``attempts`` tries in all (1: never retry), delays from
    ``initial_s`` growing by ``multiplier`` up to ``max_s``."""

    attempts: int = 5
    initial_s: float = 0.2
    max_s: float = 5.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.initial_s < 0 or self.max_s < self.initial_s or self.multiplier < 1:
            raise ValueError("RetryPolicy needs attempts >= 1, 0 <= initial_s <= max_s and multiplier >= 1")

    def step(self, retry: int) -> float:
        """The un-jittered delay before retry number ``retry`` (0 for the first retry)."""
        return min(self.max_s, self.initial_s * self.multiplier ** retry)


NO_RETRY = RetryPolicy(attempts=1)


def jittered(step: float, rng: Callable[[], float]) -> float:
    """Equal jitter: half of ``step`` plus a random share of the other half."""
    return step / 2 + rng() * step / 2


def decide(error: BaseException, retry: int, policy: RetryPolicy, rng: Callable[[], float]) -> float | None:
    """Seconds to wait before retry number ``retry`` after ``error``; None: do not retry."""
    if retry + 1 >= policy.attempts or not isinstance(error, EdgistryError):
        return None
    if isinstance(error, ResourceExhausted):
        if error.retry_after is None:
            return None  # backpressure without a hint is the caller's to handle
        return error.retry_after * (1 + HINT_JITTER * rng())
    if isinstance(error, Unavailable):
        return jittered(policy.step(retry), rng)
    return None


class Backoff:
    """The delays of one series of tries (a reconnecting loop's clock of patience)."""

    def __init__(self, policy: RetryPolicy = RetryPolicy(), rng: Callable[[], float] = random.random) -> None:
        self.policy, self.rng, self.retries = policy, rng, 0

    def next(self, hint: float | None = None) -> float:
        """The delay before the next try (at least ``hint`` when the server gave one)."""
        delay = jittered(self.policy.step(self.retries), self.rng)
        self.retries += 1
        if hint is not None:
            delay = max(delay, hint * (1 + HINT_JITTER * self.rng()))
        return delay

    def reset(self) -> None:
        self.retries = 0


def _remaining(deadline: float | None, clock: Callable[[], float]) -> float | None:
    return None if deadline is None else deadline - clock()


def call(fn: Callable[[float | None], T], policy: RetryPolicy, deadline: float | None = None,
         clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
         rng: Callable[[], float] = random.random) -> T:
    """``fn(seconds_left)`` until it succeeds, the policy gives up, or waiting would pass
    ``deadline`` (a ``clock()`` value); the last error is raised as it was."""
    retry = 0
    while True:
        try:
            return fn(_remaining(deadline, clock))
        except EdgistryError as exc:
            delay = decide(exc, retry, policy, rng)
            left = _remaining(deadline, clock)
            if delay is None or (left is not None and delay >= left):
                raise
        sleep(delay)
        retry += 1


async def call_async(fn: Callable[[float | None], Awaitable[T]], policy: RetryPolicy, deadline: float | None = None,
                     clock: Callable[[], float] = time.monotonic,
                     sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                     rng: Callable[[], float] = random.random) -> T:
    """:func:`call` for coroutines."""
    retry = 0
    while True:
        try:
            return await fn(_remaining(deadline, clock))
        except EdgistryError as exc:
            delay = decide(exc, retry, policy, rng)
            left = _remaining(deadline, clock)
            if delay is None or (left is not None and delay >= left):
                raise
        await sleep(delay)
        retry += 1
