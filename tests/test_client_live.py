"""The SDK against a live node (`edgistry up --demo-devices 3`: real gateway, registry and
devices that wake every 5 s): every operation, blocking and asyncio, and its errors."""

from __future__ import annotations

import time

import pytest

from edgistry.client import (
    AsyncClient, Call, Client, DeadlineExceeded, InvalidArgument, NotFound, PermissionDenied, RequestFailed,
    RetryPolicy, State, Unavailable,
)
from proc_helpers import free_port
from sdk_helpers import DEMO_NEAR, DEMO_RADIUS_KM, start_demo_node

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    demo = start_demo_node(tmp_path_factory.mktemp("sdk-node"))
    try:
        yield demo
    finally:
        demo.stop()


@pytest.fixture
def client(node):
    with Client(node.grpc, token=node.app_token, pin=node.pin) as c:
        yield c


def handles(client):
    return [h for page in client.discover("sensor", DEMO_NEAR, DEMO_RADIUS_KM) for h in page]


def test_discover_pages_iterate_lazily_and_cover_the_same_handles(client):
    """page_size=1 gives one handle per page and as many pages as one big page has handles."""
    everything = handles(client)
    assert everything and all(h.gateway and h.cell for h in everything)
    pages = list(client.discover("sensor", DEMO_NEAR, DEMO_RADIUS_KM, page_size=1))
    assert [len(p) for p in pages] == [1] * len(everything)
    assert [p.next_page_token != "" for p in pages] == [True] * (len(pages) - 1) + [False]
    assert len(list(client.discover("sensor", DEMO_NEAR, DEMO_RADIUS_KM, page_size=1, max_pages=1))) == 1
    assert {h.cell for h in everything} == {h.cell for p in pages for h in p}
    assert client.resolve(everything[0]).valid


def test_invoke_reports_each_state_and_returns_the_answer(node):
    """A read that reaches a sleeping device: on_update sees QUEUED (with an expected wake),
    the call returns DONE with the device's answer."""
    seen = []
    with Client(node.grpc, token=node.owner_token, pin=node.pin) as c:
        res = c.invoke(node.actuator_handle, "actuator.get", timeout=30, on_update=seen.append)
    assert res.state is State.DONE and res.value["on"] in (True, False)
    assert seen[0].state is State.QUEUED and seen[0].expected_at_ms > 0 and seen[-1] == res
    assert [s.state for s in seen] == sorted({s.state for s in seen})  # each state once, in order


def test_a_deadline_leaves_the_request_to_fetch_later(node):
    """invoke with a short timeout raises DeadlineExceeded naming the request; wait() gets it."""
    with Client(node.grpc, token=node.owner_token, pin=node.pin) as c:
        with pytest.raises(DeadlineExceeded) as exc:
            c.invoke(node.actuator_handle, "actuator.get", timeout=0.2)
        assert len(exc.value.request_id) == 32
        assert c.wait(exc.value.request_id, timeout=30).state is State.DONE
        with pytest.raises(DeadlineExceeded) as exc2:
            c.invoke(node.actuator_handle, "actuator.get", timeout=0.5, on_update=lambda r: None)
        assert exc2.value.last is not None and exc2.value.last.state in (State.QUEUED, State.DELIVERED)


def test_submit_result_watch_and_cancel(node):
    """submit queues and returns at once; result and watch_result follow it; cancel withdraws
    one not yet answered (idempotently)."""
    with Client(node.grpc, token=node.owner_token, pin=node.pin) as c:
        queued = c.submit(node.actuator_handle, "actuator.get")
        assert queued.state is State.QUEUED and c.result(queued.request_id).request_id == queued.request_id
        states = [r.state for r in c.watch_result(queued.request_id, timeout=30)]
        assert states[-1] is State.DONE and states[0] in (State.QUEUED, State.DELIVERED, State.DONE)
        other = c.submit(node.actuator_handle, "actuator.get")
        first = c.cancel(other.request_id)
        if first.state is State.CANCELLED:
            assert c.cancel(other.request_id).state is State.CANCELLED
            with pytest.raises(RequestFailed):
                c.result(other.request_id).value
        else:  # the device woke in between and answered first
            assert first.state is State.DONE


def test_a_client_chosen_request_id_makes_a_retried_submit_idempotent(node):
    """The same request id twice queues one request (what the SDK's retries rely on)."""
    rid = "12" * 16
    with Client(node.grpc, token=node.owner_token, pin=node.pin) as c:
        a = c.submit(node.actuator_handle, "actuator.get", request_id=rid)
        b = c.submit(node.actuator_handle, "actuator.get", request_id=rid)
        assert a.request_id == b.request_id == rid


