"""Twin changes in the delivery policy (gateway/link/delivery.py) and over the real link with
the in-memory backend: order in the frame, splitting over small frames, once per connection,
never before PROOF in clear, the report stored before its ACK, withdrawal of a change made
under a revoked token before anything of it leaves; plus the SDK's and CLI's twin pieces."""

from __future__ import annotations

import json

import pytest

from edgistry.firmware.link import link_wire as wire
from edgistry.gateway.client.twins import Twin as SdkTwin
from edgistry.gateway.client.twins import changes_of
from edgistry.gateway.client.errors import ConfigError
from edgistry.gateway.link.backend import MemoryBackend, QueuedRequest
from edgistry.gateway.link import frame_sizes as fs
from edgistry.gateway.link.delivery import Backlog, Delivery
from edgistry.gateway.twins import model
from edgistry.gateway.twins.cli import parse_property
from edgistry.gateway.twins.grpc_service import to_pb
from edgistry.gateway.twins.service import TwinView

NOW = 1_700_000_000_000
TAG = b"T" * 32


def change(n: int, size: int = 10) -> tuple[str, bytes, int]:
    return (f"k{n}", b'"' + b"v" * size + b'"', NOW + n)


def req(n: int) -> QueuedRequest:
    return QueuedRequest(n.to_bytes(16, "big"), "sensor", "read", b"{}", b"t" * 60, NOW + 60_000)


def test_changes_go_after_revoked_tags_and_before_work_once_per_connection():
    """One frame: tags, then twin changes, then requests; the same changes are not sent twice."""
    d = Delivery()
    out = d.established(True, Backlog([req(1)], False, [TAG], 3, twin=[change(1), change(2)]), NOW)
    (frame,) = out.frames
    assert frame.revoked == [TAG] and [c["key"] for c in frame.twin] == ["k1", "k2"] and len(frame.items) == 1
    again = d.woken(Backlog([req(1)], False, twin=[change(1), change(2)]), NOW)
    assert again.frames == []
    newer = d.woken(Backlog([req(1)], False, twin=[change(1), change(2), change(3)]), NOW)
    assert [c["key"] for f in newer.frames for c in f.twin] == ["k3"]


def test_a_delta_larger_than_a_frame_is_cut_in_version_order():
    """With a small frame budget the changes fill several frames, in order, ``more`` on all but the last."""
    d = Delivery(frame_budget=300)
    delta = [change(n, 60) for n in range(12)]
    out = d.established(True, Backlog(twin=delta), NOW)
    assert len(out.frames) > 2
    assert [c["version"] for f in out.frames for c in f.twin] == [c[2] for c in delta]
    assert [f.more for f in out.frames] == [True] * (len(out.frames) - 1) + [False]
    for f in out.frames:
        body = wire.encode("Requests", f.to_msg())
        assert fs.frame_size(wire.REQUESTS, len(body)) <= 300


def test_in_clear_nothing_of_the_twin_leaves_before_proof_but_more_says_it_waits():
    """The clear 0.5-RTT REQUESTS is empty with ``more``; after PROOF the changes go."""
    d = Delivery()
    early = d.challenged(False, Backlog(twin=[change(1)]), NOW)
    assert early.frames[0].twin == [] and early.frames[0].more
    late = d.established(False, Backlog(twin=[change(1)]), NOW)
    assert [c["key"] for c in late.frames[0].twin] == ["k1"]


def test_encrypted_early_flight_carries_the_twin():
    """With encryption the changes ride in the 0.5-RTT flight (only the device can read them)."""
    d = Delivery()
    early = d.challenged(True, Backlog(twin=[change(1)]), NOW)
    assert [c["key"] for c in early.frames[0].twin] == ["k1"]


def test_a_blocked_read_asks_for_withdrawal_and_sends_only_what_precedes_it():
    """A change under a revoked tag: the decision names the tags to withdraw, says ``more``."""
    d = Delivery()
    out = d.established(True, Backlog(twin=[change(1)], withdraw=[TAG]), NOW)
    assert out.withdraw == [TAG] and [c["key"] for c in out.frames[0].twin] == ["k1"] and out.frames[0].more


async def test_memory_backend_reports_and_withdrawals_follow_the_model():
    """The in-memory backend reads deltas, stores reports and withdraws as the store does."""
    b = MemoryBackend(b"s" * 32)
    lid = b"L" * 16
    twin = b.twins[lid] = model.Twin()
    model.set_desired(twin, [model.Change("a", b"1"), model.Change("b", b"2")], [TAG], NOW)
    changes, blocked = b.twin_delta(lid)
    assert [c[0] for c in changes] == ["a", "b"] and blocked == []
    await b.twin_report(lid, changes[0][2], [("temp", b"20")], False)
    assert [c[0] for c in b.twin_delta(lid)[0]] == ["b"] and model.view(twin)["reported"]["temp"]["value"] == b"20"
    b.in_force.add(TAG)
    assert b.twin_delta(lid) == ([], [TAG])
    await b.twin_withdraw(lid, [TAG])
    assert [(k, v) for k, v, _ in b.twin_delta(lid)[0]] == [("b", b"")]  # b falls back to nothing: deleted


# ---- the SDK's and the CLI's pieces ----

def test_sdk_changes_none_deletes_and_expect_must_name_keys_being_set():
    """None deletes, values become JSON, expect adds versions (0 allowed); expect for another key is refused."""
    msgs = changes_of({"a": {"x": 1}, "b": None}, {"a": 0})
    assert [(m.key, m.value, m.delete, m.HasField("if_version"), m.if_version) for m in msgs] == [
        ("a", b'{"x":1}', False, True, 0), ("b", b"", True, False, 0)]
    with pytest.raises(ConfigError, match="not being set"):
        changes_of({"a": 1}, {"b": 3})
    with pytest.raises(ConfigError):
        changes_of({}, None)


def test_sdk_twin_from_the_wire_and_its_json_shape():
    """TwinState -> Twin: values decoded, parts present only when readable."""
    t = model.Twin()
    model.set_desired(t, [model.Change("mode", b'"eco"')], [], NOW)
    model.report(t, 0, [("temp", b"21.5")], False, NOW + 5)
    view = TwinView("dev-00", model.view(t), True, False)
    view.state["reported"] = {}
    twin = SdkTwin.from_pb(to_pb(view))
    assert twin.desired_values() == {"mode": "eco"} and twin.pending == 1 and not twin.in_sync
    shape = twin.to_dict()
    assert shape["desired"]["mode"]["value"] == "eco" and shape["desired"]["mode"]["applied"] is False
    assert "reported" not in shape
    json.dumps(shape)


@pytest.mark.parametrize("text, expected", [
    ("mode=eco", ("mode", "eco")), ("n:=42", ("n", 42)), ("o:={\"a\": [1]}", ("o", {"a": [1]})),
    ("gone:=null", ("gone", None)), ("s=a=b", ("s", "a=b")), ("empty=", ("empty", "")),
])
def test_cli_properties_follow_httpie(text, expected):
    """KEY=TEXT is a string, KEY:=JSON any JSON (null deletes)."""
    assert parse_property(text) == expected


@pytest.mark.parametrize("text", ["novalue", "=x", "n:=nope"])
def test_cli_refuses_malformed_properties(text):
    """A property without a key, or KEY:= without JSON, is a usage error."""
    import click

    with pytest.raises(click.BadParameter):
        parse_property(text)
