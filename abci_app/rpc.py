"""The embedded node's RPC: the subset of CometBFT's JSON-RPC Edgistry uses.

Methods: status, health, abci_info, abci_query, broadcast_tx_sync,
broadcast_tx_async, broadcast_tx_commit, block_results. Both CometBFT call
styles work: JSON-RPC 2.0 POSTed to ``/`` and URI GETs such as
``/abci_query?path="/gateways"&data=0x``. Results use CometBFT v0.38's JSON
shapes: int64 as decimal strings, bytes as base64, hashes as upper-case hex.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from datetime import datetime, timezone
from typing import Any

from aiohttp import web

from .. import __version__
from .embedded import EmbeddedNode, MempoolFull, NodeHalted, TxInCache, tx_hash
from ..proto import abci_pb2 as abci

log = logging.getLogger(__name__)

MAX_RPC_BODY = 2 * 1024 * 1024
INT64_PARAMS = {"height"}  # CometBFT's JSON-RPC wants int64 params as strings (URI calls may be bare)


class RpcError(Exception):
    def __init__(self, code: int, message: str, data: str = "") -> None:
        super().__init__(message)
        self.code, self.message, self.data = code, message, data


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


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


def _decode_tx(params: dict) -> bytes:
    tx = params.get("tx")
    if not isinstance(tx, str):
        raise RpcError(-32602, "Invalid params", "tx (base64 string) is required")
    try:
        if tx.startswith("0x"):
            return bytes.fromhex(tx[2:])
        return base64.b64decode(tx, validate=True)
    except ValueError as exc:
        raise RpcError(-32602, "Invalid params", f"tx is not base64: {exc}") from exc


class RpcHandlers:
    def __init__(self, node: EmbeddedNode, moniker: str = "embedded") -> None:
        self.node, self.moniker = node, moniker

    async def status(self, params: dict) -> dict:
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
                "latest_block_hash": (last.hash.hex().upper() if last else ""),
                "latest_app_hash": app.app_hash.hex().upper(),
                "latest_block_height": str(app.height),
                "latest_block_time": _rfc3339(last.time_ns) if last else "",
                "earliest_block_hash": first.hash.hex().upper() if first else "",
                "earliest_app_hash": (first.results.app_hash.hex().upper() if first and first.results else ""),
                "earliest_block_height": str(earliest),
                "earliest_block_time": _rfc3339(first.time_ns) if first else "",
                "catching_up": False,
            },
            "validator_info": {"address": "", "pub_key": None, "voting_power": "1"},
        }

    async def health(self, params: dict) -> dict:
        if self.node.halted:
            raise RpcError(-32603, "Internal error", self.node.halted)
        return {}

    async def abci_info(self, params: dict) -> dict:
        r = self.node.app.info(abci.RequestInfo())
        return {"response": {"data": r.data, "version": r.version, "app_version": str(r.app_version),
                             "last_block_height": str(r.last_block_height),
                             "last_block_app_hash": _b64(r.last_block_app_hash)}}

    async def abci_query(self, params: dict) -> dict:
        data = params.get("data") or ""
        try:
            raw = bytes.fromhex(data[2:] if data.startswith("0x") else data)
            height = int(params.get("height") or 0)
        except (TypeError, ValueError) as exc:
            raise RpcError(-32602, "Invalid params", f"data must be hex and height an integer: {exc}") from exc
        r = self.node.app.query(abci.RequestQuery(path=str(params.get("path", "")), data=raw,
                                                   height=height, prove=bool(params.get("prove"))))
        return {"response": {"code": r.code, "log": r.log, "info": r.info, "index": str(r.index),
                             "key": _b64(r.key) if r.key else None, "value": _b64(r.value) if r.value else None,
                             "proofOps": None, "height": str(r.height), "codespace": r.codespace}}

    def _check(self, tx: bytes) -> abci.ResponseCheckTx:
        try:
            return self.node.check_tx(tx)
        except TxInCache as exc:
            raise RpcError(-32603, "Internal error", str(exc)) from exc
        except MempoolFull as exc:
            raise RpcError(-32603, "Internal error", str(exc)) from exc
        except NodeHalted as exc:
            raise RpcError(-32603, "Internal error", f"node halted: {exc}") from exc

    async def broadcast_tx_sync(self, params: dict) -> dict:
        tx = _decode_tx(params)
        r = self._check(tx)
        return {"code": r.code, "data": _b64(r.data) if r.data else None, "log": r.log,
                "codespace": r.codespace, "hash": tx_hash(tx).hex().upper()}

    async def broadcast_tx_async(self, params: dict) -> dict:
        return await self.broadcast_tx_sync(params)

    async def broadcast_tx_commit(self, params: dict) -> dict:
        tx = _decode_tx(params)
        h = tx_hash(tx)
        waiter = asyncio.ensure_future(self.node.wait_for_tx(h))
        await asyncio.sleep(0)  # register the waiter before the tx can be included
        try:
            check = self._check(tx)
        except RpcError:
            waiter.cancel()
            raise
        result: dict[str, Any] = {"check_tx": tx_result_json(check), "tx_result": tx_result_json(abci.ExecTxResult()),
                                  "hash": h.hex().upper(), "height": "0"}
        if check.code != 0:
            waiter.cancel()
            return result
        try:
            height, exec_result = await waiter
        except asyncio.TimeoutError as exc:
            raise RpcError(-32603, "Internal error", "timed out waiting for tx to be included in a block") from exc
        result.update(tx_result=tx_result_json(exec_result), height=str(height))
        return result

    async def block_results(self, params: dict) -> dict:
        height = int(params.get("height") or self.node.app.height)
        block = self.node.blocks.load(height)
        if block is None or block.results is None:
            raise RpcError(-32603, "Internal error",
                           f"height {height} must be less than or equal to the current blockchain height {self.node.app.height}")
        r = block.results
        return {"height": str(height), "txs_results": [tx_result_json(t) for t in r.tx_results] or None,
                "finalize_block_events": _events(r.events), "validator_updates": [
                    {"pub_key": {"type": "tendermint/PubKeyEd25519", "value": _b64(v.pub_key.ed25519)},
                     "power": str(v.power)} for v in r.validator_updates] or None,
                "consensus_param_updates": None, "app_hash": _b64(r.app_hash)}


def create_app(node: EmbeddedNode, moniker: str = "embedded") -> web.Application:
    handlers = RpcHandlers(node, moniker)
    methods = {name: getattr(handlers, name) for name in (
        "status", "health", "abci_info", "abci_query", "broadcast_tx_sync", "broadcast_tx_async",
        "broadcast_tx_commit", "block_results")}

    async def call(method: str, params: dict, req_id: Any) -> web.Response:
        fn = methods.get(method)
        try:
            if fn is None:
                raise RpcError(-32601, "Method not found", f"unknown method {method!r}")
            result = await fn(params)
            body = {"jsonrpc": "2.0", "id": req_id, "result": result}
        except RpcError as err:
            body = {"jsonrpc": "2.0", "id": req_id, "error": {"code": err.code, "message": err.message, "data": err.data}}
        return web.json_response(body)

    async def post_root(request: web.Request) -> web.Response:
        try:
            msg = await request.json()
            method, params, req_id = msg["method"], msg.get("params") or {}, msg.get("id", -1)
            if not isinstance(params, dict):
                raise TypeError("params must be an object")
        except (ValueError, KeyError, TypeError) as exc:
            return web.json_response({"jsonrpc": "2.0", "id": -1,
                                      "error": {"code": -32700, "message": "Parse error", "data": str(exc)}})
        for name in INT64_PARAMS & params.keys():
            if not isinstance(params[name], str):  # as CometBFT: int64 travels as a JSON string
                return web.json_response({"jsonrpc": "2.0", "id": req_id, "error": {
                    "code": -32602, "message": "Invalid params",
                    "data": f"error converting json params to arguments: {name}: invalid 64-bit integer "
                            f"encoding {json.dumps(params[name])}, expected string"}})
        return await call(method, params, req_id)

    async def get_method(request: web.Request) -> web.Response:
        params = {}
        for key, value in request.query.items():
            try:  # URI args are JSON literals: path="\"/x\"", height=5
                params[key] = json.loads(value)
            except ValueError:
                params[key] = value
        return await call(request.match_info["method"], params, -1)

    app = web.Application(client_max_size=MAX_RPC_BODY)
    app.router.add_post("/", post_root)
    app.router.add_get("/{method}", get_method)
    return app
