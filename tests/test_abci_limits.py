"""The ABCI server bounds connections and buffered bytes without locking CometBFT out."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import subprocess
import sys
import textwrap
import time

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from edgistry.abci_app.app import RegistryApp
from edgistry.abci_app.client import AbciClient
from edgistry.abci_app.framing import encode_uvarint
from edgistry.abci_app import server as server_module
from edgistry.abci_app.server import AbciServer
from edgistry.proto import abci_pb2 as abci
from proc_helpers import free_port, wait_for_port
from registry_helpers import CHAIN, T0, Actors, device_msg

pytestmark = pytest.mark.timeout(120)
MiB = 1024 * 1024


class CometLike:
    """CometBFT's four connections (query, snapshot, mempool, consensus), opened in its order."""

    def __init__(self, conns: list[AbciClient]) -> None:
        self.query, self.snapshot, self.mempool, self.consensus = conns

    @classmethod
    async def connect(cls, addr: str) -> CometLike:
        return cls([await AbciClient.connect(addr) for _ in range(4)])

    async def start(self, actors: Actors, refs: bool = True) -> None:
        """InitChain with the actors' genesis; ``refs`` False: a chain whose devices carry their
        services inline (1 KiB records, no manifests by reference)."""
        await self.query.call("info", abci.RequestInfo())
        await self.snapshot.call("list_snapshots", abci.RequestListSnapshots())
        genesis = actors.genesis()
        if not refs:
            genesis.manifest_ref_height = None
        await self.consensus.call("init_chain", abci.RequestInitChain(
            chain_id=CHAIN, initial_height=1, app_state_bytes=json.dumps(genesis.to_json()).encode()))

    async def use_all(self, actors: Actors, height: int) -> None:
        """One call on each connection, and a block on the consensus one."""
        assert (await self.query.call("echo", abci.RequestEcho(message="x"))).message == "x"
        await self.snapshot.call("list_snapshots", abci.RequestListSnapshots())
        tx = actors.tx(actors.gw1, device_msg(os.urandom(16)))
        assert (await self.mempool.call("check_tx", abci.RequestCheckTx(tx=tx))).code == 0
        await self.block(height, [tx])

    async def block(self, height: int, txs: list[bytes]) -> abci.ResponseFinalizeBlock:
        fin = await self.consensus.call("finalize_block", abci.RequestFinalizeBlock(
            txs=txs, height=height, time=Timestamp(seconds=T0 + height)))
        await self.consensus.call("commit", abci.RequestCommit())
        return fin

    async def close(self) -> None:
        for c in (self.query, self.snapshot, self.mempool, self.consensus):
            await c.close()


def partial_frame(body_size: int, sent: int) -> bytes:
    """The first ``sent`` bytes of a frame announcing ``body_size`` bytes (never completed)."""
    return encode_uvarint(body_size) + b"\x0a" + b"\x00" * (sent - 1)


async def _open_and_send(addr: str, data: bytes) -> asyncio.StreamWriter | None:
    host, port = addr.removeprefix("tcp://").rsplit(":", 1)
    try:
        _, writer = await asyncio.open_connection(host, int(port))
        writer.write(data)
        await writer.drain()
        return writer
    except OSError:
        return None  # dropped by the server before we finished: expected


@pytest.fixture
async def served(tmp_path, request):
    """A registry app behind a server with small limits (connections: the test's param, else 6)."""
    app = RegistryApp(tmp_path / "reg")
    cap = getattr(request, "param", 6)
    server = AbciServer(app, max_frame_size=1 * MiB, max_connections=cap, max_buffered_bytes=2 * MiB)
    (addr,) = await server.start("tcp://127.0.0.1:0")
    yield app, server, addr
    await server.close()
    app.close()


