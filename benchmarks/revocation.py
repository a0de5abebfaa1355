"""Revocation benchmark: revoke-to-refusal time at every gateway of a 4-validator cluster.

Run: EDGISTRY_COMETBFT=/path/to/cometbft python benchmarks/revocation.py [--revocations 8] [--fast]

A real cluster (`edgistry cluster up --nodes 4`: cometbft + `edgistry node` +
`edgistry gateway` per node, on loopback) with one device paired at node2's
gateway (it never wakes: nothing here needs it). For each revocation:

1. a fresh token T derived from the device's root submits one request at every
   gateway (node2 queues it; the others forward it and keep a stub), so every
   gateway holds a request T can read;
2. probers ask each gateway, every ``--probe-ms``, for that request's result
   with T (GetResult re-checks the token: no state changes), until refused;
3. node0's gateway key signs RevokeToken(tag_hash) and sends it with
   broadcast_tx_commit (what `edgistry token revoke` does), timed from the send
   and from the moment the commit was reported;
4. each gateway's refusal time is the first refused probe.

Reported per gateway, over the revocations: min / median / max of refusal minus
commit (what the goal bounds: at most one block interval + 100 ms after
commit; negative when a gateway applied the block before the commit reply
reached the client) and of refusal minus send; the block interval is the median
gap between consecutive block times of the run. Ends with one ``RESULT {json}`` line.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

from bench_util import result_line, table
from edgistry.chain import ChainClient
from edgistry.cluster.cometbft import HOW_TO_GET, find_cometbft
from edgistry.cluster.localnet import load_localnet
from edgistry.config import load_ed25519_pem
from edgistry.firmware.caplets import api as cl
from edgistry.proto import gateway_pb2 as gw
from edgistry.proto import gateway_pb2_grpc as gw_grpc
from edgistry.proto import registry_pb2 as pb

EDGISTRY = [sys.executable, "-m", "edgistry"]


def run(*args: str, timeout: float = 180) -> str:
    out = subprocess.run([*EDGISTRY, *args], capture_output=True, text=True, timeout=timeout, check=False)
    if out.returncode != 0:
        raise SystemExit(f"edgistry {' '.join(args)} failed:\n{out.stdout}{out.stderr}")
    return out.stdout


def free_base(count: int) -> int:
    import socket

    for base in range(27000, 60000, 97):
        try:
            for p in range(base, base + count):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
    raise SystemExit("no free port range")


async def probe(stub: gw_grpc.GatewayStub, rid: str, token: bytes, every_s: float, deadline: float) -> float | None:
    """Monotonic time of the first refused GetResult (None: never refused before the deadline)."""
    req = gw.ResultRequest(request_id=rid, token=token)
    while time.monotonic() < deadline:
        t = time.monotonic()
        try:
            await stub.GetResult(req, timeout=2)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.PERMISSION_DENIED:
                return time.monotonic()
            if exc.code() != grpc.StatusCode.UNAVAILABLE:
                raise
        await asyncio.sleep(max(0.0, every_s - (time.monotonic() - t)))
    return None


async def one_revocation(chain: ChainClient, key, stubs: list, handle: str, root: cl.Token, n: int,
                         every_s: float) -> dict:
    token = cl.derive(root, [cl.Service("sensor", ["*"])], [cl.ExpiresAt(int(time.time()) + 3600 + n)])
    raw = token.to_bytes()
    rids = []
    for stub in stubs:
        res = await stub.Submit(gw.InvokeRequest(target=handle, service="sensor", method="info", token=raw), timeout=10)
        rids.append(res.request_id)
    deadline = time.monotonic() + 30
    probers = [asyncio.create_task(probe(s, rid, raw, every_s, deadline)) for s, rid in zip(stubs, rids)]
    await asyncio.sleep(0.3)  # probers running, every gateway still accepting
    sent = time.monotonic()
    done = await chain.submit(key, pb.RevokeToken(tag_hash=cl.revocation_hash(token.tag),
                                                  expires_at=int(time.time()) + 7200))
    committed = time.monotonic()
    refused = await asyncio.gather(*probers)
    if None in refused:
        raise SystemExit(f"revocation {n}: a gateway never refused: {refused}")
    return {"height": done.height, "commit_ms": (committed - sent) * 1000,
            "after_commit_ms": [(r - committed) * 1000 for r in refused],
            "after_send_ms": [(r - sent) * 1000 for r in refused]}


async def block_interval_ms(rpc: str, lo: int, hi: int) -> float:
    async with ChainClient(rpc) as chain:
        times = []
        for h in range(max(lo, 1), hi + 1):
            hdr = (await chain.call("block", height=str(h)))["block"]["header"]["time"]
            times.append(dt.datetime.fromisoformat(hdr[:26].rstrip("Z") + "+00:00").timestamp())
    gaps = [(b - a) * 1000 for a, b in zip(times, times[1:]) if b > a]
    return statistics.median(gaps) if gaps else float("nan")


async def measure(directory: Path, revocations: int, every_s: float) -> dict:
    nodes = load_localnet(directory)
    dev = directory / "device"
    run("device", "init", "--home", str(dev), "--service", "sensor", "--location", "46.52,6.57",
        "--duty-cycle", "3600")
    code_file = nodes[2].edgistry_home / "commission.code"
    for _ in range(200):
        if code_file.exists() and code_file.read_text().strip():
            break
        time.sleep(0.1)
    paired = json.loads(run("pair", "--device", str(dev), "--gateway", nodes[2].grpc_endpoint, "--code",
                            code_file.read_text().strip(), "--rpc", nodes[2].rpc_url, "--json"))
    root = cl.load((dev / "root.token").read_text())
    channels = [grpc.aio.insecure_channel(n.grpc_endpoint) for n in nodes]
    stubs = [gw_grpc.GatewayStub(c) for c in channels]
    key = load_ed25519_pem(nodes[0].edgistry_home / "keys" / "gateway.pem")
    out = []
    async with ChainClient(nodes[0].rpc_url) as chain:
        first = await chain.height()
        for attempt in range(100):  # every gateway must find the device (registry replicas follow)
            try:
                for s in stubs:
                    await s.Submit(gw.InvokeRequest(target=paired["owner_handle"], service="sensor", method="info",
                                                    token=cl.derive(root, [cl.Service("sensor", ["info"])])
                                                    .to_bytes()), timeout=5)
                break
            except grpc.aio.AioRpcError:
                await asyncio.sleep(0.2)
        for n in range(revocations):
            out.append(await one_revocation(chain, key, stubs, paired["owner_handle"], root, n, every_s))
            print(f"revocation {n + 1}/{revocations}: height {out[-1]['height']}, refused after commit (ms) "
                  + ", ".join(f"{v:.0f}" for v in out[-1]["after_commit_ms"]), file=sys.stderr)
        last = await chain.height()
    for c in channels:
        await c.close()
    interval = await block_interval_ms(nodes[0].rpc_url, first, last)
    return {"runs": out, "block_interval_ms": interval}


def summary(data: dict) -> dict:
    runs = data["runs"]
    per = {}
    for i in range(len(runs[0]["after_commit_ms"])):
        ac = [r["after_commit_ms"][i] for r in runs]
        asd = [r["after_send_ms"][i] for r in runs]
        per[f"node{i}"] = {"after_commit_ms": [round(min(ac), 1), round(statistics.median(ac), 1), round(max(ac), 1)],
                           "after_send_ms": [round(min(asd), 1), round(statistics.median(asd), 1), round(max(asd), 1)]}
    worst = max(v["after_commit_ms"][2] for v in per.values())
    goal = data["block_interval_ms"] + 100
    return {"bench": "revocation", "validators": 4, "revocations": len(runs),
            "block_interval_ms": round(data["block_interval_ms"], 1), "goal_after_commit_ms": round(goal, 1),
            "worst_after_commit_ms": round(worst, 1), "within_goal": worst <= goal,
            "commit_ms_median": round(statistics.median(r["commit_ms"] for r in runs), 1), "gateways": per}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--revocations", type=int, default=8)
    ap.add_argument("--probe-ms", type=float, default=10.0)
    ap.add_argument("--timeout-commit", default="1s", help="CometBFT consensus.timeout_commit (block interval)")
    args = ap.parse_args()
    if find_cometbft() is None:
        raise SystemExit(HOW_TO_GET)
    with tempfile.TemporaryDirectory(prefix="edgistry-revocation-") as tmp:
        directory = Path(tmp) / "net"
        run("cluster", "up", "--nodes", "4", "--dir", str(directory), "--base-port", str(free_base(40)),
            "--timeout-commit", args.timeout_commit, "--wait", "120", timeout=300)
        try:
            data = asyncio.run(measure(directory, args.revocations, args.probe_ms / 1000))
        finally:
            run("cluster", "down", "--dir", str(directory), timeout=120)
    res = summary(data)
    rows = [[g, *v["after_commit_ms"], *v["after_send_ms"]] for g, v in res["gateways"].items()]
    print(table(["gateway", "commit→refused min", "median", "max", "send→refused min", "median", "max"], rows,
                f"revoke-to-refusal over {res['revocations']} revocations (ms); block interval "
                f"{res['block_interval_ms']} ms; goal ≤ {res['goal_after_commit_ms']} ms after commit"))
    print(result_line(res))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
