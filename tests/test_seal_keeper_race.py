"""One gateway key, two senders: nonces stay in order, and a race lost after CheckTx is not a failure.

Across nodes, gossip can commit another gateway's opening of the same epoch before
ours reaches a proposer: our tx, accepted at CheckTx, turns invalid and the node
drops it at recheck, so ``broadcast_tx_commit`` only times out. A pairing waiting
for the data key must not fail on that; and the gateway's own batches must not
strand its keeper's single txs so (the senders take turns). Real app, embedded
node and its RPC over HTTP; blocks are produced when the test says.
"""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from edgistry.abci_app.app import RegistryApp
from edgistry.abci_app.embedded import EmbeddedNode, tx_hash
from edgistry.abci_app.rpc import create_app
from edgistry.chain import ChainClient
from edgistry.gateway.discovery import sealbox
from edgistry.gateway.discovery.keeper import SealKeeper
from edgistry.gateway.submitter import RegistrySubmitter
from edgistry.proto import registry_pb2 as pb
from proc_helpers import free_port
from registry_helpers import CHAIN, T0, Actors, pub

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def race(tmp_path):
    """Two gateways with seal keys and no data key yet; the node produces blocks only when told."""
    a = Actors()
    genesis = a.genesis(sealed=True)
    genesis.seal = pb.SealState()
    node = EmbeddedNode(RegistryApp(tmp_path / "reg"), tmp_path / "blocks",
                        {"chain_id": CHAIN, "initial_height": "1", "genesis_time_s": T0,
                         "app_state": genesis.to_json()},
                        clock=lambda: T0 * 1_000_000_000, commit_timeout_s=1.0)
    node.handshake()
    runner = web.AppRunner(create_app(node))
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield a, node, f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()
        node.app.close()
        node.blocks.close()


async def test_an_opening_dropped_at_recheck_is_a_lost_race_not_a_failure(race):
    a, node, url = race
    async with ChainClient(url) as chain:
        keeper = SealKeeper(chain, a.gw1, a.gw1_id, a.seal1)
        step = asyncio.create_task(keeper.step())
        for _ in range(200):  # its opening of epoch 1 passed CheckTx and waits in the pool
            if node.mempool or step.done():
                break
            await asyncio.sleep(0.01)
        assert len(node.mempool) == 1, f"the keeper sent no opening: {step}"
        [(ours_hash, ours)] = node.mempool.items()
        assert pb.SignedTx.FromString(ours).signer == pub(a.gw1)

        # elsewhere, gateway two opened epoch 1 too, and its block came first
        del node.mempool[ours_hash]
        node._mempool_bytes -= len(ours)
        theirs_key = sealbox.new_data_key()
        theirs = a.tx(a.gw2, pb.PutDataKey(epoch=1, key_check=sealbox.key_check(theirs_key), wraps=[
            sealbox.wrap_key(theirs_key, 1, gid, seal.public_key().public_bytes_raw())
            for gid, seal in sorted([(a.gw1_id, a.seal1), (a.gw2_id, a.seal2)])]))
        node.mempool[tx_hash(theirs)] = theirs
        node._mempool_bytes += len(theirs)
        block = node.produce_block()
        assert [r.code for r in block.results.tx_results] == [0]

        # ours reaches this node's pool again: invalid now, dropped at recheck, never in a block
        node.mempool[ours_hash] = ours
        node._mempool_bytes += len(ours)
        node._recheck()
        assert ours_hash not in node.mempool

        assert await asyncio.wait_for(step, 10) == "", "a lost race is not a step done"
        ring = await keeper.ready(timeout=10)
        assert ring.current == 1 and ring.keys[1] == theirs_key  # the winner's key, wrapped to us


async def test_a_batch_waits_while_a_single_tx_of_the_same_key_awaits_its_block(race):
    """The submitter signs no higher nonce while the keeper's single tx is pending, so the
    single tx cannot be overtaken; both commit, in nonce order."""
    a, node, url = race

    def seal_key() -> pb.SetSealKey:
        return pb.SetSealKey(x25519_pubkey=X25519PrivateKey.generate().public_key().public_bytes_raw())

    def nonce_of(tx: bytes) -> int:
        return pb.TxBody.FromString(pb.SignedTx.FromString(tx).body).nonce

    async with ChainClient(url) as chain:
        single = asyncio.create_task(chain.submit(a.gw1, seal_key()))
        for _ in range(200):
            if node.mempool:
                break
            await asyncio.sleep(0.01)
        [single_tx] = node.mempool.values()
        sub = RegistrySubmitter(chain, a.gw1, window_s=0.01, poll_s=0.01)
        batched = asyncio.create_task(sub.submit(seal_key()))
        await asyncio.sleep(0.3)
        assert list(node.mempool.values()) == [single_tx], "a batch was signed while the single tx was pending"

        node.produce_block()
        first = await asyncio.wait_for(single, 5)
        for _ in range(200):  # its turn now: the batch reaches the pool
            if node.mempool:
                break
            await asyncio.sleep(0.01)
        [batch_tx] = node.mempool.values()
        assert nonce_of(batch_tx) > nonce_of(single_tx)
        node.produce_block()
        second = await asyncio.wait_for(batched, 5)
        assert first.height < second.height
        await sub.close()
