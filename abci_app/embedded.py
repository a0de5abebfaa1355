"""The embedded single-node mode: an in-process block producer.

DEVELOPMENT CONVENIENCE, NOT FAULT TOLERANT: one process decides every block.
It drives the same :class:`RegistryApp` through the same ABCI call order as
CometBFT (Info, InitChain, CheckTx and recheck, PrepareProposal,
ProcessProposal, FinalizeBlock, Commit), so everything above it (RPC clients,
gateways) behaves as against a real node.

Durability follows CometBFT: a block is written to the block store before
FinalizeBlock, so after a crash at any point the start-up handshake replays
every stored block the app has not committed, and halts if a replayed app
hash differs from the one recorded.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import lmdb
from google.protobuf.timestamp_pb2 import Timestamp

from .app import RegistryApp
from .keys import be64, from_be64
from ..aiotasks import cancel_and_wait
from ..proto import abci_pb2 as abci
from ..proto import registry_pb2 as pb

log = logging.getLogger(__name__)

MAX_BLOCK_TX_BYTES = 4 * 1024 * 1024
MAX_MEMPOOL_TXS = 10_000
MAX_MEMPOOL_BYTES = 64 * 1024 * 1024
TIMEOUT_BROADCAST_TX_COMMIT_S = 10.0  # CometBFT's default


class MempoolFull(Exception):
    """Backpressure: the mempool holds its maximum; retry later."""


class TxInCache(Exception):
    """The same tx is already in the mempool (CometBFT: "tx already exists in cache")."""


class NodeHalted(Exception):
    """The node stopped producing blocks after an inconsistency."""


@dataclass
class Block:
    height: int
    time_ns: int
    txs: list[bytes]
    hash: bytes
    results: abci.ResponseFinalizeBlock | None = None


def tx_hash(tx: bytes) -> bytes:
    return hashlib.sha256(tx).digest()


class BlockStore:
    """Blocks by height in LMDB: written before execution, results after."""

    def __init__(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self.env = lmdb.open(str(path), map_size=1 << 36, max_dbs=3)
        self._blocks = self.env.open_db(b"blocks")
        self._txs = self.env.open_db(b"txs")  # tx hash -> be64 height
        self._meta = self.env.open_db(b"meta")  # b"genesis_app_hash" -> InitChain's app hash

    def close(self) -> None:
        self.env.close()

    def save(self, block: Block) -> None:
        stored = pb.StoredBlock(height=block.height, time_ns=block.time_ns, txs=block.txs, hash=block.hash)
        if block.results is not None:
            stored.finalize_response = block.results.SerializeToString(deterministic=True)
        with self.env.begin(write=True) as txn:
            txn.put(be64(block.height), stored.SerializeToString(deterministic=True), db=self._blocks)
            for tx in block.txs:
                txn.put(tx_hash(tx), be64(block.height), db=self._txs)

    def load(self, height: int) -> Block | None:
        with self.env.begin() as txn:
            raw = txn.get(be64(height), db=self._blocks)
        if raw is None:
            return None
        s = pb.StoredBlock.FromString(raw)
        results = abci.ResponseFinalizeBlock.FromString(s.finalize_response) if s.finalize_response else None
        return Block(s.height, s.time_ns, list(s.txs), s.hash, results)

    def tx_height(self, h: bytes) -> int:
        """The height of the block holding the tx with hash ``h`` (0: none)."""
        with self.env.begin() as txn:
            raw = txn.get(h, db=self._txs)
        return from_be64(raw) if raw else 0

    def set_genesis_app_hash(self, app_hash: bytes) -> None:
        with self.env.begin(write=True) as txn:
            txn.put(b"genesis_app_hash", app_hash, db=self._meta)

    def genesis_app_hash(self) -> bytes | None:
        """The app hash InitChain returned: the first block's header carries it."""
        with self.env.begin() as txn:
            return txn.get(b"genesis_app_hash", db=self._meta)

    def height(self) -> int:
        with self.env.begin() as txn:
            cursor = txn.cursor(db=self._blocks)
            return from_be64(cursor.key()) if cursor.last() else 0

    def earliest(self) -> int:
        with self.env.begin() as txn:
            cursor = txn.cursor(db=self._blocks)
            return from_be64(cursor.key()) if cursor.first() else 0