async def test_hundreds_of_idle_connections_never_push_out_cometbft(served, caplog, monkeypatch):
    """200 extra connections that say nothing: the count stays at the cap, each newcomer
    replaces a silent stranger or is refused (one warning each, no traceback), and all
    four CometBFT connections, three of them idle, keep answering."""
    monkeypatch.setattr(server_module, "GRACE_S", 0.0)  # strangers may be replaced at once
    caplog.set_level(logging.INFO)
    app, server, addr = served
    actors = Actors()
    comet = await CometLike.connect(addr)
    await comet.start(actors)
    strangers = []
    for _ in range(200):
        strangers.append(await _open_and_send(addr, b""))
        await asyncio.sleep(0)
        assert server.connections <= 6
    await asyncio.sleep(0.2)
    await comet.use_all(actors, 1)
    drops = [r for r in caplog.records if r.levelno == logging.WARNING and (
        "dropped:" in r.getMessage() or "refused" in r.getMessage())]
    assert len(drops) == server.refused >= 190
    assert not any(r.exc_info for r in caplog.records)
    for w in strangers:
        if w is not None:
            w.close()
    await comet.close()


async def test_buffered_bytes_stay_within_budget_and_a_big_finalize_block_gets_through(served, caplog):
    """Forty connections each holding 600 KiB of an unfinished frame: the largest holders are
    dropped so the total stays within the budget, while the consensus connection, halfway
    through a large FinalizeBlock, finishes it and gets its answer."""
    caplog.set_level(logging.INFO)
    app, server, addr = served
    actors = Actors()
    comet = await CometLike.connect(addr)
    await comet.start(actors)
    await comet.block(1, [])
    # a FinalizeBlock of ~900 KiB (within the 1 MiB frame limit), sent in two halves
    txs = [actors.tx(actors.gw1, device_msg(os.urandom(16)))] + [os.urandom(60_000) for _ in range(15)]
    req = abci.Request(finalize_block=abci.RequestFinalizeBlock(txs=txs, height=2, time=Timestamp(seconds=T0 + 2)))
    raw = req.SerializeToString()
    frame = encode_uvarint(len(raw)) + raw
    comet.consensus.send_raw(frame[: len(frame) // 2])
    await comet.consensus._writer.drain()
    await asyncio.sleep(0.1)
    peak = 0
    writers = []
    for _ in range(40):
        writers.append(await _open_and_send(addr, partial_frame(900 * 1024, 600 * 1024)))
        await asyncio.sleep(0.01)
        peak = max(peak, server.buffered)
        assert server.buffered <= 2 * MiB + 600 * 1024  # the budget plus one arriving burst
    comet.consensus.send_raw(frame[len(frame) // 2:])  # the rest of the frame
    comet.consensus._pending.append("finalize_block")
    (fin,) = await comet.consensus.flush()
    assert [r.code for r in fin.tx_results][0] == 0 and len(fin.tx_results) == 16
    await comet.consensus.call("commit", abci.RequestCommit())
    await comet.use_all(actors, 3)
    assert server.refused > 0 and peak > 1 * MiB
    assert not any(r.exc_info for r in caplog.records)
    for w in writers:
        if w is not None:
            w.close()
    await comet.close()


async def test_a_burst_of_small_queries_with_large_answers_is_answered_as_the_reader_takes_them(served):
    """Hundreds of 20-byte queries whose answers are pages of ~100 devices, in one write,
    by a client that does not read: the server keeps at most a few MiB of replies queued
    (it answered them all at once before, ~40 MiB here and ~300 MiB from 36 KB of queries),
    and once the client reads, every answer arrives, in order."""
    app, server, addr = served
    actors = Actors()
    comet = await CometLike.connect(addr)
    await comet.start(actors, refs=False)  # 1 KiB device records: pages of ~100 KB
    fin = await comet.block(1, [actors.tx(actors.gw1, device_msg(os.urandom(16), inline=True)) for _ in range(100)])
    assert all(r.code == 0 for r in fin.tx_results)
    one = abci.Request(query=abci.RequestQuery(path="/devices")).SerializeToString()
    n = 400
    host, port = addr.removeprefix("tcp://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port), limit=64 * MiB)
    writer.write((encode_uvarint(len(one)) + one) * n)
    await writer.drain()
    peak = 0
    for _ in range(30):
        await asyncio.sleep(0.02)
        peak = max([peak] + [c.transport.get_write_buffer_size() for c in server._connections
                             if c.transport is not None and not c.transport.is_closing()])
    assert peak <= server_module.WRITE_HIGH_WATER + 2 * server_module.OUT_BURST, peak
    sizes = []
    while len(sizes) < n:  # now read: all n answers, each a whole page, in order
        length = await _read_uvarint(reader)
        resp = abci.Response.FromString(await asyncio.wait_for(reader.readexactly(length), 10))
        assert resp.WhichOneof("value") == "query" and resp.query.code == 0
        sizes.append(length)
    assert min(sizes) > 90_000 and len(set(sizes)) == 1
    assert (await comet.query.call("echo", abci.RequestEcho(message="x"))).message == "x"
    writer.close()
    await comet.close()


async def _read_uvarint(reader: asyncio.StreamReader) -> int:
    shift = value = 0
    while True:
        b = (await asyncio.wait_for(reader.readexactly(1), 10))[0]
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value
        shift += 7


@pytest.mark.parametrize("served", [8], indirect=True)
async def test_cometbft_restart_replaces_its_lingering_connections(served, monkeypatch):
    """CometBFT restarting twice without its old sockets closing: the second restart's four
    connections (twelve with the lingering ones, over the cap of eight) replace the first
    set's, never the live set's nor each other, and work."""
    monkeypatch.setattr(server_module, "GRACE_S", 0.3)
    app, server, addr = served
    actors = Actors()
    first = await CometLike.connect(addr)
    await first.start(actors)
    await first.block(1, [])
    second = await CometLike.connect(addr)  # 8: at the cap
    await second.query.call("info", abci.RequestInfo())
    await second.use_all(actors, 2)  # its consensus connection is now the latest one
    await asyncio.sleep(0.4)  # the first two sets are past their grace period
    third = await CometLike.connect(addr)  # replaces the first set's four
    assert server.connections <= 8 and server.refused == 4
    await third.query.call("info", abci.RequestInfo())
    await third.use_all(actors, 3)
    with pytest.raises((ConnectionError, asyncio.IncompleteReadError, OSError)):
        await first.query.call("echo", abci.RequestEcho(message="gone"), timeout=5)
    await third.close()


# ---- memory, measured in a separate process ----

SERVER = textwrap.dedent("""
    import asyncio, sys
    from edgistry.abci_app.app import RegistryApp
    from edgistry.abci_app.server import AbciServer

    async def main():
        app = RegistryApp(sys.argv[1])
        server = AbciServer(app)  # the production limits
        await server.start("tcp://127.0.0.1:" + sys.argv[2])
        print("ready", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())
""")


def _status_kib(pid: int, field: str) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


@pytest.mark.slow
def test_memory_stays_bounded_under_hundreds_of_big_partial_frames(tmp_path):
    """300 connections each sending 3 MiB of a 32 MiB frame (900 MiB offered) raise the
    server's peak RSS by far less than that: the byte budget (64 MiB) holds, the process
    keeps serving, and every drop is one warning line without a traceback."""
    port = free_port()
    log = open(tmp_path / "server.log", "wb")
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(tmp_path / "reg"), str(port)],
                            stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy(), start_new_session=True)
    try:
        wait_for_port(port, 30, proc)
        time.sleep(0.2)
        base = _status_kib(proc.pid, "VmRSS")
        chunk = partial_frame(32 * MiB - 8, 3 * MiB)
        socks = []
        for _ in range(300):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            try:
                s.sendall(chunk)
            except OSError:
                pass  # the server dropped it mid-send
            socks.append(s)
        time.sleep(1.0)
        peak_mib = (_status_kib(proc.pid, "VmHWM") - base) / 1024
        assert proc.poll() is None, "the server died"
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:  # still serving
            req = abci.Request(echo=abci.RequestEcho(message="alive")).SerializeToString()
            s.sendall(encode_uvarint(len(req)) + req + b"\x02\x12\x00")
            s.settimeout(10)
            assert b"alive" in s.recv(4096)
        for s in socks:
            s.close()
        print(f"peak RSS growth {peak_mib:.0f} MiB for 900 MiB offered")
        assert peak_mib < 250, f"peak RSS grew by {peak_mib:.0f} MiB"
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()
    text = (tmp_path / "server.log").read_text()
    assert "Traceback" not in text
    assert text.count("dropped:") + text.count("refused:") >= 250  # one line for each
