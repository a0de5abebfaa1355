"""The registry submitter beside another sender of its key (the seal keeper, `token revoke
--chain`, a second gateway process): a batch that sender's tx made stale is sent again.

Which of two txs of one key reaches a block first is gossip's choice, and a single
CometBFT node keeps arrival order, so these tests put the blocks together themselves: a
real RegistryApp executes them, behind a small in-process stand-in for the node's RPC
(broadcast_tx_sync = CheckTx, block, block_results, abci_query at a height). The
submitter's own path against real CometBFT is tests/test_registry_submitter.py."""

from __future__ import annotations

import asyncio
import base64

from google.protobuf.timestamp_pb2 import Timestamp

from edgistry.abci_app import txs
from edgistry.abci_app.app import RegistryApp
from edgistry.abci_app.codes import Code
from edgistry.abci_app.revocation_rule import revocation_hash
from edgistry.chain import QueryResult
from edgistry.gateway.submitter import RegistrySubmitter
from edgistry.proto import abci_pb2 as abci
from edgistry.proto import registry_pb2 as pb
from registry_helpers import CHAIN, T0, Actors, Driver, device_msg, pub


class NodeRpc:
    """The RPC calls the submitter makes, answered by an in-process RegistryApp;
    blocks are made by the test (:meth:`block`), from whatever txs it chooses."""

    url = "http://node.invalid"

    def __init__(self, app: RegistryApp) -> None:
        self.app, self.mempool, self.sent, self.blocks, self.time = app, [], [], {}, T0
        self.last: dict[bytes, int] = {}
        self._locks: dict[bytes, asyncio.Lock] = {}

    def sender(self, signer: bytes) -> asyncio.Lock:
        return self._locks.setdefault(signer, asyncio.Lock())

    def forget_nonce(self, signer: bytes) -> None:
        self.last.pop(signer, None)

    async def sign(self, key, msg) -> bytes:
        signer = pub(key)
        if signer not in self.last:
            self.last[signer] = int.from_bytes((await self.query("/nonce", signer)).value or b"\0", "big")
        self.last[signer] += 1
        return txs.sign_tx(key, CHAIN, self.last[signer], msg)

    async def status(self) -> dict:
        return {"sync_info": {"latest_block_height": str(self.app.height)}}

    async def query(self, path: str, data: bytes = b"", height: int = 0) -> QueryResult:
        res = self.app.query(abci.RequestQuery(path=path, data=data, height=height))
        return QueryResult(res.code, res.log, res.value, res.height)

    async def call(self, method: str, **params) -> dict:
        if method == "broadcast_tx_sync":
            raw = base64.b64decode(params["tx"])
            res = self.app.check_tx(abci.RequestCheckTx(tx=raw))
            if res.code == 0:
                self.mempool.append(raw)
                self.sent.append(raw)
            return {"code": res.code, "log": res.log}
        if method == "block":
            raws = self.blocks[int(params["height"])][0]
            return {"block": {"data": {"txs": [base64.b64encode(t).decode() for t in raws]}}}
        if method == "block_results":
            return {"txs_results": self.blocks[int(params["height"])][1]}
        raise AssertionError(f"unexpected RPC {method}")

    def block(self, raws: list[bytes]) -> list[dict]:
        self.time += 5
        height = self.app.height + 1
        resp = self.app.finalize_block(abci.RequestFinalizeBlock(txs=raws, height=height,
                                                                 time=Timestamp(seconds=self.time)))
        self.app.commit(abci.RequestCommit())
        results = [{"code": r.code, "log": r.log, "data": base64.b64encode(r.data).decode(), "events": []}
                   for r in resp.tx_results]
        self.blocks[height] = (list(raws), results)
        self.mempool = [t for t in self.mempool if t not in raws]
        return results


async def _next_sent(rpc: NodeRpc, seen: int) -> bytes:
    """Tx number ``seen`` (from 0) the node admitted from the submitter (bounded wait)."""
    for _ in range(500):
        if len(rpc.sent) > seen:
            return rpc.sent[seen]
        await asyncio.sleep(0.01)
    raise AssertionError("the submitter sent nothing")


