"""Overload benchmark: one gateway offered 1x, 2x, 5x and 10x its measured capacity.

Run: python benchmarks/overload.py [--seconds 8] [--levels 1,2,5,10] [--devices 64]

Setup. A real gateway (gateway/app.py, ``create_gateway`` from a node home
with its ``[limits]`` table) runs in a child process pinned to CPU 0 with its
store's writer process; the load comes from ``ghz`` (a compiled gRPC load
generator; found in PATH or in ~/.cache/edgistry-bench/bin, else installed
there with ``go install``) pinned to CPU 1, so the clients cannot take the
gateway's core and Python is not the bottleneck of the load. The registry
the gateway follows (for revocations) is an embedded node (`edgistry up`),
also on CPU 1; devices are put straight into the gateway's store and never
wake, so every admitted Submit is a durable enqueue.

Clients (gateway-issued application tokens, one identity each; all of them
share 127.0.0.1, as clients behind one NAT, so the per-source bucket is off
here: the tests exercise it):

* 10 well-behaved clients, together offering half the capacity, each well
  within its per-client limit (0.1 x capacity a second);
* 2 abusive clients offering the rest of the level (``--async``: open loop,
  they never wait for answers and ignore retry-after).

Rates are per second of offering (each run offers for ``--seconds``; ghz then
waits for the well-behaved calls still in flight and drops the abusive ones
still queued on the client side). Latencies are measured by the client.

Phases: (1) capacity: the gateway with no rate limits, closed loop, 64 calls
in flight: admitted Submits a second; (2) one gateway with limits, the levels
interleaved over ``--rounds`` rounds of ``--seconds`` each, both load
generators at once. Per level (rates averaged over rounds, latencies pooled):
offered, answered and admitted rates, the well-behaved clients' goodput and
p50/p99, the abusive clients' admitted and refused rates, refusals by reason,
the gateway's worst event-loop lag (what a device link step or the chain
follower waits behind client calls). At the end: peak RSS of the gateway and
its writer process; acknowledged vs stored requests of the ghz runs (stored
can exceed acknowledged: calls the client dropped after the gateway took
them), and an exact check: a Python client submits 20 calls a second through
all levels, remembers each acknowledged id, and every one is looked up in the
store after the gateway stopped.

Goals (on the well-behaved clients' calls, all admitted; the abusive ones'
latencies include their own queueing on their client side, behind held
refusals, and are reported apart): admitted p99 at 10x <= 2 x at 1x;
well-behaved goodput at every level >= 90 % of 1x; memory bounded; zero
acknowledged requests lost. Ends with ``RESULT {json}``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_util import free_port, stop_pid, wait_for_port  # noqa: E402

GHZ_MODULE = "github.com/bojand/ghz/cmd/ghz"
GHZ_VERSION = "v0.93.0"  # the newest the Go module proxy serves; builds with go1.26
CACHE_BIN = Path.home() / ".cache" / "edgistry-bench" / "bin"
MANIFEST = {"duty_cycle_s": 60, "services": [{"type": "sensor", "methods": ["read"]}]}
GOOD, ABUSIVE = 10, 2
GOOD_SHARE = 0.5  # of capacity, offered by the well-behaved clients together
CLIENT_SHARE = 0.1  # per-client limit, of capacity
GATEWAY_CPU, CLIENT_CPU = "0", "1"


# ---- the gateway (child process) -------------------------------------------------------

async def serve(home: Path, devices: int, ready: Path, rpc_url: str) -> None:
    """Run the gateway of ``home`` (its chain at ``rpc_url``) with ``devices`` paired devices until stdin closes."""
    from edgistry.config import NodeConfig
    from edgistry.firmware.caplets import api as cl
    from edgistry.gateway.api.service import owner_handle
    from edgistry.gateway.app import create_gateway
    from edgistry.gateway.store.store import Device, new_id
    from edgistry.gateway.tokens import auth
    from edgistry.gc_policy import freeze_startup_objects

    cfg = NodeConfig.load(home)
    g = create_gateway(cfg, rpc_url=rpc_url, announce=lambda m: None)
    await g.start()
    handles = []
    for _ in range(devices):
        root = cl.root(cl.new_secret()).to_bytes()
        dev = Device(new_id(), auth.pseudonym_for(root), root, MANIFEST, 0, 7, 1, duty_cycle_s=60)
        await g.store.put_device(dev)
        handles.append(owner_handle(dev.pseudonym))
    freeze_startup_objects()
    ready.write_text(json.dumps({"grpc": g.ports["grpc"], "http": g.ports["http"], "pid": os.getpid(),
                                 "writer": g.store.writer.pid, "handles": handles}))
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)  # until the driver closes our stdin
    await g.stop()


class Gateway:
    """The gateway child process, pinned to GATEWAY_CPU."""

    def __init__(self, home: Path, devices: int, rpc_url: str) -> None:
        ready = home / "ready.json"
        ready.unlink(missing_ok=True)
        self.log = open(home / "gateway.log", "ab")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(HERE.parent.parent),
                                                                         os.environ.get("PYTHONPATH", "")) if p))
        self.proc = subprocess.Popen(["taskset", "-c", GATEWAY_CPU, sys.executable, __file__, "--serve", str(home),
                                      str(devices), str(ready), rpc_url], stdin=subprocess.PIPE, stdout=self.log,
                                     stderr=self.log, start_new_session=True, env=env)
        deadline = time.monotonic() + 60
        while not (ready.exists() and ready.read_text()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the gateway did not start; see {home / 'gateway.log'}")
            time.sleep(0.05)
        info = json.loads(ready.read_text())
        self.grpc, self.http, self.pid, self.handles = info["grpc"], info["http"], info["pid"], info["handles"]
        self.writer = info["writer"]

    def peak_rss_mb(self) -> dict:
        out = {}
        for name, pid in (("gateway", self.pid), ("writer", self.writer)):
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        out[name] = round(int(line.split()[1]) / 1024, 1)
            except (OSError, TypeError):
                pass
        return out

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http}/metrics", timeout=5) as resp:
            return resp.read().decode()

    def stop(self) -> None:
        try:
            self.proc.stdin.close()
            self.proc.wait(30)
        except (OSError, subprocess.TimeoutExpired):
            pass
        stop_pid(self.proc)


def metric(text: str, name: str, label: str = "") -> float:
    """The value of one sample (``name{label}``) in a Prometheus text page, 0 if absent."""
    want = f"{name}{{{label}}}" if label else name
    for line in text.splitlines():
        if line.startswith(want + " "):
            return float(line.split()[-1])
    return 0.0


class LagSampler(threading.Thread):
    """Reads the gateway's event-loop lag gauge every 0.5 s; keeps the worst."""

    def __init__(self, gw: Gateway) -> None:
        super().__init__(daemon=True)
        self.gw, self.worst, self.done = gw, 0.0, threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.5):
            try:
                self.worst = max(self.worst, metric(self.gw.metrics(), "edgistry_event_loop_lag_seconds"))
            except OSError:
                pass


