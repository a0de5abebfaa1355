"""A gateway's catalog of manifests: the sealed service lists its devices name by slot.

Theory of operation (docs/REGISTRY_PRIVACY.md, "Manifests by reference"). From
the chain's ``manifest_ref_height`` on, a device's sealed fields name a slot
of its gateway's catalog instead of carrying its services, so a registration
is a small fixed-size blob and the services (most of the bytes) go on chain
once per kind of device, not once per device. What a reader of the chain must
not learn from the catalog is *when a new kind of device appears*: a slot
written right before a registration would say "this device is the first of
its kind here". So slot writes (``PutManifest``) follow a schedule that does
not look at kinds:

* a write travels only inside a batch that carries a device operation, first,
  and at most one per *gap* (drawn anew after each write, uniformly between
  half and one and a half ``put_gap_s``): whether a batch holds one depends on
  time and on device activity, never on what the devices offer;
* a batch that may hold a write takes the oldest new kind that a device in it
  waits for; with none it re-seals a slot chosen at random among all
  ``MAX_MANIFEST_SLOTS`` (its current content, or a free slot's empty
  manifest; fresh nonce, current epoch): a *cover* write, indistinguishable on
  chain, which also moves slots to the current epoch after a rotation;
* a new kind takes a free slot chosen at random among the same slots, and its
  devices wait (held in the submitter) until its write has committed, the
  first of them riding in the write's own batch. A new kind waits one gap for
  each new kind ahead of it, and only while the gateway's batches come faster
  than one per gap.

What remains for a reader of the chain: under a steady trickle of
registrations a write comes at the end of its gap with one device rather than
with the next device to arrive, which hints that the device waited for it (the
gap's random length, and blocks about as long as the gap, blur that); and a
slot's padded size class (1 KiB or 32 KiB) changes when a kind over ~1 KiB
takes it, which tells when such a large kind appeared. Slots are never freed:
a gateway offers at most ``MAX_MANIFEST_SLOTS`` kinds. One process per gateway
key keeps the catalog (a restarted one reads it back from the chain at its
first registration). This module is pure: the submitter asks it for the next
write (:meth:`ManifestCatalog.take_put`) and reports the outcome; the
commissioner asks for a device's slot (:meth:`ManifestCatalog.ref`).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable

from ...abci_app.sealing import MAX_MANIFEST_SLOTS
from ...proto import registry_pb2 as pb

PUT_GAP_S = 1.0  # at most one slot write per this long (on average), whatever the load

Sealer = Callable[[int, pb.Manifest], pb.Sealed]  # (slot, manifest) -> sealed under the current epoch


def manifest_key(services: Iterable[pb.ServiceDescriptor]) -> bytes:
    """The canonical bytes of a service list: one slot per distinct list."""
    return pb.Manifest(services=list(services)).SerializeToString(deterministic=True)


class CatalogFull(Exception):
    """Every slot the chain allows holds a kind already."""


class ManifestCatalog:
    """One gateway's slots: what the chain holds, what is sent, what waits; see the module docstring."""

    def __init__(self, *, slots: int = MAX_MANIFEST_SLOTS, put_gap_s: float = PUT_GAP_S,
                 rng: random.Random | None = None) -> None:
        self.capacity, self.put_gap_s = slots, put_gap_s
        self.rng = rng or random.SystemRandom()  # slot choices must not be predictable
        # slot -> manifest key on chain (b"": a free slot written; None: a slot this gateway cannot
        # open, e.g. sealed under an epoch it never held: never reused, never covered)
        self.committed: dict[int, bytes | None] = {}
        self.loaded = False  # load() ran: the chain's view is known (no write before it)
        self.sent: dict[int, bytes] = {}  # slot -> key in a batch not yet settled
        self.waiting: dict[int, bytes] = {}  # slot -> a new kind's key, not yet in any batch (oldest first)
        self.last_put_at = float("-inf")
        self._before_put = float("-inf")
        self._gap = put_gap_s  # this gap's length (drawn anew after each write)
        self.puts = {"new": 0, "cover": 0, "failed": 0}

    # ---- the chain's view ----

    def load(self, slots: dict[int, bytes | None]) -> None:
        """What the chain holds for this gateway (slot -> manifest key; b"": free; None: unreadable)."""
        self.committed = {s: k for s, k in slots.items() if s < self.capacity}
        self.loaded = True

    # ---- the commissioner's side ----

    def ref(self, services: Iterable[pb.ServiceDescriptor]) -> tuple[int, bool]:
        """(slot, held) for a device offering ``services``: held is True until the slot's
        manifest has committed (the device must not reach a block before it)."""
        key = manifest_key(services)
        for table in (self.sent, self.waiting, self.committed):
            for slot, content in table.items():
                if content == key:
                    return slot, self.held(slot)
        slot = self._free_slot()
        self.waiting[slot] = key
        return slot, True

    def held(self, slot: int) -> bool:
        """True while ``slot``'s new manifest waits for a batch or for its commit."""
        return slot in self.waiting or (slot in self.sent and self.sent[slot] != self.committed.get(slot, b""))

    def _free_slot(self) -> int:
        busy = {s for s, k in self.committed.items() if k != b""} | set(self.sent) | set(self.waiting)
        free = [s for s in range(self.capacity) if s not in busy]
        if not free:
            raise CatalogFull(f"all {self.capacity} catalog slots of this gateway hold a kind of device")
        return self.rng.choice(free)

    # ---- the submitter's side ----

    def wait_s(self, now: float) -> float:
        """Seconds until a batch may carry a slot write."""
        return max(0.0, self.last_put_at + self._gap - now)

    def take_put(self, now: float, seal: Sealer, riders: Iterable[int] = ()) -> tuple[pb.PutManifest, bytes] | None:
        """The slot write for a batch being cut now, or None within the gap. ``riders``: the
        waiting slots that devices in this batch wait for; the oldest of them is written,
        else (none) a cover of a random slot. ``seal`` raising (no current key) leaves
        everything as it was."""
        if now - self.last_put_at < self._gap:
            return None
        wanted = set(riders)
        slot = next((s for s in self.waiting if s in wanted), None)
        if slot is not None:
            key, kind = self.waiting[slot], "new"
        else:
            candidates = [s for s in range(self.capacity) if s not in self.sent and s not in self.waiting
                          and self.committed.get(s, b"") is not None]
            if not candidates:
                return None
            slot = self.rng.choice(candidates)
            key, kind = self.committed.get(slot, b""), "cover"
        sealed = seal(slot, pb.Manifest.FromString(key))
        self.waiting.pop(slot, None)
        self.sent[slot] = key
        self._before_put, self.last_put_at = self.last_put_at, now
        self._gap = self.put_gap_s * (0.5 + self.rng.random())
        self.puts[kind] += 1
        return pb.PutManifest(slot=slot, sealed=sealed), key

    def untake(self, slot: int, key: bytes) -> None:
        """A write taken for a batch that then carried nothing else: as if it was never taken."""
        if self.sent.get(slot) == key:
            del self.sent[slot]
        if key and self.committed.get(slot) != key:
            self.waiting = {slot: key, **self.waiting}  # first again
            self.puts["new"] -= 1
        else:
            self.puts["cover"] -= 1
        self.last_put_at = self._before_put

    def settled(self, slot: int, key: bytes, ok: bool) -> None:
        """A write's outcome: committed, or (failed) a new kind waits for the next batch again."""
        if self.sent.get(slot) == key:
            del self.sent[slot]
        if ok:
            self.committed[slot] = key
        else:
            self.puts["failed"] += 1
            if key and self.committed.get(slot) != key:
                self.waiting[slot] = key


async def load_catalog(catalog: ManifestCatalog, chain, ring, gateway_id: str) -> None:
    """Fill ``catalog`` with what the chain holds for ``gateway_id``, opened with ``ring``
    (a gateway restarting learns its slots back from the chain: nothing else is kept)."""
    from .sealbox import SealError

    slots: dict[int, bytes | None] = {}
    for record in await chain.manifests(gateway_id):
        try:
            slots[record.slot] = manifest_key(ring.open_manifest(record).services)
        except SealError:
            slots[record.slot] = None
    catalog.load(slots)
