"""Device twins' rules (gateway/twins/model.py) and their store operations
(gateway/store/twin_ops.py) over an in-memory transaction view: versions,
compare-and-set, the delta a device has not applied, reports, withdrawal on
revocation, sizes, and a simulated device that sleeps through anything."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgistry.gateway.errors import BadRequest, NotFound, VersionConflict
from edgistry.gateway.store import keys, ops
from edgistry.gateway.store.kv import MemoryKV
from edgistry.gateway.store.ops import Ctx
from edgistry.gateway.store.records import Device
from edgistry.gateway.twins import model
from edgistry.gateway.twins.model import Change, Twin

NOW = 1_800_000_000_000
LINK = b"L" * 16
A, B, C = b"a" * 32, b"b" * 32, b"c" * 32  # revocation tags of three token chains


def sets(twin: Twin, *pairs, chain=(A,), now=NOW) -> list[tuple[str, int]]:
    return model.set_desired(twin, [Change(k, v, iv) for k, v, iv in pairs], list(chain), now)


def device_state(twin: Twin, after: int = 0) -> dict[str, bytes]:
    """What a device that applied the whole delta from ``after`` holds of it."""
    changes, _ = model.delta(twin, after)
    return {k: v for k, v, _ in changes if v}


def test_versions_rise_per_change_even_when_the_clock_does_not():
    """Each change gets a version above every earlier one; the clock only lifts them."""
    t = Twin()
    (_, v1), (_, v2) = sets(t, ("a", b"1", None), ("b", b"2", None))
    (_, v3), = sets(t, ("a", b"3", None), now=NOW - 5_000)
    assert NOW <= v1 < v2 < v3 and t.version == v3


def test_compare_and_set_refuses_a_stale_version_and_writes_nothing():
    """if_version must match the key's visible version (0: absent); one stale key refuses the whole set."""
    t = Twin()
    (_, v1), = sets(t, ("mode", b'"eco"', 0))
    with pytest.raises(VersionConflict, match="at version"):
        sets(t, ("mode", b'"max"', 0))
    before = t.dump()
    with pytest.raises(VersionConflict):
        sets(t, ("other", b"1", None), ("mode", b'"max"', v1 - 1))
    assert t.dump() == before
    (_, v2), = sets(t, ("mode", b'"max"', v1))
    assert model.view(t)["desired"]["mode"]["version"] == v2


def test_deletions_waiting_for_the_device_are_bounded_and_deleting_nothing_writes_nothing():
    """A writer cannot grow a sleeping device's twin without bound through deletions:
    deleting a key the desired state does not hold writes nothing, and the deletions the
    device has not applied yet count against their own cap."""
    t = Twin()
    for batch in range(100):  # keys never set
        sets(t, *[(f"k{batch}_{i}", None, None) for i in range(32)])
    assert t.desired == {} and model.delta(t, 0)[0] == []
    for cycle in range(2):  # set 16 keys, delete them: their deletions wait for the device
        sets(t, *[(f"c{cycle}_{i}", b"1", None) for i in range(16)])
        sets(t, *[(f"c{cycle}_{i}", None, None) for i in range(16)])
    sets(t, *[(f"d{i}", b"1", None) for i in range(32)])  # live keys keep their own cap
    with pytest.raises(BadRequest, match="deletions the device has not applied yet"):
        sets(t, ("d0", None, None))
    assert len(model.delta(t, 0)[0]) == 64
    # a device's report may remove more keys than that at once: they never wait
    model.report(t, 0, [(f"r{i}", b"1") for i in range(32)], False, NOW)
    model.report(t, 0, [(f"r{i}", b"null") for i in range(32)] + [(f"x{i}", b"null") for i in range(8)], False, NOW)
    assert t.report_error == "" and t.reported == {}


def test_a_deleted_key_reads_as_absent_and_can_be_created_again_with_version_zero():
    """Deleting makes the key invisible (version 0), and the deletion itself is part of the delta."""
    t = Twin()
    (_, v1), = sets(t, ("k", b"1", None))
    (_, v2), = sets(t, ("k", None, v1))
    assert "k" not in model.view(t)["desired"] and model.visible_version(t, "k") == 0
    assert model.delta(t, v1)[0] == [("k", b"", v2)]
    sets(t, ("k", b"2", 0))
    assert model.view(t)["desired"]["k"]["value"] == b"2"


