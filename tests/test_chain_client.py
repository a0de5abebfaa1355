"""chain.py maps both CometBFT versions' CheckTx rejections to TxRejected with the app's code."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from aiohttp import web

from edgistry.abci_app.codes import Code
from edgistry.chain import ChainClient, ChainError, CommitTimeout, TxRejected, call, rejection_of
from proc_helpers import free_port

# recorded from a real v1.0.1 node (kvstore rejects an empty tx with code 2)
V1_RECORDED = {"code": -32603, "message": "Internal error", "data": (
    "broadcast error on transaction validation: tx E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855"
    " is invalid: code=2, data=, log='', codespace=''")}


def v1_error(code: int, log: str) -> dict:
    return {"code": -32603, "message": "Internal error", "data": (
        f"broadcast error on transaction validation: tx {'AB' * 32} is invalid: code={code}, data=, "
        f"log='{log}', codespace='edgistry'")}


def test_recorded_v1_rejection_is_parsed():
    """The exact text a v1.0.1 node sent becomes TxRejected(CheckTx, 2, '')."""
    err = rejection_of(V1_RECORDED)
    assert isinstance(err, TxRejected) and (err.stage, err.code, err.log) == ("CheckTx", 2, "")


@pytest.mark.parametrize("log", ["nonce 5 was already used", "it's 'quoted', codespace='x' inside", ""])
def test_log_text_with_quotes_survives(log):
    """The log is everything between log=' and the final ', codespace='...'."""
    err = rejection_of(v1_error(Code.NONCE_REUSED, log))
    assert err.code == Code.NONCE_REUSED and err.log == log


@pytest.mark.parametrize("error", [
    {"code": -32603, "message": "Internal error", "data": "tx already exists in cache"},
    {"code": -32602, "message": "Invalid params", "data": v1_error(3, "x")["data"]},
    {"code": -32603, "message": "Internal error"},
    {"code": -32603, "message": "Internal error", "data": 5},
    "not an object",
])
def test_other_errors_are_not_rejections(error):
    """Other -32603 errors, other codes and malformed error objects stay ordinary errors."""
    assert rejection_of(error) is None


@contextlib.asynccontextmanager
async def node_answering(error: dict):
    """A JSON-RPC endpoint on loopback that answers every call with ``error``; yields its URL."""
    async def post(request: web.Request) -> web.Response:
        msg = await request.json()
        return web.json_response({"jsonrpc": "2.0", "id": msg["id"], "error": error})

    runner = web.AppRunner(web.Application())
    runner.app.router.add_post("/", post)
    await runner.setup()
    port = free_port()
    try:
        await web.TCPSite(runner, "127.0.0.1", port).start()
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@pytest.fixture
async def fake_v1_node():
    """Answers every broadcast as a v1.x node rejecting the tx."""
    async with node_answering(v1_error(Code.UNKNOWN_SIGNER, "signer abc is neither an admin nor a gateway")) as url:
        yield url


async def test_chain_client_raises_tx_rejected_for_a_v1_rejection(fake_v1_node):
    """broadcast_commit against a v1.x-shaped answer raises TxRejected with the app's code."""
    async with ChainClient(fake_v1_node) as chain:
        with pytest.raises(TxRejected) as caught:
            await chain.broadcast_commit(b"tx")
    assert caught.value.code == Code.UNKNOWN_SIGNER and caught.value.stage == "CheckTx"
    assert isinstance(caught.value, ChainError)


async def test_sync_call_raises_tx_rejected_for_a_v1_rejection(fake_v1_node):
    """The synchronous client maps the same answer the same way."""
    with pytest.raises(TxRejected) as caught:
        await asyncio.to_thread(call, fake_v1_node, "broadcast_tx_sync", tx="dHg=")
    assert caught.value.code == Code.UNKNOWN_SIGNER
    assert caught.value.log == "signer abc is neither an admin nor a gateway"


@pytest.fixture
async def node_that_never_commits():
    """Answers broadcast_tx_commit as a v0.38 node whose tx left the pool unseen (CometBFT's words)."""
    async with node_answering({"code": -32603, "message": "Internal error",
                               "data": "timed out waiting for tx to be included in a block"}) as url:
        yield url


async def test_a_commit_timeout_is_its_own_error(node_that_never_commits):
    """CheckTx passed but no block took the tx: CommitTimeout (a ChainError), not a rejection."""
    async with ChainClient(node_that_never_commits) as chain:
        with pytest.raises(CommitTimeout) as caught:
            await chain.broadcast_commit(b"tx")
    assert isinstance(caught.value, ChainError) and not isinstance(caught.value, TxRejected)


@pytest.mark.parametrize("how", ["drip", "endless"])
def test_a_node_answer_is_bounded_in_time_and_size(how, monkeypatch):
    """A node RPC (or anyone on its plain-HTTP path) that sends its answer a byte a second,
    or without end, no longer holds the caller past its timeout or grows its memory."""
    import socket
    import threading
    import time as _time

    from edgistry import chain as chain_module

    monkeypatch.setattr(chain_module, "MAX_ANSWER_BYTES", 1 << 20)
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]
    stop = threading.Event()

    def serve():
        conn, _ = srv.accept()
        conn.recv(65536)
        conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{")
        try:
            while not stop.is_set():
                if how == "drip":
                    _time.sleep(0.2)
                    conn.sendall(b" ")
                else:
                    conn.sendall(b" " * 65536)
        except OSError:
            pass
        finally:
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    try:
        with pytest.raises(chain_module.NodeUnreachable, match="within 1 s" if how == "drip" else "larger than"):
            chain_module.call(f"http://127.0.0.1:{port}", "status", timeout=1.0)
    finally:
        stop.set()
        srv.close()
