"""The enqueue phase of benchmarks/invoke.py, A against B: two source trees' gateways side by side.

invoke.py's ratios move with whatever else the shared machine runs; a change to the
gateway's per-request work is seen more clearly in the gateway's own CPU per message.
This starts one gateway per tree (``invoke.py --serve`` of that tree: GatewayStore with
its writer process, GatewayService, the gRPC Gateway service; the same devices, secret
and requests), and submits the same requests to each in turn (``SubmitBatch`` of 16,
4 calls in flight, as invoke.py), alternating which side goes first, for ``--reps``
repetitions after one warm-up each. Per repetition and side: messages per second, the
serve process's CPU per message, and that plus its store writer's. Every request is
fsync'd before its answer on both sides (the store is unchanged by design).

Usage: python benchmarks/enqueue.py --base /path/to/old/tree [--new /path/to/tree] [--reps 20]
(a tree is the directory holding ``edgistry/``; --new defaults to this checkout's).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import invoke as inv  # noqa: E402
from bench_util import result_line, stop_pid  # noqa: E402

HERE = Path(__file__).resolve().parents[2]  # the tree holding this checkout's edgistry/


def _cpu_s(pid: int, children: bool) -> float:
    """CPU seconds of ``pid`` (and of its child processes: the store's writer)."""
    pids = [pid]
    if children:
        pids += [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return sum(sum(inv._stat_cpu_s(f"/proc/{p}/stat")) for p in pids)


def _start(tree: Path, workdir: Path, devices_file: Path) -> tuple[subprocess.Popen, int]:
    ready = workdir / "ready.json"
    proc = subprocess.Popen([sys.executable, str(tree / "edgistry" / "benchmarks" / "invoke.py"), "--serve",
                             str(workdir), str(devices_file), str(ready)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=open(workdir / "gateway.log", "ab"),
                            text=True, start_new_session=True, env=dict(os.environ, PYTHONPATH=str(tree)))
    deadline = time.monotonic() + 60
    while not (ready.exists() and ready.read_text()):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"gateway of {tree} did not start; see {workdir / 'gateway.log'}")
        time.sleep(0.05)
    return proc, json.loads(ready.read_text())["grpc"]


async def _run(ports: list[int], pids: list[int], devs: list, reps: int, per: int, window: int, batch: int,
               out: list[dict]) -> None:
    import grpc
    from edgistry.proto import gateway_pb2 as pb
    from edgistry.proto import gateway_pb2_grpc as pbg

    chans = [grpc.aio.insecure_channel(f"127.0.0.1:{p}") for p in ports]
    stubs = [pbg.GatewayStub(c) for c in chans]
    rng = random.Random(4)
    try:
        for k in range(reps + 1):  # the first round warms both up
            order = [d for d in devs for _ in range(per)]
            rng.shuffle(order)
            reqs = [inv.submit_request(d, pb) for d in order]
            for s in (0, 1) if k % 2 == 0 else (1, 0):
                c0, a0, t0 = _cpu_s(pids[s], False), _cpu_s(pids[s], True), time.perf_counter()
                await inv.submit_all(stubs[s], pb, reqs, window, batch)
                dt = time.perf_counter() - t0
                if k:
                    n = len(reqs)
                    out[s]["msg_per_s"].append(round(n / dt))
                    out[s]["gw_cpu_us"].append(round(1e6 * (_cpu_s(pids[s], False) - c0) / n, 1))
                    out[s]["gw_writer_cpu_us"].append(round(1e6 * (_cpu_s(pids[s], True) - a0) / n, 1))
    finally:
        for c in chans:
            await c.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", required=True, type=Path, help="tree (holding edgistry/) of side A")
    ap.add_argument("--new", type=Path, default=HERE, help="tree of side B (default: this checkout's)")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--devices", type=int, default=500)
    ap.add_argument("--per-device", type=int, default=4)
    ap.add_argument("--submit-window", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    a = ap.parse_args()
    secret = os.urandom(32)
    devs = [inv.SimDevice(i) for i in range(a.devices)]
    procs: list[subprocess.Popen] = []
    workdirs: list[Path] = []
    ports = []
    out = [{"msg_per_s": [], "gw_cpu_us": [], "gw_writer_cpu_us": []} for _ in range(2)]
    load0 = os.getloadavg()[0]
    try:
        for tree in (a.base, a.new):
            workdir = Path(tempfile.mkdtemp(prefix="edgistry-enqueue-"))
            workdirs.append(workdir)
            devices_file = workdir / "devices.json"
            devices_file.write_text(json.dumps({"gateway_secret": secret.hex(), "devices": [
                {"link_id": d.link_id.hex(), "root": d.root.hex()} for d in devs]}))
            proc, port = _start(tree.resolve(), workdir, devices_file)
            procs.append(proc)
            ports.append(port)
        asyncio.run(_run(ports, [p.pid for p in procs], devs, a.reps, a.per_device, a.submit_window, a.batch, out))
    finally:
        for proc in procs:
            try:
                proc.stdin.write("quit\n")
                proc.stdin.flush()
                proc.wait(10)
            except (BrokenPipeError, OSError, subprocess.TimeoutExpired):
                stop_pid(proc)
        for workdir in workdirs:
            shutil.rmtree(workdir, ignore_errors=True)
    summary = {}
    print(f"enqueue phase, {a.devices} devices x {a.per_device}, SubmitBatch of {a.batch}, {a.reps} reps per side, "
          f"load {load0:.2f} -> {os.getloadavg()[0]:.2f}")
    for name, tree, res in (("base", a.base, out[0]), ("new", a.new, out[1])):
        row = {k: [min(v), statistics.median(v), max(v)] for k, v in res.items()}
        summary[name] = row
        print(f"{name:5s} {str(tree)[:40]:40s} " + "  ".join(f"{k} {v[0]:g}/{v[1]:g}/{v[2]:g}" for k, v in row.items()))
    print(result_line({"bench": "enqueue", "reps": a.reps, "devices": a.devices, "per_device": a.per_device,
                 "batch": a.batch, "load": [round(load0, 2), round(os.getloadavg()[0], 2)],
                 "min_median_max": summary}))


if __name__ == "__main__":
    main()
