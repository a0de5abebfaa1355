"""The registry's LMDB store: history at past heights, its pruning window, both change-list formats."""

from __future__ import annotations

import pytest

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