# ---- the load (ghz) --------------------------------------------------------------------

def find_ghz() -> str:
    """ghz from PATH or the cache folder, else ``go install`` it into the cache folder."""
    for candidate in (shutil.which("ghz"), CACHE_BIN / "ghz"):
        if candidate and Path(candidate).exists():
            return str(candidate)
    go = shutil.which("go") or "/usr/local/go/bin/go"
    if not Path(go).exists():
        sys.exit("this benchmark needs ghz (a compiled gRPC load generator) or Go to build it")
    CACHE_BIN.mkdir(parents=True, exist_ok=True)
    print(f"installing ghz {GHZ_VERSION} into {CACHE_BIN} ...", flush=True)
    subprocess.run([go, "install", f"{GHZ_MODULE}@{GHZ_VERSION}"], check=True, timeout=900,
                   env=dict(os.environ, GOBIN=str(CACHE_BIN)))
    return str(CACHE_BIN / "ghz")


def write_protoset(path: Path) -> Path:
    """The gateway's service descriptors for ghz (no reflection needed)."""
    from google.protobuf import descriptor_pb2

    from edgistry.proto import gateway_pb2

    fds = descriptor_pb2.FileDescriptorSet()
    fd = descriptor_pb2.FileDescriptorProto()
    gateway_pb2.DESCRIPTOR.CopyToProto(fd)
    fds.file.append(fd)
    path.write_bytes(fds.SerializeToString())
    return path


