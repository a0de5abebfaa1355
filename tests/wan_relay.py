"""A TCP relay that adds WAN latency: netem's ``delay D jitter J``, in user space.

This kernel has no netem qdisc, so the multi-host tests put one of these in
front of every node: it listens on the node's advertised address and relays
each connection to where the node's process binds, holding every chunk of
bytes, in both directions, for ``delay ± jitter`` (uniform) before passing it
on. Order within a stream is kept (a chunk never overtakes an earlier one: its
release time is at least the previous chunk's), as on a real path, so jitter
slows a stream down rather than reordering it. A connection's two directions
are independent; end of stream (FIN) is passed on after the delay, and a reset
or error on either side closes both. Routes may also be undelayed (for the
operators' RPC and HTTP, which the checker polls), or flaky: each chunk may, with
a given probability, reset the connection (both sides), as a middlebox that
drops a flow does.

Run as a script inside a node's network namespace::

    python wan_relay.py --delay-ms 50 --jitter-ms 10 --seed 7 \\
        --route 10.9.0.1:26600=127.0.0.1:26600 --direct 10.9.0.1:26601=127.0.0.1:26601 \\
        --flaky 10.9.0.1:26604=127.0.0.1:26604 --reset-probability 0.01

It prints ``relay ready`` once every listener is bound, and runs until SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import signal
import sys
from dataclasses import dataclass

CHUNK = 64 * 1024
MAX_QUEUED_CHUNKS = 256  # per direction: past this, the relay stops reading (TCP backpressure)
CONNECT_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Route:
    """Connections to ``listen`` are relayed to ``target`` with ``delay_s ± jitter_s`` each way."""

    listen: tuple[str, int]
    target: tuple[str, int]
    delay_s: float = 0.0
    jitter_s: float = 0.0
    reset_probability: float = 0.0  # per chunk relayed

    @classmethod
    def parse(cls, text: str, delay_s: float = 0.0, jitter_s: float = 0.0, reset_probability: float = 0.0) -> Route:
        """``HOST:PORT=HOST:PORT``."""
        listen, sep, target = text.partition("=")
        if not sep:
            raise ValueError(f"route {text!r} is not LISTEN_HOST:PORT=TARGET_HOST:PORT")
        return cls(_hostport(listen), _hostport(target), delay_s, jitter_s, reset_probability)


class InjectedReset(ConnectionResetError):
    """The relay dropped the flow on purpose (a flaky route)."""


def _hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


class DelayRelay:
    """Relays every route's connections; ``start()`` binds, ``close()`` ends them all."""

    def __init__(self, routes: list[Route], rng: random.Random | None = None) -> None:
        self.routes = routes
        self.rng = rng or random.Random()
        self.servers: list[asyncio.AbstractServer] = []
        self.tasks: set[asyncio.Task] = set()
        self.connections = 0
        self.resets = 0

    async def start(self) -> list[int]:
        """Bind every route; return the bound ports (a route may ask for port 0)."""
        ports = []
        for route in self.routes:
            server = await asyncio.start_server(lambda r, w, route=route: self._accept(route, r, w),
                                                route.listen[0], route.listen[1], reuse_address=True)
            self.servers.append(server)
            ports.append(server.sockets[0].getsockname()[1])
        return ports

    async def close(self) -> None:
        for server in self.servers:
            server.close()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for server in self.servers:
            await server.wait_closed()

    def _accept(self, route: Route, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.ensure_future(self._relay(route, reader, writer))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _relay(self, route: Route, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            t_reader, t_writer = await asyncio.wait_for(asyncio.open_connection(*route.target), CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError):
            c_writer.transport.abort()  # the target is down: the client sees a reset, as it would
            return
        pipes = [asyncio.ensure_future(self._pipe(route, c_reader, t_writer)),
                 asyncio.ensure_future(self._pipe(route, t_reader, c_writer))]
        try:
            _, pending = await asyncio.wait(pipes, return_when=asyncio.FIRST_EXCEPTION)
            if pending:  # one direction failed (a reset): both sides go
                for writer in (c_writer, t_writer):
                    writer.transport.abort()
            await asyncio.gather(*pipes, return_exceptions=True)
        finally:
            for task in pipes:
                task.cancel()
            for writer in (c_writer, t_writer):
                writer.close()

    async def _pipe(self, route: Route, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Copy reader to writer, each chunk released ``delay ± jitter`` after it arrived, in order."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(MAX_QUEUED_CHUNKS)

        async def take_in() -> None:
            last = 0.0
            while True:
                data = await reader.read(CHUNK)
                if data and route.reset_probability and self.rng.random() < route.reset_probability:
                    self.resets += 1
                    raise InjectedReset(f"reset injected on {route.listen}")
                delay = route.delay_s + self.rng.uniform(-route.jitter_s, route.jitter_s)
                last = max(loop.time() + max(delay, 0.0), last)
                await queue.put((last, data))
                if not data:
                    return

        async def give_out() -> None:
            while True:
                due, data = await queue.get()
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not data:  # end of stream, passed on after the same delay
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                writer.write(data)
                await writer.drain()

        reading, writing = asyncio.ensure_future(take_in()), asyncio.ensure_future(give_out())
        try:
            done, _ = await asyncio.wait({reading, writing}, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                if task.exception() is not None:
                    raise task.exception()
            await writing  # the stream ended: what is still queued goes out first
        finally:
            reading.cancel()
            writing.cancel()


def _parse_args(argv: list[str]) -> tuple[list[Route], int | None]:
    parser = argparse.ArgumentParser(description="TCP relay with WAN latency")
    parser.add_argument("--delay-ms", type=float, default=0.0)
    parser.add_argument("--jitter-ms", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--route", action="append", default=[], help="LISTEN=TARGET, delayed")
    parser.add_argument("--direct", action="append", default=[], help="LISTEN=TARGET, not delayed")
    parser.add_argument("--flaky", action="append", default=[], help="LISTEN=TARGET, delayed, random resets")
    parser.add_argument("--reset-probability", type=float, default=0.0, help="per chunk, on --flaky routes")
    args = parser.parse_args(argv)
    delay, jitter = args.delay_ms / 1000, args.jitter_ms / 1000
    routes = ([Route.parse(r, delay, jitter) for r in args.route] + [Route.parse(r) for r in args.direct]
              + [Route.parse(r, delay, jitter, args.reset_probability) for r in args.flaky])
    if not routes:
        parser.error("give at least one --route or --direct")
    return routes, args.seed


async def _main(routes: list[Route], seed: int | None) -> None:
    relay = DelayRelay(routes, random.Random(seed))
    await relay.start()
    print(f"relay ready: {len(routes)} routes", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(relay.close(), 5)


if __name__ == "__main__":
    asyncio.run(_main(*_parse_args(sys.argv[1:])))
