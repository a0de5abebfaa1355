"""The client of a node's CometBFT RPC (a real CometBFT node or the embedded one).

Everything that talks to the chain goes through this module:

* :class:`ChainClient` (asyncio, aiohttp) for the gateway, the CLI and the
  tests: JSON-RPC 2.0 over HTTP, CometBFT's JSON shapes decoded, registry
  transactions signed with per-signer nonces that increase across restarts
  without local state;
* plain synchronous reads (:func:`call`, :func:`status`, :func:`peers`, ...)
  for the cluster tooling, which polls a handful of nodes once a second and
  needs no event loop; transport failures map to :class:`NodeUnreachable`.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
import urllib.error
import urllib.request
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


class CommitTimeout(ChainError):
    """CheckTx took the tx but no block did within the node's commit timeout.

    It may still commit, or it never will: the node evicts a pending tx that a
    block made invalid (a recheck fails), and ``broadcast_tx_commit`` does not
    notice. Read the state before deciding to send again.
    """


COMMIT_TIMED_OUT = "timed out waiting for tx to be included in a block"  # CometBFT's (and the embedded node's) words

# CometBFT v1.x answers a CheckTx rejection in broadcast_tx_sync/commit with a
# JSON-RPC error (-32603) instead of v0.38's result with a non-zero code:
#   "broadcast error on transaction validation: tx HASH is invalid: code=2, data=, log='...', codespace='...'"
_V1_REJECTION = re.compile(r"broadcast error on transaction validation: .*?\bcode=(\d+), data=.*?, "
                           r"log='(.*)', codespace='[^']*'$", re.DOTALL)
INTERNAL_ERROR = -32603


def rejection_of(error: Any) -> TxRejected | None:
    """The CheckTx rejection a v1.x node's JSON-RPC ``error`` object reports, if it is one."""
    if not isinstance(error, dict) or error.get("code") != INTERNAL_ERROR or not isinstance(error.get("data"), str):
        return None
    m = _V1_REJECTION.search(error["data"])
    return TxRejected("CheckTx", int(m.group(1)), m.group(2)) if m else None


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
        self._senders: dict[bytes, asyncio.Lock] = {}
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
            raise ChainError(f"cannot reach the node RPC at {self.url}: {_reason(exc)}") from exc
        if "error" in msg:
            err = msg["error"]
            raise rejection_of(err) or ChainError(f"{method}: {err.get('message')}: {err.get('data')}")
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

    async def pages(self, path: str, cls: type[Message], items: str, query: pb.DeviceQuery | None = None,
                    height: int = 0) -> list:
        """Every item (field ``items`` of ``cls``) of a paged listing, following its ``next`` cursors."""
        q = pb.DeviceQuery()
        if query is not None:
            q.CopyFrom(query)
        out: list = []
        while True:
            page = await self.query_msg(path, cls, q.SerializeToString(), height)
            out.extend(getattr(page, items))
            if not page.next:
                return out
            q.start_after = page.next

    async def devices(self, path: str = "/devices", query: pb.DeviceQuery | None = None,
                      height: int = 0) -> list[pb.DeviceRecord]:
        """All pages of a device listing."""
        return await self.pages(path, pb.DeviceList, "devices", query, height)

    async def manifests(self, gateway_id: str = "", height: int = 0) -> list[pb.ManifestRecord]:
        """All pages of the sealed manifest catalogs (one gateway's, or every gateway's)."""
        q = pb.DeviceQuery(gateway_id=gateway_id, limit=64)  # slots of up to 32 KiB: small pages
        return await self.pages("/manifests", pb.ManifestList, "manifests", q, height)

    async def manifest(self, gateway_id: str, slot: int, height: int = 0) -> pb.ManifestRecord | None:
        """One catalog slot (None: never written)."""
        res = await self.query("/manifest", pb.DeviceQuery(gateway_id=gateway_id, slot=slot).SerializeToString(),
                               height)
        if res.code == Code.NOT_FOUND:
            return None
        if res.code != 0:
            raise ChainError(f"query /manifest failed: {res.log} (code {res.code})")
        return pb.ManifestRecord.FromString(res.value)

    async def manifest_ref_height(self) -> int:
        """The genesis height from which devices name a catalog slot (0: never)."""
        return (await self.query_msg("/summary", pb.NodeSummary)).manifest_ref_height

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

    def sender(self, signer: bytes) -> asyncio.Lock:
        """Held from signing a tx of ``signer`` until it is safe to sign the next one.

        The chain takes a signer's nonces only rising, so a tx with a higher nonce
        committed first leaves a lower one pending invalid for ever: the node evicts it
        at recheck, and a ``broadcast_tx_commit`` waiting for it times out. Two senders
        sharing a key in one process (a gateway's batch submitter and its seal keeper)
        therefore take turns: :meth:`submit` holds this until its tx is committed, the
        submitter while it signs and hands a batch to the node (it re-queues its own
        overtaken batches).
        """
        lock = self._senders.get(signer)
        if lock is None:
            lock = self._senders[signer] = asyncio.Lock()
        return lock

    def forget_nonce(self, signer: bytes) -> None:
        """Read the signer's committed nonce again before the next signature (after a stale one)."""
        self._last_nonce.pop(signer, None)

    async def sign(self, key: Ed25519PrivateKey, msg: Message) -> bytes:
        signer = key.public_key().public_bytes_raw()
        return txs.sign_tx(key, await self.chain_id(), await self.next_nonce(signer), msg)

    async def broadcast_commit(self, tx: bytes) -> Committed:
        """Submit and wait for the block; raises TxRejected on any failure code."""
        try:
            res = await self.call("broadcast_tx_commit", tx=base64.b64encode(tx).decode())
        except TxRejected:
            raise
        except ChainError as exc:
            if COMMIT_TIMED_OUT in str(exc):
                raise CommitTimeout(f"the tx passed CheckTx but was not seen in a block: {exc}") from exc
            raise
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
                async with self.sender(signer):
                    return await self.broadcast_commit(await self.sign(key, msg))
            except TxRejected as err:
                if err.code not in (Code.STALE_NONCE, Code.NONCE_REUSED) or attempt == retries:
                    raise
                self.forget_nonce(signer)
        raise AssertionError("unreachable")


