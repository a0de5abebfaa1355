"""LtHash16: order independence, exact removal, lazy reduction."""

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from edgistry.abci_app.lthash import LtHash

records = st.lists(st.tuples(st.binary(max_size=20), st.binary(max_size=40)), max_size=25, unique_by=lambda r: r[0])


@settings(max_examples=60)
@given(records, st.randoms())
def test_order_independent_and_removal_exact(items, rnd):
    """Any insertion order gives the same digest; removing all returns to empty."""
    a, b = LtHash(), LtHash()
    for k, v in items:
        a.add(k, v)
    shuffled = list(items)
    rnd.shuffle(shuffled)
    for k, v in shuffled:
        b.add(k, v)
    assert a.digest() == b.digest()
    for k, v in items:
        a.remove(k, v)
    assert a.to_bytes() == LtHash().to_bytes()


def test_value_changes_change_the_digest():
    """A changed value, a moved value or an extra record all change the digest."""
    base = LtHash()
    base.add(b"k1", b"v1")
    base.add(b"k2", b"v2")
    for items in ([(b"k1", b"v2"), (b"k2", b"v1")], [(b"k1", b"v1")], [(b"k1", b"v1"), (b"k2", b"v2"), (b"k3", b"")]):
        other = LtHash()
        for k, v in items:
            other.add(k, v)
        assert other.digest() != base.digest()


def test_many_updates_reduce_correctly_and_round_trip():
    """Past the headroom the sum is reduced; serialisation round-trips."""
    rng = random.Random(5)
    acc, ref = LtHash(), LtHash()
    for _ in range(70_000 // 100):
        k, v = rng.randbytes(8), rng.randbytes(8)
        for _ in range(100):
            acc.add(k, v)
            acc.remove(k, v)
    acc.add(b"x", b"y")
    ref.add(b"x", b"y")
    assert acc.to_bytes() == ref.to_bytes()
    assert LtHash.from_bytes(acc.to_bytes()).digest() == ref.digest()


def test_digest_is_pinned_across_implementations():
    """A fixed sequence of adds and removes gives the digest the first implementation gave
    (app hashes of existing chains must not change when the lane arithmetic is optimised)."""
    rng = random.Random(2024)
    acc = LtHash()
    items = [(rng.randbytes(rng.randint(0, 40)), rng.randbytes(rng.randint(0, 200))) for _ in range(300)]
    for k, v in items:
        acc.add(k, v)
    for k, v in items[::3]:
        acc.remove(k, v)
    mid = acc.to_bytes()
    for k, v in items[:50]:
        acc.add(k, v + b"!")
    assert acc.digest().hex() == "0b98473b1357e3127ef9d79420353d6ed4c3d965f1099ad1f3aa5a5259f36bb8"
    assert LtHash.from_bytes(mid).digest().hex() == "411e934b5382b6505aef9d3225f56b5ed4daef5e4286fc7a88d23ec99d79d8ab"


def test_the_accelerator_is_used_exactly_when_it_imports():
    """The C lane arithmetic when the install built it, the Python reference otherwise
    (tests/test_lthash_c.py runs this module once more with it unbuilt)."""
    import importlib

    from edgistry.abci_app.lthash import FastLtHash, PyLtHash

    try:
        importlib.import_module("edgistry.abci_app._lthash")
        built = True
    except ImportError:
        built = False
    assert LtHash is (FastLtHash if built else PyLtHash)
