"""Gateway throughput and added latency for queued invokes to sleeping devices, beside mosquitto.

One run, loopback, two processes besides mosquitto:

* **the gateway** (this file with ``--serve``, its own process): the real parts as
  gateway/app.py wires them, minus the chain: GatewayStore (LMDB, fsync per commit,
  group commits in its writer process, gateway/store/child.py, as the gateway runs it) +
  GatewayService (authorise the client token, derive the request token, durable
  enqueue) + StoreLinkBackend + LinkServer, and the gRPC Gateway service
  (grpc_api.start_grpc). Devices are paired by writing their records to the store.
* **the driver** (this process): gRPC clients (end to end, one channel) calling
  ``Gateway.SubmitBatch`` with ``--batch`` requests per call and ``window / batch``
  calls in flight, i.e. the same number of unacknowledged requests as mosquitto's
  unacknowledged PUBLISHes (``--batch 1``: unary ``Gateway.Submit`` calls, a window of
  them), and the simulated devices, on the link ``--link`` names:

  - ``tcp`` (default): real DeviceSession over asyncio TCP, one wake = handshake
    (resumed with the ticket of the previous wake; every device made one
    full-handshake wake when "paired", not measured), take the queued requests,
    ACK + answer them (ACK and RESPONSES in one write, as the firmware sends a
    flight: firmware/device/dev_core.py), wait for the gateway's ACK, BYE;
  - ``udp``: the datagram link's device core (link_dgram.DgramDevice, as the
    firmware's dev_dgram.py drives it), each device from its own loopback address:
    a wake on the saved context (one full wake with X25519 when "paired", not
    measured), the requests answered in the DATA that acknowledges their reply,
    whose reply says they are stored; no TCP connection, handshake or BYE.

  The devices do not verify request tokens (device CPU, not gateway work).
* **mosquitto** (Debian package, plain TCP on loopback, password file, persistence on,
  QoS 1): the same number of clients with persistent sessions (clean_session=0, QoS 1
  subscription to their own topic), offline while the messages are published (QoS 1,
  the same window of unacknowledged PUBLISHes), then connecting (CONNECT/CONNACK, the
  queued PUBLISHes, one PUBACK each, DISCONNECT) with the same wake concurrency.
* **RabbitMQ** (Debian package, its own node started by this run, benchmarks/rabbit_peer.py):
  a durable classic queue per device, persistent messages, publisher confirms (a
  confirm means on disk) with the same window of unconfirmed messages; each device
  wakes (AMQP connection + channel), consumes its queue with manual acks, closes. The
  durable peer: the gateway's acknowledgement is fsync'd, mosquitto's is not.

Throughput runs in ``--rounds`` rounds (3), gateway, mosquitto and RabbitMQ in turn,
so each round's ratios compare runs seconds apart on a shared, noisy machine; the
round with the median gateway/mosquitto ratio is the one reported in detail, and
the min/median/max of each ratio over the rounds is printed (every round is too).

Phases (throughput): **enqueue** (all devices asleep; M = devices x per-device
messages submitted / published), then **drain** (every device wakes once, in random
order, ``--wake-concurrency`` at a time, until every message is delivered). Rate =
M / (enqueue time + drain time); each phase's rate is shown too. The gateway side
does more per message than mosquitto: the device also answers and the gateway stores
the response durably, and every gateway acknowledgement is fsync'd (mosquitto's
persistence is a periodic snapshot: its PUBACK does not mean "on disk").

Latency (open loop at 50 % of the gateway's measured peak rate, Poisson arrivals,
requests to random devices, device wakes Poisson at rate / per-device messages; the
waking devices run in a process of their own, ``--waker``, so the client's loop is
not slowed by their crypto), two definitions of "added latency", both measured:

* **submit -> durable ack**: the Submit RPC as the client sees it (gRPC on loopback
  included), and inside the gateway ``GatewayService.submit`` (authorise, derive the
  request token, LMDB commit with fsync);
* **session established -> REQUESTS written**: inside the gateway, from the read of
  the device's flight that establishes the session (RESUME; HELLO for a full
  handshake with 0.5-RTT data) to the REQUESTS with work written to the socket
  (verify, the durable ticket rotation - group commit by the store's writer process -,
  revocations, read the queue, encode + MAC, write: the link server's probe).

Usage: python benchmarks/invoke.py [--devices 500] [--per-device 4] [--latency-s 20]
       [--submit-window 64] [--wake-concurrency 32] [--link tcp|udp] [--no-rabbitmq]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import mqtt_min as mq  # noqa: E402
from bench_util import Mosquitto, pct, result_line, stop_pid, table  # noqa: E402
import rabbit_peer  # noqa: E402

from edgistry.gc_policy import freeze_startup_objects

MANIFEST = {"duty_cycle_s": 60, "services": [
    {"type": "sensor", "methods": [{"name": "read", "cache_max_age_s": 0, "mutating": False}]}]}
ARGS = b'{"unit":"C"}'


# =====================================================================================
# the gateway process
# =====================================================================================

def _cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _stat_cpu_s(path: str) -> tuple[float, float]:
    """(user, system) CPU seconds of a /proc/.../stat file (Linux; OSError elsewhere)."""
    fields = Path(path).read_text().rpartition(")")[2].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def _proc_cpu_ms(pid: int | None) -> int:
    """CPU ms used so far by process ``pid`` (0 when unknown)."""
    if pid is None:
        return 0
    try:
        return int(sum(_stat_cpu_s(f"/proc/{pid}/stat")) * 1000)
    except OSError:
        return 0


def _thread_cpu() -> dict[str, float]:
    """CPU seconds per thread of this process, by Python thread name (others: the
    grpc core's and the like, by OS name). Linux /proc; empty elsewhere."""
    import threading
    names = {t.native_id: t.name for t in threading.enumerate()}
    out: dict[str, float] = defaultdict(float)
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return {}
    for tid in tids:
        try:
            comm = names.get(int(tid)) or Path(f"/proc/self/task/{tid}/comm").read_text().strip()
            user, system = _stat_cpu_s(f"/proc/self/task/{tid}/stat")
        except OSError:
            continue
        out[comm + " user"] += user
        out[comm + " sys"] += system
    return dict(out)


class Timers:
    def __init__(self) -> None:
        self.total = defaultdict(float)
        self.count = defaultdict(int)
        self.samples: dict[str, list[float]] = defaultdict(list)
        self.keep = False

    def span(self, name: str, d: float, sample: bool = False) -> None:
        """The gateway's probe interface (gateway/probe.py)."""
        self.add(name, d, sample)

    def add(self, name: str, d: float, sample: bool) -> None:
        self.total[name] += d
        self.count[name] += 1
        if sample and self.keep:
            self.samples[name].append(d)

    def reset(self, keep: bool) -> None:
        self.total.clear()
        self.count.clear()
        self.samples.clear()
        self.keep = keep
        self.base = self.counters() if hasattr(self, "counters") else {}
        self.cpu0 = _cpu_s()
        self.threads0 = _thread_cpu()

    def dump(self) -> dict:
        now = self.counters() if hasattr(self, "counters") else {}
        return {"total": dict(self.total), "count": dict(self.count), "samples": dict(self.samples),
                "cpu_s": _cpu_s() - getattr(self, "cpu0", 0.0),
                "thread_cpu_s": {k: round(v - getattr(self, "threads0", {}).get(k, 0.0), 3)
                                 for k, v in _thread_cpu().items()},
                "counters": {k: v - getattr(self, "base", {}).get(k, 0) for k, v in now.items()}}


_PROF: list = []


def _profile(arg: str) -> None:
    """BENCH_PROFILE=DIR: cProfile the event loop thread, one file per phase (main-N.prof)."""
    out = os.environ.get("BENCH_PROFILE")
    if not out:
        return
    import cProfile
    if _PROF:
        prof = _PROF.pop()
        prof.disable()
        prof.dump_stats(f"{out}/main-{len(list(Path(out).glob('main-*.prof')))}.prof")
    prof = cProfile.Profile()
    prof.enable()
    _PROF.append(prof)


async def serve(workdir: Path, devices_file: Path, ready_file: Path) -> None:
    from edgistry.gateway.tokens import auth
    from edgistry.gateway.link.backend import TimedBackend
    from edgistry.gateway.link.store_backend import StoreLinkBackend
    from edgistry.gateway.api.grpc_server import start_grpc
    from edgistry.gateway.link.server import LinkMetrics, LinkServer
    from edgistry.gateway.link.dgram_server import DgramMetrics, DgramServer
    from edgistry.gateway.metrics import GatewayMetrics
    from edgistry.gateway.api.service import GatewayService, Settings
    from edgistry.gateway.store.store import Device, GatewayStore

    tm = Timers()
    secret = bytes.fromhex(json.loads(devices_file.read_text())["gateway_secret"])
    store = GatewayStore(workdir / "gateway-store")  # as gateway/app.py runs it
    pairs = []
    for d in json.loads(devices_file.read_text())["devices"]:
        root = bytes.fromhex(d["root"])
        pairs.append(store.put_device(Device(bytes.fromhex(d["link_id"]), auth.pseudonym_for(root), root, MANIFEST,
                                             0, 7, 1, duty_cycle_s=60)))
    await asyncio.gather(*pairs)  # one group commit
    metrics = GatewayMetrics()
    svc = GatewayService(store, "gw-bench", secret, metrics, settings=Settings(max_queue_depth=1000))
    # instrumentation through the gateway's probes (gateway/probe.py); behaviour unchanged.
    # Reads and hints run on the event loop; durable writes are awaited (group commit by
    # the store's writer process)
    svc.probe = tm
    backend = TimedBackend(StoreLinkBackend(store, secret, metrics), tm)
    tm.counters = lambda: {"store_group_commits": store.writer.commits, "store_group_writes": store.writer.writes,
                           "writer_process_cpu_ms": _proc_cpu_ms(getattr(store.writer, "pid", None))}
    link = LinkServer(backend, "127.0.0.1", 0, metrics=LinkMetrics(), probe=tm)
    await link.start()
    dgram = DgramServer(backend, "127.0.0.1", 0, metrics=DgramMetrics())
    await dgram.start()
    svc.on_queued = link.notify
    grpc_server, grpc_port = await start_grpc("127.0.0.1:0", svc, None, None, metrics)
    freeze_startup_objects()  # as gateway/app.py's serve() does once started
    ready_file.write_text(json.dumps({"grpc": grpc_port, "link": link.port, "dgram": dgram.port,
                                      "pid": os.getpid()}))
    loop = asyncio.get_running_loop()
    try:
        while True:
            line = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
            if not line or line == "quit":
                break
            cmd, _, arg = line.partition(" ")
            if cmd == "reset":
                tm.reset(keep=arg == "keep")
                _profile(arg)
            elif cmd == "dump":
                Path(arg).write_text(json.dumps(tm.dump()))
            print("ok", flush=True)
    finally:
        await grpc_server.stop(1)
        await link.close()
        await dgram.close()
        store.close()


# =====================================================================================
# the driver
# =====================================================================================

class Gw:
    """The gateway subprocess and its control pipe."""

    def __init__(self, workdir: Path, devices_file: Path, link: str = "tcp") -> None:
        ready = workdir / "ready.json"
        self.log = open(workdir / "gateway.log", "ab")
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--serve", str(workdir),
                                      str(devices_file), str(ready)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.log, text=True, start_new_session=True)
        deadline = time.monotonic() + 60
        while not (ready.exists() and ready.read_text()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"gateway did not start; see {workdir / 'gateway.log'}")
            time.sleep(0.05)
        info = json.loads(ready.read_text())
        self.grpc = info["grpc"]
        self.link = info["dgram"] if link == "udp" else info["link"]  # the port devices wake on
        self.dir = workdir

    def cmd(self, line: str) -> None:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "ok"

    def stats(self) -> dict:
        path = self.dir / "stats.json"
        self.cmd(f"dump {path}")
        return json.loads(path.read_text())

    def stop(self) -> None:
        try:
            if self.proc.poll() is None:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
                self.proc.wait(10)
        except (BrokenPipeError, subprocess.TimeoutExpired, OSError):
            pass
        stop_pid(self.proc)


