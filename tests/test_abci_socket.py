"""ABCI conformance over a real TCP socket, replaying a CometBFT-like session."""

from __future__ import annotations

import asyncio
import json

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from edgistry.abci_app.app import RegistryApp
from edgistry.abci_app.client import AbciClient
from edgistry.abci_app.framing import encode_frame, encode_uvarint
from edgistry.abci_app.server import AbciServer, _parse_request, answer_frame, dispatch
from edgistry.proto import abci_pb2 as abci
from registry_helpers import CHAIN, T0, Actors, device_msg

pytestmark = pytest.mark.timeout(60)


class InProcess:
    """The same calls as AbciClient, straight into the app (no socket)."""

    def __init__(self, app):
        self.app, self.pending = app, []

    def send(self, kind, msg):
        req = abci.Request()
        getattr(req, kind).CopyFrom(msg)
        self.pending.append(getattr(dispatch(self.app, req), kind))

    async def flush(self):
        out, self.pending = self.pending, []
        return out

    async def call(self, kind, msg):
        self.send(kind, msg)
        return (await self.flush())[0]


async def cometbft_session(query, snapshot, mempool, consensus, actors: Actors) -> list[bytes]:
    """Handshake, pipelined CheckTx with Flush, three blocks, recheck and queries."""
    echo = await query.call("echo", abci.RequestEcho(message="hello"))
    assert echo.message == "hello"
    info = await query.call("info", abci.RequestInfo(version="0.38.25", abci_version="2.0.0"))
    assert info.last_block_height == 0
    init = await consensus.call("init_chain", abci.RequestInitChain(
        chain_id=CHAIN, initial_height=1, app_state_bytes=json.dumps(actors.genesis().to_json()).encode()))
    hashes = [init.app_hash]
    assert (await snapshot.call("list_snapshots", abci.RequestListSnapshots())).snapshots == []

    good = [actors.tx(actors.gw1, device_msg(bytes([i]) * 16)) for i in range(1, 11)]
    bad = [actors.tx(actors.stranger, device_msg(b"\xee" * 16)), b"\x00garbage"]
    for tx in good + bad:  # pipelined, as the mempool connection does
        mempool.send("check_tx", abci.RequestCheckTx(tx=tx, type=abci.NEW))
    checks = await mempool.flush()
    assert [c.code for c in checks] == [0] * 10 + [11, 1]

    mempool_txs = good
    for height in (1, 2, 3):
        block_time = Timestamp(seconds=T0 + 10 * height)
        prep = await consensus.call("prepare_proposal", abci.RequestPrepareProposal(
            max_tx_bytes=len(good[0]) * 4, txs=mempool_txs, height=height, time=block_time))
        assert sum(len(t) for t in prep.txs) <= len(good[0]) * 4
        proc = await consensus.call("process_proposal", abci.RequestProcessProposal(txs=prep.txs, height=height, time=block_time))
        assert proc.status == abci.ResponseProcessProposal.ACCEPT
        ext = await consensus.call("extend_vote", abci.RequestExtendVote(height=height))
        ver = await consensus.call("verify_vote_extension", abci.RequestVerifyVoteExtension(height=height, vote_extension=ext.vote_extension))
        assert ver.status == abci.ResponseVerifyVoteExtension.ACCEPT
        fin = await consensus.call("finalize_block", abci.RequestFinalizeBlock(txs=prep.txs, height=height, time=block_time))
        assert [r.code for r in fin.tx_results] == [0] * len(prep.txs)
        await consensus.call("commit", abci.RequestCommit())
        hashes.append(fin.app_hash)
        mempool_txs = [t for t in mempool_txs if t not in prep.txs]
        for tx in mempool_txs:  # recheck what is left
            mempool.send("check_tx", abci.RequestCheckTx(tx=tx, type=abci.RECHECK))
        assert all(c.code == 0 for c in await mempool.flush())

    info = await query.call("info", abci.RequestInfo())
    assert (info.last_block_height, info.last_block_app_hash) == (3, hashes[-1])
    q = await query.call("query", abci.RequestQuery(path="/devices/by_gateway",
                                                    data=b"\x1a\x20" + actors.gw1_id.encode()))
    assert q.code == 0 and q.height == 3
    return hashes


@pytest.fixture
async def served(tmp_path):
    app = RegistryApp(tmp_path / "reg")
    server = AbciServer(app, max_frame_size=1 << 20)
    (addr,) = await server.start("tcp://127.0.0.1:0")
    yield app, server, addr
    await server.close()
    app.close()


