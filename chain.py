"""A client of a node's CometBFT RPC (a real CometBFT node or the embedded one).

Everything that talks to the chain goes through :class:`ChainClient`: the
gateway, the CLI and the tests. It speaks JSON-RPC 2.0 over HTTP (aiohttp),
decodes CometBFT's JSON shapes, and signs registry transactions with
per-signer nonces that increase across restarts without local state.
"""

from __future__ import annotations

import asyncio
import base64
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf.message import Message

from .abci_app import txs
from .abci_app.codes import Code
from .proto import registry_pb2 as pb


class ChainError(Exception):
    """The node could not be reached or answered with an RPC error."""


class TxRejected(ChainError):
    """The registry rejected a transaction: carries its code and log."""

    def __init__(self, stage: str, code: int, log: str) -> None:
        name = Code(code).name if code in Code._value2member_map_ else str(code)
        super().__init__(f"{stage} rejected the tx: {name} ({code}): {log}")
        self.stage, self.code, self.log = stage, code, log


@dataclass
class QueryResult:
    code: int
    log: str
    value: bytes
    height: int


@dataclass
class Committed:
    height: int
    hash: str
    data: bytes
    events: list[dict] = field(default_factory=list)


class ChainClient:
    def __init__(self, rpc_url: str, timeout: float = 30.0) -> None:
        self.url = rpc_url.rstrip("/")
        if "://" not in self.url:
            self.url = "http://" + self.url
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None
        self._last_nonce: dict[bytes, int] = {}
        self._chain_id: str | None = None

    async def __aenter__(self) -> ChainClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def call(self, method: str, **params: Any) -> Any:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
        try:
            async with self._session.post(self.url + "/", json=body) as resp:
                msg = await resp.json(content_type=None)
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
            raise ChainError(f"cannot reach the node RPC at {self.url}: {exc!r}") from exc
        if "error" in msg:
            err = msg["error"]
            raise ChainError(f"{method}: {err.get('message')}: {err.get('data')}")
        return msg["result"]

    # ---- reads ----

    async def status(self) -> dict:
        return await self.call("status")

    async def chain_id(self) -> str:
        if self._chain_id is None:
            self._chain_id = (await self.status())["node_info"]["network"]
        return self._chain_id

    async def height(self) -> int:
        return int((await self.call("abci_info"))["response"].get("last_block_height", 0))

    async def query(self, path: str, data: bytes = b"", height: int = 0) -> QueryResult:
        res = (await self.call("abci_query", path=path, data=data.hex(), height=str(height), prove=False))["response"]
        value = base64.b64decode(res.get("value") or "")
        return QueryResult(int(res.get("code", 0)), res.get("log", ""), value, int(res.get("height", 0)))

    async def query_msg(self, path: str, cls: type[Message], data: bytes = b"", height: int = 0) -> Message:
        res = await self.query(path, data, height)
        if res.code != 0:
            raise ChainError(f"query {path} failed: {res.log} (code {res.code})")
        return cls.FromString(res.value)

    async def gateways(self, height: int = 0) -> list[pb.GatewayRecord]:
        return list((await self.query_msg("/gateways", pb.GatewayList, height=height)).gateways)

    async def devices(self, path: str = "/devices", query: pb.DeviceQuery | None = None,
                      height: int = 0) -> list[pb.DeviceRecord]:
        """All pages of a device listing."""
        q = pb.DeviceQuery()
        if query is not None:
            q.CopyFrom(query)
        out: list[pb.DeviceRecord] = []
        while True:
            page = await self.query_msg(path, pb.DeviceList, q.SerializeToString(), height)
            out.extend(page.devices)
            if not page.next:
                return out
            q.start_after = page.next

    # ---- writes ----

    async def next_nonce(self, signer: bytes) -> int:
        # Microsecond time keeps nonces rising across restarts without local
        # state; the committed nonce covers clock steps backwards.
        if signer not in self._last_nonce:
            res = await self.query("/nonce", signer)
            self._last_nonce[signer] = int.from_bytes(res.value or b"\0", "big")
        nonce = max(self._last_nonce[signer] + 1, time.time_ns() // 1000)
        self._last_nonce[signer] = nonce
        return nonce

    async def sign(self, key: Ed25519PrivateKey, msg: Message) -> bytes:
        signer = key.public_key().public_bytes_raw()
        return txs.sign_tx(key, await self.chain_id(), await self.next_nonce(signer), msg)

    async def broadcast_sync(self, tx: bytes) -> str:
        """CheckTx only; raises TxRejected when the mempool refuses it."""
        res = await self.call("broadcast_tx_sync", tx=base64.b64encode(tx).decode())
        if res["code"]:
            raise TxRejected("CheckTx", res["code"], res.get("log", ""))
        return res["hash"]

    async def broadcast_commit(self, tx: bytes) -> Committed:
        """Submit and wait for the block; raises TxRejected on any failure code."""
        res = await self.call("broadcast_tx_commit", tx=base64.b64encode(tx).decode())
        check, result = res["check_tx"], res["tx_result"]
        if check["code"]:
            raise TxRejected("CheckTx", check["code"], check.get("log", ""))
        if result["code"]:
            raise TxRejected("FinalizeBlock", result["code"], result.get("log", ""))
        data = base64.b64decode(result.get("data") or "")
        return Committed(int(res["height"]), res["hash"], data, result.get("events") or [])

    async def submit(self, key: Ed25519PrivateKey, msg: Message, retries: int = 1) -> Committed:
        """Sign ``msg`` and commit it; resynchronise the nonce once if it was stale."""
        signer = key.public_key().public_bytes_raw()
        for attempt in range(retries + 1):
            try:
                return await self.broadcast_commit(await self.sign(key, msg))
            except TxRejected as err:
                if err.code not in (Code.STALE_NONCE, Code.NONCE_REUSED) or attempt == retries:
                    raise
                self._last_nonce.pop(signer, None)
        raise AssertionError("unreachable")
