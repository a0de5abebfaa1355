"""Admission control: may this call start now? (pure: no I/O, the clock injected).

Theory of operation. Every refusal is a :class:`Refusal` (a reason word for
metrics, a retry-after hint, a one-line message); the gRPC adapter
(api/admission_grpc.py) turns it into RESOURCE_EXHAUSTED with a
``retry-after-ms`` trailer. The checks, cheapest first:

1. ``source``: a token bucket per source address (IPv6 by /64, since one host
   holds a whole /64), charged before anything about the call is verified:
   it bounds what any one address can make the gateway parse and verify;
2. ``enter`` / ``leave``: calls in the gateway at once, short ones and those
   waiting on a device (Invoke, WatchResult) counted apart;
   (a rate refusal is answered after ``refusal_hold_ms``, bounded by
   ``max_held``: the client's own stream cap then bounds what it can send);
3. ``caller``: after the token is verified, one bucket for its issuer (the
   first tag of its chain: a gateway-issued identity, or the device root it
   derives from; anyone can derive fresh tokens offline, but not a new
   issuer) and one for the target device. Both must have room; only then are
   both charged, so a refused call spends neither, and nobody without a valid
   token can spend a client's or a device's budget.

Commissioning has its own buckets (:meth:`commission`), and the device link
its connection caps (:class:`ConnectionCaps`). Bucket tables are bounded:
beyond ``max_tracked`` keys the least recently used one is dropped (a dropped
key comes back with a full bucket, which only ever favours that key).
"""

from __future__ import annotations

import ipaddress
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from ..config import Limits

BUSY_RETRY_S = 0.05  # the hint when the gateway is full of calls: they finish in milliseconds
WAITING_RETRY_S = 1.0  # the hint when too many calls wait on devices: those take seconds
# rate refusals are held (Limits.refusal_hold_ms): a client ignoring the hint then
# waits on its own HTTP/2 streams instead of making the gateway parse more calls
HELD = frozenset({"source", "client", "device"})


@dataclass(frozen=True)
class Refusal:
    """Why a call may not start now, and when to try again."""

    reason: str  # source | in_flight | waiting | client | device | commission | link_source | link_total
    retry_after_s: float
    message: str
    hold_s: float = 0.0  # answer it this much later if Admission.hold() allows; 0: at once

    @property
    def retry_after_ms(self) -> int:
        return max(1, int(self.retry_after_s * 1000 + 0.999))


class TokenBucket:
    """``rate`` tokens a second up to ``burst``; starts full."""

    __slots__ = ("tokens", "stamp")

    def __init__(self, burst: float, now: float) -> None:
        self.tokens, self.stamp = burst, now

    def refill(self, rate: float, burst: float, now: float) -> float:
        """Tokens available at ``now`` (the clock never runs backwards here)."""
        if now > self.stamp:
            self.tokens = min(burst, self.tokens + (now - self.stamp) * rate)
            self.stamp = now
        return self.tokens

    def wait(self, rate: float, cost: float) -> float:
        """Seconds until ``cost`` tokens are there (after :meth:`refill`); 0 if they are."""
        missing = cost - self.tokens
        return 0.0 if missing <= 0 else missing / rate


class Buckets:
    """Token buckets by key, bounded to ``max_keys`` (least recently used dropped)."""

    def __init__(self, rate: float, burst: float, max_keys: int) -> None:
        self.rate, self.burst, self.max_keys = rate, max(burst, 1.0), max(max_keys, 1)
        self._table: OrderedDict[object, TokenBucket] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def __len__(self) -> int:
        return len(self._table)

    def _bucket(self, key: object, now: float) -> TokenBucket:
        b = self._table.get(key)
        if b is None:
            b = self._table[key] = TokenBucket(self.burst, now)
            if len(self._table) > self.max_keys:
                self._table.popitem(last=False)
        else:
            self._table.move_to_end(key)
        b.refill(self.rate, self.burst, now)
        return b

    def wait(self, key: object, now: float, cost: float = 1.0) -> float:
        """Seconds until ``key`` may spend ``cost`` (0: now); spends nothing."""
        if not self.enabled:
            return 0.0
        return self._bucket(key, now).wait(self.rate, min(cost, self.burst))

    def take(self, key: object, now: float, cost: float = 1.0) -> float:
        """Spend ``cost`` if there (returns 0), else spend nothing and return the wait."""
        if not self.enabled:
            return 0.0
        b = self._bucket(key, now)
        cost = min(cost, self.burst)  # a call bigger than the burst waits for a full bucket
        delay = b.wait(self.rate, cost)
        if delay == 0.0:
            b.tokens -= cost
        return delay


def source_key(peer: str) -> str:
    """The bucket key of a gRPC peer string (``ipv4:1.2.3.4:5``, ``ipv6:[::1]:5``)
    or of a bare address: IPv4 as is, IPv6 by its /64 (IPv4-mapped ones as
    IPv4); anything else (``unix:...``) keys as itself."""
    text = peer
    if text.startswith(("ipv4:", "ipv6:")):
        text = text[5:]
        text = text[1:text.find("]")] if text.startswith("[") else text.rsplit(":", 1)[0]
    try:
        addr = ipaddress.ip_address(text.split("%", 1)[0])  # without an IPv6 zone index
    except ValueError:
        return peer
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        if addr.is_loopback:
            return str(addr)
        return str(ipaddress.IPv6Network((addr, 64), strict=False))
    return str(addr)


