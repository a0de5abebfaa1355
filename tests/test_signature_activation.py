"""The Ed25519 rule switch (v1 -> v2) at the genesis activation height, in the app.

A "weak" gateway whose registered key is the identity point (01 00..00) is the
probe: under v1 anyone can forge its signatures (R = [S]B), under v2 its key is
of small order and nothing it signs verifies. So a forged tx is the tx v1
accepts and v2 rejects.
"""

from __future__ import annotations

import hashlib
import json
import random

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

import ed25519_ref as ref
from edgistry.abci_app import keys, txs
from edgistry.abci_app.app import RegistryApp
from edgistry.abci_app.codes import Code
from edgistry.abci_app.ed25519_rule import RULE_V1, RULE_V2
from edgistry.abci_app.genesis import DEFAULT_ED25519_V2_HEIGHT, GatewaySpec, Genesis, GenesisError
from edgistry.proto import abci_pb2 as abci
from edgistry.proto import registry_pb2 as pb
from registry_helpers import CHAIN, Actors, Driver, device_msg

IDENTITY = bytes.fromhex("01" + "00" * 31)


def forged_tx(nonce: int, msg, chain: str = CHAIN) -> bytes:
    """A tx "signed" by the identity key without any secret: R = [S]B for an arbitrary S."""
    body = pb.TxBody(chain_id=chain, nonce=nonce)
    getattr(body, txs._field_for(type(msg))).CopyFrom(msg)
    raw = body.SerializeToString(deterministic=True)
    s = int.from_bytes(hashlib.sha512(raw).digest(), "little") % ref.L
    sig = ref.encode_point(ref.scalar_mult(s, ref.BASE)) + s.to_bytes(32, "little")
    return pb.SignedTx(body=raw, signer=IDENTITY, signature=sig).SerializeToString(deterministic=True)


def genesis(actors: Actors, activation: int | None) -> Genesis:
    g = actors.genesis()
    g.gateways.append(GatewaySpec(IDENTITY, "127.0.0.1:26690", "weak"))
    g.ed25519_v2_height = activation
    return g


def recheck(app: RegistryApp, tx: bytes) -> int:
    return app.check_tx(abci.RequestCheckTx(tx=tx, type=abci.RECHECK)).code


def check(app: RegistryApp, tx: bytes) -> int:
    return app.check_tx(abci.RequestCheckTx(tx=tx)).code


# ---- genesis: default, validate, init, export ----


def test_new_genesis_activates_v2_from_height_one():
    """A new chain's genesis names height 1, and says so in its JSON."""
    g = Genesis()
    assert g.ed25519_v2_height == DEFAULT_ED25519_V2_HEIGHT == 1
    assert g.to_json()["ed25519_v2_height"] == 1
    assert Genesis.from_json(g.to_json()).ed25519_v2_height == 1


def test_existing_genesis_without_the_key_never_activates():
    """A genesis written before the key existed (or an empty app_state) means v1 forever."""
    old = {"admins": [], "gateways": [], "devices": []}
    g = Genesis.from_json(old)
    assert g.ed25519_v2_height is None
    assert "ed25519_v2_height" not in g.to_json()
    assert Genesis.from_bytes(b"").ed25519_v2_height is None
    assert Genesis.from_bytes(b"  ").ed25519_v2_height is None


@pytest.mark.parametrize("bad", [0, -1, "1", 1.0, True, 2**63, [1]])
def test_activation_height_must_be_a_positive_int64(bad):
    """Anything but a whole number 1..2^63-1 is refused before the chain starts."""
    with pytest.raises(GenesisError, match="ed25519_v2_height"):
        Genesis.from_json({"ed25519_v2_height": bad})


