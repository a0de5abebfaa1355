"""A gateway's catalog of manifests (gateway/discovery/catalog.py): slots, the write schedule,
and what the schedule lets a reader of the chain learn."""

from __future__ import annotations

import random

import pytest

from edgistry.abci_app.sealing import MAX_MANIFEST_SLOTS
from edgistry.gateway.discovery.catalog import CatalogFull, ManifestCatalog, manifest_key
from edgistry.proto import registry_pb2 as pb


def services(*types: str) -> list[pb.ServiceDescriptor]:
    return [pb.ServiceDescriptor(type=t, methods=[pb.ServiceMethod(name="read")]) for t in types]


def seal(slot: int, manifest: pb.Manifest) -> pb.Sealed:
    """A stand-in seal for the core's bookkeeping: the tests read the manifest back from it."""
    return pb.Sealed(epoch=1, nonce=bytes(12), ciphertext=manifest.SerializeToString(deterministic=True))


def catalog(**kw) -> ManifestCatalog:
    return ManifestCatalog(rng=random.Random(7), **kw)


def test_one_slot_per_kind_and_a_new_kind_waits_for_its_write():
    c = catalog()
    slot, held = c.ref(services("meter"))
    assert held and c.held(slot)
    assert c.ref(services("meter")) == (slot, True)  # a second device of the kind waits for the same write
    put, key = c.take_put(10.0, seal, riders=[slot])
    assert put.slot == slot and pb.Manifest.FromString(put.sealed.ciphertext).services == services("meter")
    assert c.held(slot) and c.ref(services("meter")) == (slot, True)  # sent: later devices wait for its commit
    c.settled(slot, key, True)
    assert c.committed[slot] == manifest_key(services("meter")) and c.ref(services("meter")) == (slot, False)
    other, held = c.ref(services("meter", "valve"))
    assert held and other != slot


def test_writes_are_one_per_gap_whatever_the_kinds():
    c = catalog(put_gap_s=1.0)
    assert c.take_put(0.0, seal) is not None  # a cover: nothing waits
    assert c.take_put(0.1, seal) is None
    slot, _ = c.ref(services("meter"))
    assert c.take_put(0.2, seal, riders=[slot]) is None  # a new kind does not shorten the gap
    assert 0.0 < c.wait_s(0.2) <= 1.3
    put, _ = c.take_put(0.2 + c.wait_s(0.2), seal, riders=[slot])
    assert put.slot == slot


def test_the_gap_is_drawn_anew_within_half_to_one_and_a_half():
    c = catalog(put_gap_s=1.0)
    gaps, now = [], 0.0
    for _ in range(200):
        put, key = c.take_put(now, seal)
        c.settled(put.slot, key, True)
        gap = c.wait_s(now)
        gaps.append(gap)
        now += gap + 1e-9
    assert 0.5 <= min(gaps) and max(gaps) <= 1.5 and max(gaps) - min(gaps) > 0.5


def test_a_write_prefers_the_kind_a_device_in_the_batch_waits_for():
    c = catalog(put_gap_s=0.0)
    a, _ = c.ref(services("a"))
    b, _ = c.ref(services("b"))
    put, _ = c.take_put(1.0, seal, riders=[b])  # only b's device is in this batch
    assert put.slot == b and c.held(a)
    put, _ = c.take_put(2.0, seal, riders=[])  # no rider: a cover, never a's write (a's device is not in it)
    assert put.slot not in (a, b) and c.held(a)


def test_a_failed_write_of_a_new_kind_waits_again_and_a_cover_keeps_the_slot():
    c = catalog(put_gap_s=0.0)
    slot, _ = c.ref(services("meter"))
    put, key = c.take_put(1.0, seal, riders=[slot])
    c.settled(slot, key, False)
    assert c.held(slot) and c.puts["failed"] == 1
    put, key = c.take_put(2.0, seal, riders=[slot])
    c.settled(slot, key, True)
    cover, ckey = c.take_put(3.0, seal)
    c.settled(cover.slot, ckey, False)  # a cover that failed: nothing waits for it
    assert not c.waiting and c.committed[slot] == manifest_key(services("meter"))


def test_untaken_write_is_as_if_never_taken():
    c = catalog(put_gap_s=1.0)
    slot, _ = c.ref(services("meter"))
    put, key = c.take_put(5.0, seal, riders=[slot])
    c.untake(put.slot, key)
    assert c.held(slot) and not c.sent and c.wait_s(5.0) == 0.0 and c.puts["new"] == 0


def test_covers_rewrite_what_the_slot_holds_and_skip_unreadable_slots():
    c = catalog(slots=4, put_gap_s=0.0)
    c.load({0: manifest_key(services("meter")), 1: None, 2: b""})
    seen = {}
    for t in range(200):
        put, key = c.take_put(float(t), seal)
        seen[put.slot] = pb.Manifest.FromString(put.sealed.ciphertext)
        c.settled(put.slot, key, True)
    assert set(seen) == {0, 2, 3}  # slot 1 cannot be opened here: never rewritten
    assert list(seen[0].services) == services("meter") and not seen[2].services and not seen[3].services
    new, _ = c.ref(services("valve"))
    assert new == 2 or new == 3  # free slots only: never the unreadable one, never a kind's


def test_the_catalog_spans_every_slot_from_the_start_and_refuses_one_kind_too_many():
    """Covers and new kinds roam all MAX_MANIFEST_SLOTS slots at once: a catalog that grew on
    demand would date, by its first write past the old span, the kind that made it grow."""
    c = catalog(put_gap_s=0.0)
    seen = set()
    for t in range(2000):
        put, key = c.take_put(float(t), seal)
        c.settled(put.slot, key, True)
        seen.add(put.slot)
    assert seen == set(range(MAX_MANIFEST_SLOTS))
    full = catalog()
    full.load({s: manifest_key(services(f"k{s}")) for s in range(MAX_MANIFEST_SLOTS)})
    with pytest.raises(CatalogFull):
        full.ref(services("one-more"))


def test_a_cover_in_flight_holds_nothing_and_a_new_kind_in_flight_holds_its_devices():
    c = catalog(put_gap_s=0.0)
    c.load({5: manifest_key(services("meter"))})
    put, key = c.take_put(1.0, seal, riders=[])
    assert not c.held(put.slot)  # a cover: what it writes is on chain already
    new, _ = c.ref(services("valve"))
    put, key = c.take_put(2.0, seal, riders=[new])
    assert put.slot == new and c.held(new)
    c.settled(new, key, True)
    assert not c.held(new)


def test_new_kinds_take_random_free_slots():
    firsts = {ManifestCatalog(rng=random.Random(seed)).ref(services("meter"))[0] for seed in range(40)}
    assert len(firsts) > 10  # not "the next free slot": its place says nothing about the gateway's history
