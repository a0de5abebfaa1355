"""The registry's LMDB store: history at past heights, its pruning window, both change-list formats."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgistry.abci_app.keys import be64
from edgistry.abci_app.store import Store, StoreError

H = b"\x00" * 32  # a stand-in app hash / lthash


def _commit(store: Store, height: int, writes: dict) -> None:
    store.commit(height, writes, H, H)


def _count(store: Store, db) -> int:
    with store.env.begin() as txn:
        return txn.stat(db)["entries"]


def test_reads_at_past_heights_and_pruned_window(tmp_path):
    """Every height in the window reads its own values (puts, overwrites, deletes); history
    older than the window is dropped and those heights are refused."""
    store = Store(tmp_path / "s", retain_heights=3)
    _commit(store, 1, {b"a": b"1", b"b": b"x"})
    _commit(store, 2, {b"a": b"2", b"c": b"new"})
    _commit(store, 3, {b"b": None, b"a": b"3"})
    _commit(store, 4, {b"a": b"4"})
    want = {2: {b"a": b"2", b"b": b"x", b"c": b"new"}, 3: {b"a": b"3", b"b": None, b"c": b"new"},
            4: {b"a": b"4", b"b": None, b"c": b"new"}}
    for height, values in want.items():
        with store.reader(height) as r:
            assert {k: r.get(k) for k in values} == values, height
            assert [k for k, _ in r.scan(b"")] == sorted(k for k, v in values.items() if v is not None)
    with pytest.raises(StoreError):
        store.reader(1)
    _commit(store, 5, {b"a": b"5"})  # window 3..5: the change list of height 2 goes
    with store.env.begin() as txn:
        assert txn.get(be64(2), db=store._changes) is None
        assert txn.get(b"a" + be64(2), db=store._hist) is None
        assert txn.get(b"a" + be64(4), db=store._hist) == b"\x01" + b"3"
    store.close()


def test_unchanged_writes_and_deletes_of_absent_keys_leave_no_history(tmp_path):
    """Writing a key's current value, or deleting a key that does not exist, changes nothing."""
    store = Store(tmp_path / "s")
    _commit(store, 1, {b"a": b"1"})
    _commit(store, 2, {b"a": b"1", b"gone": None})
    assert _count(store, store._hist) == 0
    assert _count(store, store._changes) == 0
    _commit(store, 3, {b"a": b"2"})
    assert _count(store, store._hist) == 1
    store.close()


def test_pruning_reads_the_older_per_key_change_format(tmp_path):
    """A store written with one change record per key (be64(h) || key) is pruned as well."""
    store = Store(tmp_path / "s", retain_heights=2)
    _commit(store, 1, {b"k": b"1"})
    with store.env.begin(write=True) as txn:  # height 2 as the earlier format wrote it
        txn.put(b"k", b"2", db=store._state)
        txn.put(b"k" + be64(2), b"\x01" + b"1", db=store._hist)
        txn.put(be64(2) + b"k", b"", db=store._changes)
        txn.put(b"height", be64(2), db=store._meta)
    store.close()
    store = Store(tmp_path / "s", retain_heights=2)
    with store.reader(2) as r:
        assert r.get(b"k") == b"2"
    _commit(store, 3, {b"k": b"3"})
    _commit(store, 4, {b"k": b"4"})  # the window is 3..4: height 2's per-key entry goes
    with store.env.begin() as txn:
        assert txn.get(b"k" + be64(2), db=store._hist) is None
        assert txn.get(be64(2) + b"k", db=store._changes) is None
    with store.reader(3) as r:
        assert r.get(b"k") == b"3"
    store.close()


KEYS = [b"d/" + bytes([i]) * 4 for i in range(12)] + [b"e/zzzz"]  # one length under d/, a neighbour prefix


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.dictionaries(st.sampled_from(KEYS), st.one_of(st.none(), st.binary(min_size=1, max_size=3)),
                                max_size=6), min_size=1, max_size=8),
       st.integers(min_value=1, max_value=5))
def test_scans_at_past_heights_match_a_model_page_by_page(tmp_path_factory, blocks, page):
    """Every retained height lists what it held under the prefix, whole and page by page."""
    store = Store(tmp_path_factory.mktemp("s"), retain_heights=5)
    model: dict[bytes, bytes] = {}
    states = {}
    for height, writes in enumerate(blocks, start=1):
        _commit(store, height, writes)
        for k, v in writes.items():
            if v is None:
                model.pop(k, None)
            else:
                model[k] = v
        states[height] = dict(model)
    for height in range(store.oldest_height, store.height + 1):
        want = sorted((k, v) for k, v in states[height].items() if k.startswith(b"d/"))
        with store.reader(height) as r:
            assert list(r.scan(b"d/")) == want, height
            got, after = [], b""
            while True:  # pages chained by their last key, as the list queries do
                items = list(itertools.islice(r.scan(b"d/", after), page))
                got += items
                if len(items) < page:
                    break
                after = items[-1][0]
            assert got == want, (height, page)
    store.close()


def test_a_page_at_a_past_height_reads_only_the_history_it_needs(tmp_path, monkeypatch):
    """A one-item page at an old height reads a few history entries, not every version under
    the prefix (before, each page walked all of it: 136-245 ms with 50k devices rewritten 6 times)."""
    from edgistry.abci_app import store as store_mod

    store = Store(tmp_path / "s", retain_heights=100)
    keys = [b"d/" + i.to_bytes(4, "big") for i in range(2000)]
    for height in range(1, 8):  # every key rewritten at each height: 6 versions in history
        _commit(store, height, {k: b"v%d" % height for k in keys})
    read = {"hist": 0}
    real_scan = store_mod._scan

    def counting_scan(cursor, prefix, start_after):
        for item in real_scan(cursor, prefix, start_after):
            if len(item[0]) == len(keys[0]) + 8:
                read["hist"] += 1
            yield item
    monkeypatch.setattr(store_mod, "_scan", counting_scan)
    with store.reader(2) as r:
        first = next(r.scan(b"d/"))
        assert first == (keys[0], b"v2")
        page = list(itertools.islice(r.scan(b"d/", keys[999]), 3))
        assert page == [(k, b"v2") for k in keys[1000:1003]]
    assert read["hist"] < 40, read  # all of it is 12,000 entries
    store.close()


def test_a_key_schema_that_is_not_prefix_free_is_refused_not_misread(tmp_path):
    """Keys where one is a proper prefix of another come out of history out of order:
    the scan at a past height raises rather than listing them wrongly."""
    store = Store(tmp_path / "s")
    _commit(store, 1, {b"p/a": b"1", b"p/a\x00\x00\x00\x00\x00\x00\x00\x00\x09": b"2"})
    _commit(store, 2, {b"p/a": b"3", b"p/a\x00\x00\x00\x00\x00\x00\x00\x00\x09": b"4"})
    _commit(store, 3, {b"p/a": b"5", b"p/a\x00\x00\x00\x00\x00\x00\x00\x00\x09": b"6"})
    with store.reader(1) as r, pytest.raises(StoreError, match="prefix-free"):
        list(r.scan(b"p/"))
    store.close()
