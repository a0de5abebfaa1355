"""The gateway's replica of the committed registry's devices (the I/O follower).

Theory of operation: a small state loop over the gateway's own node.

* LOAD: read the latest height H, then page ``/devices`` and ``/gateways``
  *at H* (one consistent snapshot, even while blocks keep coming) and bulk
  build the :class:`~edgistry.gateway.discovery.index.RegistryIndex`.
* FOLLOW: for every new height h, read ``block_results`` and, for each device
  event (device_registered/updated/unregistered), re-read that device *at h*
  (or drop it) and apply it; gateway events re-read ``/gateways`` at h.
  Liveness reports emit one ``device_seen`` event per device they move, so
  liveness is followed the same way, device by device.
* Any read failure backs off (jittered) and retries; a height the node no longer
  has (pruned) sends the loop back to LOAD.

Clock, sleep and randomness are parameters so tests run without real waits.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable

from ...chain import ChainClient, ChainError
from .index import DeviceEntry, RegistryIndex, entry_from_record
from ...proto import registry_pb2 as pb

__all__ = ["DeviceEntry", "RegistryIndex", "ReplicaFollower"]

log = logging.getLogger(__name__)

PAGE = 1000  # the registry's MAX_PAGE
DEVICE_EVENTS = {"device_registered", "device_updated", "device_unregistered", "device_seen"}
GATEWAY_EVENTS = {"gateway_registered", "gateway_updated", "gateway_removed"}


class ReplicaFollower:
    """Keeps a RegistryIndex equal to the node's committed registry, height by height."""

    def __init__(self, chain: ChainClient, index: RegistryIndex | None = None, *, poll_s: float = 0.25,
                 max_backoff_s: float = 10.0,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 clock: Callable[[], float] = time.monotonic, rng: random.Random | None = None) -> None:
        self.chain = chain
        self.index = index if index is not None else RegistryIndex()
        self.poll_s, self.max_backoff_s = poll_s, max_backoff_s
        self.sleep, self.clock, self.rng = sleep, clock, rng or random.Random()
        self.loaded = False
        self.synced_at: float | None = None  # clock() when it last caught up with the node
        self._changed = asyncio.Condition()

    # ---- reads ----

    async def _all_devices(self, height: int) -> list[pb.DeviceRecord]:
        return await self.chain.devices("/devices", pb.DeviceQuery(limit=PAGE), height)

    async def _gateways(self, height: int) -> None:
        self.index.gateways = {g.id: g.endpoint for g in await self.chain.gateways(height)}

    async def load(self) -> int:
        """LOAD: a consistent snapshot at the latest height; returns that height."""
        height = await self.chain.height()
        records = await self._all_devices(height)
        await self._gateways(height)
        self.index.load((entry_from_record(r) for r in records), height)
        self.loaded = True
        await self._notify()
        log.info("replica loaded %d devices at height %d", len(records), height)
        return height

    async def apply_height(self, height: int) -> int:
        """FOLLOW one height: apply its device and gateway events; returns devices changed."""
        res = await self.chain.call("block_results", height=str(height))  # CometBFT wants 64-bit ints as strings
        events = [e for t in (res.get("txs_results") or []) for e in (t.get("events") or [])]
        events += res.get("finalize_block_events") or []
        changed: dict[bytes, str] = {}
        for ev in events:
            kind = ev.get("type", "")
            attrs = {a.get("key"): a.get("value") for a in ev.get("attributes") or []}
            if kind in DEVICE_EVENTS and attrs.get("pseudonym"):
                changed[bytes.fromhex(attrs["pseudonym"])] = kind
            elif kind in GATEWAY_EVENTS:
                await self._gateways(height)
        for ps, kind in changed.items():
            q = await self.chain.query("/device", pb.DeviceQuery(pseudonym=ps).SerializeToString(), height)
            if q.code == 0:
                self.index.upsert(entry_from_record(pb.DeviceRecord.FromString(q.value)))
            else:  # unregistered (or gone again within the block)
                self.index.remove(ps)
        self.index.height = height
        return len(changed)

    async def step(self) -> int:
        """Catch up to the node's latest height; returns how many heights were applied."""
        latest = await self.chain.height()
        applied = 0
        for h in range(self.index.height + 1, latest + 1):
            await self.apply_height(h)
            applied += 1
        if applied:
            await self._notify()
        return applied

    # ---- the loop ----

    async def run(self) -> None:
        """LOAD, then FOLLOW forever; failures back off with jitter and may reload."""
        failures = 0
        while True:
            try:
                if not self.loaded:
                    await self.load()
                await self.step()
                self.synced_at = self.clock()
                failures = 0
                await self.sleep(self.poll_s)
            except (ChainError, KeyError, ValueError) as exc:
                failures += 1
                if "height" in str(exc) and self.loaded:
                    log.warning("replica lost its height (%s): reloading", exc)
                    self.loaded = False
                delay = min(self.max_backoff_s, 0.1 * 2 ** min(failures, 10)) * (0.5 + self.rng.random())
                log.warning("replica follower: %s; retrying in %.1fs", exc, delay)
                await self.sleep(delay)

    def age_s(self) -> float | None:
        """Seconds since the replica last caught up with the node (None: not loaded yet).
        While the chain is away discovery answers from the replica; this says how stale it is."""
        return None if self.synced_at is None else max(0.0, self.clock() - self.synced_at)

    # ---- change notification (Watch) ----

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def wait_changed(self, version: int, timeout: float | None = None) -> int:
        """Wait until the index version differs from ``version`` (or timeout); returns the version."""
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(lambda: self.index.version != version), timeout)
            except TimeoutError:
                pass
        return self.index.version
