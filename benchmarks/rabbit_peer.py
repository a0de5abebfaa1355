"""RabbitMQ as a durable peer for queued invokes (benchmarks/invoke.py).

* :class:`RabbitMQ` starts the Debian ``rabbitmq-server`` as a throwaway node of its
  own: its own node name, data dir (mnesia), log dir, config, Erlang cookie, AMQP port,
  distribution port and its own ``epmd`` (started in the foreground by us, so nothing
  daemonises behind our back); both are stopped by pid (their process groups).
* :func:`rabbit_throughput` runs the same two phases as the gateway and mosquitto:
  **enqueue** - one publisher connection with publisher confirms, persistent messages
  (delivery_mode 2) to a durable classic queue per device, at most ``window``
  unconfirmed (a confirm of a persistent message routed to a durable queue is sent once
  the message is on disk: that is the gateway's fsync'd acknowledgement); then **drain**
  - every device "wakes" once, ``wake_conc`` at a time: opens an AMQP connection and a
  channel, consumes its queue with manual acks until it holds its messages, acks each,
  closes.

The client library is aio-pika (asyncio, pure Python over pamqp), so the driver's CPU
per message is larger than for the hand-written MQTT client; the driver's CPU is
reported so the comparison's fairness can be judged.
"""

from __future__ import annotations

import asyncio
import os
import resource
import shutil
import signal
import subprocess
import time
from pathlib import Path

from bench_util import stop_pid
from proc_helpers import free_port, wait_for_port

RABBIT_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"  # the Debian package's real script (no su wrapper)
USER, PASSWORD = "bench", "bench-password-1"


def available() -> str | None:
    """None when RabbitMQ and aio-pika are usable, else why not."""
    if not os.path.exists(RABBIT_SERVER):
        return "rabbitmq-server not installed (apt-get install -y rabbitmq-server)"
    if not (shutil.which("epmd") or os.path.exists("/usr/bin/epmd")):
        return "epmd (Erlang) not found"
    try:
        import aio_pika  # noqa: F401
    except ImportError:
        return "aio-pika not installed (pip install 'edgistry[bench]')"
    return None


class RabbitMQ:
    """A throwaway RabbitMQ node on loopback, in ``workdir``."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port, self.dist_port, self.epmd_port = free_port(), free_port(), free_port()
        self.node = f"edgistry-bench-{os.getpid()}-{self.port}@localhost"
        (self.dir / ".erlang.cookie").write_text(os.urandom(16).hex())
        (self.dir / ".erlang.cookie").chmod(0o400)
        (self.dir / "enabled_plugins").write_text("[].\n")  # no management plugin: a bare broker
        # loopback_users: the default 'guest' only works on loopback anyway; we make our own user
        (self.dir / "rabbitmq.conf").write_text("\n".join([
            f"listeners.tcp.1 = 127.0.0.1:{self.port}",
            f"default_user = {USER}", f"default_pass = {PASSWORD}",
            "tcp_listen_options.nodelay = true",
            "log.console = false", "log.file.level = warning",
        ]) + "\n")
        self.env = {**os.environ, "HOME": str(self.dir), "RABBITMQ_NODENAME": self.node,
                    "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1", "RABBITMQ_NODE_PORT": str(self.port),
                    "RABBITMQ_DIST_PORT": str(self.dist_port), "ERL_EPMD_PORT": str(self.epmd_port),
                    "ERL_EPMD_ADDRESS": "127.0.0.1",
                    "RABBITMQ_MNESIA_BASE": str(self.dir / "mnesia"), "RABBITMQ_LOG_BASE": str(self.dir / "log"),
                    "RABBITMQ_CONFIG_FILE": str(self.dir / "rabbitmq.conf"),
                    "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.dir / "enabled_plugins"),
                    "RABBITMQ_CONF_ENV_FILE": str(self.dir / "rabbitmq-env.conf"),
                    "RABBITMQ_PID_FILE": str(self.dir / "rabbitmq.pid")}
        (self.dir / "rabbitmq-env.conf").write_text("")  # not /etc/rabbitmq's
        self.epmd: subprocess.Popen | None = None
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> RabbitMQ:
        log = open(self.dir / "stdout.log", "ab")
        if self.epmd is None:  # one epmd for the node's life (a restart reuses it)
            epmd = shutil.which("epmd") or "/usr/bin/epmd"
            self.epmd = subprocess.Popen([epmd, "-port", str(self.epmd_port), "-address", "127.0.0.1"],
                                         env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            wait_for_port(self.epmd_port, proc=self.epmd)
        self.proc = subprocess.Popen([RABBIT_SERVER], env=self.env, cwd=self.dir, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        wait_for_port(self.port, timeout=timeout, proc=self.proc)
        asyncio.run(self._until_amqp_answers(time.monotonic() + timeout))
        return self

    async def _until_amqp_answers(self, deadline: float) -> None:
        """The listener opens before the node has booted (or, after a restart, recovered its
        queues): ready means an AMQP connection is accepted."""
        import aio_pika

        while True:
            try:
                conn = await aio_pika.connect(self.url, timeout=5)
            except (OSError, asyncio.TimeoutError, aio_pika.exceptions.AMQPError):
                if time.monotonic() > deadline or (self.proc is not None and self.proc.poll() is not None):
                    raise
                await asyncio.sleep(0.1)
            else:
                await conn.close()
                return

    @property
    def url(self) -> str:
        return f"amqp://{USER}:{PASSWORD}@127.0.0.1:{self.port}/"

    def version(self) -> str:
        try:
            pkg = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "rabbitmq-server"], capture_output=True,
                                 text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            pkg = ""
        return f"RabbitMQ {pkg}".strip()

    def server_cpu_ms(self) -> int:
        """CPU ms of the broker's process group so far (beam.smp is the script's exec'd child)."""
        total = 0
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                stat = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            if self.proc is not None and int(stat[2]) == self.proc.pid:  # process group id
                total += (int(stat[11]) + int(stat[12])) * 1000 // os.sysconf("SC_CLK_TCK")
        return total

    def kill(self) -> None:
        """SIGKILL the broker's process group (no shutdown, no flush): what a power cut leaves."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def restart(self, timeout: float = 60.0) -> RabbitMQ:
        """A clean restart: SIGTERM (RabbitMQ shuts down in order, its Mnesia logs dumped),
        then start again on the same data and epmd. A broker that does not stop within
        ``timeout`` raises: that would not be a clean restart."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout)
        return self.start(timeout)

    def stop(self) -> None:
        if self.proc is not None:
            stop_pid(self.proc, timeout=20)
        if self.epmd is not None:
            stop_pid(self.epmd)