def test_batch_answers_each_call_on_its_own_and_splits_large_batches(client):
    """A bad handle fails alone, in place; 300 calls go in two SubmitBatch calls, one answer each."""
    h = handles(client)[0]
    out = client.batch([Call(h, "sensor.read"), Call("nope", "sensor.read"), Call(h, "sensor.info")])
    assert isinstance(out[0].state, State) and isinstance(out[1], NotFound) and isinstance(out[2].state, State)
    many = client.batch([Call(f"nope-{i}", "sensor.read") for i in range(300)])  # no device's queue fills
    assert len(many) == 300 and all(isinstance(r, NotFound) for r in many)
    assert len({r.request_id for r in many}) == 300  # each call carried its own id


def test_invoke_any_and_discovery_watch(client):
    """invoke-any answers from some sensor; a watch yields the current handles, then ends at its timeout."""
    assert "temperature_c" in client.invoke_any("sensor", "sensor.read", near=DEMO_NEAR, radius_km=DEMO_RADIUS_KM,
                                                timeout=30).value
    started = time.monotonic()
    events = list(client.watch("sensor", DEMO_NEAR, DEMO_RADIUS_KM, timeout=1.5))
    assert events and {e.kind for e in events} == {"appear"} and 1.0 < time.monotonic() - started < 10


def test_errors_are_mapped_into_the_tree(node, client):
    """Unknown handles and requests, bad ids, too weak a token: each its own class, one line."""
    with pytest.raises(NotFound):
        client.invoke("dev-" + "00" * 16, "sensor.read", timeout=5)
    with pytest.raises(NotFound):
        client.result("00" * 16)
    with pytest.raises(InvalidArgument):
        client.result("not-hex")
    with pytest.raises(PermissionDenied) as exc:  # the application token may not switch a device
        client.invoke(node.actuator_handle, "actuator.set", {"on": True}, timeout=5)
    assert "\n" not in str(exc.value) and exc.value.__cause__ is not None


def test_an_unreachable_gateway_is_unavailable_after_bounded_retries(node):
    """Nothing listening: Unavailable naming the address, after the policy's retries, quickly."""
    port = free_port()
    started = time.monotonic()
    with Client(f"127.0.0.1:{port}", token=node.app_token, pin=node.pin,
                retry=RetryPolicy(attempts=3, initial_s=0.1)) as c:
        with pytest.raises(Unavailable) as exc:
            c.result("00" * 16)
    assert str(exc.value) == f"cannot reach the gateway at 127.0.0.1:{port}: connection refused"
    assert time.monotonic() - started < 5


async def test_async_client_does_the_same(node):
    """AsyncClient: pages, invoke with updates, submit/wait, batch, invoke-any, watch, errors."""
    async with AsyncClient(node.grpc, token=node.app_token, pin=node.pin) as c:
        found = [h async for page in c.discover("sensor", DEMO_NEAR, DEMO_RADIUS_KM) for h in page]
        assert found and (await c.resolve(found[0])).valid
        assert (await c.invoke(found[0], "sensor.read", timeout=30)).state is State.DONE
        out = await c.batch([Call(found[0], "sensor.read"), Call("nope", "sensor.read")])
        assert not isinstance(out[0], Exception) and isinstance(out[1], NotFound)
        assert (await c.invoke_any("sensor", "read", near=DEMO_NEAR, radius_km=DEMO_RADIUS_KM)).ok
        events = [e async for e in c.watch("sensor", DEMO_NEAR, DEMO_RADIUS_KM, timeout=1.0)]
        assert events and events[0].kind == "appear"
        with pytest.raises(NotFound):
            await c.result("00" * 16)
    async with AsyncClient(node.grpc, token=node.owner_token, pin=node.pin) as c:
        seen = []
        res = await c.invoke(node.actuator_handle, "actuator.get", timeout=30, on_update=seen.append)
        assert res.ok and seen[0].state is State.QUEUED
        queued = await c.submit(node.actuator_handle, "actuator.get")
        assert (await c.wait(queued.request_id, timeout=30)).ok
        states = [r.state async for r in c.watch_result(queued.request_id, timeout=5)]
        assert states == [State.DONE]
        with pytest.raises(DeadlineExceeded) as exc:
            await c.invoke(node.actuator_handle, "actuator.get", timeout=0.2)
        assert (await c.wait(exc.value.request_id, timeout=30)).ok
