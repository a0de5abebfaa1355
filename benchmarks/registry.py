"""Registry benchmarks: block execution and CheckTx against the Ed25519 floor; query scaling.

Run: python benchmarks/registry.py [--block-txs N] [--blocks N] [--batch-ops 60] [--block-batches 8]
     [--clock wall|cpu] [--sizes 100000,1000000]
(``--sizes ""`` skips the query part)

1. Block execution for blocks of signed RegisterDevice txs that this node has
   not seen before (so FinalizeBlock verifies every signature), beside raw
   Ed25519 verification of the same txs measured in the same run: the floor,
   since every validator must verify every signature. Two floors: libsodium
   (PyNaCl ``crypto_sign_open``, the library of the v2 rule new chains use)
   and cryptography/OpenSSL (the v1 rule). The cost per operation is
   FinalizeBlock + Commit (the fsync'd LMDB transaction) per tx. Target:
   <= 1.5x the libsodium floor.
   Batched row, interleaved with it in the same repetitions: blocks of signed
   Batch txs, each of ``--batch-ops`` RegisterDevice operations built like the
   single txs (sealed fields as the gateway writes them), also unseen by the
   node. Two ratios with different units, never to be read as one another:
   per operation (FinalizeBlock + Commit per operation / libsodium verify of
   one single RegisterDevice tx, i.e. per signature of the single-tx row) and
   per signed tx (FinalizeBlock + Commit per Batch tx / libsodium verify of
   that Batch tx's one signature, over its ~64 KiB body).
2. CheckTx rate, same floors.
3. Registry query latency with N registered devices (100k and 1M): device
   lookups and "devices of type T in cell C" pages. Target: cost growing no
   faster than logarithmically with N.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import h3
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from google.protobuf.timestamp_pb2 import Timestamp
from nacl.bindings import crypto_sign_open

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from edgistry.abci_app import keys as store_keys, lthash, txs
from edgistry.abci_app.app import RegistryApp
from edgistry.abci_app.batch import batch_of
from edgistry.abci_app.genesis import Genesis, GatewaySpec
from edgistry.abci_app.handlers import put_device
from edgistry.abci_app.overlay import Overlay
from edgistry.proto import abci_pb2 as abci
from edgistry.proto import registry_pb2 as pb
from bench_util import bench_seal_state, sealed_device

CHAIN = "bench"
PAGE = 20
TYPES = ("sensor", "valve", "camera")


def pub(k: Ed25519PrivateKey) -> bytes:
    return k.public_key().public_bytes_raw()


def device(rng: random.Random, pseudonym: bytes, res: int = 7) -> pb.RegisterDevice:
    cell = h3.str_to_int(h3.latlng_to_cell(rng.uniform(36, 60), rng.uniform(-10, 30), res))
    services = [pb.ServiceDescriptor(type=t, methods=[pb.ServiceMethod(name="read", cache_max_age_s=10),
                                                      pb.ServiceMethod(name="write", mutating=True)])
                for t in rng.sample(TYPES, 2)]
    return sealed_device(pb.RegisterDevice, pseudonym, pb.DeviceFields(
        services=services, cell=cell, policy=pb.PrivacyPolicy(resolution=res, k=5), duty_cycle_s=60))


def fresh_app(tmp: Path, name: str, gateways: list[Ed25519PrivateKey]) -> RegistryApp:
    app = RegistryApp(tmp / name)
    genesis = Genesis(admins=[b"\x01" * 32], gateways=[GatewaySpec(pub(g), "127.0.0.1:1") for g in gateways],
                      seal=bench_seal_state())
    app.init_chain(abci.RequestInitChain(chain_id=CHAIN, initial_height=1, app_state_bytes=json.dumps(genesis.to_json()).encode()))
    app.finalize_block(abci.RequestFinalizeBlock(height=1, time=Timestamp(seconds=1_800_000_000)))
    app.commit(abci.RequestCommit())
    return app


def batch_blocks(rng: random.Random, gateways: list[Ed25519PrivateKey], blocks: int, block_batches: int,
                 batch_ops: int) -> list[list[bytes]]:
    """Blocks of signed Batch txs of ``batch_ops`` new-device operations each (one gateway per batch)."""
    nonces = {pub(g): 0 for g in gateways}
    out = []
    for _ in range(blocks):
        block = []
        for _ in range(block_batches):
            g = rng.choice(gateways)
            nonces[pub(g)] += 1
            tx = txs.sign_tx(g, CHAIN, nonces[pub(g)],
                             batch_of([device(rng, rng.randbytes(16)) for _ in range(batch_ops)]))
            assert len(tx) <= txs.MAX_TX_BYTES, f"{batch_ops} sealed operations make {len(tx)} bytes: use fewer"
            block.append(tx)
        out.append(block)
    return out


def bench_finalize(tmp: Path, block_txs: int, blocks: int, reps: int = 3,
                   clock: Callable[[], float] = time.perf_counter,
                   batch_ops: int = 60, block_batches: int = 8) -> dict:
    """Execution costs per tx, best of ``reps`` interleaved repetitions. ``clock``:
    time.perf_counter (wall, the default) or time.process_time (this process's CPU
    time: steadier on a shared machine, but blind to Commit's fsync wait)."""
    rng = random.Random(1)
    gateways = [Ed25519PrivateKey.generate() for _ in range(8)]
    nonces = {pub(g): 0 for g in gateways}
    all_blocks = []
    for _ in range(blocks):
        block = []
        for _ in range(block_txs):
            g = rng.choice(gateways)
            nonces[pub(g)] += 1
            block.append(txs.sign_tx(g, CHAIN, nonces[pub(g)], device(rng, rng.randbytes(16))))
        all_blocks.append(block)
    decoded = [[pb.SignedTx.FromString(t) for t in b] for b in all_blocks]
    keys = {k: Ed25519PublicKey.from_public_bytes(k) for k in nonces}
    b_blocks = batch_blocks(rng, gateways, blocks, block_batches, batch_ops) if batch_ops else []
    b_decoded = [[pb.SignedTx.FromString(t) for t in b] for b in b_blocks]

    def floor_openssl() -> float:
        t0 = clock()
        for block in decoded:
            for t in block:
                keys[t.signer].verify(t.signature, txs.SIGN_DOMAIN + t.body)
        return clock() - t0

    def floor_sodium(decoded: list[list[pb.SignedTx]] = decoded) -> float:
        t0 = clock()
        for block in decoded:
            for t in block:
                crypto_sign_open(t.signature + txs.SIGN_DOMAIN + t.body, t.signer)
        return clock() - t0

    def finalize(app: RegistryApp, all_blocks: list[list[bytes]] = all_blocks) -> tuple[float, float]:
        fin = 0.0
        t_commit = 0.0
        for i, block in enumerate(all_blocks):
            req = abci.RequestFinalizeBlock(txs=block, height=app.height + 1, time=Timestamp(seconds=1_800_000_100 + i))
            t0 = clock()
            resp = app.finalize_block(req)
            fin += clock() - t0
            assert all(r.code == 0 for r in resp.tx_results), resp.tx_results[0].log
            if all_blocks is b_blocks:  # every operation of every batch wrote its device
                codes = [c for r in resp.tx_results for c in pb.BatchResult.FromString(r.data).codes]
                assert len(codes) == batch_ops * len(block) and not any(codes), f"batch operation codes {set(codes)}"
            t0 = clock()
            app.commit(abci.RequestCommit())
            t_commit += clock() - t0
        return fin, t_commit

    def check(app: RegistryApp, all_blocks: list[list[bytes]] = all_blocks) -> float:
        t0 = clock()
        for block in all_blocks:
            for tx in block:
                assert app.check_tx(abci.RequestCheckTx(tx=tx)).code == 0
        return clock() - t0

    def beside_verify() -> tuple[float, float, float, float, float]:
        """Where a single tx's time goes beside its signature: FinalizeBlock and Commit of
        the same blocks with every signature already verified (as if CheckTx had seen
        them), and alone, the decode with validate_basic and the LtHash element of the
        device record each tx writes."""
        app = fresh_app(tmp, f"beside{len(beside)}", gateways)
        rule = app.rule_at(app.height + 1)
        for block in all_blocks:
            for t in block:
                app.verified.add(t, rule)
        f, c = finalize(app)
        gid = {pub(g): txs.gateway_id_for(pub(g)) for g in gateways}
        records = []
        t0 = clock()
        for block in all_blocks:
            for t in block:
                records.append(txs.decode_tx(t))
        dec = clock() - t0
        raws = [(store_keys.device(d.msg.pseudonym), pb.DeviceRecord(
            pseudonym=d.msg.pseudonym, gateway_id=gid[d.signer], sealed=d.msg.sealed,
            registered_height=2).SerializeToString(deterministic=True)) for d in records]
        # the record folded into a sum of the chain's own version, as Commit's fold does it
        acc = lthash.LtHash(version=lthash.version_at(app.height, app.lthash_v2_height))
        t0 = clock()
        for k, v in raws:
            acc.add(k, v)
        elem = clock() - t0
        app.close()
        return f, c, f + c, dec, elem

    n = block_txs * blocks
    beside: list[tuple[float, float, float, float, float]] = []
    sodium, openssl, fins, commits, ops, checks = [], [], [], [], [], []
    b_sodium, b_fins, b_commits, b_ops, b_checks = [], [], [], [], []
    for rep in range(reps):  # interleave the measurements so machine noise hits every side
        sodium.append(floor_sodium())
        openssl.append(floor_openssl())
        app = fresh_app(tmp, f"fin{rep}", gateways)
        f, c = finalize(app)
        fins.append(f)
        commits.append(c)
        ops.append(f + c)
        app.close()
        app = fresh_app(tmp, f"chk{rep}", gateways)
        checks.append(check(app))
        app.close()
        beside.append(beside_verify())
        if b_blocks:
            b_sodium.append(floor_sodium(b_decoded))
            app = fresh_app(tmp, f"bfin{rep}", gateways)
            f, c = finalize(app, b_blocks)
            b_fins.append(f)
            b_commits.append(c)
            b_ops.append(f + c)
            app.close()
            app = fresh_app(tmp, f"bchk{rep}", gateways)
            b_checks.append(check(app, b_blocks))
            app.close()
    us = lambda xs: round(1e6 * min(xs) / n, 2)  # noqa: E731  best of the reps, per tx
    fl = min(sodium)
    batched = {}
    if b_blocks:
        n_ops = batch_ops * block_batches * blocks
        n_txs = block_batches * blocks
        per = lambda xs, k: round(1e6 * min(xs) / k, 2)  # noqa: E731
        sig_floor = fl / n  # libsodium verify of one single RegisterDevice tx: the single row's floor per signature
        batched = {
            "ops": n_ops, "ops_per_batch": batch_ops, "batches_per_block": block_batches, "signed_txs": n_txs,
            "batch_tx_bytes_max": max(len(t) for b in b_blocks for t in b),
            "finalize_us_per_op": per(b_fins, n_ops), "commit_us_per_op": per(b_commits, n_ops),
            "finalize_commit_us_per_op": per(b_ops, n_ops),
            "finalize_commit_us_per_signed_tx": per(b_ops, n_txs),
            "checktx_us_per_signed_tx": per(b_checks, n_txs),
            "libsodium_floor_us_per_batch_signature": per(b_sodium, n_txs),
            # unit: (FinalizeBlock + Commit per operation) / (libsodium verify per signature of the single-tx row)
            "per_op_vs_libsodium_floor_per_signature": round(min(b_ops) / n_ops / sig_floor, 3),
            # unit: (FinalizeBlock + Commit per Batch tx) / (libsodium verify of that tx's one signature)
            "per_signed_tx_vs_libsodium_floor_same_tx": round(min(b_ops) / min(b_sodium), 3),
            "commit_ms_per_block": round(1000 * min(b_commits) / blocks, 2),
        }
    return {
        "txs": n, "block_txs": block_txs, "reps": reps,
        "libsodium_floor_us": us(sodium), "openssl_floor_us": us(openssl),
        "finalize_us": us(fins), "commit_us": us(commits), "finalize_commit_us": us(ops),
        "checktx_us": us(checks), "commit_ms_per_block": round(1000 * min(commits) / blocks, 2),
        "op_vs_libsodium_floor": round(min(ops) / fl, 3),
        "finalize_vs_libsodium_floor": round(min(fins) / fl, 3),
        "checktx_vs_libsodium_floor": round(min(checks) / fl, 3),
        "op_vs_openssl_floor": round(min(ops) / min(openssl), 3),
        # FinalizeBlock + Commit with the signatures verified beforehand, and two of its parts
        # timed alone: what the 1.5x goal leaves beside the verify is 0.5x the floor
        "beside_verify": {
            "finalize_us": us([b[0] for b in beside]), "commit_us": us([b[1] for b in beside]),
            "finalize_commit_us": us([b[2] for b in beside]),
            "decode_validate_us": us([b[3] for b in beside]), "lthash_element_us": us([b[4] for b in beside]),
            "budget_at_1_5x_us": round(0.5 * us(sodium), 2),
        },
        "batched": batched,
    }


def bulk_load(tmp: Path, n: int) -> RegistryApp:
    """n devices committed at height 1 through the genesis path (same records as txs)."""
    rng = random.Random(n)
    gw = Ed25519PrivateKey.generate()
    app = RegistryApp(tmp / f"load{n}")
    genesis = Genesis(admins=[b"\x01" * 32], gateways=[GatewaySpec(pub(gw), "127.0.0.1:1")], seal=bench_seal_state())
    app.init_chain(abci.RequestInitChain(chain_id=CHAIN, initial_height=1, app_state_bytes=json.dumps(genesis.to_json()).encode()))
    block: Overlay = app._block
    gid = txs.gateway_id_for(pub(gw))
    for i in range(n):
        m = device(rng, i.to_bytes(16, "big"))
        put_device(block, pb.DeviceRecord(pseudonym=m.pseudonym, gateway_id=gid, sealed=m.sealed, registered_height=1))
    app.finalize_block(abci.RequestFinalizeBlock(height=1, time=Timestamp(seconds=1_800_000_000)))
    app.commit(abci.RequestCommit())
    return app


def bench_queries(app: RegistryApp, n: int, samples: int = 3000) -> dict:
    rng = random.Random(7)
    lookups, cells = [], []
    # Same-size answers at every registry size: pages of PAGE devices from
    # resolution-2 cells around a random registered device (dense enough to
    # fill a page at 100k devices), so cost differences come from the index.
    with app.store.reader() as r:
        for _ in range(samples):
            i = rng.randrange(n)
            lookups.append(pb.DeviceQuery(pseudonym=i.to_bytes(16, "big")).SerializeToString())
            start = min(i, n - PAGE - 1).to_bytes(16, "big")  # a full page after it
            cells.append(pb.DeviceQuery(start_after=b"d/" + start, limit=PAGE).SerializeToString())

    sizes = []

    def run(path: str, datas: list[bytes]) -> list[float]:
        out = []
        for data in datas:
            t0 = time.perf_counter()
            resp = app.query(abci.RequestQuery(path=path, data=data))
            out.append(time.perf_counter() - t0)
            assert resp.code == 0, resp.log
            if path == "/devices":
                sizes.append(len(pb.DeviceList.FromString(resp.value).devices))
        return out

    dev = run("/device", lookups)
    cel = run("/devices", cells)  # a page of records (by-cell pages moved to the gateways: fields are sealed)
    assert statistics.mean(sizes) > PAGE * 0.9, f"pages not full ({statistics.mean(sizes):.1f}); compare like with like"
    q = lambda xs, p: statistics.quantiles(xs, n=100)[p - 1] * 1e6  # noqa: E731
    return {"devices": n, "lookup_p50_us": round(q(dev, 50), 1), "lookup_p99_us": round(q(dev, 99), 1),
            "by_cell_p50_us": round(q(cel, 50), 1), "by_cell_p99_us": round(q(cel, 99), 1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--block-txs", type=int, default=500)
    parser.add_argument("--blocks", type=int, default=4)
    parser.add_argument("--sizes", default="100000,1000000", help='registry sizes for the query part ("": none)')
    parser.add_argument("--reps", type=int, default=3, help="interleaved repetitions of the execution part")
    parser.add_argument("--batch-ops", type=int, default=60,
                        help="RegisterDevice operations per Batch tx (60 sealed ones fit MAX_TX_BYTES; 0: no batched row)")
    parser.add_argument("--block-batches", type=int, default=8, help="Batch txs per block of the batched row")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall time, or this process's CPU time (steadier on a busy machine; no fsync wait)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        clock = time.perf_counter if args.clock == "wall" else time.process_time
        fin = bench_finalize(tmp, args.block_txs, args.blocks, args.reps, clock, args.batch_ops, args.block_batches)
        fin["clock"] = args.clock
        print(f"== Block execution: the same signed RegisterDevice txs, best of {args.reps} "
              f"({args.clock} time, us per tx) ==")
        print(f"{'what':40} {'us/tx':>9} {'vs libsodium floor':>20}")
        rows = [("Ed25519 verify, libsodium (floor)", "libsodium_floor_us"),
                ("Ed25519 verify, cryptography/OpenSSL", "openssl_floor_us"),
                ("FinalizeBlock", "finalize_us"), ("Commit", "commit_us"),
                ("FinalizeBlock + Commit (per operation)", "finalize_commit_us"), ("CheckTx", "checktx_us")]
        for label, key in rows:
            print(f"{label:40} {fin[key]:>9.2f} {fin[key] / fin['libsodium_floor_us']:>19.2f}x")
        print(f"Commit: {fin['commit_ms_per_block']} ms per {args.block_txs}-tx block (fsync'd LMDB txn)")
        bv = fin["beside_verify"]
        print(f"\nBeside the verify (signatures verified beforehand), us per tx: FinalizeBlock {bv['finalize_us']:.2f}"
              f" + Commit {bv['commit_us']:.2f} = {bv['finalize_commit_us']:.2f}, against {bv['budget_at_1_5x_us']:.2f}"
              f" that 1.5x the floor leaves; alone: decode + validate_basic {bv['decode_validate_us']:.2f}, "
              f"LtHash element of the record {bv['lthash_element_us']:.2f}")
        b = fin["batched"]
        if b:
            floor = fin["libsodium_floor_us"]
            print(f"\n== Batched: blocks of {b['batches_per_block']} Batch txs x {b['ops_per_batch']} RegisterDevice "
                  f"operations (up to {b['batch_tx_bytes_max']} B each), same reps ({args.clock} time) ==")
            print(f"{'what':46} {'us':>9} {'ratio':>8}  unit of the ratio")
            print(f"{'FinalizeBlock per operation':46} {b['finalize_us_per_op']:>9.2f}")
            print(f"{'Commit per operation':46} {b['commit_us_per_op']:>9.2f}")
            print(f"{'FinalizeBlock + Commit per operation':46} {b['finalize_commit_us_per_op']:>9.2f} "
                  f"{b['per_op_vs_libsodium_floor_per_signature']:>7.2f}x  per OPERATION / libsodium verify per "
                  f"SIGNATURE of a single tx ({floor:.2f} us)")
            print(f"{'libsodium verify of one Batch tx (floor)':46} {b['libsodium_floor_us_per_batch_signature']:>9.2f}")
            print(f"{'FinalizeBlock + Commit per signed Batch tx':46} {b['finalize_commit_us_per_signed_tx']:>9.2f} "
                  f"{b['per_signed_tx_vs_libsodium_floor_same_tx']:>7.2f}x  per SIGNED TX / libsodium verify of "
                  f"that tx's one signature")
            print(f"{'CheckTx per signed Batch tx':46} {b['checktx_us_per_signed_tx']:>9.2f}")
            print(f"Commit: {b['commit_ms_per_block']} ms per block of {b['batches_per_block'] * b['ops_per_batch']} operations")
        scale = []
        for n in [int(s) for s in args.sizes.split(",") if s.strip()]:
            t0 = time.perf_counter()
            app = bulk_load(tmp, n)
            load_s = time.perf_counter() - t0
            r = bench_queries(app, n)
            r["load_s"] = round(load_s, 1)
            app.close()
            scale.append(r)
        if scale:
            print(f"\n== Registry queries through ABCI Query (3000 random each; cell pages of {PAGE} devices) ==")
            print(f"{'devices':>9} {'lookup p50':>11} {'lookup p99':>11} {'cell page p50':>14} {'cell page p99':>14}  (us)")
        for r in scale:
            print(f"{r['devices']:>9} {r['lookup_p50_us']:>11} {r['lookup_p99_us']:>11} {r['by_cell_p50_us']:>14} {r['by_cell_p99_us']:>14}")
        ratios = {}
        if len(scale) >= 2:
            a, b = scale[0], scale[-1]
            import math
            ratios = {
                "size_ratio": b["devices"] / a["devices"],
                "log_ratio": round(math.log(b["devices"]) / math.log(a["devices"]), 3),
                "lookup_p50_growth": round(b["lookup_p50_us"] / a["lookup_p50_us"], 3),
                "by_cell_p50_growth": round(b["by_cell_p50_us"] / a["by_cell_p50_us"], 3),
            }
            print(f"\n{b['devices']}/{a['devices']} devices: lookup cost x{ratios['lookup_p50_growth']}, "
                  f"cell page cost x{ratios['by_cell_p50_growth']} (log n grows x{ratios['log_ratio']})")
        targets = {"finalize_commit_within_1_5x_libsodium_floor": fin["op_vs_libsodium_floor"] <= 1.5,
                   "checktx_within_1_5x_libsodium_floor": fin["checktx_vs_libsodium_floor"] <= 1.5}
        if ratios:
            targets["query_growth_logarithmic"] = max(ratios["lookup_p50_growth"], ratios["by_cell_p50_growth"]) <= ratios["log_ratio"] * 1.25
        print("targets:", ", ".join(f"{k}={'met' if v else 'MISSED'}" for k, v in targets.items()))
        print("RESULT " + json.dumps({"execution": fin, "queries": scale, "ratios": ratios, "targets": targets}))


if __name__ == "__main__":
    main()
