"""The embedded node's RPC: the part of CometBFT's JSON-RPC that Edgistry and its tools use.

Methods: status, health, net_info, abci_info, abci_query, broadcast_tx_sync,
broadcast_tx_async, broadcast_tx_commit, block, blockchain, block_results,
validators, tx_search (by ``tx.hash`` or ``tx.height`` only). Both CometBFT
call styles work: JSON-RPC 2.0 POSTed to ``/`` and URI calls such as
``/abci_query?path="/gateways"&data=0x``; malformed requests get the error codes
and HTTP statuses of a real v0.38 node (``jsonrpc.py``). Results use CometBFT
v0.38's JSON shapes: int64 as decimal strings, bytes as base64, hashes as
upper-case hex. The node has no validator key, so headers carry no commit
signatures and the one "validator" is the embedded producer itself.
"""

from __future__ import annotations

import asyncio
import base64
import re
from datetime import datetime, timezone
from typing import Any

from aiohttp import web

from .. import __version__
from ..http_guard import ConnectionGuard
from .embedded import Block, EmbeddedNode, MempoolFull, NodeHalted, TxInCache, tx_hash
from .handlers import ed25519_key_of
from .jsonrpc import (
    MAX_BODY_BYTES, Kind, Method, Reply, endpoints_page, handle_post, handle_uri, internal, not_found, too_large,
)
from ..proto import abci_pb2 as abci

BLOCKCHAIN_LIMIT = 20  # metas per blockchain call, as CometBFT
DEFAULT_PER_PAGE, MAX_PER_PAGE = 30, 100
_TX_QUERY = re.compile(r"^\s*tx\.(hash|height)\s*=\s*(?:'([0-9A-Fa-f]{64})'|(\d{1,19}))\s*$")
_EMBEDDED_VALIDATOR = {"address": "", "pub_key": None, "voting_power": "1", "proposer_priority": "0"}


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def _hex(b: bytes) -> str:
    return b.hex().upper()


def _events(events: Any) -> list[dict]:
    return [
        {"type": e.type, "attributes": [{"key": a.key, "value": a.value, "index": a.index} for a in e.attributes]}
        for e in events
    ]


def tx_result_json(r: Any) -> dict:
    """ResponseCheckTx / ExecTxResult as CometBFT renders them."""
    return {
        "code": r.code, "data": _b64(r.data) if r.data else None, "log": r.log, "info": r.info,
        "gas_wanted": str(r.gas_wanted), "gas_used": str(r.gas_used), "events": _events(r.events),
        "codespace": r.codespace,
    }