def _cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def queue_name(i: int) -> str:
    return f"d.{i:05d}.rq"


async def declare_queues(url: str, n: int) -> None:
    """One durable classic queue per device (setup, not measured)."""
    import aio_pika

    conn = await aio_pika.connect(url)
    try:
        ch = await conn.channel()
        for i in range(n):
            await ch.declare_queue(queue_name(i), durable=True, arguments={"x-queue-type": "classic"})
    finally:
        await conn.close()


async def publish_all(url: str, order: list[int], payload: bytes, window: int) -> float:
    """Publish one persistent message per entry of ``order`` (device indexes), at most
    ``window`` unconfirmed; returns the seconds until the last confirm."""
    import aio_pika

    conn = await aio_pika.connect(url)
    try:
        ch = await conn.channel(publisher_confirms=True)
        ex = ch.default_exchange
        free = asyncio.Semaphore(window)
        pending: set[asyncio.Task] = set()

        async def one(i: int) -> None:
            try:
                # mandatory: an unroutable message is returned (an error), never silently confirmed
                await ex.publish(aio_pika.Message(payload, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                                 routing_key=queue_name(i), mandatory=True)
            finally:
                free.release()

        t0 = time.perf_counter()
        for i in order:
            await free.acquire()
            task = asyncio.create_task(one(i))
            pending.add(task)
            task.add_done_callback(pending.discard)
        while pending:
            await asyncio.gather(*list(pending))  # raises if a publish was nacked or returned
        return time.perf_counter() - t0
    finally:
        await conn.close()


async def device_wake(url: str, i: int, per: int) -> int:
    """One wake: connect, consume the device's queue with manual acks until ``per``
    messages are held, ack each, close. Returns how many were received."""
    import aio_pika

    conn = await aio_pika.connect(url)
    got = 0
    try:
        ch = await conn.channel()
        await ch.set_qos(prefetch_count=per)
        q = await ch.get_queue(queue_name(i), ensure=False)
        async with q.iterator(no_ack=False) as it:
            async for msg in it:
                await msg.ack()
                got += 1
                if got >= per:
                    break
    finally:
        await conn.close()
    return got


async def rabbit_throughput(url: str, n: int, per: int, window: int, wake_conc: int, payload: bytes,
                            rng, gather_limited, declared: bool) -> dict:
    """The enqueue and drain phases against RabbitMQ (same shape as mqtt_throughput)."""
    if not declared:
        await declare_queues(url, n)
    order = [i for i in range(n) for _ in range(per)]
    rng.shuffle(order)
    m = len(order)
    c0 = _cpu_s()
    t_pub = await publish_all(url, order, payload, window)
    c_pub = _cpu_s() - c0
    wake_order = list(range(n))
    rng.shuffle(wake_order)
    t0, c0 = time.perf_counter(), _cpu_s()
    got = await asyncio.wait_for(gather_limited(wake_conc, [lambda i=i: device_wake(url, i, per)
                                                            for i in wake_order]), 600)
    t_drain, c_drain = time.perf_counter() - t0, _cpu_s() - c0
    assert sum(got) == m, f"RabbitMQ delivered {sum(got)} of {m}"
    return {"messages": m, "t_enqueue": t_pub, "t_drain": t_drain, "enqueue_rate": m / t_pub,
            "drain_rate": m / t_drain, "rate": m / (t_pub + t_drain), "wakes": n,
            "driver_cpu_enqueue": c_pub, "driver_cpu_drain": c_drain}
