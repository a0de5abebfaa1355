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
* Revocations ride the same loop: LOAD reads the whole ``/revocations`` list
  at H, FOLLOW hands each height's ``token_revoked`` events (hash, expiry) to
  ``on_revocations(records, height, complete)`` before the height counts as
  applied; ``on_heard()`` is told each time the node answered (the gateway's
  revocation set fails closed when it stops hearing). Poll fast (``poll_s``):
  a revocation is in force here one poll after its block commits.
* Any read failure backs off (jittered) and retries; a height the node no longer
  has (pruned) sends the loop back to LOAD.
* SEALED: device records carry their services, cell, policy and duty cycle
  sealed (discovery/sealbox.py); the keeper's keyring opens them. A record
  this gateway cannot open yet (an epoch not granted to it) is left out and
  counted in ``unreadable``; when the keyring gains or loses a key (its
  ``version`` moves, e.g. after a ``data_key`` event) the loop goes back to LOAD.
* MANIFESTS BY REFERENCE: a device may name a slot of its gateway's sealed
  catalog instead of carrying its services (discovery/catalog.py). LOAD reads
  every catalog at H and opens it; a ``manifest_put`` event re-reads that one
  slot at h, before the height's devices, and when its services changed, the
  devices that name it are re-read too (a cover write, same services under a
  fresh nonce, changes nothing here). A removed gateway's catalog is dropped.

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
from .catalog import manifest_key
from .sealbox import Catalogs, Keyring, SealError, resolve
from ...proto import registry_pb2 as pb

__all__ = ["DeviceEntry", "RegistryIndex", "ReplicaFollower"]

log = logging.getLogger(__name__)

PAGE = 1000  # the registry's MAX_PAGE
DEVICE_EVENTS = {"device_registered", "device_updated", "device_unregistered", "device_seen"}
GATEWAY_EVENTS = {"gateway_registered", "gateway_updated", "gateway_removed", "gateway_tls_set"}
REVOKED_EVENT = "token_revoked"
SEAL_EVENTS = {"data_key", "seal_key_set"}
MANIFEST_EVENT = "manifest_put"
RevocationRecords = list[tuple[bytes, int]]  # (revocation hash, expiry s)


def revocation_of(attrs: dict) -> tuple[bytes, int] | None:
    """(hash, expiry) of a token_revoked event's attributes; an older block's
    raw tag is hashed here (it is never kept)."""
    from ...firmware.caplets.cap_crypto import revocation_hash

    expires = int(attrs.get("expires_at") or 2**62)
    if attrs.get("tag_hash"):
        return bytes.fromhex(attrs["tag_hash"]), expires
    if attrs.get("tag"):
        return revocation_hash(bytes.fromhex(attrs["tag"])), expires
    return None


class StaticKeys:
    """A keyring that never changes (tests, tools): the keeper's shape without a chain."""

    def __init__(self, ring: Keyring) -> None:
        self.ring, self.version = ring, 0

    async def refresh(self) -> Keyring:
        return self.ring


