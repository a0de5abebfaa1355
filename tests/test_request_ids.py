"""Request ids (gateway/ids.py): 16 bytes, milliseconds first, 80 random bits after.

The store keys requests by id, so ids made later must sort later (new records land on
the B-tree's last pages); two ids made in the same millisecond must still differ; the
gateway's ids and the client library's have the same layout."""

from __future__ import annotations

import time

from edgistry.gateway import ids
from edgistry.gateway.client.base import new_request_id
from edgistry.gateway.store.records import new_id


def test_ids_carry_the_millisecond_clock_then_random_bytes(monkeypatch) -> None:
    now_ns = 1_796_000_000_123_456_789  # a moment in 2026
    monkeypatch.setattr(ids.time, "time_ns", lambda: now_ns)
    a, b = ids.time_ordered_id(), ids.time_ordered_id()
    assert len(a) == len(b) == 16
    assert int.from_bytes(a[:6], "big") == now_ns // 1_000_000 == int.from_bytes(b[:6], "big")
    assert a[6:] != b[6:]  # same millisecond, different ids


def test_a_later_id_sorts_after_an_earlier_one_whatever_its_random_part(monkeypatch) -> None:
    clock = [1_796_000_000_000_000_000]
    monkeypatch.setattr(ids.time, "time_ns", lambda: clock[0])
    made = []
    for _ in range(200):
        made.append(ids.time_ordered_id())
        clock[0] += 1_000_000  # one millisecond on
    assert made == sorted(made)
    assert len({m[6:] for m in made}) == 200


def test_the_store_and_the_client_library_make_such_ids() -> None:
    before = time.time_ns() // 1_000_000
    rid, cid = new_id(), bytes.fromhex(new_request_id())
    after = time.time_ns() // 1_000_000
    for got in (rid, cid):
        assert len(got) == 16 and before <= int.from_bytes(got[:6], "big") <= after
    assert len({new_id() for _ in range(20_000)}) == 20_000