class Load:
    """One ghz run: a class of clients, round robin over (token, device) pairs."""

    def __init__(self, ghz: str, protoset: Path, port: int, work: Path, name: str, tokens: list[bytes],
                 handles: list[str], prefix: str, rps: float, seconds: float, closed_loop: bool = False,
                 connections: int = 2, wait: bool = False) -> None:
        data = [{"target": handles[i % len(handles)], "method": "read", "token": base64.b64encode(tok).decode(),
                 "request_id": prefix + "{{printf `%016x` .RequestNumber}}"}
                for i, tok in enumerate(tokens * max(1, len(handles) // len(tokens)))]
        self.data = work / f"{name}.json"
        self.data.write_text(json.dumps(data))
        self.prefix, self.name = prefix, name
        args = ["taskset", "-c", CLIENT_CPU, ghz, "--insecure", "--protoset", str(protoset),
                "--call", "edgistry.gateway.v1.Gateway/Submit", "-D", str(self.data), "-z", f"{seconds}s",
                "--duration-stop", "wait" if wait else "close", "-t", "10s", "--connections", str(connections), "-O", "json"]
        if closed_loop:
            args += ["-c", "64"]
        else:
            args += ["--async", "--rps", str(max(1, int(rps))), "-c", "50"]
        self.offered, self.seconds, self.closed_loop = rps, seconds, closed_loop
        self.proc = subprocess.Popen(args + [f"127.0.0.1:{port}"], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, start_new_session=True)

    def result(self) -> dict:
        out, err = self.proc.communicate(timeout=600)
        if self.proc.returncode != 0 and not out:
            raise RuntimeError(f"ghz {self.name} failed: {err.decode()[-500:]}")
        r = json.loads(out)
        details = r.get("details") or []
        ok = [d["latency"] / 1e6 for d in details if d.get("status") == "OK"]
        codes: dict[str, int] = {}
        for d in details:
            codes[d.get("status", "?")] = codes.get(d.get("status", "?"), 0) + 1
        span = r["total"] / 1e9 if r.get("total") else 1.0
        # rates are per second of offering: calls still answering after it (ghz waits for the
        # well-behaved ones) count for the window that sent them
        return {"count": r.get("count", len(details)), "ok_latencies_ms": ok, "codes": codes,
                "seconds": self.seconds if not self.closed_loop else span, "prefix": self.prefix}


def pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


# ---- the driver -------------------------------------------------------------------------

def make_home(root: Path, limits: dict) -> tuple[Path, bytes]:
    from edgistry.cluster.home import init_home

    home = root / "node"
    cfg = init_home(home, "overload", listen={"grpc_listen": f"127.0.0.1:{free_port()}",
                                               "link_listen": f"127.0.0.1:{free_port()}",
                                               "http_listen": f"127.0.0.1:{free_port()}"})
    for key, value in limits.items():
        setattr(cfg.limits, key, value)
    cfg.extra["gateway"] = {"max_queue_depth": 10_000_000, "sweep_interval_s": 5.0, "liveness_interval_s": 600.0,
                            "revocation_interval_s": 600.0}
    cfg.save()
    return home, (home / "keys" / "gateway.secret").read_bytes()


def tokens(secret: bytes, prefix: str, n: int) -> list[bytes]:
    from edgistry.firmware.caplets import api as cl

    return [cl.mint(secret, [cl.Identity(f"{prefix}-{i}"), cl.Resource("/svc", cl.READ)]).to_bytes()
            for i in range(n)]


class Chain:
    """The registry the gateway reads (revocations: token checks fail closed without it): an
    embedded single node (`edgistry up`), pinned with the load generators to CLIENT_CPU."""

    def __init__(self, work: Path) -> None:
        from edgistry.cluster.home import init_home

        rpc = f"127.0.0.1:{free_port()}"
        cfg = init_home(work / "chain", "overload", listen={
            "rpc_listen": rpc, "grpc_listen": f"127.0.0.1:{free_port()}", "abci_listen": f"tcp://127.0.0.1:{free_port()}",
            "link_listen": f"127.0.0.1:{free_port()}", "http_listen": f"127.0.0.1:{free_port()}"})
        cfg.save()
        self.url = cfg.rpc_url
        self.log = open(work / "chain.log", "ab")
        self.proc = subprocess.Popen(["taskset", "-c", CLIENT_CPU, sys.executable, "-m", "edgistry", "up", "--home",
                                      str(cfg.home)], stdout=self.log, stderr=self.log, start_new_session=True,
                                     env=dict(os.environ, PYTHONPATH=os.pathsep.join(
                                         p for p in (str(HERE.parent.parent), os.environ.get("PYTHONPATH", "")) if p)))
        wait_for_port(int(rpc.rsplit(":", 1)[1]), timeout=60, proc=self.proc)

    def stop(self) -> None:
        stop_pid(self.proc)


def measure_capacity(ghz: str, work: Path, seconds: float, devices: int, rpc_url: str) -> float:
    home, secret = make_home(work / "capacity", {"client_rate": 0, "device_rate": 0, "source_rate": 0,
                                                 "max_in_flight": 0})
    gw = Gateway(home, devices, rpc_url)
    try:
        protoset = write_protoset(work / "gateway.protoset")
        load = Load(ghz, protoset, gw.grpc, work, "capacity", tokens(secret, "cap", GOOD + ABUSIVE), gw.handles,
                    "c" * 16, 0, seconds, closed_loop=True)
        r = load.result()
    finally:
        gw.stop()
    return len(r["ok_latencies_ms"]) / r["seconds"]


def stored(home: Path, runs: list[dict]) -> int:
    """How many of the runs' request ids are in the gateway's store (read after it stopped)."""
    import lmdb

    from edgistry.gateway.store import keys

    env = lmdb.open(str(home / "data" / "gateway"), readonly=True, lock=False, subdir=True, max_dbs=0)
    n = 0
    with env.begin() as txn:
        for run in runs:
            for i in range(run["count"]):
                rid = bytes.fromhex(run["prefix"] + f"{i:016x}")
                n += txn.get(keys.request(rid)) is not None
    env.close()
    return n


class Auditor(threading.Thread):
    """A well-behaved client of its own (Python, in this process) that remembers every request id
    the gateway acknowledged, so that each can be looked up in the store afterwards."""

    def __init__(self, port: int, token: bytes, handles: list[str], rps: float) -> None:
        super().__init__(daemon=True)
        self.port, self.token, self.handles, self.rps = port, token, handles, rps
        self.acked: list[str] = []
        self.done = threading.Event()

    def run(self) -> None:
        import grpc

        from edgistry.proto import gateway_pb2 as gw
        from edgistry.proto import gateway_pb2_grpc as gw_grpc

        with grpc.insecure_channel(f"127.0.0.1:{self.port}") as ch:
            stub = gw_grpc.GatewayStub(ch)
            n = 0
            while not self.done.wait(1 / self.rps):
                rid = os.urandom(16).hex()
                try:
                    stub.Submit(gw.InvokeRequest(target=self.handles[n % len(self.handles)], method="read",
                                                 token=self.token, request_id=rid), timeout=10)
                    self.acked.append(rid)
                except grpc.RpcError:
                    pass
                n += 1


def level_row(m: float, capacity: float, g: dict, b: dict, before: str, after: str, lag: float) -> dict:
    refusals = {r: int(metric(after, "edgistry_admission_refusals_total", f'reason="{r}"')
                       - metric(before, "edgistry_admission_refusals_total", f'reason="{r}"'))
                for r in ("source", "client", "device", "in_flight", "waiting")}
    answered = lambda r: r["codes"].get("OK", 0) + r["codes"].get("ResourceExhausted", 0)  # noqa: E731
    return {
        "level": m, "offered_rps": round(m * capacity),
        "answered_rps": round((answered(g) + answered(b)) / g["seconds"]),
        "admitted_rps": round((len(g["ok_latencies_ms"]) + len(b["ok_latencies_ms"])) / g["seconds"]),
        "good_goodput_rps": round(len(g["ok_latencies_ms"]) / g["seconds"], 1),
        "good_p50_ms": round(pct(g["ok_latencies_ms"], 0.50), 2), "good_p99_ms": round(pct(g["ok_latencies_ms"], 0.99), 2),
        "abusive_offered_rps": round(max(1.0, m * capacity - GOOD_SHARE * capacity)),
        "abusive_attempted_rps": round(b["count"] / b["seconds"]),  # what ghz started (most wait on its side)
        "abusive_admitted_rps": round(len(b["ok_latencies_ms"]) / b["seconds"], 1),
        "abusive_refused_rps": round(b["codes"].get("ResourceExhausted", 0) / b["seconds"], 1),
        "abusive_p99_ms": round(pct(b["ok_latencies_ms"], 0.99), 2),
        "good_codes": g["codes"], "refusals": refusals, "loop_lag_max_ms": round(lag * 1000, 1),
    }


def pooled(m: float, rounds: list[dict], good: list[float], bad: list[float]) -> dict:
    """One level over all its rounds: rates averaged, latency percentiles of every call pooled
    (so a slow spell of the shared machine weighs on each level alike)."""
    mean = lambda key: round(sum(r[key] for r in rounds) / len(rounds), 1)  # noqa: E731
    refusals = {k: sum(r["refusals"][k] for r in rounds) for k in rounds[0]["refusals"]}
    return {"level": m, "offered_rps": rounds[0]["offered_rps"], "answered_rps": mean("answered_rps"),
            "admitted_rps": mean("admitted_rps"), "good_goodput_rps": mean("good_goodput_rps"),
            "good_p50_ms": round(pct(good, 0.50), 1), "good_p99_ms": round(pct(good, 0.99), 1),
            "abusive_offered_rps": rounds[0]["abusive_offered_rps"],
            "abusive_attempted_rps": mean("abusive_attempted_rps"), "abusive_admitted_rps": mean("abusive_admitted_rps"),
            "abusive_refused_rps": mean("abusive_refused_rps"), "abusive_p99_ms": round(pct(bad, 0.99), 1),
            "refusals": refusals, "loop_lag_max_ms": max(r["loop_lag_max_ms"] for r in rounds),
            "good_p99_ms_by_round": [r["good_p99_ms"] for r in rounds]}


def run_levels(ghz: str, work: Path, capacity: float, levels: list[float], seconds: float, devices: int,
               rounds: int, rpc_url: str) -> dict:
    """Every level ``rounds`` times, interleaved (1x, 2x, ..., 1x, 2x, ...), so that a slow spell of
    the shared machine does not land on one level only; see :func:`pooled`."""
    client_rate = max(5.0, round(CLIENT_SHARE * capacity, 1))
    limits = {"client_rate": client_rate, "client_burst": client_rate, "source_rate": 0}
    home, secret = make_home(work / "levels", limits)
    good_tokens, bad_tokens = tokens(secret, "good", GOOD), tokens(secret, "abuser", ABUSIVE)
    protoset = work / "gateway.protoset"
    gw = Gateway(home, devices, rpc_url)
    per_level: dict[float, list[dict]] = {m: [] for m in levels}
    good_lat: dict[float, list[float]] = {m: [] for m in levels}
    bad_lat: dict[float, list[float]] = {m: [] for m in levels}
    runs, auditor = [], Auditor(gw.grpc, tokens(secret, "auditor", 1)[0], gw.handles, 20.0)
    auditor.start()
    try:
        for rnd in range(rounds):
            for n, m in enumerate(levels):
                before, sampler = gw.metrics(), LagSampler(gw)
                sampler.start()
                tag = f"{rnd:02x}{n:02x}"
                good = Load(ghz, protoset, gw.grpc, work, f"good{tag}", good_tokens, gw.handles,
                            tag + "a" * 12, GOOD_SHARE * capacity, seconds, connections=GOOD, wait=True)
                bad = Load(ghz, protoset, gw.grpc, work, f"bad{tag}", bad_tokens, gw.handles, tag + "b" * 12,
                           max(1.0, m * capacity - GOOD_SHARE * capacity), seconds, connections=ABUSIVE)
                g, b = good.result(), bad.result()
                sampler.done.set()
                sampler.join()
                runs += [g, b]
                row = level_row(m, capacity, g, b, before, gw.metrics(), sampler.worst)
                per_level[m].append(row)
                good_lat[m] += g["ok_latencies_ms"]
                bad_lat[m] += b["ok_latencies_ms"]
                print(f"round {rnd + 1} {m:>4g}x offered {row['offered_rps']:>6}/s answered {row['answered_rps']:>5}/s "
                      f"admitted {row['admitted_rps']:>5}/s good {row['good_goodput_rps']:>6}/s "
                      f"p50 {row['good_p50_ms']:>6} p99 {row['good_p99_ms']:>7} ms; abusive admitted "
                      f"{row['abusive_admitted_rps']:>5}/s refused {row['abusive_refused_rps']:>6}/s; "
                      f"lag {row['loop_lag_max_ms']} ms", flush=True)
        auditor.done.set()
        auditor.join()
        rss = gw.peak_rss_mb()
    finally:
        auditor.done.set()
        gw.stop()
    rows = [pooled(m, per_level[m], good_lat[m], bad_lat[m]) for m in levels]
    acked = sum(r["codes"].get("OK", 0) for r in runs)
    return {"rows": rows, "rss": rss, "acked": acked, "stored": stored(home, runs), "client_rate": client_rate,
            "audited": len(auditor.acked), "audited_found": stored_ids(home, auditor.acked)}


def stored_ids(home: Path, ids: list[str]) -> int:
    import lmdb

    from edgistry.gateway.store import keys

    env = lmdb.open(str(home / "data" / "gateway"), readonly=True, lock=False, subdir=True, max_dbs=0)
    with env.begin() as txn:
        n = sum(txn.get(keys.request(bytes.fromhex(rid))) is not None for rid in ids)
    env.close()
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--levels", default="1,2,5,10")
    ap.add_argument("--devices", type=int, default=64)
    ap.add_argument("--serve", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        asyncio.run(serve(Path(args.serve[0]), int(args.serve[1]), Path(args.serve[2]), args.serve[3]))
        return
    if (os.cpu_count() or 1) < 2:
        sys.exit("this benchmark pins the gateway and the load to two different CPUs")
    ghz = find_ghz()
    levels = [float(x) for x in args.levels.split(",")]
    work = Path(tempfile.mkdtemp(prefix="edgistry-overload-"))
    load_before = os.getloadavg()[0]
    chain = None
    try:
        chain = Chain(work)
        capacity = measure_capacity(ghz, work, args.seconds, args.devices, chain.url)
        print(f"capacity: {capacity:.0f} admitted Submits/s (gateway on CPU {GATEWAY_CPU}, limits off)", flush=True)
        out = run_levels(ghz, work, capacity, levels, args.seconds, args.devices, args.rounds, chain.url)
    finally:
        if chain is not None:
            chain.stop()
        shutil.rmtree(work, ignore_errors=True)
    rows, base = out["rows"], out["rows"][0]
    p99_ratio = round(rows[-1]["good_p99_ms"] / base["good_p99_ms"], 2) if base["good_p99_ms"] else None
    good_min = round(min(r["good_goodput_rps"] for r in rows) / base["good_goodput_rps"], 3)
    lost = out["audited"] - out["audited_found"]
    result = {
        "capacity_rps": round(capacity), "client_rate": out["client_rate"], "seconds": args.seconds,
        "rounds": args.rounds, "loadavg": [round(load_before, 1), round(os.getloadavg()[0], 1)],
        "levels": rows, "good_p99_ratio_top_vs_1x": p99_ratio, "good_goodput_min_vs_1x": good_min,
        "peak_rss_mb": out["rss"], "acked": out["acked"], "stored": out["stored"],
        "audited_acked": out["audited"], "audited_lost": lost,
        "goals": {"p99_top_le_2x_1x": p99_ratio is not None and p99_ratio <= 2.0,
                  "good_goodput_ge_90pct": good_min >= 0.9,
                  "zero_acked_lost": lost == 0 and out["stored"] >= out["acked"]},
    }
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
