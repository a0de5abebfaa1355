"""The embedded block producer: mempool rules, recheck, and replay after a crash."""

from __future__ import annotations

import asyncio

import pytest

from edgistry.abci_app import embedded
from edgistry.abci_app.app import RegistryApp
from edgistry.abci_app.codes import Code
from edgistry.abci_app.embedded import EmbeddedNode, MempoolFull, NodeHalted, TxInCache
from edgistry.proto import abci_pb2 as abci
from registry_helpers import CHAIN, Actors, device_msg


def genesis_doc(actors: Actors) -> dict:
    return {"chain_id": CHAIN, "initial_height": "1", "genesis_time_s": 1_800_000_000,
            "app_state": actors.genesis().to_json()}


def make(tmp_path, actors, clock=None) -> EmbeddedNode:
    app = RegistryApp(tmp_path / "reg")
    node = EmbeddedNode(app, tmp_path / "blocks", genesis_doc(actors),
                        clock=clock or (lambda: 1_800_000_000_000_000_000))
    node.handshake()
    return node


def test_genesis_is_committed_at_start_and_blocks_follow(tmp_path):
    """The handshake runs InitChain and commits block 1; txs land in the next block."""
    a = Actors()
    node = make(tmp_path, a)
    assert node.app.height == 1
    assert node.check_tx(a.tx(a.gw1, device_msg(b"D" * 16))).code == 0
    block = node.produce_block()
    assert block.height == 2 and block.results.tx_results[0].code == 0
    assert node.mempool == {}
    node.app.close()
    node.blocks.close()


def test_duplicate_and_overflow_are_refused(tmp_path, monkeypatch):
    """A tx already in the mempool is refused; a full mempool refuses new txs (backpressure)."""
    a = Actors()
    node = make(tmp_path, a)
    tx = a.tx(a.gw1, device_msg(b"E" * 16))
    node.check_tx(tx)
    with pytest.raises(TxInCache):
        node.check_tx(tx)
    monkeypatch.setattr(embedded, "MAX_MEMPOOL_TXS", 1)
    with pytest.raises(MempoolFull):
        node.check_tx(a.tx(a.gw1, device_msg(b"F" * 16)))
    node.app.close()
    node.blocks.close()


def test_recheck_evicts_txs_made_invalid_by_a_block(tmp_path):
    """After a block, txs whose preconditions vanished leave the mempool."""
    a = Actors()
    node = make(tmp_path, a)
    first = a.tx(a.gw1, device_msg(b"G" * 16))
    conflicting = a.tx(a.gw2, device_msg(b"G" * 16))
    node.check_tx(first)
    node.app.check_tx(abci.RequestCheckTx(tx=conflicting))  # accepted before the block ...
    node.mempool[embedded.tx_hash(conflicting)] = conflicting  # ... and pooled, as CometBFT would
    node._mempool_bytes += len(conflicting)
    block = node.produce_block()
    codes = [r.code for r in block.results.tx_results]
    assert codes[0] == 0 and (len(codes) == 1 or codes[1] == Code.DEVICE_EXISTS)
    assert embedded.tx_hash(conflicting) not in node.mempool
    node.app.close()
    node.blocks.close()


def test_crash_between_block_save_and_commit_replays(tmp_path, monkeypatch):
    """A block saved but not committed is replayed at the next start, to the same app hash."""
    a = Actors()
    node = make(tmp_path, a)
    node.check_tx(a.tx(a.gw1, device_msg(b"H" * 16)))

    def crash(*args, **kwargs):
        raise SystemExit("crash before Commit")

    monkeypatch.setattr(node.app, "commit", crash)
    with pytest.raises(SystemExit):
        node.produce_block()
    expected = node.blocks.load(2).results.app_hash
    node.app.close()
    node.blocks.close()
    monkeypatch.undo()
    again = make(tmp_path, a)
    assert again.app.height == 2 and again.app.app_hash == expected
    again.app.close()
    again.blocks.close()


def test_replay_with_a_different_hash_halts(tmp_path):
    """If a stored block replays to another app hash, the node halts rather than diverge."""
    a = Actors()
    node = make(tmp_path, a)
    node.check_tx(a.tx(a.gw1, device_msg(b"I" * 16)))
    block = node.produce_block()
    block.results.app_hash = b"\x00" * 32
    node.blocks.save(block)
    node.app.close()
    node.blocks.close()
    # wipe the app store so block 2 must be replayed
    import shutil

    shutil.rmtree(tmp_path / "reg")
    with pytest.raises(NodeHalted, match="replayed block 2"):
        make(tmp_path, a)


async def test_broadcast_commit_waiter_times_out_cleanly(tmp_path):
    """A waiter for a tx that never lands times out and leaves nothing behind."""
    a = Actors()
    node = make(tmp_path, a)
    with pytest.raises(asyncio.TimeoutError):
        await node.wait_for_tx(b"\x01" * 32, timeout=0.05)
    assert node._waiters == {}
    node.app.close()
    node.blocks.close()
