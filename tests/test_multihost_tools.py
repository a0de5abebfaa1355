"""The multi-host tests' own tools: the WAN relay (on loopback, no root) and the checker
(on hand-made histories: each check must catch what it claims to)."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from multihost_checker import (
    FAIL, INFO, OK, ChainRead, History, RegistryRead, check_chain, check_invokes, check_registry, summary_lines,
)
from wan_relay import DelayRelay, Route

# ---- the relay ----


async def _echo_server() -> tuple[asyncio.AbstractServer, int]:
    async def echo(reader, writer):
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def _relay_to(port: int, delay: float = 0.0, jitter: float = 0.0, reset: float = 0.0,
                    seed: int = 1) -> tuple[DelayRelay, int]:
    relay = DelayRelay([Route(("127.0.0.1", 0), ("127.0.0.1", port), delay, jitter, reset)], random.Random(seed))
    [relay_port] = await relay.start()
    return relay, relay_port


async def test_relay_delays_each_direction():
    """A round trip through the relay takes at least twice the smallest one-way delay."""
    server, port = await _echo_server()
    relay, rport = await _relay_to(port, delay=0.05, jitter=0.01)
    reader, writer = await asyncio.open_connection("127.0.0.1", rport)
    rtts = []
    for _ in range(5):
        t0 = time.monotonic()
        writer.write(b"ping")
        await writer.drain()
        assert await asyncio.wait_for(reader.readexactly(4), 5) == b"ping"
        rtts.append(time.monotonic() - t0)
    writer.close()
    await relay.close()
    server.close()
    assert min(rtts) >= 2 * 0.04 - 0.002, rtts
    assert max(rtts) < 1.0, rtts


async def test_relay_keeps_order_under_jitter():
    """Jitter larger than the gap between chunks never reorders a stream, and EOF follows the data."""
    server, port = await _echo_server()
    relay, rport = await _relay_to(port, delay=0.02, jitter=0.02)
    reader, writer = await asyncio.open_connection("127.0.0.1", rport)
    sent = b"".join(i.to_bytes(4, "big") for i in range(2000))
    for i in range(0, len(sent), 400):  # many small chunks, each released at its own random time
        writer.write(sent[i:i + 400])
        await writer.drain()
        await asyncio.sleep(0.001)
    writer.write_eof()
    got = await asyncio.wait_for(reader.read(-1), 10)  # -1: until EOF, which the relay passes on
    writer.close()
    await relay.close()
    server.close()
    assert got == sent


async def test_relay_resets_a_flaky_route():
    """A flaky route resets connections (both sides), and the relay counts it."""
    server, port = await _echo_server()
    relay, rport = await _relay_to(port, reset=1.0)
    reader, writer = await asyncio.open_connection("127.0.0.1", rport)
    writer.write(b"x")
    await writer.drain()
    with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
        await asyncio.wait_for(reader.readexactly(1), 5)
    writer.close()
    await relay.close()
    server.close()
    assert relay.resets == 1


async def test_relay_to_a_dead_target_resets_the_client():
    """With nothing at the target, the client's connection is reset, not left hanging."""
    server, port = await _echo_server()
    server.close()
    await server.wait_closed()
    relay, rport = await _relay_to(port)
    reader, writer = await asyncio.open_connection("127.0.0.1", rport)
    with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
        await asyncio.wait_for(reader.readexactly(1), 5)
    writer.close()
    await relay.close()


def test_route_parse_refuses_garbage():
    """A route is LISTEN=TARGET, each HOST:PORT."""
    assert Route.parse("10.0.0.1:1=127.0.0.1:2", 0.05).target == ("127.0.0.1", 2)
    with pytest.raises(ValueError):
        Route.parse("10.0.0.1:1")


# ---- the checker ----


def _history(*ops: tuple[str, int, str, str, dict]) -> History:
    clock = iter(range(1000))
    h = History(clock=lambda: float(next(clock)))
    for kind, via, key, outcome, value in ops:
        op = h.begin(kind, via, key)
        h.finish(op, outcome, "", **value)
    return h


PAIRED = {"pseudonym": "aa" * 16, "gateway_id": "gw0", "height": 5}


def _reads(tip: dict, at: dict | None = None) -> RegistryRead:
    return RegistryRead(tip, at if at is not None else {("aa" * 16, 5): tip.get("aa" * 16)})


def test_registry_check_passes_a_write_everywhere():
    """An acknowledged pairing held by every node, at its height and at the tip, is fine."""
    h = _history(("pair", 0, "dev1", OK, PAIRED))
    assert check_registry(h, {i: _reads({"aa" * 16: "gw0"}) for i in range(4)}) == []


