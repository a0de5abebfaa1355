"""The optional C lane arithmetic of the LtHash (abci_app/_lthash.c) against the pure-Python
reference (lthash.PyLtHash): the same bytes for any sequence of adds and removes, under
both versions, and the app-hash tests pass again with the accelerator unbuilt.
Where a C compiler is present (CI) a missing accelerator is a failure, not a skip."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from proc_helpers import import_accelerator, require_accelerator, run_tests_without

from edgistry.abci_app import lthash
from edgistry.abci_app.lthash import NBYTES, V1, V2, FastLtHash, PyLtHash

NAME = "edgistry.abci_app._lthash"
_lthash = import_accelerator(NAME)
TESTS = Path(__file__).resolve().parent


@pytest.fixture(autouse=True)
def _accelerator_built() -> None:
    require_accelerator(_lthash, NAME)


def test_the_registry_uses_it_when_built():
    assert lthash.LtHash is FastLtHash


ops = st.lists(st.tuples(st.booleans(), st.binary(max_size=24), st.binary(max_size=300)), max_size=60)


@settings(max_examples=150, deadline=None)
@given(ops, st.sampled_from((V1, V2)), st.binary(min_size=NBYTES, max_size=NBYTES) | st.just(b""))
def test_the_same_bytes_as_the_reference(seq, version, start):
    """From any stored sum (or none), any adds and removes (of records never added too)."""
    fast, ref = FastLtHash.from_bytes(start, version), PyLtHash.from_bytes(start, version)
    for remove, key, value in seq:
        for acc in (fast, ref):
            (acc.remove if remove else acc.add)(key, value)
        assert fast.to_bytes() == ref.to_bytes()
    assert fast.digest() == ref.digest()
    copy = fast.copy()
    copy.add(b"k", b"v")
    assert fast.to_bytes() == ref.to_bytes() != copy.to_bytes()  # a copy is its own


def test_every_lane_wraps_both_ways():
    """All lanes at 0xffff plus 1, and 0 minus 1: the carry never reaches the next lane."""
    ones = (1).to_bytes(2, "little") * (NBYTES // 2)
    acc = bytearray(b"\xff" * NBYTES)
    _lthash.fold(acc, ones, False)
    assert acc == bytes(NBYTES)
    _lthash.fold(acc, ones, True)
    assert acc == b"\xff" * NBYTES


def test_bad_arguments_are_refused_and_change_nothing():
    acc = bytearray(NBYTES)
    for args, exc in (((acc, bytes(NBYTES - 1), False), ValueError), ((bytearray(NBYTES + 2), bytes(NBYTES), True),
                      ValueError), ((bytes(NBYTES), bytes(NBYTES), False), TypeError)):
        with pytest.raises(exc):
            _lthash.fold(*args)
    assert acc == bytes(NBYTES)


def test_a_build_that_disagrees_stops_the_self_test(monkeypatch):
    def off_by_one(acc: bytearray, element: bytes, subtract: bool) -> None:
        _lthash.fold(acc, element, subtract)
        acc[0] ^= 1

    monkeypatch.setattr(lthash, "_fold", off_by_one)
    with pytest.raises(RuntimeError, match="disagrees"):
        lthash.self_test()


def test_the_app_hash_tests_pass_on_the_pure_python_path():
    files = [TESTS / "test_lthash.py", TESTS / "test_lthash_activation.py", TESTS / "test_determinism.py",
             TESTS / "test_snapshots.py"]
    proc = run_tests_without([NAME], files, ci=False, select="not pure_python_path")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and " failed" not in proc.stdout