@pytest.mark.parametrize("activation", [None, 1, 7])
def test_activation_height_is_state_and_round_trips_through_export(tmp_path, activation):
    """InitChain writes the height into the hashed state (nothing when absent) and export reads it back."""
    actors = Actors()
    app = RegistryApp(tmp_path / "reg")
    d = Driver(app, genesis(actors, activation))
    d.block([])
    raw = app.store.get(keys.ED25519_V2_HEIGHT)
    assert raw == (None if activation is None else keys.be64(activation))
    assert keys.is_hashed(keys.ED25519_V2_HEIGHT)
    with app.store.reader() as r:
        exported = Genesis.export(r)
    assert exported.ed25519_v2_height == activation
    assert Genesis.from_json(json.loads(json.dumps(exported.to_json()))).ed25519_v2_height == activation
    app.close()
    reopened = RegistryApp(tmp_path / "reg")
    assert reopened.ed25519_v2_height == activation
    reopened.close()


# ---- execution across the activation height ----


def _chain(actors: Actors) -> list[list[bytes]]:
    """Blocks 1..5: a forged tx in each of blocks 1-4, an honest one in block 5."""
    blocks = [[forged_tx(h, device_msg(bytes([h]) * 16))] for h in range(1, 5)]
    blocks.append([actors.tx(actors.gw1, device_msg(b"h" * 16))])
    return blocks


def _run(app: RegistryApp, g: Genesis, blocks: list[list[bytes]]) -> list[tuple[bytes, list[int]]]:
    d = Driver(app, g)
    out = []
    for block in blocks:
        resp = d.block(block)
        out.append((resp.app_hash, [r.code for r in resp.tx_results]))
    return out


def test_replay_across_activation_gives_the_committed_verdicts(tmp_path):
    """With activation at 3, forged txs pass in blocks 1-2 and fail from block 3 on; a fresh
    app replaying the blocks, and one restarted mid-chain, reach the same codes and app hashes."""
    actors = Actors()
    blocks = _chain(actors)
    g = genesis(actors, 3)
    first = RegistryApp(tmp_path / "a")
    trace = _run(first, g, blocks)
    first.close()
    assert [codes for _, codes in trace] == [[0], [0], [Code.BAD_SIGNATURE], [Code.BAD_SIGNATURE], [0]]

    replay = RegistryApp(tmp_path / "b")
    assert _run(replay, g, blocks) == trace
    replay.close()

    restarted = RegistryApp(tmp_path / "c")
    head = _run(restarted, g, blocks[:2])
    restarted.close()
    restarted = RegistryApp(tmp_path / "c")  # the activation height comes back from the store
    tail = _run(restarted, g, blocks[2:])
    restarted.close()
    assert head + tail == trace


def test_chain_without_activation_keeps_v1_at_every_height(tmp_path):
    """A genesis without the key accepts the forged txs at every height (the old rule replays)."""
    actors = Actors()
    app = RegistryApp(tmp_path / "a")
    trace = _run(app, genesis(actors, None), _chain(actors))
    app.close()
    assert [codes for _, codes in trace] == [[0]] * 5


def test_fresh_apps_agree_at_every_height_across_activation(tmp_path):
    """Three apps fed the same random blocks of honest, forged and tampered txs, with
    activation mid-chain, agree on every app hash and every result code."""
    rng = random.Random(215)
    actors = Actors()
    blocks, forged_nonce = [], 0
    for h in range(1, 9):
        block = []
        for _ in range(rng.randint(1, 5)):
            pick = rng.random()
            p = rng.randbytes(16)
            if pick < 0.4:
                forged_nonce += 1
                block.append(forged_tx(forged_nonce, device_msg(p)))
            elif pick < 0.8:
                block.append(actors.tx(rng.choice([actors.gw1, actors.gw2]), device_msg(p)))
            else:
                tampered = bytearray(actors.tx(actors.gw2, device_msg(p)))
                tampered[-1] ^= 1  # the last byte is in the signature
                block.append(bytes(tampered))
        blocks.append(block)
    g = genesis(actors, 5)
    traces = []
    for i in range(3):
        app = RegistryApp(tmp_path / f"app{i}")
        traces.append(_run(app, g, blocks))
        app.close()
    assert traces[0] == traces[1] == traces[2]
    codes = [c for _, cs in traces[0] for c in cs]
    assert Code.BAD_SIGNATURE in codes and Code.OK in codes


# ---- the verified-signature cache and the proposal methods ----