class SimDevice:
    def __init__(self, i: int) -> None:
        from edgistry.firmware.caplets import api as cl
        from edgistry.gateway.tokens import auth

        self.i = i
        self.secret = cl.new_secret()
        self.root = cl.root(self.secret).to_bytes()
        self.link_id = os.urandom(16)
        self.pseudonym = auth.pseudonym_for(self.root)
        self.app_token = auth.app_token(self.root, {"sensor": ["read"]}).to_bytes()
        self.ticket = None
        self.identity = b""
        self.received = 0
        self.resent = 0  # datagrams sent again for want of a reply (the datagram link)
        self.link = "tcp"
        self.dgram: dict = {"ctr": 0}  # the datagram link's saved state (link_dgram.DgramDevice.state)

    def to_json(self) -> dict:
        return {"i": self.i, "secret": self.secret.hex(), "root": self.root.hex(), "link_id": self.link_id.hex(),
                "identity": self.identity.hex(),
                "ticket": [self.ticket[0].hex(), self.ticket[1].hex()] if self.ticket else None,
                "link": self.link, "dgram": _hexed(self.dgram)}

    @classmethod
    def from_json(cls, d: dict) -> SimDevice:
        dev = cls.__new__(cls)
        dev.i, dev.received, dev.resent = d["i"], 0, 0
        dev.secret, dev.root = bytes.fromhex(d["secret"]), bytes.fromhex(d["root"])
        dev.link_id, dev.identity = bytes.fromhex(d["link_id"]), bytes.fromhex(d["identity"])
        dev.ticket = (bytes.fromhex(d["ticket"][0]), bytes.fromhex(d["ticket"][1])) if d["ticket"] else None
        dev.link, dev.dgram = d["link"], _unhexed(d["dgram"])
        return dev