def test_delta_is_exactly_the_latest_value_of_each_key_not_applied():
    """Three changes of one key while asleep reach the device as one: the latest."""
    t = Twin()
    sets(t, ("a", b"1", None), ("b", b"1", None))
    model.report(t, t.version, [], False, NOW)
    applied = t.applied
    for n in (2, 3, 4):
        sets(t, ("a", str(n).encode(), None))
    changes, blocked = model.delta(t, applied)
    assert [(k, v) for k, v, _ in changes] == [("a", b"4")] and blocked == []


def test_any_prefix_of_a_delta_is_a_delta_again():
    """Applying part of a delta and reporting its last version leaves exactly the rest to send."""
    t = Twin()
    sets(t, ("a", b"1", None), ("b", b"2", None), ("c", b"3", None))
    changes, _ = model.delta(t, 0)
    model.report(t, changes[0][2], [], False, NOW)
    assert model.delta(t, t.applied)[0] == changes[1:]


def test_a_report_cannot_claim_more_than_was_ever_issued_but_may_go_down():
    """applied is clamped to the twin's version; a device that lost its state gets everything again."""
    t = Twin()
    sets(t, ("a", b"1", None))
    model.report(t, 10 ** 18, [], False, NOW)
    assert t.applied == t.version
    model.report(t, 0, [], False, NOW)
    assert [k for k, _, _ in model.delta(t, t.applied)[0]] == ["a"]


def test_reported_properties_patch_replace_and_refuse_what_is_too_large():
    """Reports patch (null deletes) or replace; an oversized or malformed set is kept out with a reason."""
    t = Twin()
    assert model.report(t, 0, [("temp", b"21.5"), ("fw", b'"1.2"')], False, NOW)
    assert model.report(t, 0, [("temp", b"null")], False, NOW)
    assert set(model.view(t)["reported"]) == {"fw"}
    assert model.report(t, 0, [("x", b"1")], True, NOW)
    assert set(model.view(t)["reported"]) == {"x"}
    assert model.report(t, 0, [("big", b'"' + b"y" * model.MAX_STATE_BYTES + b'"')], False, NOW)
    assert "at most" in t.report_error and set(model.view(t)["reported"]) == {"x"}
    assert model.report(t, 0, [("-bad", b"1")], False, NOW) and "twin key" in t.report_error
    v = t.version
    assert model.report(t, 0, [("x", b"1")], False, NOW + 1)  # good again: the reason is cleared
    assert t.report_error == "" and t.version == v  # ... and x did not change


def test_the_same_report_twice_changes_nothing():
    """A report resent after a lost ACK is idempotent (no new version)."""
    t = Twin()
    model.report(t, 0, [("a", b"1")], False, NOW)
    v = t.version
    assert not model.report(t, 0, [("a", b"1")], False, NOW + 5)
    assert t.version == v


@pytest.mark.parametrize("pairs, why", [
    ([("k" * 65, b"1", None)], "twin key"),
    ([(".k", b"1", None)], "twin key"),
    ([("k", b"1", None), ("k", b"2", None)], "twice"),
    ([(f"k{i}", b"1", None) for i in range(model.MAX_KEYS + 1)], "keys"),
    ([("k", b'"' + b"x" * model.MAX_STATE_BYTES + b'"', None)], "bytes"),
    ([], "no change"),
])
def test_bad_change_sets_are_refused_whole(pairs, why):
    """Malformed keys, repeated keys and sets beyond the size caps are refused, naming why."""
    t = Twin()
    with pytest.raises(BadRequest, match=why):
        sets(t, *pairs)
    assert t.desired == {}


def test_values_are_checked_and_stored_as_compact_json():
    """A value is JSON (re-encoded compactly); JSON null means delete; anything else is refused."""
    assert model.canonical_value(b'{ "a" : [1, 2] }') == b'{"a":[1,2]}'
    assert model.canonical_value(b"null") is None
    with pytest.raises(BadRequest, match="JSON"):
        model.canonical_value(b"{nope")