def test_tx_checked_under_v1_and_proposed_after_activation_is_rejected_on_every_node(tmp_path):
    """Node A checks a forged tx before activation (v1 accepts it and A remembers that); a
    proposer puts it in the first v2 block: A and B (which never saw it) both reject the
    proposal, and executing the block anyway gives both the same BAD_SIGNATURE and app hash."""
    actors = Actors()
    g = genesis(actors, 3)
    a, b = RegistryApp(tmp_path / "a"), RegistryApp(tmp_path / "b")
    da, db = Driver(a, g), Driver(b, g)
    for d in (da, db):
        d.block([])
    forged = forged_tx(1, device_msg(b"f" * 16))
    assert a.next_height == 2 and a.rule_at(2) == RULE_V1
    assert check(a, forged) == 0
    assert a.verified.has(forged, RULE_V1)
    for d in (da, db):
        d.block([])  # height 2, empty; no recheck ran on A (CometBFT's recheck may be off)
    assert a.next_height == 3 and a.rule_at(3) == RULE_V2

    for app in (a, b):
        status = app.process_proposal(abci.RequestProcessProposal(txs=[forged], height=3)).status
        assert status == abci.ResponseProcessProposal.REJECT
        assert list(app.prepare_proposal(abci.RequestPrepareProposal(txs=[forged], max_tx_bytes=1 << 20,
                                                                     height=3)).txs) == []
    results = []
    for app, d in ((a, da), (b, db)):
        d.time += 5

        resp = app.finalize_block(abci.RequestFinalizeBlock(txs=[forged], height=3, time=Timestamp(seconds=d.time)))
        app.commit(abci.RequestCommit())
        results.append((resp.app_hash, [r.code for r in resp.tx_results]))
    assert results[0] == results[1]
    assert results[0][1] == [Code.BAD_SIGNATURE]
    a.close()
    b.close()


def test_recheck_reverifies_pending_txs_once_when_the_next_block_is_the_first_v2_block(tmp_path, monkeypatch):
    """The RECHECK pass after the last v1 block verifies every pending tx again (the forged
    one leaves the mempool, the honest one stays); the passes before and after do not verify."""
    actors = Actors()
    app = RegistryApp(tmp_path / "a")
    d = Driver(app, genesis(actors, 3))
    d.block([])  # height 1; next is 2 (v1)
    forged = forged_tx(1, device_msg(b"f" * 16))
    honest = actors.tx(actors.gw1, device_msg(b"h" * 16))
    assert check(app, forged) == 0 and check(app, honest) == 0

    calls: list[int] = []
    real = txs.verify_signature
    monkeypatch.setattr("edgistry.abci_app.state.verify_signature",
                        lambda tx, rule: (calls.append(rule), real(tx, rule)))

    d.block([])  # height 2 committed: the next block (3) is the first v2 block
    assert recheck(app, forged) == Code.BAD_SIGNATURE
    assert recheck(app, honest) == 0
    assert calls == [RULE_V2, RULE_V2]
    assert app.verified.has(honest, RULE_V2)

    calls.clear()
    other = actors.tx(actors.gw2, device_msg(b"o" * 16))
    assert check(app, other) == 0  # a new tx at height 3: verified once, under v2
    assert calls == [RULE_V2]
    d.block([])  # height 3 committed: no crossing
    calls.clear()
    assert recheck(app, honest) == 0 and recheck(app, other) == 0
    assert calls == []
    app.close()


def test_prepare_proposal_keeps_v1_txs_before_activation(tmp_path):
    """Before the activation height a forged tx is a valid v1 tx: proposed and accepted."""
    actors = Actors()
    app = RegistryApp(tmp_path / "a")
    d = Driver(app, genesis(actors, 10))
    d.block([])
    forged = forged_tx(1, device_msg(b"f" * 16))
    prep = app.prepare_proposal(abci.RequestPrepareProposal(txs=[forged], max_tx_bytes=1 << 20, height=2))
    assert list(prep.txs) == [forged]
    assert app.process_proposal(abci.RequestProcessProposal(txs=[forged], height=2)).status == \
        abci.ResponseProcessProposal.ACCEPT
    app.close()