def _hexed(state: dict) -> dict:
    return {k: ["b", v.hex()] if isinstance(v, bytes) else v for k, v in state.items()}


def _unhexed(state: dict) -> dict:
    return {k: bytes.fromhex(v[1]) if isinstance(v, list) else v for k, v in state.items()}


async def wake(dev: SimDevice, port: int, x25519_provider, deliveries: list | None = None) -> int:
    """One wake over the device's link (TCP or datagram); returns how many requests were delivered."""
    if dev.link == "udp":
        return await wake_udp(dev, port, x25519_provider, deliveries)
    return await wake_tcp(dev, port, x25519_provider, deliveries)


class _Datagrams(asyncio.DatagramProtocol):
    """A device's UDP socket: datagrams (and ICMP errors) into a queue."""

    def __init__(self) -> None:
        self.q: asyncio.Queue = asyncio.Queue()

    def datagram_received(self, data, addr) -> None:
        self.q.put_nowait(data)

    def error_received(self, exc) -> None:
        self.q.put_nowait(exc)


def _udp_source(i: int) -> str:
    """Device ``i``'s own loopback address (127.0.0.0/8 is all loopback on Linux): the
    gateway's per-source rate limit sees each device as the address it is."""
    return f"127.{2 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}"


async def wake_udp(dev: SimDevice, port: int, x25519_provider, deliveries: list | None = None) -> int:
    """One wake over the datagram link (link_dgram.DgramDevice, the firmware's core):
    a saved-context wake (an empty DATA) or a full one the first time; the requests of
    each reply are answered in the DATA that acknowledges it; a last bare DATA
    acknowledges the final reply only when it carried something (revocations, twin
    changes), as the firmware (firmware/device/dev_dgram.py) does. A datagram without a
    reply (the gateway's per-source rate limit drops it, or it is lost) is sent again
    as a new one after the firmware's timeouts (1, 2, 4, 8 s); each one is counted in
    ``dev.resent``; no reply after those fails the wake."""
    from edgistry.firmware.device.dev_dgram import DGRAM_RETRIES, REPLY_TIMEOUT_MS
    from edgistry.firmware.link.link_dgram import DgramDevice, DgramError
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(
        _Datagrams, local_addr=(_udp_source(dev.i), 0), remote_addr=("127.0.0.1", port))
    d = DgramDevice(dev.root, dev.link_id, dev.dgram, os.urandom, x25519_provider)

    async def exchange(make) -> dict:
        """Send ``make()`` and return the reply; again (a new datagram) on a timeout."""
        wait = REPLY_TIMEOUT_MS / 1000
        for attempt in range(DGRAM_RETRIES + 1):
            if attempt:
                dev.resent += 1
            transport.sendto(make())
            deadline = loop.time() + wait
            while True:
                try:
                    got = await asyncio.wait_for(proto.q.get(), max(0.0, deadline - loop.time()))
                except asyncio.TimeoutError:
                    break
                if isinstance(got, Exception):
                    raise got
                try:
                    msg = d.receive(got)
                except DgramError:
                    continue  # not a reply to what we sent (stale): keep waiting
                if msg is None:  # a RESYNC: wake again above the gateway's counter
                    transport.sendto(d.wake(True))
                    continue
                return msg
            wait *= 2
        raise RuntimeError(f"no reply over udp after {DGRAM_RETRIES + 1} tries")
    got = 0
    try:
        msg = await exchange(lambda: d.wake(not d.has_context()))
        while True:
            items = msg["items"]
            if items:
                got += len(items)
                if deliveries is not None:
                    now = time.perf_counter()
                    deliveries.extend((i["request_id"], now) for i in items)
                answers = {"items": [{"request_id": i["request_id"], "status": 0, "payload": b'{"t":21.5}'}
                                     for i in items]}
                msg = await exchange(lambda: d.ack(answers))
            elif not msg["more"]:
                if msg["revoked"] or msg["twin"]:  # acknowledged, as the firmware does; else silence
                    transport.sendto(d.ack(None))
                break
            else:
                msg = await exchange(lambda: d.ack(None))
    finally:
        transport.close()
    dev.received += got
    return got


async def wake_tcp(dev: SimDevice, port: int, x25519_provider, deliveries: list | None = None) -> int:
    """One wake over the TCP link; returns how many requests were delivered."""
    from edgistry.firmware.link.link_session import (
        CLOSED, NEED_DATA, Ack, Bye, Established, Requests, Responses,
    )
    from edgistry.firmware.link.link_device import DeviceSession

    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    s = DeviceSession(dev.secret, dev.root, dev.link_id, dev.identity, os.urandom, ticket=dev.ticket,
                      x25519=x25519_provider)
    writer.write(s.initiate())
    got = 0
    waiting: set[bytes] = set()
    done = False
    try:
        while not done:
            data = await asyncio.wait_for(reader.read(65536), 30)
            if not data:
                raise RuntimeError("gateway closed the link")
            s.receive_data(data)
            while not done:
                ev = s.next_event()
                out = s.data_to_send()
                if out:
                    writer.write(out)
                if ev is NEED_DATA:
                    break
                if ev is CLOSED:
                    raise RuntimeError("session closed by the gateway")
                if isinstance(ev, Established):
                    dev.ticket = (ev.ticket_id, ev.ticket_secret)
                elif isinstance(ev, Requests):
                    if ev.items:
                        ids = [i["request_id"] for i in ev.items]
                        got += len(ids)
                        if deliveries is not None:
                            now = time.perf_counter()
                            deliveries.extend((i["request_id"], now) for i in ev.items)
                        # one write, as the firmware sends a flight (firmware/device/dev_core.py)
                        writer.write(s.send(Ack(ids)) + s.send(Responses(
                            [{"request_id": r, "status": 0, "payload": b'{"t":21.5}'} for r in ids])))
                        waiting.update(ids)
                    elif not ev.more and not waiting:
                        writer.write(s.send(Bye(60)))
                        done = True
                elif isinstance(ev, Ack):
                    waiting -= set(ev.ids)
                    if not waiting:
                        writer.write(s.send(Bye(60)))
                        done = True
        await writer.drain()
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except (ConnectionError, OSError):
            pass
    dev.received += got
    return got