@pytest.mark.parametrize("read, what", [
    (_reads({}), "tip has None"),  # lost at the tip
    (_reads({"aa" * 16: "gw1"}), "not 'gw0'"),  # owned by another gateway
    (_reads({"aa" * 16: "gw0"}, {("aa" * 16, 5): ""}), "at h=5"),  # missing at its commit height
])
def test_registry_check_catches_a_lost_write(read: RegistryRead, what: str):
    """An acknowledged pairing missing or changed on one node is reported."""
    h = _history(("pair", 0, "dev1", OK, PAIRED))
    reads = {0: _reads({"aa" * 16: "gw0"}), 1: read}
    problems = check_registry(h, reads)
    assert len(problems) >= 1 and all("node1" in p for p in problems) and what in " ".join(problems)


def test_registry_check_ignores_unacknowledged_and_unavailable_heights():
    """Indeterminate pairings may be absent; a height a node no longer keeps is not a loss."""
    h = _history(("pair", 0, "dev1", INFO, {}), ("pair", 1, "dev2", OK, PAIRED))
    reads = {0: _reads({"aa" * 16: "gw0"}, {("aa" * 16, 5): None})}
    assert check_registry(h, reads) == []


def _chain(blocks: dict, headers: dict, apps: dict) -> ChainRead:
    return ChainRead(blocks, headers, apps)


GOOD = _chain({1: "B1", 2: "B2", 3: "B3"}, {1: "", 2: "H1", 3: "H2"}, {1: "H1", 2: "H2"})


def test_chain_check_passes_agreeing_nodes():
    """Nodes with the same blocks and app hashes, one of them starting later (state sync), agree."""
    late = _chain({2: "B2", 3: "B3"}, {2: "H1", 3: "H2"}, {2: "H2"})
    assert check_chain({0: GOOD, 1: GOOD, 2: late}) == []


def test_chain_check_catches_a_fork():
    """Two blocks at one height is a fork."""
    forked = _chain({1: "B1", 2: "B2", 3: "OTHER"}, {1: "", 2: "H1", 3: "H2"}, {1: "H1", 2: "H2"})
    problems = check_chain({0: GOOD, 1: forked})
    assert any(p.startswith("FORK at height 3") for p in problems), problems


def test_chain_check_catches_a_diverged_app():
    """An app whose hash after h differs from what block h+1 commits to is reported."""
    diverged = _chain({1: "B1", 2: "B2", 3: "B3"}, {1: "", 2: "H1", 3: "H2"}, {1: "H1", 2: "XX"})
    problems = check_chain({0: GOOD, 1: diverged})
    assert problems == ["node1's app hash after height 2 is XX, the chain committed ['H2']"]


def test_invoke_check_passes_once_each():
    """Acknowledged calls that ran once, and indeterminate ones that ran once or never, are fine."""
    h = _history(("invoke", 0, "op-a", OK, {"answered": "op-a"}), ("invoke", 1, "op-b", INFO, {}),
                 ("invoke", 2, "op-c", INFO, {}), ("invoke", 3, "op-d", FAIL, {}))
    problems = check_invokes(h, {"op-a": 1, "op-b": 1})
    assert not any(problems.values()), problems


@pytest.mark.parametrize("history, executions, kind", [
    (_history(("invoke", 0, "op-a", OK, {"answered": "op-a"})), {}, "lost"),
    (_history(("invoke", 0, "op-a", INFO, {})), {"op-a": 2}, "duplicated"),
    (_history(("invoke", 0, "op-a", OK, {"answered": "op-b"})), {"op-a": 1, "op-b": 1}, "wrong_answer"),
    (_history(("invoke", 0, "op-a", FAIL, {})), {"op-a": 1}, "failed_but_ran"),
    (_history(("invoke", 0, "op-a", OK, {"answered": "op-a"})), {"op-a": 1, "op-z": 1}, "phantom"),
])
def test_invoke_check_catches_each_anomaly(history: History, executions: dict, kind: str):
    """Each anomaly (lost, ran twice, another's answer, a failure that ran, an unasked run) is caught."""
    problems = check_invokes(history, executions)
    assert problems[kind], problems
    assert sum(len(v) for v in problems.values()) >= 1


def test_summary_counts_outcomes_and_faults():
    """The printed summary counts every outcome, each check's findings and the faults injected."""
    h = _history(("invoke", 0, "op-a", OK, {"answered": "op-a"}), ("invoke", 1, "op-b", INFO, {}),
                 ("pair", 0, "dev1", FAIL, {}))
    h.fault("partition: node3 | node0 node1 node2")
    lines = summary_lines(h, {"lost": [], "duplicated": ["x"]})
    text = "\n".join(lines)
    assert "invoke  attempted    2  acknowledged    1  failed    0  indeterminate    1" in text
    assert "pair    attempted    1  acknowledged    0  failed    1" in text
    assert "lost = 0  duplicated = 1" in text and "faults injected: 1" in text and "partition: node3" in text
