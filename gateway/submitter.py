"""The gateway's registry submitter: its registry operations go to the chain as batch txs.

Theory of operation. Callers hand in one registry message at a time
(:meth:`RegistrySubmitter.submit`) and await its own committed outcome. The
submitter collects what arrives within ``window_s`` of the first pending
operation into one ``Batch`` (abci_app/batch.py): signed once, one nonce. A
batch is cut early when it reaches ``max_ops`` or ``max_bytes``. At most
``max_in_flight`` batches await their block; while that many do, new operations
wait and the next batch grows, so a busy gateway sends fewer, fuller batches
instead of queueing tiny ones. Revocations are never held back: a pending
``RevokeToken`` sends its batch at once, whatever is in flight.

Batches are *sent* one after another, by one loop: ``broadcast_tx_sync`` returns after the node's CheckTx, so the
next batch (the next nonce) reaches its node's mempool after the previous one,
and that node's "nonce above the last one" check never refuses a batch for
arriving out of order. A batch the node refuses at CheckTx fails all its operations with that
code (a stale nonce, e.g. after another sender used the key, is resynchronised
and the batch sent once more).

Gossip does not keep one sender's order on every node, so a batch can still be
overtaken: a later nonce committed first makes it invalid for ever. The
follower notices (a committed batch of ours with a higher nonce; or a tx of the same
key that another sender made, or the batch refused in its block for its nonce: then
the key's committed nonce at that height, read from the node, decides) and puts the
overtaken batch's operations back at the front of the queue, to go in a new batch; the old bytes
can never apply, so nothing is applied twice and nothing is lost.

Manifests by reference (gateway/discovery/catalog.py): with a catalog, a batch
that carries a device operation may also carry one ``PutManifest`` (a slot
write), first, at most one per the catalog's gap; a device whose kind has no slot
on chain yet is held back until its slot's write commits, the first of them riding
in the write's own batch (it fails when no slot could be written for ``HOLD_MAX_S``).

Commits are learnt by one follower, running while batches wait: it subscribes
to CometBFT's NewBlock events over the RPC websocket (each event carries the
block's txs and results, so the caller learns its outcome as soon as
``broadcast_tx_commit`` would have told it), and falls back to polling
(``status``, ``block`` for every new height, ``block_results`` for heights
holding one of its txs) where there is no websocket (the embedded node) or it
failed. Heights are read in order, none skipped. Each operation's future is
resolved from its entry in the tx's ``BatchResult``: code 0 -> :class:`OpCommitted`, otherwise
:class:`~edgistry.chain.TxRejected` with the operation's own code and log.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field

import aiohttp
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf.message import DecodeError, Message

from ..abci_app.batch import BATCH_OP_EVENT, op_of
from ..abci_app.codes import Code, TxError
from ..abci_app.sealing import check_no_cleartext
from ..abci_app.txs import MAX_BATCH_OPS, MAX_TX_BYTES
from ..chain import ChainClient, ChainError, TxRejected
from ..proto import registry_pb2 as pb
from .discovery.catalog import ManifestCatalog, Sealer

log = logging.getLogger(__name__)

WINDOW_S = 0.02  # short next to a block (0.5-1 s): collects a burst without delaying a lone write much
POLL_S = 0.02  # the follower's period while txs are in flight (idle: no polling)
MAX_IN_FLIGHT = 4  # batches sent but not yet committed
COMMIT_TIMEOUT_S = 60.0  # a sent batch not seen committed by then fails its operations
BATCH_OVERHEAD = 256  # SignedTx + TxBody framing around the operations (signature, key, chain id, nonce)
CLOSE_GRACE_S = 5.0  # close() waits this long for batches in flight
WS_QUIET_S = 1.0  # no NewBlock event for this long: poll once, in case one was missed
URGENT = frozenset({"revoke_token"})  # kinds that are never held back for a window
DEVICE_OPS = frozenset({"register_device", "update_device"})  # the ops a catalog slot write may ride with
HOLD_MAX_S = 30.0  # a device held for its slot's write fails when no slot was written for this long


@dataclass(frozen=True)
class OpCommitted:
    """One operation applied in a committed block."""

    height: int
    data: bytes
    tx_hash: str


@dataclass
class _Pending:
    op: pb.BatchOp
    size: int
    future: asyncio.Future
    slot: int | None = None  # the catalog slot whose write this device operation must follow
    since: float = 0.0  # loop time it was submitted


@dataclass
class _InFlight:
    ops: list[_Pending]
    sent_at: float
    nonce: int
    done: asyncio.Event = field(default_factory=asyncio.Event)
    resent: bool = False  # its operations went back to the queue (a later nonce committed first)


class RegistrySubmitter:
    """Coalesces one signer's registry operations into batch txs; see the module docstring."""

    def __init__(self, chain: ChainClient, key: Ed25519PrivateKey, window_s: float = WINDOW_S,
                 max_ops: int = MAX_BATCH_OPS, max_bytes: int = MAX_TX_BYTES - BATCH_OVERHEAD,
                 max_in_flight: int = MAX_IN_FLIGHT, poll_s: float = POLL_S,
                 commit_timeout_s: float = COMMIT_TIMEOUT_S) -> None:
        self.chain, self.key = chain, key
        self.window_s, self.max_ops, self.max_bytes, self.poll_s = window_s, max_ops, max_bytes, poll_s
        self.commit_timeout_s = commit_timeout_s
        self.max_in_flight = max_in_flight
        self._pending: list[_Pending] = []
        self._first_at = 0.0  # loop time of the oldest pending operation's window
        self._urgent = 0  # pending revocations
        self._in_flight = 0
        self._closing = False
        self._wake = asyncio.Event()  # something to look at: an operation, a settled batch, close()
        self._sender: asyncio.Task | None = None
        self._waiting: dict[str, _InFlight] = {}  # tx hash (upper hex) -> batch
        self._seen_height = 0
        self._follower: asyncio.Task | None = None
        self._ws_session: aiohttp.ClientSession | None = None
        self._ws_usable: bool | None = None  # None: not tried yet; False: the node has no websocket
        self._tasks: set[asyncio.Task] = set()
        self.stats = {"batches": 0, "ops": 0, "max_ops": 0, "ws_blocks": 0, "polled_blocks": 0,
                      "resent_ops": 0}
        self.catalog: ManifestCatalog | None = None  # set by use_catalog
        self._seal_manifest: Sealer | None = None
        self._seal_failing = False  # sealing a slot write failed last time (logged once)

    def use_catalog(self, catalog: ManifestCatalog, seal: Sealer) -> None:
        """Let batches carry ``catalog``'s slot writes, sealed by ``seal`` (the current epoch)."""
        self.catalog, self._seal_manifest = catalog, seal

    # ---- the caller's side ----

    async def submit(self, msg: Message, slot: int | None = None) -> OpCommitted:
        """Queue ``msg`` for the next batch and wait for its own committed outcome.
        ``slot``: a device operation naming a catalog slot whose write has not committed
        (:meth:`ManifestCatalog.ref` said held); it is held until then, or rides in the
        write's own batch right after it.

        A device operation with fields in clear is refused here, alone: the chain
        refuses a whole batch that holds one (abci_app.batch.check_admissible), which
        would fail every other operation sent with it."""
        op = op_of(msg)
        if op.WhichOneof("op") in ("register_device", "update_device"):
            try:
                check_no_cleartext(msg)
            except TxError as err:
                raise TxRejected("submit", err.code, err.log) from None
        loop = asyncio.get_running_loop()
        fut: asyncio.Future = loop.create_future()
        if not self._pending:
            self._first_at = loop.time()
        self._pending.append(_Pending(op, op.ByteSize() + 4, fut, slot, loop.time()))  # + the field's tag and length
        if op.WhichOneof("op") in URGENT:
            self._urgent += 1
        if self._sender is None or self._sender.done():
            self._sender = loop.create_task(self._send_loop())
        self._wake.set()
        return await fut

    async def close(self, grace_s: float = CLOSE_GRACE_S) -> None:
        """Send what is pending at once and wait up to ``grace_s`` for the batches in flight
        to settle; operations still open then fail (the caller is shutting down: a node
        that stopped first must not hold it up)."""
        self._closing = True
        self._wake.set()
        deadline = asyncio.get_running_loop().time() + grace_s
        while (self._sender is not None and not self._sender.done()) or self._tasks:
            left = deadline - asyncio.get_running_loop().time()
            busy = ([self._sender] if self._sender is not None and not self._sender.done() else []) + list(self._tasks)
            if left <= 0:
                for task in busy:
                    task.cancel()
                await asyncio.gather(*busy, return_exceptions=True)
                break
            await asyncio.wait(busy, timeout=left)
        self._closing = False
        closed = ChainError("the registry submitter closed before the batch was seen committed")
        for entry in self._waiting.values():
            _fail(entry.ops, closed)
        self._waiting.clear()
        _fail(self._pending, closed)
        self._pending, self._urgent, self._in_flight = [], 0, 0
        if self._follower is not None:
            self._follower.cancel()
            await asyncio.gather(self._follower, return_exceptions=True)
        if self._ws_session is not None:
            await self._ws_session.close()
            self._ws_session = None

    # ---- sending: one loop, so batches reach the node in nonce order ----

    async def _send_loop(self) -> None:
        """Cut and send batches while operations are pending. A batch goes when its
        window has passed (or it is full, or the submitter closes) and fewer than
        ``max_in_flight`` batches await their block; while all are in flight, later
        operations wait and the next batch grows instead. A pending revocation
        sends at once, in flight or not."""
        loop = asyncio.get_running_loop()
        while self._pending:
            self._wake.clear()
            if not self._urgent and not self._closing:
                wait = self._first_at + self.window_s - loop.time()
                if wait > 0 and not self._full():
                    await _wait(self._wake, wait)
                    continue
                if self._in_flight >= self.max_in_flight:
                    await self._wake.wait()  # a batch settled, more came, or a revocation
                    continue
            ops = self._cut()
            if not ops:  # every pending operation waits for its catalog slot's write
                await _wait(self._wake, max(0.05, self.catalog.wait_s(loop.time()) if self.catalog else 0.05))
                continue
            self._in_flight += 1
            try:
                entry = await self._broadcast(ops)
            except ChainError as exc:
                self._in_flight -= 1
                _fail(ops, exc)
                continue
            except BaseException as exc:  # cancelled by close(), or a bug: no caller may wait forever
                self._in_flight -= 1
                _fail(ops, ChainError(f"the batch was not sent: {exc!r}"))
                if not isinstance(exc, Exception):
                    raise
                log.exception("registry submitter: sending a batch failed")
                continue
            task = loop.create_task(self._await_commit(entry))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _full(self) -> bool:
        return len(self._pending) >= self.max_ops or sum(p.size for p in self._pending) >= self.max_bytes

    def _cut(self) -> list[_Pending]:
        """The oldest pending operations that fit one batch (none when all wait for their
        catalog slot's write), led by a slot write when the catalog allows one."""
        now = asyncio.get_running_loop().time()
        ops: list[_Pending] = []
        size = 0
        put = self._slot_write(now)
        riding = set()  # slots whose write is in this batch: their devices may follow it here
        if put is not None:
            ops.append(put)
            size = put.size
            riding.add(put.op.put_manifest.slot)
        kept: list[_Pending] = []
        for i, p in enumerate(self._pending):
            if len(ops) >= self.max_ops or (ops and size + p.size > self.max_bytes):
                kept += self._pending[i:]
                break
            if p.op.WhichOneof("op") == "put_manifest":  # a write sent again (its batch was overtaken)
                riding.add(p.op.put_manifest.slot)
            elif (p.slot is not None and p.slot not in riding and self.catalog is not None
                  and self.catalog.held(p.slot)):  # its kind's write has not committed yet
                if now - max(p.since, self.catalog.last_put_at) > HOLD_MAX_S:
                    _fail([p], ChainError(f"no catalog slot could be written for {HOLD_MAX_S:.0f} s "
                                          f"(slot {p.slot}; does this gateway hold the current data key?)"))
                else:
                    kept.append(p)
                continue
            ops.append(p)
            size += p.size
        if put is not None and not any(p.op.WhichOneof("op") in DEVICE_OPS for p in ops[1:]):
            self._unput(put)  # no device rode with it: the write waits for a batch that has one
            ops = ops[1:]
        self._pending = kept
        self._urgent -= sum(1 for p in ops if p.op.WhichOneof("op") in URGENT)
        if self._pending:
            self._first_at = now  # the rest waits a window of its own
        return ops

    def _slot_write(self, now: float) -> _Pending | None:
        """A catalog slot write for the batch being cut: one a held device waits for, else a
        cover riding with a device operation; None when the batch would carry neither, when
        it already holds a write (sent again), or before the catalog knows the chain's view."""
        catalog = self.catalog
        if catalog is None or self._seal_manifest is None or not catalog.loaded:
            return None
        window = self._pending[: self.max_ops - 1]  # the write takes one of the batch's places
        kinds = [p.op.WhichOneof("op") for p in window]
        if "put_manifest" in kinds:
            return None
        riders = [p.slot for p in window if p.slot is not None and p.slot in catalog.waiting]
        if not riders and not any(k in DEVICE_OPS for k in kinds):
            return None
        try:
            taken = catalog.take_put(now, self._seal_manifest, riders)
        except Exception as exc:  # noqa: BLE001 - no current key: devices wait (bounded), nothing is written
            if not self._seal_failing:
                log.info("registry submitter: no catalog slot write while %s", exc)
            self._seal_failing = True
            return None
        self._seal_failing = False
        if taken is None:
            return None
        msg, key = taken
        op = op_of(msg)
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        fut.add_done_callback(lambda f: None if f.cancelled() else catalog.settled(
            msg.slot, key, f.exception() is None))
        return _Pending(op, op.ByteSize() + 4, fut, None, now)

    def _unput(self, put: _Pending) -> None:
        """Take back a slot write whose batch ended up carrying no device operation."""
        assert self.catalog is not None
        slot = put.op.put_manifest.slot
        self.catalog.untake(slot, self.catalog.sent.get(slot, b""))
        put.future.cancel()

    async def _await_commit(self, entry: _InFlight) -> None:
        try:
            await asyncio.wait_for(entry.done.wait(), self.commit_timeout_s)
        except asyncio.TimeoutError:
            pass
        finally:
            self._in_flight -= 1
            self._wake.set()
        if entry.resent:
            return
        # settled operations keep their outcome; any left open (expired) fail
        _fail(entry.ops, ChainError(f"batch not seen committed within {self.commit_timeout_s:.0f} s"))

    async def _broadcast(self, ops: list[_Pending]) -> _InFlight:
        batch = pb.Batch(ops=[p.op for p in ops])
        signer = self.key.public_key().public_bytes_raw()
        # only the send loop broadcasts: one at a time, so batches reach the mempool in nonce order
        if (self._follower is None or self._follower.done()) and not self._waiting:
            # a new follower starts from here (our tx cannot be in an earlier block); a running
            # one is never moved: it reads every height after its own last one, and neither is
            # one that stopped with batches still waiting (theirs may be in any later block)
            self._seen_height = int((await self.chain.status())["sync_info"]["latest_block_height"])
        for attempt in range(2):
            # not while another sender of this key waits for a lower nonce to commit (ChainClient.sender)
            async with self.chain.sender(signer):
                tx = await self.chain.sign(self.key, batch)
                try:
                    res = await self.chain.call("broadcast_tx_sync", tx=base64.b64encode(tx).decode())
                    code, why = int(res.get("code", 0)), res.get("log", "")
                except TxRejected as err:  # CometBFT v1.x reports a CheckTx refusal as an RPC error
                    code, why = err.code, err.log
            if code in (Code.STALE_NONCE, Code.NONCE_REUSED) and attempt == 0:
                self.chain.forget_nonce(signer)  # another sender used the key: resynchronise, once
                continue
            if code:
                raise TxRejected("CheckTx", code, why)
            break
        entry = _InFlight(ops, time.monotonic(), pb.TxBody.FromString(pb.SignedTx.FromString(tx).body).nonce)
        self._waiting[hashlib.sha256(tx).hexdigest().upper()] = entry
        self.stats["batches"] += 1
        self.stats["ops"] += len(ops)
        self.stats["max_ops"] = max(self.stats["max_ops"], len(ops))
        if self._follower is None or self._follower.done():
            self._follower = asyncio.get_running_loop().create_task(self._follow())
        return entry

    # ---- following commits ----

    async def _follow(self) -> None:
        """Learn commits while batches wait: pushed NewBlock events over CometBFT's
        websocket (each carries the block and its results: no polling, no extra
        calls), else, or after a websocket failure, polling."""
        if self._ws_usable is not False:
            try:
                await self._follow_ws()
                return
            except ChainError as exc:  # a read beside the events failed (e.g. results not stored yet)
                log.info("registry submitter: following by polling for now (%s)", exc)
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError, KeyError, TypeError) as exc:
                if self._ws_usable is None:  # never worked (the embedded node has no websocket): poll from now on
                    self._ws_usable = False
                log.info("registry submitter: following by polling (%r)", exc)
        await self._follow_poll()

    async def _follow_ws(self) -> None:
        if self._ws_session is None:
            self._ws_session = aiohttp.ClientSession()
        url = self.chain.url.replace("http", "ws", 1) + "/websocket"
        async with self._ws_session.ws_connect(url, max_msg_size=0, heartbeat=10.0) as ws:
            await ws.send_json({"jsonrpc": "2.0", "id": 1, "method": "subscribe",
                                "params": {"query": "tm.event='NewBlock'"}})
            await self._catch_up()  # blocks committed before the subscription took effect
            while self._waiting:
                try:
                    msg = await ws.receive(timeout=WS_QUIET_S)
                except asyncio.TimeoutError:  # no block for a while: make sure none was missed
                    self._expire()
                    await self._catch_up()
                    continue
                if msg.type != aiohttp.WSMsgType.TEXT:
                    raise ConnectionError(f"websocket {msg.type.name}")
                event = json.loads(msg.data).get("result", {}).get("data") or {}
                value = event.get("value") if event.get("type", "").endswith("NewBlock") else None
                if value is None:
                    continue  # the subscription's acknowledgement
                self._ws_usable = True
                self.stats["ws_blocks"] += 1
                block = value["block"]
                height = int(block["header"]["height"])
                if height > self._seen_height + 1:
                    await self._catch_up(height - 1)
                if height == self._seen_height + 1:
                    results = value["result_finalize_block"].get("tx_results") or []
                    await self._settle_block(height, block["data"]["txs"] or [], results)
                    self._seen_height = height
                self._expire()

    async def _follow_poll(self) -> None:
        while self._waiting:
            try:
                await self._catch_up()
            except ChainError as exc:
                log.info("registry submitter: cannot follow the chain yet: %s", exc)
            except (KeyError, IndexError, TypeError, ValueError) as exc:  # an answer of an unexpected shape
                log.warning("registry submitter: unreadable block or results: %r", exc)
            self._expire()
            if self._waiting:
                await asyncio.sleep(self.poll_s)

    async def _catch_up(self, top: int | None = None) -> None:
        """Read every height after the last one seen, up to ``top`` (the node's latest)."""
        if top is None:
            top = int((await self.chain.status())["sync_info"]["latest_block_height"])
        while self._seen_height < top and self._waiting:
            height = self._seen_height + 1
            block = (await self.chain.call("block", height=str(height)))["block"]
            self.stats["polled_blocks"] += 1
            await self._settle_block(height, block["data"]["txs"] or [], None)
            self._seen_height = height

    async def _settle_block(self, height: int, txs: list[str], results: list[dict] | None) -> None:
        """Settle the batches of ours among ``txs`` (base64) of block ``height``; ``results``
        (its tx results) are fetched only when a batch of ours is there and they were not given.

        Another sender of this key (the seal keeper, ``token revoke --chain``, a second
        gateway process) moves its nonce too: when its tx is in the block, or a batch of
        ours came back refused for its nonce, the key's committed nonce at this height
        says which of our batches can never commit, and those are sent again."""
        raws = [base64.b64decode(t) for t in txs]
        hashes = [hashlib.sha256(raw).hexdigest().upper() for raw in raws]
        mine = [(i, h) for i, h in enumerate(hashes) if h in self._waiting]
        moved = self._waiting and self._other_sender_in(raws, hashes)
        if not mine and not moved:
            return
        if mine and results is None:
            results = (await self.chain.call("block_results", height=str(height))).get("txs_results") or []
        committed = 0
        for index, tx_hash in mine:
            if int(results[index].get("code", 0)) in (Code.STALE_NONCE, Code.NONCE_REUSED):
                moved = True  # it never ran, and its bytes never will: resent below
                continue
            entry = self._waiting.pop(tx_hash)
            _settle(entry, results[index], height, tx_hash)
            entry.done.set()
            committed = max(committed, entry.nonce)
        if moved:
            committed = max(committed, await self._committed_nonce(height) + 1)
        self._resend_overtaken(committed)

    def _other_sender_in(self, raws: list[bytes], hashes: list[str]) -> bool:
        """Whether a tx of this key that this submitter did not send is among ``raws``."""
        signer = self.key.public_key().public_bytes_raw()
        for raw, tx_hash in zip(raws, hashes):
            if tx_hash in self._waiting:
                continue
            try:
                if pb.SignedTx.FromString(raw).signer == signer:
                    return True
            except DecodeError:
                continue  # not a registry tx: nobody's
        return False

    async def _committed_nonce(self, height: int) -> int:
        """This key's last nonce as of block ``height`` (0 when the node cannot say: then
        the batches it would have freed wait for their commit timeout, as before)."""
        signer = self.key.public_key().public_bytes_raw()
        self.chain.forget_nonce(signer)  # the next batch signs above what the other sender used
        try:
            res = await self.chain.query("/nonce", signer, height=height)
        except ChainError as exc:
            log.warning("registry submitter: cannot read the key's nonce at height %d: %s", height, exc)
            return 0
        if res.code:
            log.warning("registry submitter: cannot read the key's nonce at height %d: %s", height, res.log)
            return 0
        return int.from_bytes(res.value or b"\0", "big")

    def _resend_overtaken(self, committed: int) -> None:
        """Batches of ours with a nonce below ``committed`` can never commit (the chain
        takes only higher nonces): a node received them after a later batch (gossip
        does not keep one sender's order across peers), after another sender's tx of
        this key, or dropped them. Their operations go
        back to the front of the queue, to travel in a new batch under a new nonce; the old
        bytes stay invalid for ever, so nothing is applied twice."""
        overtaken = [(h, e) for h, e in self._waiting.items() if e.nonce < committed]
        if not overtaken:
            return
        ops = []
        for tx_hash, entry in overtaken:
            del self._waiting[tx_hash]
            entry.resent = True
            ops += [p for p in entry.ops if not p.future.done()]
            entry.done.set()
        self.stats["resent_ops"] += len(ops)
        log.info("registry submitter: %d batch(es) overtaken by a later nonce; %d operation(s) sent again",
                 len(overtaken), len(ops))
        loop = asyncio.get_running_loop()
        self._pending[:0] = ops
        self._urgent += sum(1 for p in ops if p.op.WhichOneof("op") in URGENT)
        self._first_at = loop.time() - self.window_s  # their window has long passed
        if self._sender is None or self._sender.done():
            self._sender = loop.create_task(self._send_loop())
        self._wake.set()

    def _expire(self) -> None:
        old = time.monotonic() - self.commit_timeout_s
        for tx_hash, entry in list(self._waiting.items()):
            if entry.sent_at < old:
                del self._waiting[tx_hash]
                entry.done.set()  # _send fails the operations still open