def _world(tmp_path):
    a = Actors()
    app = RegistryApp(tmp_path / "reg")
    Driver(app, a.genesis())
    rpc = NodeRpc(app)
    rpc.block([])
    sub = RegistrySubmitter(rpc, a.gw1, window_s=0.001, poll_s=0.01, commit_timeout_s=30.0)
    sub._ws_usable = False  # no websocket here: the follower polls, as with the embedded node
    return a, app, rpc, sub


def _revocations(app: RegistryApp) -> int:
    value = app.query(abci.RequestQuery(path="/revocations")).value
    return len(pb.RevocationList.FromString(value).revocations)


async def test_a_batch_refused_in_its_block_after_another_senders_tx_is_sent_again(tmp_path):
    """The keeper's tx (nonce n+1) reaches a block first; the revocation's batch (n) is then
    refused there for its nonce, and its operation goes out again at once, not after the
    commit timeout."""
    a, app, rpc, sub = _world(tmp_path)
    revoke = asyncio.ensure_future(sub.submit(pb.RevokeToken(tag_hash=revocation_hash(b"z" * 32),
                                                             expires_at=T0 + 100_000)))
    first = await _next_sent(rpc, 0)
    async with rpc.sender(pub(a.gw1)):
        keeper = await rpc.sign(a.gw1, pb.SetSealKey(x25519_pubkey=b"\x07" * 32))
    assert rpc.block([keeper])[0]["code"] == 0
    assert rpc.block([first])[0]["code"] == Code.STALE_NONCE
    again = await _next_sent(rpc, 1)
    assert again != first
    assert rpc.block([again])[0]["code"] == 0
    done = await asyncio.wait_for(revoke, 10)
    assert done.height == app.height and _revocations(app) == 1
    assert sub.stats["resent_ops"] == 1 and sub.stats["batches"] == 2
    await sub.close()
    app.close()


async def test_a_batch_that_never_reaches_a_block_is_sent_again_once_another_sender_passed_it(tmp_path):
    """The node dropped the batch (a recheck evicts it once another sender's higher nonce
    commits): the other sender's tx in a block is enough to send it again."""
    a, app, rpc, sub = _world(tmp_path)
    register = asyncio.ensure_future(sub.submit(device_msg(b"\x05" * 16)))
    dropped = await _next_sent(rpc, 0)
    async with rpc.sender(pub(a.gw1)):
        keeper = await rpc.sign(a.gw1, pb.SetSealKey(x25519_pubkey=b"\x08" * 32))
    rpc.mempool.remove(dropped)
    assert rpc.block([keeper])[0]["code"] == 0
    again = await _next_sent(rpc, 1)
    assert rpc.block([again])[0]["code"] == 0
    done = await asyncio.wait_for(register, 10)
    assert done.data == b"\x05" * 16 and sub.stats["resent_ops"] == 1
    await sub.close()
    app.close()


async def test_another_senders_tx_leaves_a_batch_that_can_still_commit_alone(tmp_path):
    """A batch signed above the other sender's nonce is still valid: it is not sent twice."""
    a, app, rpc, sub = _world(tmp_path)
    async with rpc.sender(pub(a.gw1)):
        keeper = await rpc.sign(a.gw1, pb.SetSealKey(x25519_pubkey=b"\x09" * 32))
    register = asyncio.ensure_future(sub.submit(device_msg(b"\x06" * 16)))
    batch = await _next_sent(rpc, 0)
    assert rpc.block([keeper])[0]["code"] == 0
    for _ in range(500):  # until the follower has read that block (and the key's nonce)
        if sub._seen_height >= app.height:
            break
        await asyncio.sleep(0.01)
    assert sub._seen_height >= app.height and sub.stats["resent_ops"] == 0
    assert rpc.block([batch])[0]["code"] == 0
    done = await asyncio.wait_for(register, 10)
    assert done.data == b"\x06" * 16
    assert sub.stats["resent_ops"] == 0 and sub.stats["batches"] == 1 and len(rpc.mempool) == 0
    await sub.close()
    app.close()
