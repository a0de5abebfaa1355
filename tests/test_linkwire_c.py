"""The optional C link codec (firmware/link/_linkwire.c) against the pure-Python
reference (link_wire._encode_py / _decode_py).

The C codec's contract: whenever it returns something, it is exactly what the
reference returns (and the reference does not raise); for anything else it
returns None and link_wire runs the reference, which raises its own error. So
valid messages of every schema must go through C, and random, truncated or
mutated bytes and out-of-range or oddly typed values must either agree or be
handed back. The link test modules are also run once more with C switched off.
Where a C compiler is present (CI) a missing accelerator is a failure, not a skip.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from proc_helpers import (import_accelerator, require_accelerator, run_tests_on_the_pure_path,
                          run_tests_without)
from test_link_wire import strategy

from edgistry.firmware.link import link_wire as wire
from edgistry.firmware.link.link_errors import DecodeError

NAME = "edgistry.firmware.link._linkwire"
_linkwire = import_accelerator(NAME)


@pytest.fixture(autouse=True)
def _accelerator_built() -> None:
    require_accelerator(_linkwire, NAME)


TESTS = Path(__file__).resolve().parent
MANY = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])
NAMES = sorted(wire.SCHEMAS)
ERR = "DecodeError"


def ref_decode(name, data, start=0, end=None):
    try:
        return wire._decode_py(name, data, start, end)
    except DecodeError:
        return ERR


def agree_decode(name, data, start=0, end=None):
    """C's answer is None or the reference's result; returns C's answer."""
    got = _linkwire.decode(name, data, start, end)
    want = ref_decode(name, data, start, end)
    if got is not None:
        assert want != ERR, (name, bytes(data).hex())
        assert got == want and list(got) == list(want)
        for k, v in got.items():  # same types, not only equal values (True == 1, b"" == "")
            assert type(v) is type(want[k]), (name, k)
    return got


def test_link_wire_uses_the_c_codec() -> None:
    assert wire.FAST_WIRE is _linkwire


@MANY
@given(st.sampled_from(NAMES).flatmap(lambda n: st.tuples(st.just(n), strategy(n))))
def test_valid_messages_go_through_c_and_agree(case) -> None:
    name, msg = case
    raw = _linkwire.encode(name, msg)
    assert raw is not None and raw == wire._encode_py(name, msg)
    got = agree_decode(name, raw)
    assert got is not None  # well-formed input is decoded in C
    assert wire.decode(name, raw) == wire._decode_py(name, raw)


@MANY
@given(st.sampled_from(NAMES), st.binary(max_size=80))
@example("LinkFrame", b"\x08\x80\x80\x80\x80\x10")            # uint32 truncated (1 << 32 -> 0)
@example("LinkFrame", b"\x10\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01")  # the largest uint64
@example("LinkFrame", b"\x10\xff\xff\xff\xff\xff\xff\xff\xff\xff\x02")  # exceeds 64 bits
@example("LinkFrame", b"\x10\xff\xff\xff\xff\xff\xff\xff\xff\xff\x81\x00")  # 11 bytes: too long
@example("LinkFrame", b"\x08\x81\x00")                        # non-minimal varint (accepted)
@example("LinkFrame", b"\x00\x01")                            # field number 0
@example("LinkFrame", b"\x0a\x00")                            # uint field as length-delimited
@example("LinkFrame", b"\x18\x01")                            # bytes field as varint
@example("LinkFrame", b"\x1a\x05abc")                         # truncated field
@example("Error", b"\x12\x02\xc3\x28")                        # invalid UTF-8
@example("Error", b"\x12\x02\xed\xa0")                        # a surrogate half
@example("Requests", b"\x20\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01")  # int64 -1
@example("Hello", b"\x79\x01\x02\x03\x04\x05\x06\x07\x08\x0d\x01\x02\x03\x04")  # fixed64, fixed32
@example("Hello", b"\x79\x01\x02")                            # truncated fixed64
@example("Hello", b"\x7b\x7c")                                # group wire types
@example("Requests", b"\x0a\x03\x0a\x01")                     # truncated nested message
def test_random_bytes_agree_or_are_handed_back(name, data) -> None:
    agree_decode(name, data)
    agree_decode(name, bytearray(data))
    agree_decode(name, memoryview(data))


@MANY
@given(st.sampled_from(NAMES).flatmap(lambda n: st.tuples(st.just(n), strategy(n))), st.data())
def test_mutated_encodings_agree_or_are_handed_back(case, data) -> None:
    name, msg = case
    raw = bytearray(wire._encode_py(name, msg))
    op = data.draw(st.sampled_from(["flip", "cut", "insert", "slice"]))
    if op == "flip" and raw:
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] ^= 1 << data.draw(st.integers(0, 7))
    elif op == "cut":
        raw = raw[:data.draw(st.integers(0, len(raw)))]
    elif op == "insert":
        i = data.draw(st.integers(0, len(raw)))
        raw[i:i] = data.draw(st.binary(min_size=1, max_size=4))
    elif op == "slice" and raw:
        start = data.draw(st.integers(0, len(raw)))
        end = data.draw(st.integers(start, len(raw)))
        agree_decode(name, bytes(raw), start, end)
        return
    agree_decode(name, bytes(raw))