async def _wait(event: asyncio.Event, timeout: float) -> None:
    try:
        await asyncio.wait_for(event.wait(), timeout)
    except asyncio.TimeoutError:
        pass


def _settle(entry: _InFlight, result: dict, height: int, tx_hash: str) -> None:
    """Resolve each operation of a committed batch from the tx's result."""
    code = int(result.get("code", 0))
    if code:
        _fail(entry.ops, TxRejected("FinalizeBlock", code, result.get("log", "")))
        return
    outcome = pb.BatchResult.FromString(base64.b64decode(result.get("data") or ""))
    logs: dict[int, str] = {}
    for ev in result.get("events") or []:
        if ev.get("type") == BATCH_OP_EVENT:
            attrs = {a.get("key"): a.get("value") for a in ev.get("attributes") or []}
            if attrs.get("log"):
                logs[int(attrs["index"])] = attrs["log"]
    for i, pending in enumerate(entry.ops):
        if pending.future.done():
            continue
        if i >= len(outcome.codes):
            pending.future.set_exception(ChainError(f"batch result lacks operation {i}"))
        elif outcome.codes[i]:
            pending.future.set_exception(TxRejected("FinalizeBlock", outcome.codes[i], logs.get(i, "")))
        else:
            pending.future.set_result(OpCommitted(height, outcome.data[i], tx_hash))


def _fail(ops: list[_Pending], exc: Exception) -> None:
    for pending in ops:
        if not pending.future.done():
            pending.future.set_exception(exc)