def _reason(exc: BaseException) -> str:
    """A transport failure in a few words (aiohttp's own repr names its internals)."""
    if isinstance(exc, asyncio.TimeoutError):
        return "no answer in time"
    if isinstance(exc, aiohttp.ClientConnectorError):
        os_error = exc.os_error
        if isinstance(os_error, ConnectionRefusedError):
            return "connection refused"
        if "DNS" in type(exc).__name__ or "Name or service not known" in str(exc):
            return "the host name does not resolve"
        return f"connection failed ({os_error.strerror or os_error})"
    if isinstance(exc, aiohttp.ContentTypeError) or isinstance(exc, ValueError):
        return "the answer is not JSON-RPC (is that a CometBFT RPC address?)"
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"HTTP {exc.status} {exc.message}"
    return str(exc) or type(exc).__name__


# ---- synchronous reads (cluster tooling) ----

TIMEOUT = 3.0


class NodeUnreachable(ChainError):
    """The node's RPC did not answer (not running, paused, or refusing)."""


class RpcFailed(ChainError):
    """The node answered with a JSON-RPC error."""


MAX_ANSWER_BYTES = 64 << 20  # a node's answer larger than this is refused (blocks of 4-8 MiB fit)
_READ_CHUNK = 64 << 10


def call(url: str, method: str, timeout: float = TIMEOUT, **params: Any) -> Any:
    """One JSON-RPC call; its ``result``. ``timeout`` bounds the whole call, and the answer
    is at most MAX_ANSWER_BYTES: urllib's timeout bounds each socket read only, so a node (or
    anyone on the way to it) dripping a byte a second, or sending without end, held the caller
    as long as it liked."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode()
    req = urllib.request.Request(url.rstrip("/") + "/", body, {"Content-Type": "application/json"})
    deadline = time.monotonic() + timeout
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            chunks, size = [], 0
            while chunk := resp.read1(_READ_CHUNK):
                size += len(chunk)
                if size > MAX_ANSWER_BYTES:
                    raise ValueError(f"answer larger than {MAX_ANSWER_BYTES} bytes")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no whole answer within {timeout:g} s")
                chunks.append(chunk)
            msg = json.loads(b"".join(chunks))
    except (OSError, ValueError) as exc:  # URLError, refused, timeouts, bad JSON, too large
        raise NodeUnreachable(f"{method} at {url}: {exc}") from exc
    if "error" in msg:
        raise rejection_of(msg["error"]) or RpcFailed(f"{method} at {url}: {msg['error']}")
    return msg["result"]


@dataclass(frozen=True)
class NodeStatus:
    height: int
    app_hash: str  # the latest header's app_hash: the state after height-1
    catching_up: bool
    node_id: str
    voting_power: int


def status(url: str, timeout: float = TIMEOUT) -> NodeStatus:
    res = call(url, "status", timeout)
    sync = res["sync_info"]
    return NodeStatus(int(sync["latest_block_height"]), sync["latest_app_hash"], bool(sync["catching_up"]),
                      res["node_info"]["id"], int(res["validator_info"]["voting_power"]))


def peers(url: str, timeout: float = TIMEOUT) -> list[str]:
    """Monikers of the node's connected peers (net_info)."""
    res = call(url, "net_info", timeout)
    return sorted(p["node_info"]["moniker"] for p in res.get("peers", []))


def header_app_hash(url: str, height: int, timeout: float = TIMEOUT) -> str:
    """The app_hash in the header of block ``height`` (the state after ``height - 1``)."""
    res = call(url, "blockchain", timeout, minHeight=str(height), maxHeight=str(height))
    metas = res["block_metas"]
    if not metas:
        raise RpcFailed(f"{url} has no header at height {height}")
    return metas[0]["header"]["app_hash"]


def block_hash(url: str, height: int, timeout: float = TIMEOUT) -> str:
    res = call(url, "blockchain", timeout, minHeight=str(height), maxHeight=str(height))
    return res["block_metas"][0]["block_id"]["hash"]


def validators(url: str, timeout: float = TIMEOUT) -> dict[str, int]:
    """The current validator set: upper-case hex address -> voting power."""
    out: dict[str, int] = {}
    page = 1
    while True:
        res = call(url, "validators", timeout, page=str(page), per_page="100")
        out.update({v["address"]: int(v["voting_power"]) for v in res["validators"]})
        if len(out) >= int(res["total"]):
            return out
        page += 1


def http_ok(url: str, timeout: float = TIMEOUT, cafile: str | None = None) -> tuple[bool, str]:
    """GET ``url``: (status is 2xx, the start of the body or the error). ``cafile``: the one
    certificate an https URL must present (a gateway's pin)."""
    import ssl

    context = ssl.create_default_context(cafile=cafile) if cafile else None
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as resp:
            body = resp.read(200).decode(errors="replace").strip()
            return 200 <= resp.status < 300, body.splitlines()[0] if body else f"HTTP {resp.status}"
    except urllib.error.HTTPError as exc:
        return False, f"HTTP {exc.code}"
    except (OSError, ValueError) as exc:
        return False, str(getattr(exc, "reason", exc))