def test_a_revoked_undelivered_change_is_withdrawn_and_the_key_falls_back():
    """Withdrawal sets the key back to the newest entry left, under a new version; nothing of B goes out."""
    t = Twin()
    sets(t, ("mode", b'"eco"', None), chain=(A,))
    model.report(t, t.version, [], False, NOW)
    applied = t.applied
    sets(t, ("mode", b'"turbo"', None), chain=(A, B))
    assert model.withdraw(t, {B}, NOW) == ["mode"]
    changes, _ = model.delta(t, applied)
    assert [(k, v) for k, v, _ in changes] == [("mode", b'"eco"')] and changes[0][2] > applied
    assert model.view(t)["desired"]["mode"]["value"] == b'"eco"'


def test_withdrawal_falls_back_to_an_earlier_undelivered_change_that_stands():
    """Two undelivered changes by different tokens: revoking the later leaves the earlier to deliver."""
    t = Twin()
    sets(t, ("k", b"1", None), chain=(A,))
    sets(t, ("k", b"2", None), chain=(C,))
    model.withdraw(t, {C}, NOW)
    assert device_state(t) == {"k": b"1"}
    assert model.pending_hashes(t) == {A}  # the restoring entry can still be withdrawn with A


def test_a_key_made_only_by_a_revoked_token_is_deleted_again():
    """With nothing to fall back to, the key becomes a deletion (a device that raced it drops it)."""
    t = Twin()
    sets(t, ("k", b"1", None), chain=(B,))
    model.withdraw(t, {B}, NOW)
    assert model.view(t)["desired"] == {} and device_state(t) == {}
    assert [v for _, v, _ in model.delta(t, 0)[0]] == [b""]


def test_an_applied_change_is_not_withdrawn():
    """Revocation after the device applied a change does not undo it (it was delivered)."""
    t = Twin()
    sets(t, ("k", b"1", None), chain=(B,))
    model.report(t, t.version, [], False, NOW)
    assert model.withdraw(t, {B}, NOW) == [] and model.view(t)["desired"]["k"]["value"] == b"1"


def test_delta_stops_before_a_change_under_a_barred_tag():
    """Delivery never hands out a change whose token is revoked: it stops before it and says so."""
    t = Twin()
    sets(t, ("a", b"1", None), chain=(A,))
    sets(t, ("b", b"2", None), chain=(B,))
    sets(t, ("c", b"3", None), chain=(A,))
    changes, blocked = model.delta(t, 0, barred={B})
    assert [k for k, _, _ in changes] == ["a"] and blocked == [B]


def test_history_is_bounded_per_key_and_collapses_same_token_rewrites():
    """A token rewriting a key keeps one entry; many tokens keep at most MAX_PENDING undelivered."""
    t = Twin()
    for n in range(10):
        sets(t, ("k", str(n).encode(), None), chain=(A,))
    assert len(t.desired["k"]) == 1
    for n in range(10):
        sets(t, ("k", str(n).encode(), None), chain=(bytes([n]) * 32,))
    assert len(t.desired["k"]) == model.MAX_PENDING


def test_pruning_keeps_only_what_a_delta_or_a_revocation_needs():
    """After the device applies everything: one entry per key, and applied deletions are forgotten."""
    t = Twin()
    sets(t, ("a", b"1", None), chain=(A,))
    sets(t, ("a", b"2", None), chain=(B,))
    sets(t, ("gone", b"1", None))
    sets(t, ("gone", None, None))
    model.report(t, t.version, [], False, NOW)
    assert {k: len(e) for k, e in t.desired.items()} == {"a": 1} and model.pending_hashes(t) == set()


# ---- a device asleep through anything ----

ops_strategy = st.lists(st.one_of(
    st.tuples(st.just("set"), st.sampled_from("abcd"), st.integers(0, 9), st.sampled_from([A, B, C])),
    st.tuples(st.just("del"), st.sampled_from("abcd"), st.just(0), st.sampled_from([A, B, C])),
    st.tuples(st.just("wake"), st.just(""), st.integers(0, 3), st.just(A)),
    st.tuples(st.just("revoke"), st.just(""), st.just(0), st.sampled_from([B, C])),
), max_size=40)


