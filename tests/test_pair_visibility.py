"""What the gateway tells `edgistry pair` about discovery: the same answer discovery gives,
no count of withheld devices, and a bounded wait for a replica that lags or never comes."""

from __future__ import annotations

import asyncio
import random
import time

from edgistry.gateway.discovery.core import Filters
from edgistry.gateway.discovery.regions import Region, parent
from edgistry.gateway.discovery.replica import ReplicaFollower
from edgistry.gateway.pairing import visibility
from edgistry.proto import gateway_pb2 as gw
from discovery_helpers import NOW_MS, World, cell_at, entry, population


def test_assess_agrees_with_what_discovery_answers():
    """Every device of a mixed population: pairing's disclosure cell is the cell discovery shows
    it at, and 0 exactly for the devices discovery withholds."""
    rng = random.Random(11)
    sparse = population(rng, 30, box=(-40.0, 40.0, -100.0, 100.0), k_choices=(5, 8))  # mostly withheld
    world = World(population(rng, 400) + sparse)
    client = world.client()
    bases = {parent(e.cell, 0) for e in world.index.entries.values()}
    shown = world.service.snapshot(client, "sensor", Region.of_cells(bases), Filters(), NOW_MS)
    hidden = 0
    for p in world.index.entries:
        (v,) = visibility.assess(world.index, p)
        assert v.service_type == "sensor" and v.disclosed_cell == shown.get(p, (0,))[0]
        hidden += not v.disclosed_cell
    assert 0 < hidden < len(world.index.entries)  # both kinds occur


def test_a_lone_device_is_hidden_until_its_group_is_large_enough():
    """One device asking k=3 is hidden; with two more of its type in its cell it is disclosed
    there; a device the index does not hold gets no answer at all."""
    rng = random.Random(3)
    lone = entry(rng, 52.52, 13.40, res=7, k=3)
    world = World([lone])
    assert visibility.assess(world.index, lone.pseudonym) == [gw.PairVisibility(service_type="sensor")]
    for _ in range(2):
        world.index.upsert(entry(rng, 52.52, 13.40, res=7, k=2))
    (v,) = visibility.assess(world.index, lone.pseudonym)
    assert v.disclosed_cell == cell_at(52.52, 13.40, 7) == lone.cell
    assert visibility.assess(world.index, bytes(16)) is None


def test_the_tool_reads_the_result_in_the_cli_shape_without_counts():
    """The pairing result becomes the CLI's JSON (cells in hex, no device count); a result
    whose gateway could not tell reads as None, and the advice names k and the way out."""
    cell = cell_at(52.52, 13.40, 7)
    result = visibility.fill(gw.PairResult(cell=cell), [gw.PairVisibility(service_type="sensor"),
                                                        gw.PairVisibility(service_type="valve", disclosed_cell=cell)])
    hidden, shown = visibility.to_dicts(gw.PairResult.FromString(result.SerializeToString()), 7, 5)
    assert hidden == {"service_type": "sensor", "cell": f"{cell:x}", "resolution": 7, "k": 5, "visible": False,
                      "disclosed_cell": None}
    assert shown["visible"] and shown["disclosed_cell"] == f"{cell:x}"
    assert "hidden from discovery" in visibility.advice(hidden) and "k=5" in visibility.advice(hidden)
    assert "--k" in visibility.advice(hidden) and "discoverable" in visibility.advice(shown)
    assert visibility.to_dicts(visibility.fill(gw.PairResult(cell=cell), None), 7, 5) is None


def test_a_replica_that_does_not_catch_up_bounds_the_wait():
    """A replica that never reaches the registration's height: pairing gets no answer, within
    the bound, instead of waiting on it; no replica at all is no answer at once."""
    follower = ReplicaFollower(chain=None)  # never run: it stays at height 0, not loaded
    rng = random.Random(5)
    follower.index.load([e := entry(rng, 1.0, 1.0, k=1)], height=0)
    t0 = time.monotonic()
    assert asyncio.run(visibility.after_commit(follower, e.pseudonym, 1, timeout=0.3)) is None
    assert 0.25 <= time.monotonic() - t0 < 3
    assert asyncio.run(visibility.after_commit(None, e.pseudonym, 1)) is None
