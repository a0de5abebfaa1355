"""Instructions per registry tx beside its signature, counted by valgrind (callgrind).

Timings on a shared machine move by 5-10 % from one run to the next, more than one
change to the per-tx path is worth; an instruction count does not move: the same code,
inputs and environment give the same count whatever else the machine does. So changes
to the path are compared here, and benchmarks/registry.py gives the times.

What is counted: FinalizeBlock + Commit of 4 blocks of 500 sealed RegisterDevice txs
(as benchmarks/registry.py builds them, from 8 fixed gateway keys and a fixed seed),
every signature verified beforehand as CheckTx would have (so the count is the work
beside the verify), divided by the number of txs. It is the difference between two
runs of this file under callgrind, one that builds everything and stops, one that
also runs the blocks, so start-up, signing and set-up cancel out.

Usage: python benchmarks/registry_instructions.py   (needs valgrind on PATH)
Ends with one line ``RESULT {json}``.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BLOCKS, BLOCK_TXS = 4, 500


def build_and_maybe_run(run: bool) -> None:
    """The measured process: set up the app and the blocks; run them when ``run``."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from google.protobuf.timestamp_pb2 import Timestamp

    import registry as bench
    from edgistry.abci_app import store, txs
    from edgistry.proto import abci_pb2 as abci

    store.MAP_SIZE = 1 << 30  # valgrind cannot reserve the default address space
    rng = random.Random(1)
    gateways = [Ed25519PrivateKey.from_private_bytes(bytes([i + 1]) * 32) for i in range(8)]
    nonces = {bench.pub(g): 0 for g in gateways}
    blocks = []
    for _ in range(BLOCKS):
        block = []
        for _ in range(BLOCK_TXS):
            g = rng.choice(gateways)
            nonces[bench.pub(g)] += 1
            block.append(txs.sign_tx(g, bench.CHAIN, nonces[bench.pub(g)], bench.device(rng, rng.randbytes(16))))
        blocks.append(block)
    with tempfile.TemporaryDirectory() as tmp:
        app = bench.fresh_app(Path(tmp), "count", gateways)
        rule = app.rule_at(app.height + 1)
        for block in blocks:
            for tx in block:
                app.verified.add(tx, rule)
        requests = [abci.RequestFinalizeBlock(txs=b, height=app.height + 1 + i,
                                              time=Timestamp(seconds=1_800_000_100 + i)) for i, b in enumerate(blocks)]
        if run:
            for req in requests:
                resp = app.finalize_block(req)
                app.commit(abci.RequestCommit())
            assert app.height == 1 + BLOCKS and not any(r.code for r in resp.tx_results)  # the last block's
        app.close()


def count(run: bool) -> int:
    """Instructions of one process of this file under callgrind."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        proc = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, __file__,
             "--child", "run" if run else "build"],
            capture_output=True, text=True, timeout=1800, env={**os.environ, "PYTHONHASHSEED": "0"})
        found = re.search(r"Collected : (\d+)", proc.stderr)
        if proc.returncode != 0 or not found:
            raise SystemExit(f"valgrind run failed:\n{proc.stderr[-3000:]}")
        return int(found.group(1))


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        build_and_maybe_run(sys.argv[2] == "run")
        return
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not on PATH (Debian: apt-get install valgrind)")
    base, full = count(False), count(True)
    per_tx = (full - base) // (BLOCKS * BLOCK_TXS)
    print(f"FinalizeBlock + Commit beside the verify: {per_tx:,} instructions per tx "
          f"({BLOCKS} blocks of {BLOCK_TXS} sealed RegisterDevice txs)")
    print("RESULT " + json.dumps({"instructions_per_tx_beside_verify": per_tx, "txs": BLOCKS * BLOCK_TXS,
                                  "python": sys.version.split()[0]}))


if __name__ == "__main__":
    main()
