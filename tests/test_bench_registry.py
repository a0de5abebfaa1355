"""The registry benchmark's batched row counts what it claims: every operation of every
Batch tx writes its device, the batch is the largest that fits a tx, and the two ratios
keep their units (per operation vs per signature; per signed tx vs that tx's signature)."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))


def test_batched_row_units_and_counts(tmp_path):
    import registry

    r = registry.bench_finalize(tmp_path, block_txs=5, blocks=1, reps=1, batch_ops=60, block_batches=2)
    b = r["batched"]
    assert (b["ops"], b["signed_txs"]) == (120, 2)
    # per operation, over the single-tx row's floor per signature (rounding of the us figures aside)
    assert b["per_op_vs_libsodium_floor_per_signature"] == pytest.approx(
        b["finalize_commit_us_per_op"] / r["libsodium_floor_us"], rel=0.01)
    # per signed tx, over the floor of that tx's one signature
    assert b["per_signed_tx_vs_libsodium_floor_same_tx"] == pytest.approx(
        b["finalize_commit_us_per_signed_tx"] / b["libsodium_floor_us_per_batch_signature"], rel=0.01)
    assert b["finalize_commit_us_per_signed_tx"] == pytest.approx(60 * b["finalize_commit_us_per_op"], rel=0.01)


def test_batch_size_is_bounded_by_the_tx_size(tmp_path, monkeypatch):
    """A batch as large as the registry allows (MAX_BATCH_OPS devices naming their catalog slot)
    fits MAX_TX_BYTES; one over the byte bound is refused by the benchmark, not sent."""
    import registry
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    keys = [Ed25519PrivateKey.generate()]
    assert registry.batch_blocks(random.Random(1), keys, 1, 1, registry.txs.MAX_BATCH_OPS)
    monkeypatch.setattr(registry.txs, "MAX_TX_BYTES", 4096)
    with pytest.raises(AssertionError, match="use fewer"):
        registry.batch_blocks(random.Random(1), keys, 1, 1, 60)


def test_batched_row_fails_when_an_operation_fails(tmp_path, monkeypatch):
    """Duplicate pseudonyms inside a batch: the second registration fails, and the row refuses to count it."""
    import registry

    real = registry.device
    monkeypatch.setattr(registry, "device", lambda rng, pseudonym, res=7: real(rng, b"\x07" * 16, res))
    with pytest.raises(AssertionError, match="batch operation codes"):
        registry.bench_finalize(tmp_path, block_txs=1, blocks=1, reps=1, batch_ops=3, block_batches=1)


def test_cluster_p2p_settings_reach_the_config_and_the_statement(tmp_path):
    """--p2p-rate and --p2p-packet rewrite a generated node's config.toml and are named in the
    printed settings; each alone leaves the other at CometBFT's default."""
    import tomllib

    import cluster
    from edgistry.cluster.localnet import generate_localnet

    [node] = generate_localnet(tmp_path, 1, "edg-rate", base_port=30000, consensus=cluster.ConsensusSettings.fast())
    path = node.cometbft_home / "config" / "config.toml"
    before = tomllib.loads(path.read_text())
    default, default_packet = before["p2p"]["send_rate"], before["p2p"]["max_packet_msg_payload_size"]
    cluster.set_p2p(path, 52_428_800, 0)
    after = tomllib.loads(path.read_text())
    assert after["p2p"]["send_rate"] == after["p2p"]["recv_rate"] == 52_428_800 != default
    assert after["p2p"]["max_packet_msg_payload_size"] == default_packet
    cluster.set_p2p(path, 0, 16_384)
    last = tomllib.loads(path.read_text())
    assert last["p2p"]["max_packet_msg_payload_size"] == 16_384 != default_packet
    assert last["p2p"]["send_rate"] == 52_428_800
    for config in (before, last):
        del config["p2p"]["send_rate"], config["p2p"]["recv_rate"], config["p2p"]["max_packet_msg_payload_size"]
    assert last == before  # nothing else changed
    stated = cluster.settings_statement(cluster.ConsensusSettings.fast(), 52_428_800, p2p_packet=16_384)["p2p"]
    assert stated["send_rate"] == stated["recv_rate"] == 52_428_800
    assert stated["max_packet_msg_payload_size"] == 16_384
    plain = cluster.settings_statement(cluster.ConsensusSettings.fast())["p2p"]
    assert plain["send_rate"] == default and plain["max_packet_msg_payload_size"] == default_packet
