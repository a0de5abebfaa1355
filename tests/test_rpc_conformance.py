"""The embedded node's JSON-RPC answers malformed and edge requests as CometBFT v0.38 does.

tests/data/rpc_cometbft_v0.38.25.json holds 78 requests with the HTTP status and
body a real v0.38.25 node (kvstore) gave; tests/data/rpc_record.py says how it was
recorded and sends the requests. Compared: HTTP status, the kind of answer
(result, error code, batch, empty, HTML page, 404 text) and the id. Not compared:
result contents and error ``data`` texts (Go's and Python's parser messages
differ), which no client relies on.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from edgistry.abci_app.app import RegistryApp
from edgistry.abci_app.embedded import EmbeddedNode
from edgistry.abci_app.rpc import create_app
from edgistry.cluster.cometbft import HOW_TO_GET, find_cometbft
from proc_helpers import free_port
from registry_helpers import CHAIN, Actors

DATA = Path(__file__).resolve().parent / "data"
sys.path.insert(0, str(DATA))
import rpc_record  # noqa: E402  (tests/data/rpc_record.py: the requests and how to send them)

FIXTURE = json.loads((DATA / "rpc_cometbft_v0.38.25.json").read_text())
# A v1.x node answers a CheckTx rejection in broadcast_tx_* with -32603 instead of a
# result with a non-zero code (chain.py maps both); everything else is the same.
V1_BROADCAST_REJECTIONS = {"uri_broadcast_tx_sync_quoted_raw", "uri_broadcast_tx_sync_missing_tx",
                           "rpc_broadcast_tx_sync_tx_missing", "rpc_broadcast_tx_sync_tx_hex"}


def summary(answer: dict) -> tuple:
    """What is compared: status and the kind of answer (with error code and id)."""
    body = answer["body"]

    def one(obj: Any) -> tuple:
        if not isinstance(obj, dict):
            return ("json", type(obj).__name__)
        ident = obj["id"] if "id" in obj else "<absent>"
        if "error" in obj:
            return ("error", obj["error"]["code"], ident)
        return ("result", ident)

    if not answer["body_is_json"]:
        text = body.strip()
        kind = ("empty",) if not text else ("html",) if text.startswith("<html") else ("text", text.splitlines()[0])
    elif isinstance(body, list):
        kind = ("batch", tuple(one(o) for o in body))
    else:
        kind = one(body)
    return (answer["status"], kind)


def is_error(answer: dict) -> bool:
    return answer["status"] >= 400 or "error" in json.dumps(answer["body"])[:2000]


@pytest.fixture
async def embedded_url(tmp_path):
    """An embedded node (genesis and two more blocks) serving its RPC on a loopback port."""
    actors = Actors()
    app = RegistryApp(tmp_path / "reg")
    genesis = {"chain_id": CHAIN, "initial_height": "1", "genesis_time_s": 1_800_000_000,
               "app_state": actors.genesis().to_json()}
    node = EmbeddedNode(app, tmp_path / "blocks", genesis)
    node.handshake()
    node.produce_block()
    node.produce_block()
    runner = web.AppRunner(create_app(node), access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()
        node.blocks.close()
        app.close()


async def test_embedded_node_answers_every_recorded_request_like_cometbft_v038(embedded_url, caplog):
    """Every one of the 78 recorded requests gets the status, answer kind, error code and id
    the real v0.38.25 node gave; each error answer logs exactly one line and nothing logs a traceback."""
    caplog.set_level(logging.INFO)
    differ, log_problems = [], []
    for rec in FIXTURE:
        caplog.clear()
        got = await asyncio.to_thread(rpc_record.send, embedded_url, rec["request"], 10.0)
        if summary(got) != summary(rec):
            differ.append(f"{rec['name']}: cometbft {summary(rec)} embedded {summary(got)}")
        lines = [r for r in caplog.records if r.name.startswith("edgistry.abci_app") and r.levelno >= logging.WARNING]
        want = 1 if is_error(rec) else 0
        if len(lines) != want or any(r.exc_info for r in caplog.records):
            log_problems.append(f"{rec['name']}: {[r.getMessage()[:100] for r in lines]}")
    assert not differ, "\n".join(differ)
    assert not log_problems, "\n".join(log_problems)
    assert len(FIXTURE) == 78


@pytest.mark.cometbft
@pytest.mark.slow
@pytest.mark.skipif(find_cometbft() is None, reason=HOW_TO_GET)
async def test_live_cometbft_and_embedded_node_answer_alike(embedded_url, tmp_path, procs):
    """The same requests sent to a live CometBFT node (kvstore) and to the embedded node get
    the same status, answer kind, error code and id (v1.x: except its broadcast rejections)."""
    from cluster_helpers import set_toml_values, wait_for_height

    binary = find_cometbft()
    version = subprocess.run([binary, "version"], capture_output=True, text=True, timeout=30).stdout.strip()
    home = tmp_path / "kvstore"
    subprocess.run([binary, "init", "--home", str(home)], check=True, capture_output=True, timeout=60)
    rpc_port, p2p_port = free_port(), free_port()
    set_toml_values(home / "config" / "config.toml", {"consensus.timeout_commit": "300ms"})
    procs.start("kvstore", [binary, "start", "--home", str(home), "--proxy_app=kvstore",
                            f"--rpc.laddr=tcp://127.0.0.1:{rpc_port}", f"--p2p.laddr=tcp://127.0.0.1:{p2p_port}"])
    live = f"http://127.0.0.1:{rpc_port}"
    await asyncio.to_thread(wait_for_height, live, 3, 60)
    skip = V1_BROADCAST_REJECTIONS if not version.startswith("0.38") else set()
    differ = []
    for rec in FIXTURE:
        if rec["name"] in skip:
            continue
        theirs = await asyncio.to_thread(rpc_record.send, live, rec["request"], 10.0)
        ours = await asyncio.to_thread(rpc_record.send, embedded_url, rec["request"], 10.0)
        if summary(theirs) != summary(ours):
            differ.append(f"{rec['name']}: cometbft {version} {summary(theirs)} embedded {summary(ours)}")
    assert not differ, "\n".join(differ)


async def test_the_tools_read_blocks_headers_validators_peers_and_txs_from_the_embedded_node(tmp_path):
    """chain.py's readers (blockchain headers, block hash, validators, peers) and block / tx_search
    work against the embedded node: a header carries the app hash after the block before it."""
    from edgistry import chain
    from registry_helpers import device_msg

    actors = Actors()
    app = RegistryApp(tmp_path / "reg")
    genesis = {"chain_id": CHAIN, "initial_height": "1", "genesis_time_s": 1_800_000_000,
               "app_state": actors.genesis().to_json()}
    node = EmbeddedNode(app, tmp_path / "blocks", genesis)
    node.handshake()
    tx = actors.tx(actors.gw1, device_msg(b"T" * 16))
    assert node.check_tx(tx).code == 0
    block2 = node.produce_block()
    node.produce_block()
    runner = web.AppRunner(create_app(node), access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    url = f"http://127.0.0.1:{port}"
    try:
        after2 = app.store.app_hash_at(2).hex().upper()
        assert await asyncio.to_thread(chain.header_app_hash, url, 3) == after2
        assert await asyncio.to_thread(chain.block_hash, url, 2) == block2.hash.hex().upper()
        assert await asyncio.to_thread(chain.header_app_hash, url, 1) != ""  # InitChain's app hash
        assert await asyncio.to_thread(chain.validators, url) == {"": 1}
        assert await asyncio.to_thread(chain.peers, url) == []
        got = await asyncio.to_thread(chain.call, url, "block", height="2")
        assert got["block"]["data"]["txs"] == [base64.b64encode(tx).decode()]
        metas = (await asyncio.to_thread(chain.call, url, "blockchain"))["block_metas"]
        assert [m["header"]["height"] for m in metas] == ["3", "2", "1"]
        for query in (f"tx.hash='{hashlib.sha256(tx).hexdigest().upper()}'", "tx.height=2"):
            found = await asyncio.to_thread(chain.call, url, "tx_search", query=query)
            assert found["total_count"] == "1" and found["txs"][0]["height"] == "2", query
            assert found["txs"][0]["tx_result"]["code"] == 0
        with pytest.raises(chain.RpcFailed, match="-32603"):
            await asyncio.to_thread(chain.call, url, "tx_search", query="app.kind='x'")
    finally:
        await runner.cleanup()
        node.blocks.close()
        app.close()
