"""kill -9 of the ABCI app process at random points; restart, replay, identical hashes."""

from __future__ import annotations

import asyncio
import json
import random

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from edgistry.abci_app.app import RegistryApp
from edgistry.abci_app.client import AbciClient, AbciClientError
from edgistry.config import NodeConfig
from edgistry.proto import abci_pb2 as abci
from proc_helpers import edgistry, free_port, kill9, wait_for_port
from registry_helpers import CHAIN, T0, Actors
from test_determinism import random_blocks

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]


def finalize_req(height: int, txs: list[bytes]) -> abci.RequestFinalizeBlock:
    return abci.RequestFinalizeBlock(txs=txs, height=height, time=Timestamp(seconds=T0 + 10 * height))


class FakeCometBFT:
    """Keeps the block store and replays what the app lacks, as CometBFT's Handshaker does."""

    def __init__(self, genesis: bytes) -> None:
        self.genesis = genesis
        self.blocks: list[list[bytes]] = []  # decided blocks, height = index + 1

    async def handshake(self, client: AbciClient) -> int:
        info = await client.call("info", abci.RequestInfo())
        if info.last_block_height == 0:
            await client.call("init_chain", abci.RequestInitChain(chain_id=CHAIN, initial_height=1, app_state_bytes=self.genesis))
        for height in range(info.last_block_height + 1, len(self.blocks) + 1):
            await self.execute(client, height)
        return info.last_block_height

    async def execute(self, client: AbciClient, height: int) -> bytes:
        fin = await client.call("finalize_block", finalize_req(height, self.blocks[height - 1]))
        await client.call("commit", abci.RequestCommit())
        return fin.app_hash


async def test_kill_minus_nine_at_random_points_recovers_identical_hashes(tmp_path):
    """Each restart replays the missing blocks and lands on the reference app hash at every height."""
    rng = random.Random(20261121)
    actors = Actors()
    blocks = [txs for txs, _ in random_blocks(11, actors, n_blocks=80)]
    genesis = json.dumps(actors.genesis().to_json()).encode()

    # the reference: one app that never crashes
    ref = RegistryApp(tmp_path / "ref")
    ref.init_chain(abci.RequestInitChain(chain_id=CHAIN, initial_height=1, app_state_bytes=genesis))
    expected = {}
    for h, txs in enumerate(blocks, start=1):
        expected[h] = ref.finalize_block(finalize_req(h, txs)).app_hash
        ref.commit(abci.RequestCommit())
    ref.close()

    home = tmp_path / "home"
    home.mkdir()
    port = free_port()
    NodeConfig(home=home, abci_listen=f"tcp://127.0.0.1:{port}").save()
    cmt = FakeCometBFT(genesis)
    kills, replays, proc = 0, 0, None
    try:
        while True:  # until a restart finds every block committed
            proc = edgistry("node", "--home", str(home), log=tmp_path / "node.log")
            wait_for_port(port, proc=proc)
            client = await AbciClient.connect(f"tcp://127.0.0.1:{port}")
            app_height = await cmt.handshake(client)
            replays += len(cmt.blocks) - app_height
            info = await client.call("info", abci.RequestInfo())
            assert info.last_block_height == len(cmt.blocks)
            if cmt.blocks:
                assert info.last_block_app_hash == expected[len(cmt.blocks)]
            if len(cmt.blocks) == len(blocks):
                await client.close()
                break
            # run blocks and kill the process at a random moment in the stream
            delay = rng.uniform(0.0, 0.06)
            killer = asyncio.get_running_loop().call_later(delay, kill9, proc)
            try:
                while len(cmt.blocks) < len(blocks):
                    height = len(cmt.blocks) + 1
                    cmt.blocks.append(blocks[height - 1])  # decided: in the block store first
                    fin = await client.call("finalize_block", finalize_req(height, blocks[height - 1]))
                    assert fin.app_hash == expected[height]
                    if rng.random() < 0.3:
                        await asyncio.sleep(0.01)  # widen the window between FinalizeBlock and Commit
                    await client.call("commit", abci.RequestCommit())
            except (AbciClientError, ConnectionError, asyncio.IncompleteReadError):
                kills += 1
            killer.cancel()
            await client.close()
            kill9(proc)
    finally:
        if proc is not None:
            kill9(proc)
    assert kills >= 5 and replays >= 1, (kills, replays)
    final = RegistryApp(home / "data" / "registry")
    assert (final.height, final.app_hash) == (len(blocks), expected[len(blocks)])
    final.close()