def test_buffers_of_other_item_formats_are_handed_back() -> None:
    """Only unsigned-byte buffers are read in C: for another format the reference
    indexes items that are not the message's bytes."""
    from array import array
    raw = wire._encode_py("Bye", {"sleep_s": 5})  # 08 05
    assert agree_decode("Bye", array("B", raw)) == {"sleep_s": 5}
    for odd in (array("H", [0x0508]), memoryview(raw).cast("b"), memoryview(raw).cast("c"),
                memoryview(b"\x08\x05\x08\x05").cast("B", (2, 2)), memoryview(b"\x08_\x05")[::2]):
        assert _linkwire.decode("Bye", odd, 0, None) is None


def test_bounds_and_odd_arguments_are_handed_back() -> None:
    raw = wire._encode_py("Bye", {"sleep_s": 5})
    for start, end in [(-1, None), (0, len(raw) + 1), (2, 1), (0, -1)]:
        assert _linkwire.decode("Bye", raw, start, end) is None
    assert _linkwire.decode("NoSuchMessage", raw, 0, None) is None
    assert _linkwire.decode("Bye", "text", 0, None) is None
    assert _linkwire.decode("Bye", raw, 0.0, None) is None
    assert _linkwire.decode("Bye", raw, 0, None) == {"sleep_s": 5}
    assert agree_decode("Bye", b"xx" + raw, 2, 2 + len(raw)) == {"sleep_s": 5}
    with pytest.raises(TypeError):
        _linkwire.decode("Bye", raw)
    with pytest.raises(TypeError):
        _linkwire.encode("Bye")


class _Int(int):
    def __and__(self, other):
        return 7


class _Hostile:
    """Mutates the message it sits in when compared or tested for truth."""
    victim: dict = {}

    def __ne__(self, other):
        self.victim.clear()
        return True

    def __bool__(self):
        self.victim.clear()
        return True


@pytest.mark.parametrize("name,msg", [
    ("Bye", {"sleep_s": 2**32}),                      # uint32 out of range
    ("Bye", {"sleep_s": -1}),
    ("Bye", {"sleep_s": 1.0}),
    ("Bye", {"sleep_s": "5"}),
    ("LinkFrame", {"seq": 2**64}),                    # uint64 out of range
    ("Requests", {"gateway_now_ms": 2**63}),          # int64 out of range
    ("Requests", {"gateway_now_ms": -(2**63) - 1}),
    ("Requests", {"revoked": [b"a", "b"]}),          # str in a bytes field
    ("Requests", {"revoked": range(97, 98)}),          # an iterable, not a list
    ("Requests", {"items": [{"service": 5}]}),        # int in a string field
    ("Requests", {"items": [["not", "a", "dict"]]}),
    ("Error", {"reason": "\ud800"}),                  # a lone surrogate: not UTF-8
    ("Hello", {"nonce": memoryview(b"ab")}),          # bytes-like, not bytes
    ("NoSuchMessage", {}),
    ("Bye", {"sleep_s": _Int(5)}),                     # an int subclass (its operators are its own)
    ("Accept", {"encrypt": "yes"}),                   # truthy, but not a bool or int
    ("Requests", {"items": [_Hostile()]}),            # its __ne__/__bool__ must not run in C
    ("Accept", {"mac": _Hostile()}),
])
def test_unusual_values_are_handed_back_to_the_reference(name, msg) -> None:
    """C answers None; link_wire.encode then gives exactly the reference's outcome."""
    hostile = [h for v in msg.values() for h in (v if isinstance(v, list) else [v]) if isinstance(h, _Hostile)]
    for h in hostile:
        h.victim = msg  # so that running its methods would pull the message from under C
    keys = list(msg)
    assert _linkwire.encode(name, msg) is None
    assert list(msg) == keys  # its methods did not run in C
    for h in hostile:
        h.victim = {}  # the reference may run them: leave the message as it is
    try:
        want = wire._encode_py(name, msg)
    except Exception as exc:  # noqa: BLE001 - the reference's own error
        with pytest.raises(type(exc)):
            wire.encode(name, msg)
    else:
        assert wire.encode(name, msg) == want