async def test_session_over_socket_matches_in_process(served, tmp_path):
    """Four connections carry a full session; hashes equal those of the in-process app."""
    app, server, addr = served
    clients = [await AbciClient.connect(addr) for _ in range(4)]  # query, snapshot, mempool, consensus
    actors = Actors()
    over_socket = await cometbft_session(*clients, actors)
    for c in clients:
        await c.close()
    ref = RegistryApp(tmp_path / "ref")
    actors.nonces.clear()
    assert await cometbft_session(*[InProcess(ref)] * 4, actors) == over_socket
    ref.close()


@pytest.mark.parametrize("poison", [
    encode_frame(b"\xff\xff\xff"),               # not protobuf
    encode_uvarint(1 << 21),                     # above the server's 1 MiB limit
    b"\xff" * 11,                                # varint overflow
    encode_frame(b""),                           # Request with no method
    encode_frame(b"\x22\x00"),                   # field 4 (reserved BeginBlock): unknown method
], ids=["garbage", "oversized", "varint", "empty", "unknown-method"])
async def test_bad_frame_closes_only_that_connection(served, poison, caplog):
    """A malformed frame closes its connection with a log line; state and other connections are untouched."""
    app, server, addr = served
    good = await AbciClient.connect(addr)
    await good.call("init_chain", abci.RequestInitChain(chain_id=CHAIN, app_state_bytes=json.dumps(Actors().genesis().to_json()).encode()))
    before = (app.height, app.app_hash, dict(app._block.writes))
    bad = await AbciClient.connect(addr)
    bad.send("echo", abci.RequestEcho(message="first"))
    bad.send_raw(poison)
    await bad._writer.drain()
    data = await asyncio.wait_for(bad._reader.read(), 5)  # answers the echo, then EOF
    assert data.endswith(b"first") or b"first" in data
    assert (app.height, app.app_hash, dict(app._block.writes)) == before
    assert (await good.call("echo", abci.RequestEcho(message="still here"))).message == "still here"
    assert "closing that connection" in caplog.text
    await good.close()
    await bad.close()


async def test_v1_check_tx_type_field_is_understood(served):
    """A v1.x RequestCheckTx (type in field 3) decodes and counts as a recheck."""
    app, server, addr = served
    client = await AbciClient.connect(addr)
    raw = abci.Request(check_tx=abci.RequestCheckTx(tx=b"x", type_v1=abci.CHECK_TX_TYPE_RECHECK)).SerializeToString()
    assert b"\x18\x01" in raw  # field 3, varint 1: the v1.x wire form
    client.send_raw(encode_frame(raw))
    client._pending.append("check_tx")
    (resp,) = await client.flush()
    assert resp.code == 1  # the tx itself is garbage: MALFORMED_TX
    assert app.stats["recheck"] == 1
    await client.close()


async def test_app_exception_becomes_an_exception_response(served):
    """A broken invariant (Commit before FinalizeBlock) is answered with Response.exception."""
    app, server, addr = served
    client = await AbciClient.connect(addr)
    with pytest.raises(Exception, match="Commit without FinalizeBlock"):
        await client.call("commit", abci.RequestCommit())
    await client.close()


class _Canned:
    """Answers every method with a fixed non-empty response of its type (or raises)."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail

    def __getattr__(self, name):
        def method(req):
            if self.fail:
                raise RuntimeError("boom")
            resp = getattr(abci.Response(), name).__class__()
            for field in resp.DESCRIPTOR.fields:
                if field.type == field.TYPE_BYTES and not field.label == field.LABEL_REPEATED:
                    setattr(resp, field.name, b"x" * 200)
            return resp
        return method


@pytest.mark.parametrize("fail", [False, True], ids=["answer", "exception"])
def test_fast_path_answers_exactly_like_the_general_path(fail):
    """answer_frame (the method's message parsed straight from the frame, the response
    wrapped by its tag) gives the very bytes of parse + dispatch + Response."""
    app = _Canned(fail)
    for field in abci.Request.DESCRIPTOR.oneofs_by_name["value"].fields:
        req = abci.Request()
        getattr(req, field.name).SetInParent()
        if field.name == "check_tx":
            req.check_tx.tx = b"t" * 300
        frame = req.SerializeToString()
        expected = encode_frame(dispatch(app, _parse_request(frame)).SerializeToString())
        assert answer_frame(app, frame) == expected, field.name
    two = abci.Request(echo=abci.RequestEcho(message="a")).SerializeToString() * 2  # two fields: general path
    assert answer_frame(app, two) == encode_frame(dispatch(app, _parse_request(two)).SerializeToString())