class EmbeddedNode:
    """Produces blocks from a local mempool and drives the app through ABCI."""

    def __init__(self, app: RegistryApp, block_dir: Path, genesis: dict, *,
                 block_interval_s: float = 0.2, empty_block_interval_s: float = 30.0,
                 clock: Callable[[], int] = time.time_ns,
                 commit_timeout_s: float = TIMEOUT_BROADCAST_TX_COMMIT_S) -> None:
        self.app = app
        self.commit_timeout_s = commit_timeout_s  # broadcast_tx_commit's wait for the block
        self.blocks = BlockStore(block_dir)
        self.genesis = genesis
        self.chain_id: str = genesis["chain_id"]
        self.block_interval_s = block_interval_s
        self.empty_block_interval_s = empty_block_interval_s
        self.clock = clock
        self.mempool: OrderedDict[bytes, bytes] = OrderedDict()  # hash -> tx
        self._mempool_bytes = 0
        self._waiters: dict[bytes, list[asyncio.Future]] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.halted: str | None = None
        self.last_block: Block | None = None

    # ---- start-up handshake (as CometBFT's Handshaker) ----

    def handshake(self) -> None:
        info = self.app.info(abci.RequestInfo(version="embedded", abci_version="2.0.0"))
        app_height, stored = info.last_block_height, self.blocks.height()
        if app_height > stored:
            raise NodeHalted(f"app is at height {app_height} but the block store only at {stored}")
        if app_height == 0:
            self._init_chain()
        for height in range(app_height + 1, stored + 1):
            block = self.blocks.load(height)
            assert block is not None
            log.info("replaying block %d into the app", height)
            self._execute(block, replay=True)
        self.last_block = self.blocks.load(self.blocks.height())
        if self.app.height == 0:
            self.produce_block()  # commit genesis at once, as CometBFT's first block does

    def _init_chain(self) -> None:
        import json

        initial = int(self.genesis.get("initial_height", 1) or 1)
        req = abci.RequestInitChain(
            chain_id=self.chain_id,
            app_state_bytes=json.dumps(self.genesis.get("app_state", {})).encode(),
            initial_height=initial,
            time=Timestamp(seconds=int(self.genesis.get("genesis_time_s", 0))),
        )
        self.blocks.set_genesis_app_hash(self.app.init_chain(req).app_hash)

    # ---- mempool ----

    def check_tx(self, tx: bytes) -> abci.ResponseCheckTx:
        """broadcast_tx_sync: CheckTx, and into the mempool when it passes."""
        if self.halted:
            raise NodeHalted(self.halted)
        h = tx_hash(tx)
        if h in self.mempool:
            raise TxInCache("tx already exists in cache")
        if len(self.mempool) >= MAX_MEMPOOL_TXS or self._mempool_bytes + len(tx) > MAX_MEMPOOL_BYTES:
            raise MempoolFull(f"mempool is full: {len(self.mempool)} txs, {self._mempool_bytes} bytes")
        resp = self.app.check_tx(abci.RequestCheckTx(tx=tx, type=abci.NEW))
        if resp.code == 0:
            self.mempool[h] = tx
            self._mempool_bytes += len(tx)
            self._wake.set()
        return resp

    async def wait_for_tx(self, h: bytes, timeout: float | None = None) -> tuple[int, abci.ExecTxResult]:
        fut = asyncio.get_running_loop().create_future()
        waiting = self._waiters.setdefault(h, [])
        waiting.append(fut)
        try:
            return await asyncio.wait_for(fut, self.commit_timeout_s if timeout is None else timeout)
        finally:  # a timed-out or cancelled waiter must not linger
            if fut in waiting:
                waiting.remove(fut)
            if not waiting and self._waiters.get(h) is waiting:
                del self._waiters[h]

    # ---- block production ----

    async def run(self) -> None:
        """Produce blocks until cancelled."""
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self.empty_block_interval_s)
                await asyncio.sleep(self.block_interval_s)  # let a burst of txs batch up
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            try:
                self.produce_block()
            except NodeHalted as exc:
                log.critical("embedded node halted: %s", exc)
                return

    def produce_block(self) -> Block:
        if self.halted:
            raise NodeHalted(self.halted)
        height = self.app.height + 1
        prev_ns = self.last_block.time_ns if self.last_block else 0
        now = max(self.clock(), prev_ns + 1_000_000)
        txs = list(self.mempool.values())
        prep = self.app.prepare_proposal(abci.RequestPrepareProposal(
            max_tx_bytes=MAX_BLOCK_TX_BYTES, txs=txs, height=height, time=_ts(now)))
        proposal = list(prep.txs)
        status = self.app.process_proposal(abci.RequestProcessProposal(
            txs=proposal, height=height, time=_ts(now), hash=_block_hash(height, now, proposal)))
        if status.status != abci.ResponseProcessProposal.ACCEPT:
            self.halted = f"the app rejected its own proposal at height {height}"
            raise NodeHalted(self.halted)
        block = Block(height, now, proposal, _block_hash(height, now, proposal))
        self.blocks.save(block)  # durable before execution, as CometBFT's block store
        self._execute(block, replay=False)
        return block

    def _execute(self, block: Block, replay: bool) -> None:
        resp = self.app.finalize_block(abci.RequestFinalizeBlock(
            txs=block.txs, height=block.height, time=_ts(block.time_ns), hash=block.hash))
        if block.results is not None and block.results.app_hash != resp.app_hash:
            self.halted = (f"replayed block {block.height} gave app hash {resp.app_hash.hex()}, "
                           f"recorded {block.results.app_hash.hex()}")
            raise NodeHalted(self.halted)
        block.results = resp
        self.blocks.save(block)
        self.app.commit(abci.RequestCommit())
        self.last_block = block
        included = {tx_hash(tx): i for i, tx in enumerate(block.txs)}
        for h in included:
            tx = self.mempool.pop(h, None)
            if tx is not None:
                self._mempool_bytes -= len(tx)
        self._recheck()
        for h, i in included.items():
            for fut in self._waiters.pop(h, []):
                if not fut.done():
                    fut.set_result((block.height, resp.tx_results[i]))

    def _recheck(self) -> None:
        for h, tx in list(self.mempool.items()):
            if self.app.check_tx(abci.RequestCheckTx(tx=tx, type=abci.RECHECK)).code != 0:
                del self.mempool[h]
                self._mempool_bytes -= len(tx)
        if self.mempool:
            self._wake.set()

    # ---- lifecycle ----

    def start(self) -> None:
        self.handshake()
        self._task = asyncio.get_running_loop().create_task(self.run(), name="embedded-block-producer")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait([self._task])  # its loop waits in wait_for: see aiotasks.py
        self.blocks.close()


def _ts(ns: int) -> Timestamp:
    return Timestamp(seconds=ns // 1_000_000_000, nanos=ns % 1_000_000_000)


def _block_hash(height: int, time_ns: int, txs: list[bytes]) -> bytes:
    h = hashlib.sha256(be64(height) + be64(time_ns))
    for tx in txs:
        h.update(tx_hash(tx))
    return h.digest()