class ReplicaFollower:
    """Keeps a RegistryIndex equal to the node's committed registry, height by height."""

    def __init__(self, chain: ChainClient, index: RegistryIndex | None = None, *, keeper=None, poll_s: float = 0.25,
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
        self.keeper = keeper  # keeper.SealKeeper (or StaticKeys): .ring, .version, refresh()
        self._ring_version = -1
        self.unreadable: set[bytes] = set()  # pseudonyms whose sealed fields this gateway cannot open
        self.catalogs: Catalogs = {}  # (gateway id, slot) -> services: every gateway's catalog, opened
        self._named_by: dict[tuple[str, int], set[bytes]] = {}  # catalog slot -> pseudonyms naming it
        # the gateway's revocation hooks (app.py); None: devices only
        self.on_revocations: Callable[[RevocationRecords, int, bool], Awaitable[None]] | None = None
        self.on_heard: Callable[[], None] | None = None
        # told every gateway record whenever they change (the peer port's trusted certificates)
        self.on_gateways: Callable[[list[pb.GatewayRecord]], object] | None = None

    def _entry(self, record: pb.DeviceRecord) -> DeviceEntry | None:
        """The discovery entry of a committed record, opened with the keyring; None if it cannot be."""
        try:
            if self.keeper is None:
                raise SealError("no keyring")
            fields = self.keeper.ring.open(record.pseudonym, record.sealed)
            if fields.manifest:
                self._named_by.setdefault((record.gateway_id, fields.manifest - 1), set()).add(record.pseudonym)
            entry = entry_from_record(resolve(record, fields, self.catalogs))
        except SealError:
            self.unreadable.add(record.pseudonym)
            return None
        self.unreadable.discard(record.pseudonym)
        return entry

    # ---- reads ----

    async def _all_devices(self, height: int) -> list[pb.DeviceRecord]:
        return await self.chain.devices("/devices", pb.DeviceQuery(limit=PAGE), height)

    async def _all_catalogs(self, height: int) -> Catalogs:
        """Every catalog slot at ``height`` this gateway opens (others: their devices stay unreadable)."""
        records = await self.chain.manifests("", height)
        return self.keeper.ring.open_catalogs(records) if self.keeper is not None else {}

    async def _slot(self, height: int, ref: tuple[str, int]) -> bool:
        """Read one catalog slot at ``height``; True when its services changed here."""
        record = await self.chain.manifest(ref[0], ref[1], height)
        services = (self.keeper.ring.slot_services(record)
                    if record is not None and self.keeper is not None else None)
        old = self.catalogs.get(ref)
        if services:
            self.catalogs[ref] = services
        else:
            self.catalogs.pop(ref, None)
        return (old is None) != (services is None) or (old is not None and services is not None
                                                      and manifest_key(old) != manifest_key(services))

    async def _gateways(self, height: int) -> None:
        records = await self.chain.gateways(height)
        self.index.gateways = {g.id: g.endpoint for g in records}
        for ref in [r for r in self.catalogs if r[0] not in self.index.gateways]:
            del self.catalogs[ref]  # a removed gateway's catalog went with it
        if self.on_gateways is not None:
            self.on_gateways(records)

    async def load(self) -> int:
        """LOAD: a consistent snapshot at the latest height; returns that height."""
        self.loaded = False  # until the whole snapshot is read: a failure here reloads, never half-loads
        if self.keeper is not None:
            await self.keeper.refresh()
            self._ring_version = self.keeper.version
        height = await self.chain.height()
        catalogs = await self._all_catalogs(height)
        records = await self._all_devices(height)
        await self._gateways(height)
        if self.on_revocations is not None:
            await self.on_revocations(await self._all_revocations(height), height, True)
        self.unreadable.clear()
        self.catalogs, self._named_by = catalogs, {}
        entries = [e for e in map(self._entry, records) if e is not None]
        self.index.load(entries, height)
        self.loaded = True
        await self._notify()
        log.info("replica loaded %d devices at height %d (%d sealed under keys not held here)",
                 len(entries), height, len(self.unreadable))
        return height

    async def _all_revocations(self, height: int) -> RevocationRecords:
        from ...firmware.caplets.cap_crypto import revocation_hash

        records = await self.chain.pages("/revocations", pb.RevocationList, "revocations",
                                         pb.DeviceQuery(limit=PAGE), height)
        return [(r.tag_hash or revocation_hash(r.tag), r.expires_at) for r in records]

    async def apply_height(self, height: int) -> int:
        """FOLLOW one height: apply its device and gateway events; returns devices changed."""
        res = await self.chain.call("block_results", height=str(height))  # CometBFT wants 64-bit ints as strings
        events = [e for t in (res.get("txs_results") or []) for e in (t.get("events") or [])]
        events += res.get("finalize_block_events") or []
        changed: dict[bytes, str] = {}
        revoked: RevocationRecords = []
        slots: set[tuple[str, int]] = set()
        for ev in events:
            kind = ev.get("type", "")
            attrs = {a.get("key"): a.get("value") for a in ev.get("attributes") or []}
            if kind == REVOKED_EVENT:
                rec = revocation_of(attrs)
                if rec is not None:
                    revoked.append(rec)
            elif kind in DEVICE_EVENTS and attrs.get("pseudonym"):
                changed[bytes.fromhex(attrs["pseudonym"])] = kind
            elif kind == MANIFEST_EVENT and attrs.get("gateway_id") and (attrs.get("slot") or "").isdigit():
                slots.add((attrs["gateway_id"], int(attrs["slot"])))
            elif kind in GATEWAY_EVENTS:
                if kind == "gateway_removed":  # its catalog went with it (even if re-registered in the block)
                    for ref in [r for r in self.catalogs if r[0] == attrs.get("gateway_id")]:
                        del self.catalogs[ref]
                await self._gateways(height)
            if kind in SEAL_EVENTS and self.keeper is not None:
                await self.keeper.refresh()  # a new epoch or grant: the next step reloads if keys changed
        for ref in sorted(slots):  # before the devices: a device may name a slot written in this block
            if await self._slot(height, ref):
                for ps in self._named_by.get(ref, ()):
                    changed.setdefault(ps, MANIFEST_EVENT)
        for ps, kind in changed.items():
            q = await self.chain.query("/device", pb.DeviceQuery(pseudonym=ps).SerializeToString(), height)
            entry = self._entry(pb.DeviceRecord.FromString(q.value)) if q.code == 0 else None
            if entry is not None:
                self.index.upsert(entry)
            else:  # unregistered (or gone again within the block), or not readable here
                self.index.remove(ps)
        if self.on_revocations is not None:
            await self.on_revocations(revoked, height, False)  # in force before the height counts
        self.index.height = height
        return len(changed)

    async def step(self) -> int:
        """Catch up to the node's latest height; returns how many heights were applied."""
        if self.keeper is not None and self.keeper.version != self._ring_version:
            await self.load()  # keys changed: records unreadable before may open now
            if self.on_heard is not None:
                self.on_heard()
            return 1
        latest = await self.chain.height()
        applied = 0
        for h in range(self.index.height + 1, latest + 1):
            await self.apply_height(h)
            applied += 1
        # heard only once every height up to the chain's latest is applied: a node that
        # answers its height but not its blocks must not keep revocations counting as fresh
        if self.on_heard is not None:
            self.on_heard()
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
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - retried, never fatal: the height must not move on
                failures += 1
                if "height" in str(exc) and self.loaded:
                    log.warning("replica lost its height (%s): reloading", exc)
                    self.loaded = False
                delay = min(self.max_backoff_s, 0.1 * 2 ** min(failures, 10)) * (0.5 + self.rng.random())
                if isinstance(exc, (ChainError, KeyError, ValueError)):
                    log.warning("replica follower: %s; retrying in %.1fs", exc, delay)
                else:  # applying revocations failed (the store): not expected, so with its traceback
                    log.exception("replica follower: applying height failed; retrying in %.1fs", delay)
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

    async def wait_height(self, height: int, timeout: float) -> bool:
        """Wait (at most ``timeout`` s) until the index has applied ``height``; True when it has.
        The run loop polls, so a just-committed block lands here up to one poll later."""
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(lambda: self.loaded and self.index.height >= height),
                                       timeout)
            except TimeoutError:
                return False
        return True