@settings(max_examples=300, deadline=None)
@given(ops_strategy)
def test_a_device_that_applies_deltas_whenever_it_wakes_converges_and_never_keeps_a_revoked_value(steps):
    """Any interleaving of sets, deletes, revocations and partial wakes: after a full wake the
    device holds exactly the desired state, and no value set only under a revoked token before
    delivery is ever applied."""
    t, dev, applied = Twin(), {}, 0
    revoked: set[bytes] = set()
    made_by: dict[tuple[str, bytes], set[bytes]] = {}
    held_before: set[tuple[str, bytes]] = set()

    def apply(k: str, v: bytes) -> None:
        if v:
            # a value reaches the device only if a token not revoked now set it, or it held it already
            assert (k, v) in held_before or made_by[(k, v)] - revoked, (k, v)
            dev[k] = v
            held_before.add((k, v))
        else:
            dev.pop(k, None)

    now = NOW
    for kind, key, n, tag in steps:
        now += 1
        if kind == "set" and tag not in revoked:
            value = b"%d" % n
            made_by.setdefault((key, value), set()).add(tag)
            sets(t, (key, value, None), chain=(tag,), now=now)
        elif kind == "del" and tag not in revoked and model.visible_version(t, key):
            sets(t, (key, None, None), chain=(tag,), now=now)
        elif kind == "revoke":
            revoked.add(tag)
            model.withdraw(t, {tag}, now)
        elif kind == "wake":
            changes, blocked = model.delta(t, applied, barred=revoked)
            assert blocked == []  # withdrawal came first
            for k, v, ver in changes[:n or None]:  # a partial wake applies a prefix
                apply(k, v)
                applied = ver
            model.report(t, applied, [], False, now)
    for k, v, ver in model.delta(t, applied)[0]:
        apply(k, v)
    assert dev == {k: d["value"] for k, d in model.view(t)["desired"].items()}


# ---- the store operations ----

def ctx() -> Ctx:
    c = Ctx(MemoryKV(), 3_600_000)
    ops.put_device(c, Device(LINK, b"P" * 16, b"root", {"services": []}, 0, 7, 1).dump())
    return c


def index(c: Ctx) -> set[bytes]:
    return {k[len(keys.TWIN_BY_HASH):] for k, _ in c.kv.scan(keys.TWIN_BY_HASH)}


def test_store_ops_keep_the_revocation_index_equal_to_the_pending_hashes():
    """twin_set indexes the change's tags; a report that applies it drops them; unpairing drops the rest."""
    c = ctx()
    out, changed = ops.apply(c, "twin_set", [LINK, [["k", b"1", None]], [A, B], NOW])
    assert changed == [keys.twin(LINK)] and index(c) == {A + LINK, B + LINK}
    ops.apply(c, "twin_report", [LINK, out[0][1], [], False, NOW])
    assert index(c) == set()
    ops.apply(c, "twin_set", [LINK, [["k", b"2", None]], [C], NOW])
    ops.apply(c, "remove_device", [LINK, NOW, "unpaired"])
    assert index(c) == set() and c.kv.get(keys.twin(LINK)) is None


def test_store_withdraw_finds_twins_by_tag_and_reports_what_it_set_back():
    """twin_withdraw reads the index, withdraws, and names each twin changed."""
    c = ctx()
    ops.apply(c, "twin_set", [LINK, [["k", b"1", None]], [B], NOW])
    out, changed = ops.apply(c, "twin_withdraw", [[B, C], NOW + 1])
    assert out == [[LINK, ["k"]]] and changed == [keys.twin(LINK)] and index(c) == set()
    assert ops.apply(c, "twin_withdraw", [[B], NOW + 2]) == ([], [])


def test_store_ops_refuse_an_unknown_device_and_ignore_its_reports():
    """Setting the twin of a device not paired here is NotFound; a late report of one is dropped."""
    c = Ctx(MemoryKV(), 3_600_000)
    with pytest.raises(NotFound):
        ops.apply(c, "twin_set", [LINK, [["k", b"1", None]], [], NOW])
    assert ops.apply(c, "twin_report", [LINK, 5, [["x", b"1"]], False, NOW]) == (False, [])
    assert c.kv.get(keys.twin(LINK)) is None