def is_loopback(key: str) -> bool:
    """Whether a :func:`source_key` names this machine."""
    try:
        return ipaddress.ip_network(key, strict=False).network_address.is_loopback
    except ValueError:
        return key.startswith("unix:")


class Admission:
    """The gateway's admission state: buckets, counts of calls in flight, refusals."""

    def __init__(self, limits: Limits, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits, self.clock = limits, clock
        n = limits.max_tracked
        self._source = Buckets(limits.source_rate, limits.source_burst, n)
        self._client = Buckets(limits.client_rate, limits.client_burst, n)
        self._device = Buckets(limits.device_rate, limits.device_burst, n)
        self._pair_source = Buckets(limits.commission_source_rate, limits.commission_source_burst, n)
        self._pair_total = Buckets(limits.commission_total_rate, limits.commission_total_burst, 1)
        self.in_flight = 0
        self.waiting = 0
        self.held = 0  # refusals waiting out their hold
        self.refusals: Counter[str] = Counter()

    def _refuse(self, reason: str, wait: float, message: str) -> Refusal:
        self.refusals[reason] += 1
        hold = self.limits.refusal_hold_ms / 1000 if reason in HELD else 0.0
        return Refusal(reason, wait, f"{message}; retry in {int(wait * 1000 + 0.999)} ms", hold)

    def hold(self) -> bool:
        """May one more refusal be held now? (counted in; :meth:`unhold` when answered)"""
        if self.held >= self.limits.max_held:
            return False
        self.held += 1
        return True

    def unhold(self) -> None:
        """A held refusal was answered."""
        self.held -= 1

    def source(self, key: str, cost: float = 1.0) -> Refusal | None:
        """Charge the source address (a :func:`source_key`) before anything else."""
        wait = self._source.take(key, self.clock(), cost)
        if wait:
            return self._refuse("source", wait, "too many calls from this address")
        return None

    def enter(self, waiting: bool = False) -> Refusal | None:
        """Count a call in; None when admitted (then call :meth:`leave` once it ends)."""
        if waiting:
            if self.waiting >= self.limits.max_waiting > 0:
                return self._refuse("waiting", WAITING_RETRY_S, "too many calls waiting on devices")
            self.waiting += 1
        else:
            if self.in_flight >= self.limits.max_in_flight > 0:
                return self._refuse("in_flight", BUSY_RETRY_S, "the gateway is busy")
            self.in_flight += 1
        return None

    def leave(self, waiting: bool = False) -> None:
        if waiting:
            self.waiting -= 1
        else:
            self.in_flight -= 1

    def caller(self, client: bytes, device: bytes, cost: float = 1.0) -> Refusal | None:
        """Charge a verified client (its issuer key) and its target device, both or neither."""
        now = self.clock()
        c_wait = self._client.wait(client, now, cost)
        d_wait = self._device.wait(device, now, cost)
        if c_wait >= d_wait and c_wait:
            return self._refuse("client", c_wait, "this client's rate limit is reached")
        if d_wait:
            return self._refuse("device", d_wait, "the target device's rate limit is reached")
        self._client.take(client, now, cost)
        self._device.take(device, now, cost)
        return None

    def client_over(self, client: bytes) -> Refusal | None:
        """Is this (known) client out of tokens now? A peek, charging nothing:
        lets the adapter refuse it before the call is verified at all."""
        wait = self._client.wait(client, self.clock())
        if wait:
            return self._refuse("client", wait, "this client's rate limit is reached")
        return None

    def commission(self, key: str) -> Refusal | None:
        """A commissioning attempt from ``key``: per source, then in total (not for loopback)."""
        now = self.clock()
        wait = self._pair_source.wait(key, now)
        total = 0.0 if is_loopback(key) else self._pair_total.wait("all", now)
        if wait or total:
            return self._refuse("commission", max(wait, total), "too many commissioning attempts")
        self._pair_source.take(key, now)
        if not is_loopback(key):
            self._pair_total.take("all", now)
        return None

    def tracked(self) -> dict[str, int]:
        """Keys held per bucket table (memory is bounded by ``max_tracked`` each)."""
        return {"source": len(self._source), "client": len(self._client), "device": len(self._device),
                "commission": len(self._pair_source)}


class ConnectionCaps:
    """Open connections per source address and in total (the device link)."""

    def __init__(self, per_source: int, total: int) -> None:
        self.per_source, self.total = per_source, total
        self.open: Counter[str] = Counter()
        self.count = 0

    def admit(self, key: str) -> str | None:
        """Count a new connection from ``key`` in; a reason word when refused."""
        if self.total and self.count >= self.total:
            return "link_total"
        if self.per_source and self.open[key] >= self.per_source:
            return "link_source"
        self.open[key] += 1
        self.count += 1
        return None

    def release(self, key: str) -> None:
        self.count -= 1
        self.open[key] -= 1
        if self.open[key] <= 0:
            del self.open[key]