def test_plain_but_unusual_values_agree() -> None:
    """Values the reference accepts and C handles too: bools as ints, tuples,
    bytearrays, defaults and missing fields."""
    cases = [
        ("Bye", {"sleep_s": True}), ("Bye", {"sleep_s": False}), ("Bye", {}), ("Bye", {"sleep_s": None}),
        ("Accept", {"encrypt": 7, "mac": bytearray(b"m"), "ticket_ttl_s": 0}),
        ("Requests", {"revoked": (b"a", bytearray(b"b")), "items": (), "more": 0}),
        ("Requests", {"items": [{}], "gateway_now_ms": -1}),
        ("Ack", {"ids": [b"", b"x"]}),
        ("Error", {"reason": "é\u2603\U0001F600", "extra": 1}),
    ]
    for name, msg in cases:
        raw = _linkwire.encode(name, msg)
        assert raw is not None and raw == wire._encode_py(name, msg), (name, msg)
        assert agree_decode(name, raw) is not None


# ---- init ----------------------------------------------------------------------

INIT_RUN = r"""
import gc, sys, tracemalloc
from edgistry.firmware.link import _linkwire  # not link_wire: that would compile its table

def fresh(text):  # a str of its own (not interned), so its count is this run's
    return "".join(list(text))

names = [fresh("first"), fresh("second"), fresh("third"), fresh("MsgA"), fresh("MsgB")]
defaults = {"u": 10**40, "b": bytes(bytearray(b"dflt")), "s": fresh("text")}
broken = [  # each refused after some fields were compiled and hold references
    {names[3]: ((1, names[0], "u", False), (2, names[1], "b", False)),
     names[4]: ((1, names[2], "nosuchkind", False),)},
    {names[3]: ((1, names[0], "u", False),), names[4]: ((1, names[2], "s", False), "junk")},
    {names[3]: ((1, names[0], "u", False),), names[4]: [(1, names[2], "s", False)]},
    {names[3]: ((1, names[0], "u", False), (2, names[1], "?", False))},  # no default for "?"
]
held = names + list(defaults.values())
counts = [sys.getrefcount(v) for v in held]

def refuse_all():
    for schemas in broken:
        try:
            _linkwire.init(schemas, (), defaults)
        except (TypeError, ValueError):
            continue
        raise AssertionError("accepted %r" % (schemas,))

refuse_all()
gc.collect()
tracemalloc.start()
before = tracemalloc.get_traced_memory()[0]
for _ in range(200):
    refuse_all()
gc.collect()
grown = tracemalloc.get_traced_memory()[0] - before
tracemalloc.stop()
assert [sys.getrefcount(v) for v in held] == counts, ([sys.getrefcount(v) for v in held], counts)
assert grown < 16 * 1024, grown
assert _linkwire.decode("Bye", b"\x08\x05", 0, None) is None  # still nothing compiled
from edgistry.firmware.link import link_wire  # compiles the real table now
assert _linkwire.decode("Bye", b"\x08\x05", 0, None) == {"sleep_s": 5}
print("init ok")
"""


def test_a_refused_init_keeps_nothing() -> None:
    """init() refusing a table partway (a later message or field wrong) keeps no
    reference, frees what it compiled, and a later init() still works; in a fresh
    interpreter, as the module compiles its table once."""
    proc = subprocess.run([sys.executable, "-c", INIT_RUN], capture_output=True, text=True,
                          timeout=120, cwd=TESTS.parent)
    assert proc.returncode == 0 and "init ok" in proc.stdout, proc.stdout + proc.stderr


# ---- where the accelerator should have built ------------------------------------

def test_a_missing_accelerator_fails_under_ci_and_skips_elsewhere() -> None:
    """Without _linkwire this module's tests fail with a clear message when CI is
    set (there is a compiler there: the build is broken) and skip with the
    reason elsewhere."""
    select = "uses_the_c_codec or bounds_and_odd"
    failed = run_tests_without([NAME], [Path(__file__)], ci=True, select=select)
    assert failed.returncode == 1, failed.stdout[-3000:] + failed.stderr[-2000:]
    assert "was not built, but CI has a C compiler" in failed.stdout
    assert " error" in failed.stdout and " passed" not in failed.stdout  # (at setup: a fixture's)
    skipped = run_tests_without([NAME], [Path(__file__)], ci=False, select=select)
    assert skipped.returncode == 0, skipped.stdout[-3000:] + skipped.stderr[-2000:]
    assert "was not built (no C compiler when installed)" in skipped.stdout
    assert " skipped" in skipped.stdout
    assert " passed" not in skipped.stdout and " failed" not in skipped.stdout


# ---- the existing link tests, on the pure path ---------------------------------

def test_link_test_modules_pass_on_the_pure_path() -> None:
    """test_link_wire and test_link_session again, with the C codec switched off
    (the default run above them uses it)."""
    modules = [str(TESTS / f"test_link_{m}.py") for m in ("wire", "session")]
    run_tests_on_the_pure_path("edgistry.firmware.link.link_wire", "FAST_WIRE", "_decode_py", modules)