def _rfc3339(ns: int) -> str:
    dt = datetime.fromtimestamp(ns // 1_000_000_000, tz=timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + f".{ns % 1_000_000_000:09d}Z"


def _block_id(block: Block | None) -> dict:
    return {"hash": _hex(block.hash) if block else "", "parts": {"total": 1 if block else 0, "hash": ""}}


def _pages(total: int, page: int | None, per_page: int | None) -> tuple[int, int]:
    """(start, count) of a page, with CometBFT's page rules."""
    per = DEFAULT_PER_PAGE if per_page is None or per_page <= 0 else min(per_page, MAX_PER_PAGE)
    pages = max(1, -(-total // per))
    page = 1 if page is None else page
    if not 1 <= page <= pages:
        raise internal(f"page should be within [1, {pages}] range, given {page}")
    return (page - 1) * per, per


class RpcHandlers:
    """The RPC methods over one :class:`EmbeddedNode`."""

    def __init__(self, node: EmbeddedNode, moniker: str = "embedded") -> None:
        self.node, self.moniker = node, moniker

    # ---- heights and blocks ----

    def _height(self, height: int | None) -> int:
        latest = self.node.app.height
        if height is None:  # null or absent: the latest height
            return latest
        if height <= 0:
            raise internal(f"height must be greater than 0, but got {height}")
        if height > latest:
            raise internal(f"height {height} must be less than or equal to the current blockchain height {latest}")
        base = self.node.blocks.earliest()
        if height < base:
            raise internal(f"height {height} is not available, lowest height is {base}")
        return height

    def _load(self, height: int) -> Block:
        block = self.node.blocks.load(height)
        if block is None:
            raise internal(f"height {height} is not available")
        return block

    def _header(self, block: Block) -> dict:
        prev = self.node.blocks.load(block.height - 1)
        if prev is not None and prev.results is not None:
            app_hash = prev.results.app_hash  # a header carries the state after the block before
        else:
            app_hash = self.node.blocks.genesis_app_hash() or b""
        return {
            "version": {"block": "11", "app": "1"}, "chain_id": self.node.chain_id, "height": str(block.height),
            "time": _rfc3339(block.time_ns), "last_block_id": _block_id(prev), "last_commit_hash": "",
            "data_hash": "", "validators_hash": "", "next_validators_hash": "", "consensus_hash": "",
            "app_hash": _hex(app_hash), "last_results_hash": "", "evidence_hash": "", "proposer_address": "",
        }

    # ---- methods ----

    async def status(self) -> dict:
        last = self.node.last_block
        app = self.node.app
        earliest = self.node.blocks.earliest()
        first = self.node.blocks.load(earliest) if earliest else None
        return {
            "node_info": {
                "protocol_version": {"p2p": "8", "block": "11", "app": "1"},
                "id": "embedded", "listen_addr": "", "network": self.node.chain_id,
                "version": f"edgistry-embedded-{__version__}", "channels": "", "moniker": self.moniker,
                "other": {"tx_index": "on", "rpc_address": ""},
            },
            "sync_info": {
                "latest_block_hash": (_hex(last.hash) if last else ""),
                "latest_app_hash": _hex(app.app_hash),
                "latest_block_height": str(app.height),
                "latest_block_time": _rfc3339(last.time_ns) if last else "",
                "earliest_block_hash": _hex(first.hash) if first else "",
                "earliest_app_hash": (_hex(first.results.app_hash) if first and first.results else ""),
                "earliest_block_height": str(earliest),
                "earliest_block_time": _rfc3339(first.time_ns) if first else "",
                "catching_up": False,
            },
            "validator_info": {"address": "", "pub_key": None, "voting_power": "1"},
        }

    async def health(self) -> dict:
        if self.node.halted:
            raise internal(self.node.halted)
        return {}

    async def net_info(self) -> dict:
        return {"listening": True, "listeners": [], "n_peers": "0", "peers": []}  # one node, no p2p

    async def abci_info(self) -> dict:
        r = self.node.app.info(abci.RequestInfo())
        return {"response": {"data": r.data, "version": r.version, "app_version": str(r.app_version),
                             "last_block_height": str(r.last_block_height),
                             "last_block_app_hash": _b64(r.last_block_app_hash)}}

    async def abci_query(self, path: str, data: bytes, height: int | None, prove: bool) -> dict:
        r = self.node.app.query(abci.RequestQuery(path=path, data=data, height=height or 0, prove=prove))
        return {"response": {"code": r.code, "log": r.log, "info": r.info, "index": str(r.index),
                             "key": _b64(r.key) if r.key else None, "value": _b64(r.value) if r.value else None,
                             "proofOps": None, "height": str(r.height), "codespace": r.codespace}}

    def _check(self, tx: bytes) -> abci.ResponseCheckTx:
        try:
            return self.node.check_tx(tx)
        except (TxInCache, MempoolFull) as exc:
            raise internal(str(exc)) from exc
        except NodeHalted as exc:
            raise internal(f"node halted: {exc}") from exc

    async def broadcast_tx_sync(self, tx: bytes) -> dict:
        r = self._check(tx)
        return {"code": r.code, "data": _b64(r.data) if r.data else None, "log": r.log,
                "codespace": r.codespace, "hash": _hex(tx_hash(tx))}

    async def broadcast_tx_async(self, tx: bytes) -> dict:
        return await self.broadcast_tx_sync(tx)

    async def broadcast_tx_commit(self, tx: bytes) -> dict:
        h = tx_hash(tx)
        waiter = asyncio.ensure_future(self.node.wait_for_tx(h))
        await asyncio.sleep(0)  # register the waiter before the tx can be included
        try:
            check = self._check(tx)
        except Exception:
            waiter.cancel()
            raise
        result: dict[str, Any] = {"check_tx": tx_result_json(check), "tx_result": tx_result_json(abci.ExecTxResult()),
                                  "hash": _hex(h), "height": "0"}
        if check.code != 0:
            waiter.cancel()
            return result
        try:
            height, exec_result = await waiter
        except asyncio.TimeoutError as exc:
            raise internal("timed out waiting for tx to be included in a block") from exc
        result.update(tx_result=tx_result_json(exec_result), height=str(height))
        return result

    async def block(self, height: int | None) -> dict:
        block = self._load(self._height(height))
        return {"block_id": _block_id(block), "block": {
            "header": self._header(block), "data": {"txs": [_b64(t) for t in block.txs]},
            "evidence": {"evidence": []},
            "last_commit": {"height": str(block.height - 1), "round": 0,
                            "block_id": _block_id(self.node.blocks.load(block.height - 1)), "signatures": []}}}

    async def blockchain(self, minHeight: int | None, maxHeight: int | None) -> dict:  # noqa: N803 (CometBFT's names)
        latest, base = self.node.app.height, max(self.node.blocks.earliest(), 1)
        lo, hi = minHeight or 0, maxHeight or 0
        if lo < 0 or hi < 0:
            raise internal("heights must be non-negative")
        hi = min(latest, hi or latest)
        lo = max(base, lo or 1, hi - BLOCKCHAIN_LIMIT + 1)
        if lo > hi:
            raise internal(f"min height {lo} can't be greater than max height {hi}")
        metas = []
        for h in range(hi, lo - 1, -1):
            block = self._load(h)
            metas.append({"block_id": _block_id(block), "block_size": str(sum(len(t) for t in block.txs)),
                          "header": self._header(block), "num_txs": str(len(block.txs))})
        return {"last_height": str(latest), "block_metas": metas}

    async def block_results(self, height: int | None) -> dict:
        height = self._height(height)
        block = self._load(height)
        if block.results is None:
            raise internal(f"no results for height {height}")
        r = block.results
        return {"height": str(height), "txs_results": [tx_result_json(t) for t in r.tx_results] or None,
                "finalize_block_events": _events(r.events), "validator_updates": [
                    {"pub_key": {"type": "tendermint/PubKeyEd25519", "value": _b64(ed25519_key_of(v) or b"")},
                     "power": str(v.power)} for v in r.validator_updates] or None,
                "consensus_param_updates": None, "app_hash": _b64(r.app_hash)}

    async def validators(self, height: int | None, page: int | None, per_page: int | None) -> dict:
        height = self._height(height)
        start, count = _pages(1, page, per_page)
        return {"block_height": str(height), "validators": [_EMBEDDED_VALIDATOR][start:start + count],
                "count": "1", "total": "1"}

    async def tx_search(self, query: str, prove: bool, page: int | None, per_page: int | None,
                        order_by: str) -> dict:
        m = _TX_QUERY.match(query)
        if m is None:
            raise internal(f"the embedded node's tx_search takes tx.hash='HEX' or tx.height=N, not {query[:80]!r}")
        found: list[tuple[Block, int]] = []
        if m.group(1) == "hash":
            height = self.node.blocks.tx_height(bytes.fromhex(m.group(2)))
            block = self.node.blocks.load(height) if height and height <= self.node.app.height else None
            if block is not None:
                found = [(block, i) for i, t in enumerate(block.txs) if _hex(tx_hash(t)) == m.group(2).upper()][:1]
        else:
            height = int(m.group(3))
            block = self.node.blocks.load(height) if 0 < height <= self.node.app.height else None
            found = [(block, i) for i in range(len(block.txs))] if block is not None else []
        if order_by == "desc":
            found.reverse()
        start, count = _pages(len(found), page, per_page)
        return {"txs": [{"hash": _hex(tx_hash(b.txs[i])), "height": str(b.height), "index": i,
                         "tx_result": tx_result_json(b.results.tx_results[i]) if b.results else None,
                         "tx": _b64(b.txs[i])} for b, i in found[start:start + count]],
                "total_count": str(len(found))}


def methods_of(handlers: RpcHandlers) -> dict[str, Method]:
    """The method table: each method with its CometBFT parameter names and types."""
    i64, text, flag = Kind.INT64, Kind.STR, Kind.BOOL
    tx = (("tx", Kind.TX),)
    return {
        "status": Method(handlers.status), "health": Method(handlers.health),
        "net_info": Method(handlers.net_info), "abci_info": Method(handlers.abci_info),
        "abci_query": Method(handlers.abci_query,
                             (("path", text), ("data", Kind.HEX), ("height", i64), ("prove", flag))),
        "broadcast_tx_sync": Method(handlers.broadcast_tx_sync, tx),
        "broadcast_tx_async": Method(handlers.broadcast_tx_async, tx),
        "broadcast_tx_commit": Method(handlers.broadcast_tx_commit, tx),
        "block": Method(handlers.block, (("height", i64),)),
        "blockchain": Method(handlers.blockchain, (("minHeight", i64), ("maxHeight", i64))),
        "block_results": Method(handlers.block_results, (("height", i64),)),
        "validators": Method(handlers.validators, (("height", i64), ("page", i64), ("per_page", i64))),
        "tx_search": Method(handlers.tx_search, (("query", text), ("prove", flag), ("page", i64),
                                                 ("per_page", i64), ("order_by", text))),
    }


def _response(reply: Reply) -> web.Response:
    resp = web.Response(status=reply.status, body=reply.body)
    if reply.content_type is not None:
        resp.headers["Content-Type"] = reply.content_type
    return resp


async def _read_body(request: web.Request) -> bytes | None:
    """The request body, or None when it exceeds MAX_BODY_BYTES (read no further)."""
    if (request.content_length or 0) > MAX_BODY_BYTES:
        return None
    chunks, size = [], 0
    while chunk := await request.content.read(64 * 1024):
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(node: EmbeddedNode, moniker: str = "embedded",
               guard: ConnectionGuard | None = None) -> web.Application:
    """The aiohttp application serving the embedded node's RPC. With ``guard``,
    serve it through a :class:`http_guard.GuardedSite` of that guard (deadlines
    on heads and bodies, caps on connections)."""
    methods = methods_of(RpcHandlers(node, moniker))

    def page(request: web.Request) -> str:
        return endpoints_page(request.host, methods)

    async def post_root(request: web.Request) -> web.Response:
        body = await _read_body(request)
        if body is None:
            return _response(too_large())
        return _response(await handle_post(methods, body, lambda: page(request)))

    async def get_root(request: web.Request) -> web.Response:
        return _response(Reply(200, page(request).encode(), "text/html"))

    async def uri(request: web.Request) -> web.Response:
        return _response(await handle_uri(methods, request.match_info["method"], request.query.items()))

    async def unknown(request: web.Request) -> web.Response:
        return _response(not_found(request.path))

    app = web.Application(client_max_size=MAX_BODY_BYTES + 1,
                          middlewares=[guard.middleware] if guard is not None else [])
    app.router.add_post("/", post_root)
    app.router.add_get("/", get_root)
    app.router.add_route("*", "/{method:[A-Za-z0-9_]+}", uri)
    app.router.add_route("*", "/{tail:.*}", unknown)
    return app