class InFlight:
    """Tasks under way, and only those: a finished task is dropped at once, so a
    long run does not pile up tasks for the garbage collector to scan."""

    def __init__(self) -> None:
        self.tasks: set[asyncio.Task] = set()

    def start(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def wait(self) -> None:
        """Until every task (including those started meanwhile) is done."""
        while self.tasks:
            await asyncio.gather(*list(self.tasks))


async def gather_limited(n: int, factories) -> list:
    """Run the awaitables made by ``factories`` (zero-argument callables), ``n`` at a time."""
    sem = asyncio.Semaphore(n)

    async def one(f):
        async with sem:
            return await f()
    return await asyncio.gather(*(one(f) for f in factories))


def submit_request(dev: SimDevice, pb):
    from edgistry.gateway.api.service import owner_handle
    return pb.InvokeRequest(target=owner_handle(dev.pseudonym), service="sensor", method="read", args=ARGS,
                            token=dev.app_token, ttl_s=3600)


async def submit_all(stub, pb, reqs: list, window: int, batch: int) -> list:
    """Submit every request with at most ``window`` unacknowledged: unary Submit
    calls (batch 1), or SubmitBatch calls of ``batch`` requests, window // batch
    of them in flight (the same number of unacknowledged requests)."""
    if batch <= 1:
        return await gather_limited(window, [lambda r=r: stub.Submit(r) for r in reqs])

    async def one(chunk):
        reply = await stub.SubmitBatch(pb.SubmitBatchRequest(requests=chunk))
        bad = [it.error for it in reply.items if it.code]
        assert not bad, f"batch items refused: {bad[:3]}"
        return [it.result for it in reply.items]
    chunks = [reqs[i:i + batch] for i in range(0, len(reqs), batch)]
    done = await gather_limited(max(1, window // batch), [lambda c=c: one(c) for c in chunks])
    return [r for rs in done for r in rs]


async def gateway_throughput(gw: Gw, devs: list[SimDevice], per: int, window: int, wake_conc: int,
                             xp, rng: random.Random, batch: int = 1, pair: bool = True) -> dict:
    import grpc
    from edgistry.proto import gateway_pb2 as pb
    from edgistry.proto import gateway_pb2_grpc as pbg

    async with grpc.aio.insecure_channel(f"127.0.0.1:{gw.grpc}") as ch:
        stub = pbg.GatewayStub(ch)
        if pair:  # pairing wake (full handshake, nothing queued; gets the ticket) - not measured
            await gather_limited(wake_conc, [lambda d=d: wake(d, gw.link, xp) for d in devs])
        order = [d for d in devs for _ in range(per)]
        rng.shuffle(order)
        reqs = [submit_request(d, pb) for d in order]
        gw.cmd("reset")
        t0, c0 = time.perf_counter(), _cpu_s()
        results = await submit_all(stub, pb, reqs, window, batch)
        t_submit, c_submit = time.perf_counter() - t0, _cpu_s() - c0
        assert all(r.state == 1 for r in results), "a Submit was not queued"
        s_submit = gw.stats()
        gw.cmd("reset")
        wake_order = devs[:]
        rng.shuffle(wake_order)
        resent0 = sum(d.resent for d in devs)
        t0, c0 = time.perf_counter(), _cpu_s()
        got = await gather_limited(wake_conc, [lambda d=d: wake(d, gw.link, xp) for d in wake_order])
        t_drain, c_drain = time.perf_counter() - t0, _cpu_s() - c0
        s_drain = gw.stats()
    m = len(reqs)
    assert sum(got) == m, f"delivered {sum(got)} of {m}"
    return {"messages": m, "t_enqueue": t_submit, "t_drain": t_drain, "enqueue_rate": m / t_submit,
            "drain_rate": m / t_drain, "rate": m / (t_submit + t_drain), "wakes": len(devs),
            "stats_enqueue": s_submit, "stats_drain": s_drain, "driver_cpu_enqueue": c_submit,
            "driver_cpu_drain": c_drain, "resent": sum(d.resent for d in devs) - resent0}


class Coalescer:
    """The client of the latency phase with --batch > 1: every arrival is sent at
    once when fewer than ``calls`` SubmitBatch calls are in flight, otherwise it
    joins the next call (up to ``batch`` items). No waiting for a batch to fill:
    at low rates every call carries one request. Latency counts from arrival."""

    def __init__(self, stub, pb, calls: int, batch: int, done) -> None:
        self.stub, self.pb, self.calls, self.batch, self.done = stub, pb, calls, batch, done
        self.pending: list[tuple[float, object]] = []
        self.flying = 0
        self.calls_under_way = InFlight()

    def add(self, arrived: float, request) -> None:
        self.pending.append((arrived, request))
        self._pump()

    def _pump(self) -> None:
        while self.pending and self.flying < self.calls:
            chunk, self.pending = self.pending[:self.batch], self.pending[self.batch:]
            self.flying += 1
            self.calls_under_way.start(self._send(chunk))

    async def _send(self, chunk) -> None:
        try:
            reply = await self.stub.SubmitBatch(self.pb.SubmitBatchRequest(requests=[r for _, r in chunk]))
            t = time.perf_counter()
            for (arrived, _), item in zip(chunk, reply.items):
                self.done(t - arrived, bool(item.code))
        except Exception:  # noqa: BLE001 - counted as errors, the run goes on
            for _ in chunk:
                self.done(None, True)
        finally:
            self.flying -= 1
            self._pump()

    async def drain(self) -> None:
        await self.calls_under_way.wait()


async def gateway_latency(gw: Gw, devs: list[SimDevice], rate: float, per: int, seconds: float, xp,
                          rng: random.Random, window: int = 64, batch: int = 1) -> dict:
    import grpc
    from edgistry.proto import gateway_pb2 as pb
    from edgistry.proto import gateway_pb2_grpc as pbg

    rpc_lat: list[float] = []
    lag: list[float] = []
    errors = 0
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gw.grpc}") as ch:
        stub = pbg.GatewayStub(ch)
        await stub.Submit(submit_request(devs[0], pb))  # warm the channel
        await wake(devs[0], gw.link, xp)
        gw.cmd("reset keep")
        loop = asyncio.get_running_loop()
        flying = InFlight()  # unary submits
        requests = {dev.i: submit_request(dev, pb) for dev in devs}  # built once: the client stays light

        def finished(latency: float | None, failed: bool) -> None:
            nonlocal errors
            if failed:
                errors += 1
            elif latency is not None:
                rpc_lat.append(latency)
        coalescer = Coalescer(stub, pb, max(1, window // batch), batch, finished) if batch > 1 else None

        async def one_submit(request, t):
            nonlocal errors
            try:
                await stub.Submit(request)
                rpc_lat.append(time.perf_counter() - t)
            except grpc.aio.AioRpcError:
                errors += 1

        def arrive(dev, due):
            t = time.perf_counter()
            lag.append(t - due)
            if coalescer is not None:
                coalescer.add(t, requests[dev.i])
                return
            flying.start(one_submit(requests[dev.i], t))

        # two Poisson processes: submits at `rate` (here), wakes at rate / per (in a
        # process of their own, as devices are not the client: the client's loop
        # is not slowed by the devices' crypto, nor theirs by its gRPC)
        events = []
        for kind, lam in (("submit", rate), ("wake", rate / per)):
            t = 0.0
            while True:
                t += rng.expovariate(lam)
                if t >= seconds:
                    break
                events.append((t, kind, rng.choice(devs)))
        events.sort(key=lambda e: e[0])
        wakes = [(t, dev.i) for t, kind, dev in events if kind == "wake"]
        start_wall = time.time() + 1.0  # both processes schedule from this instant
        waker = start_waker(gw, devs, wakes, start_wall)
        freeze_startup_objects()  # the client's setup (devices, the schedule) is not scanned again
        try:
            await asyncio.sleep(max(0.0, start_wall - time.time()))
            start = time.perf_counter()
            for t, kind, dev in events:
                if kind != "submit":
                    continue
                delay = start + t - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                arrive(dev, start + t)
            await flying.wait()
            if coalescer is not None:
                await coalescer.drain()
            waker_out = await loop.run_in_executor(None, finish_waker, waker, seconds + 120)
        finally:
            if waker.poll() is None:
                stop_pid(waker)
        stats = gw.stats()
        for d in devs:  # the waker's last tickets, then drain what is left so the run ends clean (not measured)
            last = waker_out["tickets"][str(d.i)]
            d.dgram = _unhexed(waker_out["dgram"][str(d.i)])
            if last:
                d.ticket = (bytes.fromhex(last[0]), bytes.fromhex(last[1]))
        await gather_limited(32, [lambda d=d: wake(d, gw.link, xp) for d in devs])
    n_sub = sum(1 for e in events if e[1] == "submit")
    return {"rate": rate, "seconds": seconds, "submits": n_sub, "wakes": len(wakes),
            "rpc": rpc_lat, "lag": lag, "errors": errors + waker_out["errors"], "stats": stats,
            "resent": waker_out["resent"]}


def start_waker(gw: Gw, devs: list[SimDevice], wakes: list[tuple[float, int]], start_wall: float):
    """The latency phase's devices: this file with --waker, fed the devices and the wake schedule."""
    path = gw.dir / "wakes.json"
    path.write_text(json.dumps({"port": gw.link, "start": start_wall, "wakes": wakes,
                                "devices": [d.to_json() for d in devs]}))
    return subprocess.Popen([sys.executable, os.path.abspath(__file__), "--waker", str(path)],
                            stdout=subprocess.PIPE, text=True, start_new_session=True)


def finish_waker(proc, timeout: float) -> dict:
    out, _ = proc.communicate(timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"the waker failed (exit {proc.returncode})")
    return json.loads(out.strip().splitlines()[-1])


async def run_waker(path: Path, no_x25519: bool) -> None:
    """--waker: the devices of the latency phase, waking on their schedule; prints
    one JSON line (errors, the devices' last tickets)."""
    from edgistry.firmware.link.x25519 import x25519
    spec = json.loads(path.read_text())
    devs = {d["i"]: SimDevice.from_json(d) for d in spec["devices"]}
    xp = None if no_x25519 else x25519()
    awake: set[int] = set()
    errors = 0

    async def one_wake(dev):
        nonlocal errors
        if dev.i in awake:
            return  # already awake: this wake moment is skipped
        awake.add(dev.i)
        try:
            await wake(dev, spec["port"], xp)
        except (RuntimeError, OSError, asyncio.TimeoutError):
            errors += 1
        finally:
            awake.discard(dev.i)

    freeze_startup_objects()  # as the client: setup objects are not scanned again
    await asyncio.sleep(max(0.0, spec["start"] - time.time()))
    start = time.perf_counter()
    flying = InFlight()  # wakes under way
    for t, i in spec["wakes"]:
        delay = start + t - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        flying.start(one_wake(devs[i]))
    await flying.wait()
    print(json.dumps({"errors": errors, "resent": sum(d.resent for d in devs.values()), "dgram": {i: _hexed(d.dgram) for i, d in devs.items()},
                      "tickets": {i: [d.ticket[0].hex(), d.ticket[1].hex()] if d.ticket else None
                                                    for i, d in devs.items()}}), flush=True)


# ---- mosquitto ------------------------------------------------------------------------

class MqttConn:
    def __init__(self, reader, writer) -> None:
        self.r, self.w = reader, writer
        self.pr = mq.PacketReader()

    @classmethod
    async def open(cls, port: int, client_id: str, clean: bool) -> tuple[MqttConn, bool]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        c = cls(reader, writer)
        writer.write(mq.connect(client_id, clean, 60, Mosquitto.USER, Mosquitto.PASSWORD))
        t, _, body = await c.packet()
        assert t == mq.CONNACK
        present, rc = mq.connack(body)
        assert rc == 0, f"CONNACK {rc}"
        return c, present

    async def packet(self) -> tuple[int, int, bytes]:
        while True:
            p = self.pr.next()
            if p is not None:
                return p
            data = await asyncio.wait_for(self.r.read(65536), 30)
            if not data:
                raise RuntimeError("broker closed")
            self.pr.feed(data)

    async def close(self) -> None:
        self.w.write(mq.disconnect())
        try:
            await self.w.drain()
        finally:
            self.w.close()
            try:
                await self.w.wait_closed()
            except (ConnectionError, OSError):
                pass


async def mqtt_throughput(port: int, n: int, per: int, window: int, wake_conc: int, payload: bytes,
                          rng: random.Random) -> dict:
    ids = [f"dev{i:05d}{os.urandom(4).hex()}" for i in range(n)]

    async def setup(cid):
        c, _ = await MqttConn.open(port, cid, clean=False)
        c.w.write(mq.subscribe(1, [(f"d/{cid}/rq", 1)]))
        t, _, _ = await c.packet()
        assert t == mq.SUBACK
        await c.close()
    await gather_limited(wake_conc, [lambda c=c: setup(c) for c in ids])
    order = [c for c in ids for _ in range(per)]
    rng.shuffle(order)
    m = len(order)

    pub, _ = await MqttConn.open(port, "publisher" + os.urandom(4).hex(), clean=True)
    t0 = time.perf_counter()
    sent = acked = 0
    free = asyncio.Semaphore(window)
    done = asyncio.Event()

    async def acks():
        nonlocal acked
        while acked < m:
            t, _, _ = await pub.packet()
            if t == mq.PUBACK:
                acked += 1
                free.release()
        done.set()
    ack_task = asyncio.create_task(acks())
    pid = 0
    for cid in order:
        await free.acquire()
        pid = pid % 65535 + 1
        pub.w.write(mq.publish(f"d/{cid}/rq", payload, qos=1, pid=pid))
        sent += 1
        if sent % 64 == 0:
            await pub.w.drain()
    await done.wait()
    await ack_task
    t_pub = time.perf_counter() - t0
    await pub.close()

    async def mwake(cid):
        c, present = await MqttConn.open(port, cid, clean=False)
        assert present
        got = 0
        while got < per:
            t, flags, body = await c.packet()
            if t == mq.PUBLISH:
                _, p, _, _ = mq.parse_publish(flags, body)
                c.w.write(mq.puback(p))
                got += 1
        await c.close()
        return got
    wake_order = ids[:]
    rng.shuffle(wake_order)
    t0 = time.perf_counter()
    got = await gather_limited(wake_conc, [lambda c=c: mwake(c) for c in wake_order])
    t_drain = time.perf_counter() - t0
    assert sum(got) == m
    return {"messages": m, "t_enqueue": t_pub, "t_drain": t_drain, "enqueue_rate": m / t_pub,
            "drain_rate": m / t_drain, "rate": m / (t_pub + t_drain), "wakes": n}


# ---- main -------------------------------------------------------------------------------

def min_med_max(xs: list[float]) -> tuple[float, float, float]:
    s = sorted(xs)
    return s[0], statistics.median(s), s[-1]


def per_msg_breakdown(stats: dict, m: int) -> list[tuple[str, float, int]]:
    return [(k, stats["total"][k] / m * 1e6, stats["count"][k]) for k in sorted(stats["total"])]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--devices", type=int, default=500)
    ap.add_argument("--per-device", type=int, default=4, help="messages queued per device per phase")
    ap.add_argument("--submit-window", type=int, default=64, help="concurrent Submit RPCs / unacked PUBLISHes")
    ap.add_argument("--batch", type=int, default=16,
                    help="requests per SubmitBatch call in the throughput phase (1: unary Submit calls)")
    ap.add_argument("--wake-concurrency", type=int, default=32, help="devices awake at once in the drain phase")
    ap.add_argument("--latency-s", type=float, default=20.0, help="open-loop latency phase length")
    ap.add_argument("--latency-rate", type=float, default=0.0,
                    help="open-loop submits/s (default: half the measured peak); fix it to compare two trees "
                         "at the same offered load")
    ap.add_argument("--rounds", type=int, default=3,
                    help="throughput rounds, gateway and mosquitto alternating; the median round is reported")
    ap.add_argument("--no-x25519", action="store_true", help="devices without forward secrecy")
    ap.add_argument("--link", choices=("tcp", "udp"), default="tcp",
                    help="the devices' link: datagram (saved-context wakes) or TCP (resumed handshakes)")
    ap.add_argument("--no-rabbitmq", action="store_true", help="leave the RabbitMQ peer out of the rounds")
    ap.add_argument("--seed", type=int, default=4)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--serve", nargs=3, help=argparse.SUPPRESS)
    ap.add_argument("--waker", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.waker:
        asyncio.run(run_waker(Path(a.waker), a.no_x25519))
        return
    if a.serve:
        asyncio.run(serve(Path(a.serve[0]), Path(a.serve[1]), Path(a.serve[2])))
        return

    from edgistry.firmware.link.x25519 import x25519
    from edgistry.gateway.tokens.auth import identity_token

    t_start = time.monotonic()
    rng = random.Random(a.seed)
    workdir = Path(tempfile.mkdtemp(prefix="edgistry-invoke-"))
    secret = os.urandom(32)
    devs = [SimDevice(i) for i in range(a.devices)]
    for d in devs:
        d.link = a.link
    for d in devs:
        d.identity = identity_token(secret, d.link_id).to_bytes()
    devices_file = workdir / "devices.json"
    devices_file.write_text(json.dumps({"gateway_secret": secret.hex(), "devices": [
        {"link_id": d.link_id.hex(), "root": d.root.hex()} for d in devs]}))
    xp = None if a.no_x25519 else x25519()
    gw = broker = rabbit = None
    why_no_rabbit = "left out (--no-rabbitmq)" if a.no_rabbitmq else rabbit_peer.available()
    try:
        gw = Gw(workdir, devices_file, a.link)
        broker = Mosquitto(workdir / "mosquitto", tls=False).start()
        if why_no_rabbit is None:
            rabbit = rabbit_peer.RabbitMQ(workdir / "rabbitmq").start()
        from edgistry.firmware.link import link_wire as wire
        payload = wire.encode("DeviceRequest", {"request_id": os.urandom(16), "service": "sensor", "method": "read",
                                                "args": ARGS, "request_token": os.urandom(90),
                                                "expires_at_ms": int(time.time() * 1000)})
        freeze_startup_objects()  # the driver's setup (devices, keys) is not scanned again: the load generator stays light
        # interleaved rounds, side by side: each round's ratio compares runs seconds apart
        rounds = []
        for k in range(a.rounds):
            gr = asyncio.run(gateway_throughput(gw, devs, a.per_device, a.submit_window, a.wake_concurrency, xp,
                                                rng, a.batch, pair=k == 0))
            mr = asyncio.run(mqtt_throughput(broker.port, a.devices, a.per_device, a.submit_window,
                                             a.wake_concurrency, payload, rng))
            rr = None
            if rabbit is not None:
                rr = asyncio.run(rabbit_peer.rabbit_throughput(rabbit.url, a.devices, a.per_device, a.submit_window,
                                                               a.wake_concurrency, payload, rng, gather_limited,
                                                               declared=k > 0))
            rounds.append((gr, mr, rr))
        g, mqr, rbr = sorted(rounds, key=lambda r: r[0]["rate"] / r[1]["rate"])[len(rounds) // 2]  # the median round
        version = broker.version()
        broker.stop()
        if rabbit is not None:
            rabbit_version = rabbit.version()
            rabbit.stop()
        half = a.latency_rate or g["rate"] / 2
        lat = asyncio.run(gateway_latency(gw, devs, half, a.per_device, a.latency_s, xp, rng, a.submit_window,
                                          a.batch))
    finally:
        if gw is not None:
            gw.stop()
        if broker is not None:
            broker.stop()
        if rabbit is not None:
            rabbit.stop()
        if not a.keep:  # also when the run failed: nothing left in the temp dir
            shutil.rmtree(workdir, ignore_errors=True)

    ratio = g["rate"] / mqr["rate"]
    print(f"queued invokes to {a.devices} sleeping devices x {a.per_device} messages = {g['messages']} messages "
          f"per system; submit window {a.submit_window}, {a.wake_concurrency} devices awake at once; loopback; "
          f"{os.cpu_count()} CPUs")
    path = (f"gRPC SubmitBatch of {a.batch} ({max(1, a.submit_window // a.batch)} calls in flight; the latency "
            "phase sends each arrival at once, coalescing only while calls are in flight)"
            if a.batch > 1 else "unary gRPC Submit")
    print(f"client path: {path}")
    link = ("TCP link, wakes resumed with tickets" if a.link == "tcp" else
            "datagram link, wakes on the saved context")
    print("gateway: gRPC Submit end to end (authorise + request token + LMDB fsync'd enqueue), devices on the real "
          f"{link} ({'no X25519' if a.no_x25519 else 'X25519 on'} at pairing), devices ACK + answer")
    print(f"mosquitto: {version}, plain TCP, password auth, persistence on, QoS 1, clean_session=0; "
          f"payload {len(payload)} B (same size as the link's DeviceRequest)")
    if rabbit is not None:
        print(f"RabbitMQ: {rabbit_version}, plain TCP (AMQP 0-9-1, aio-pika), durable classic queue per device, "
              f"persistent messages, publisher confirms ({a.submit_window} unconfirmed at most), manual acks")
    else:
        print(f"RabbitMQ: not measured: {why_no_rabbit}")
    print()
    rows = []
    for k, (gr, mr, rr) in enumerate(rounds, 1):
        median = " (median)" if gr is g else ""
        peers = [("mosquitto", mr)] + ([("RabbitMQ", rr)] if rr is not None else [])
        for name, r in [("edgistry gateway", gr)] + peers:
            rows.append([f"round {k}{median}: {name}", r["messages"], f"{r['t_enqueue']:.2f}",
                         f"{r['enqueue_rate']:.0f}", f"{r['t_drain']:.2f}", f"{r['drain_rate']:.0f}",
                         f"{r['rate']:.0f}"])
        for name, r in peers:
            rows.append([f"round {k}{median}: ratio gateway / {name}", "", "",
                         f"{gr['enqueue_rate'] / r['enqueue_rate']:.3f}", "",
                         f"{gr['drain_rate'] / r['drain_rate']:.3f}", f"{gr['rate'] / r['rate']:.3f}"])
    print(table(["throughput", "msgs", "enqueue s", "enqueue msg/s", "drain s", "drain msg/s", "msg/s"], rows))
    print("(rounds run gateway, mosquitto, RabbitMQ in turn; the round with the median gateway/mosquitto ratio is "
          "reported below and in the final JSON line)")
    spread = {"mosquitto": min_med_max([gr["rate"] / mr["rate"] for gr, mr, _ in rounds])}
    if rabbit is not None:
        spread["rabbitmq"] = min_med_max([gr["rate"] / rr["rate"] for gr, _, rr in rounds])
        dc = [(rr["driver_cpu_enqueue"] + rr["driver_cpu_drain"]) / (rr["t_enqueue"] + rr["t_drain"])
              for _, _, rr in rounds]
        print(f"RabbitMQ driver (aio-pika clients) CPU: {min(dc) * 100:.0f}-{max(dc) * 100:.0f}% of one CPU "
              "during its phases (a busy client would make RabbitMQ look slower than it is)")
    for name, (lo, med, hi) in spread.items():
        print(f"gateway / {name} over {len(rounds)} rounds: min {lo:.3f}  median {med:.3f}  max {hi:.3f}")
    print()

    rpc = [x * 1000 for x in lat["rpc"]]
    inner = [x * 1000 for x in lat["stats"]["samples"].get("submit.total", [])]
    est = [x * 1000 for x in lat["stats"]["samples"].get("link.established_to_requests", [])]
    lagms = [x * 1000 for x in lat["lag"]]
    lrows = [
        ["submit -> durable ack, gRPC (client)", len(rpc), f"{pct(rpc, 50):.2f}", f"{pct(rpc, 99):.2f}",
         f"{max(rpc, default=0):.2f}"],
        ["submit -> durable ack, in gateway (per item)", len(inner), f"{pct(inner, 50):.2f}",
         f"{pct(inner, 99):.2f}", f"{max(inner, default=0):.2f}"],
        ["session established -> REQUESTS written (gateway)", len(est), f"{pct(est, 50):.2f}", f"{pct(est, 99):.2f}",
         f"{max(est, default=0):.2f}"],
        ["(load generator lag behind schedule)", len(lagms), f"{pct(lagms, 50):.2f}", f"{pct(lagms, 99):.2f}",
         f"{max(lagms, default=0):.2f}"],
    ]
    print(table(["added latency at 50% of peak", "n", "p50 ms", "p99 ms", "max ms"], lrows,
                title=f"open loop: {lat['rate']:.0f} submits/s (Poisson) + {lat['rate'] / a.per_device:.0f} wakes/s "
                      f"for {lat['seconds']:.0f} s; {lat['errors']} errors"
                      + (f"; {lat['resent']} datagrams resent" if a.link == "udp" else "")))
    print()
    # where the gateway's time goes (per message, µs of wall time inside the gateway process)
    brows = []
    for phase, key in (("enqueue", "stats_enqueue"), ("drain", "stats_drain")):
        st = g[key]
        for name, us, count in per_msg_breakdown(st, g["messages"]):
            if name in ("link.connection", "link.established_to_requests", "submit.total"):
                continue  # async spans overlap across connections / calls: not additive
            brows.append([phase, name + (" (awaited, off-loop; overlaps)" if ".await." in name else ""),
                          f"{us:.0f}", count])
        for name, n in st.get("counters", {}).items():
            brows.append([phase, name, f"{n / g['messages']:.3f} / message", n])
        wall = g["t_enqueue"] if phase == "enqueue" else g["t_drain"]
        brows.append([phase, "phase wall time", f"{wall / g['messages'] * 1e6:.0f}", ""])
        brows.append([phase, "gateway process CPU", f"{st['cpu_s'] / g['messages'] * 1e6:.0f}",
                      f"{st['cpu_s'] / wall * 100:.0f}% of one CPU"])
        for tname, tc in sorted(st.get("thread_cpu_s", {}).items(), key=lambda kv: -kv[1])[:5]:
            brows.append([phase, f"  thread {tname}", f"{tc / g['messages'] * 1e6:.0f}",
                          f"{tc / wall * 100:.0f}% of one CPU"])
        dc = g["driver_cpu_" + phase]
        brows.append([phase, "(driver process CPU: clients, devices)", f"{dc / g['messages'] * 1e6:.0f}",
                      f"{dc / wall * 100:.0f}% of one CPU"])
    print(table(["phase", "where the gateway's time goes", "µs / message", "calls"], brows,
                title="gateway process, throughput phases (store reads/hints, authorise: wall time on the "
                      "event loop; link.await.*: time awaiting a group commit by the store's writer process, "
                      "overlapping; writer_process_cpu_ms: that process's CPU (records, request tokens, LMDB, "
                      "fsync); the rest is gRPC, link crypto/framing, asyncio)"))
    p99_sub = max(pct(rpc, 99), pct(inner, 99))
    p99_est = pct(est, 99) if est else None  # (the datagram link has no such probe)
    checks = {"rate_ge_quarter_mosquitto": ratio >= 0.25, "p99_submit_le_20ms": p99_sub <= 20.0,
              "rate_ge_1x_rabbitmq": spread["rabbitmq"][1] >= 1.0 if "rabbitmq" in spread else None,
              "p99_established_to_requests_le_20ms": p99_est <= 20.0 if est else None}
    print()
    if "rabbitmq" in spread:
        print("target: rate >= 1x RabbitMQ durable confirms: %s (median round ratio %.3f)" % (
            "yes" if checks["rate_ge_1x_rabbitmq"] else "NO", spread["rabbitmq"][1]))
    print("targets: rate >= 0.25x mosquitto: %s (%.3f); p99 added latency <= 20 ms: submit %s (%.2f ms), "
          "established->REQUESTS %s (%.2f ms)" % (
              "yes" if checks["rate_ge_quarter_mosquitto"] else "NO", ratio,
              "yes" if checks["p99_submit_le_20ms"] else "NO", p99_sub,
              {True: "yes", False: "NO", None: "not measured"}[checks["p99_established_to_requests_le_20ms"]],
              p99_est or float("nan")))
    print(f"({time.monotonic() - t_start:.1f} s)")
    r2 = lambda x: round(x, 2)  # noqa: E731
    print(result_line({
        "bench": "invoke", "devices": a.devices, "per_device": a.per_device, "messages": g["messages"],
        "client_path": "grpc SubmitBatch" if a.batch > 1 else "grpc Submit", "batch": a.batch, "device_link": a.link, "mosquitto_transport": "tcp", "x25519": not a.no_x25519,
        "gateway": {"msgs_per_s": r2(g["rate"]), "enqueue_per_s": r2(g["enqueue_rate"]),
                    "drain_per_s": r2(g["drain_rate"])},
        "mosquitto": {"msgs_per_s": r2(mqr["rate"]), "enqueue_per_s": r2(mqr["enqueue_rate"]),
                      "drain_per_s": r2(mqr["drain_rate"])},
        "ratio": round(ratio, 3),
        "rabbitmq": None if rbr is None else {"msgs_per_s": r2(rbr["rate"]), "enqueue_per_s": r2(rbr["enqueue_rate"]),
                                              "drain_per_s": r2(rbr["drain_rate"])},
        "ratio_mosquitto_min_med_max": [round(x, 3) for x in spread["mosquitto"]],
        "ratio_rabbitmq_min_med_max": [round(x, 3) for x in spread["rabbitmq"]] if "rabbitmq" in spread else None,
        "rounds": [{"gateway_msgs_per_s": round(gr["rate"], 2), "mosquitto_msgs_per_s": round(mr["rate"], 2),
                    "ratio": round(gr["rate"] / mr["rate"], 3),
                    "rabbitmq_msgs_per_s": round(rr["rate"], 2) if rr else None,
                    "ratio_rabbitmq": round(gr["rate"] / rr["rate"], 3) if rr else None} for gr, mr, rr in rounds],
        "ratio_enqueue": round(g["enqueue_rate"] / mqr["enqueue_rate"], 3),
        "ratio_drain": round(g["drain_rate"] / mqr["drain_rate"], 3),
        "latency_at_half_peak": {"rate": r2(lat["rate"]), "submit_rpc_p50_ms": r2(pct(rpc, 50)),
                                 "submit_rpc_p99_ms": r2(pct(rpc, 99)), "submit_gw_p50_ms": r2(pct(inner, 50)),
                                 "submit_gw_p99_ms": r2(pct(inner, 99)),
                                 "established_to_requests_p50_ms": r2(pct(est, 50)) if est else None,
                                 "established_to_requests_p99_ms": r2(p99_est) if est else None,
                                 "errors": lat["errors"],
                                 "datagrams_resent": lat["resent"] if a.link == "udp" else None},
        "drain_datagrams_resent": g["resent"] if a.link == "udp" else None,
        "targets_met": checks}))
    if a.keep:
        print(f"kept {workdir}", file=sys.stderr)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0)) if "--serve" in sys.argv else None
    main()
