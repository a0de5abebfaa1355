"""Pair and revoke to committed, before and after batching, on a 4-validator local CometBFT cluster.

Run: EDGISTRY_COMETBFT=/path/to/cometbft python benchmarks/pairing_latency.py [--samples 20] [--rounds 3]

What a gateway waits for when it pairs a device (a RegisterDevice committed) and
when `edgistry token revoke` returns (a RevokeToken committed), measured from
the call to the caller knowing the outcome:

* before -- the path the gateway used until batching: one signed tx per
  operation, ``ChainClient.submit`` (``broadcast_tx_commit``: CometBFT answers
  when the block is committed);
* after  -- ``gateway.submitter.RegistrySubmitter``: the operation waits up to
  its window (20 ms) for others, travels in a batch tx, and the caller learns
  the commit from the submitter's block follower (CometBFT's NewBlock events).
  Revocations skip the window.

Both run at the same time, interleaved probe by probe (before-pair,
after-pair, before-revoke, after-revoke, ...), over the same cluster, each
under the same background registry traffic of its own kind: ``--background``
RegisterDevice operations per second, sent as single txs by a third gateway
key for "before" (each at once, not waiting for the previous one's block; a tx
overtaken by a later nonce is dropped and counted as a background error), and
through the very submitter the "after" probes use (so its windows are busy, as
a real gateway's would be). Every probe waits for the previous one. When the
rounds end, background operations still open after ``BACKGROUND_GRACE_S`` are
cancelled and counted as errors. Ends with one ``RESULT {json}`` line.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import h3

from bench_util import BENCH_DATA_KEY, open_bench_epoch, sealed_device
from edgistry.abci_app.revocation_rule import revocation_hash
from edgistry.abci_app.txs import gateway_id_for
from edgistry.chain import ChainClient
from edgistry.cluster import ops
from edgistry.cluster.cometbft import HOW_TO_GET, find_cometbft
from edgistry.cluster.cometbft_files import ConsensusSettings
from edgistry.cluster.launcher import Launcher
from edgistry.cluster.localnet import generate_localnet
from edgistry.config import load_ed25519_pem
from edgistry.gateway.discovery import sealbox
from edgistry.gateway.discovery.catalog import ManifestCatalog
from edgistry.gateway.submitter import RegistrySubmitter
from edgistry.proto import registry_pb2 as pb

CHAIN = "edg-pair-bench"
BACKGROUND_GRACE_S = 70.0  # past the submitter's commit timeout (60 s): background ops still open then count as errors


def device(tag: str) -> pb.RegisterDevice:
    n = int.from_bytes(hashlib.sha256(tag.encode()).digest()[:2], "big")
    cell = h3.str_to_int(h3.latlng_to_cell(40 + (n % 1000) / 100, 5 + (n // 1000) / 100, 7))
    return sealed_device(pb.RegisterDevice, os.urandom(16), pb.DeviceFields(
        services=[pb.ServiceDescriptor(type="meter", methods=[pb.ServiceMethod(name="read")])],
        cell=cell, policy=pb.PrivacyPolicy(resolution=7, k=1), duty_cycle_s=60))


def revoke() -> pb.RevokeToken:
    return pb.RevokeToken(tag_hash=revocation_hash(os.urandom(32)), expires_at=int(time.time()) + 3600)


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


async def measure(url: str, keys: list, samples: int, rounds: int, background: float) -> list[dict]:
    before_key, after_key, bg_key = keys
    async with ChainClient(url) as before, ChainClient(url) as after_chain, ChainClient(url) as bg_chain:
        submitter = RegistrySubmitter(after_chain, after_key)
        # the gateway's catalog schedule: cover slot writes ride with device operations, one per gap
        gid = gateway_id_for(after_key.public_key().public_bytes_raw())
        catalog = ManifestCatalog()
        catalog.load({})  # a new chain: no slot written yet
        submitter.use_catalog(catalog, lambda slot, m: sealbox.seal_manifest(BENCH_DATA_KEY, 1, gid, slot, m))
        stop = asyncio.Event()
        bg_errors = {"before": 0, "after": 0}

        async def bg(which: str) -> None:
            """``background`` RegisterDevice ops per second, each awaited in its own task."""
            pending: set[asyncio.Task] = set()

            async def one(msg) -> None:
                try:
                    if which == "before":
                        # one signed tx per operation, sent at once as before batching:
                        # ChainClient.submit's per-key turns would serialise them to one a block
                        await bg_chain.broadcast_commit(await bg_chain.sign(bg_key, msg))
                    else:
                        await submitter.submit(msg)
                except Exception:  # counted: the probes are what is measured
                    bg_errors[which] += 1

            i = 0
            while not stop.is_set():
                task = asyncio.create_task(one(device(f"{which}{i}")))
                pending.add(task)
                task.add_done_callback(pending.discard)
                i += 1
                await asyncio.sleep(1.0 / background)
            if pending:  # the last ones settle (each is bounded by the commit timeouts); then give up
                _, late = await asyncio.wait(set(pending), timeout=BACKGROUND_GRACE_S)
                for task in late:
                    task.cancel()
                bg_errors[which] += len(late)
                await asyncio.gather(*late, return_exceptions=True)

        bgs = [asyncio.create_task(bg(w)) for w in ("before", "after")] if background > 0 else []
        await asyncio.sleep(2.0)  # background traffic settles
        out = []
        try:
            for rnd in range(rounds):
                lat: dict[str, list[float]] = {k: [] for k in
                                               ("pair_before", "pair_after", "revoke_before", "revoke_after")}
                for i in range(samples):
                    for name, call in (
                            ("pair_before", lambda: before.submit(before_key, device(f"pb{rnd}/{i}"))),
                            ("pair_after", lambda: submitter.submit(device(f"pa{rnd}/{i}"))),
                            ("revoke_before", lambda: before.submit(before_key, revoke())),
                            ("revoke_after", lambda: submitter.submit(revoke()))):
                        t0 = time.monotonic()
                        await call()
                        lat[name].append((time.monotonic() - t0) * 1000)
                row = {k: {"p50_ms": round(pct(v, 50), 1), "p99_ms": round(pct(v, 99), 1)} for k, v in lat.items()}
                row["load"] = os.getloadavg()[0]
                out.append(row)
                print(f"round {rnd + 1}: " + ", ".join(f"{k} p50 {v['p50_ms']:.0f} / p99 {v['p99_ms']:.0f} ms"
                                                      for k, v in row.items() if k != "load")
                      + f" (load {row['load']:.2f})", file=sys.stderr)
        finally:
            stop.set()
            await asyncio.gather(*bgs, return_exceptions=True)
            await submitter.close()
        print(f"background errors: {bg_errors}; submitter {submitter.stats}", file=sys.stderr)
        return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=20, help="probes of each kind per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--background", type=float, default=20.0, help="background RegisterDevice ops/s per side")
    parser.add_argument("--timeout-commit", default="500ms")
    parser.add_argument("--base-port", type=int, default=21100)
    args = parser.parse_args()
    binary = find_cometbft()
    if binary is None:
        print(HOW_TO_GET, file=sys.stderr)
        return 1
    consensus = ConsensusSettings(timeout_commit=args.timeout_commit)
    with tempfile.TemporaryDirectory(prefix="edg-pair-") as tmp:
        directory = Path(tmp)
        nodes = generate_localnet(directory, 4, CHAIN, base_port=args.base_port, consensus=consensus,
                                  log_level="error")
        launcher = Launcher(directory)
        try:
            for node in nodes:
                ops.start_node(launcher, node, binary, gateway=False)
            ops.wait_agreement(nodes, 2, 120, launcher=launcher)
            open_bench_epoch(nodes[0].rpc_url, load_ed25519_pem(nodes[0].edgistry_home / "keys" / "admin.pem"))
            keys = [load_ed25519_pem(n.edgistry_home / "keys" / "gateway.pem") for n in nodes[:3]]
            rows = asyncio.run(measure(nodes[0].rpc_url, keys, args.samples, args.rounds, args.background))
        finally:
            ops.down(directory)
    spread = {}
    for name in ("pair_before", "pair_after", "revoke_before", "revoke_after"):
        for q in ("p50_ms", "p99_ms"):
            vals = [r[name][q] for r in rows]
            spread[f"{name}_{q}"] = [min(vals), statistics.median(vals), max(vals)]
    print(f"\n4 validators, timeout_commit {args.timeout_commit}; {args.samples} probes of each kind per round, "
          f"{args.rounds} rounds; background {args.background:g} RegisterDevice/s per side")
    print(f"{'':<14} {'p50 ms min/med/max':>24} {'p99 ms min/med/max':>24}")
    for name in ("pair_before", "pair_after", "revoke_before", "revoke_after"):
        p50, p99 = spread[f"{name}_p50_ms"], spread[f"{name}_p99_ms"]
        print(f"{name:<14} {'/'.join(f'{v:.0f}' for v in p50):>24} {'/'.join(f'{v:.0f}' for v in p99):>24}")
    print("RESULT " + json.dumps({"rounds": rows, "min_median_max": spread, "samples": args.samples,
                                  "background_ops_per_s": args.background, "timeout_commit": args.timeout_commit},
                                 sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
