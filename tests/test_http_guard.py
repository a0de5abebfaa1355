"""Deadlines and caps on the aiohttp servers (http_guard), on real loopback sockets:
a silent, trickling or half-sent request is cut at its phase's deadline, a slow
handler and a reused keep-alive connection are not, and connections over a cap are
closed at once while the others are served."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiohttp import web

from edgistry.http_guard import ConnectionGuard, GuardedSite, GuardLimits, source_of

pytestmark = pytest.mark.timeout(60)

LIMITS = GuardLimits(head_timeout_s=0.4, body_timeout_s=0.4, idle_timeout_s=0.6, max_connections=6,
                     max_per_source=4)


async def serve(limits: GuardLimits = LIMITS, tls=None):
    guard = ConnectionGuard(limits)
    app = web.Application(middlewares=[guard.middleware])

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hello")

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(1.5)  # longer than every deadline: the handler's time is its own
        return web.Response(text="slow")

    async def echo(request: web.Request) -> web.Response:
        return web.Response(body=await request.read())

    app.router.add_get("/", hello)
    app.router.add_get("/slow", slow)
    app.router.add_post("/echo", echo)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
    await runner.setup()
    site = GuardedSite(runner, "127.0.0.1", 0, guard, ssl_context=tls)
    await site.start()
    return guard, runner, site.port


async def closed_after(reader: asyncio.StreamReader, limit: float) -> float | None:
    """Seconds until the server closed the connection (None: still open after ``limit``)."""
    t0 = time.monotonic()
    try:
        while True:
            data = await asyncio.wait_for(reader.read(65536), limit - (time.monotonic() - t0))
            if not data:
                return time.monotonic() - t0
    except ConnectionResetError:
        return time.monotonic() - t0
    except asyncio.TimeoutError:
        return None


async def response(reader: asyncio.StreamReader) -> bytes:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
    return head + await asyncio.wait_for(reader.readexactly(length), 5)


def test_silent_trickling_and_half_sent_requests_are_cut_at_their_deadlines():
    async def main():
        guard, runner, port = await serve()
        try:
            silent = await asyncio.open_connection("127.0.0.1", port)
            half_head = await asyncio.open_connection("127.0.0.1", port)
            half_head[1].write(b"GET / HTTP/1.1\r\nHost: x\r\n")
            half_body = await asyncio.open_connection("127.0.0.1", port)
            half_body[1].write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
            trickle = await asyncio.open_connection("127.0.0.1", port)

            async def drip():  # a byte every 0.1 s: progress, but never a whole head
                for b in b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"y" * 40:
                    trickle[1].write(bytes([b]))
                    await asyncio.sleep(0.1)
                    if trickle[1].is_closing():
                        return
            dripper = asyncio.ensure_future(drip())
            times = await asyncio.gather(*(closed_after(r, 3.0) for r, _ in (silent, half_head, half_body, trickle)))
            dripper.cancel()
            assert all(t is not None and 0.3 < t < 1.5 for t in times), times
            assert guard.stats.timed_out == {"head": 3, "body": 1, "idle": 0}
            for _, w in (silent, half_head, half_body, trickle):
                w.close()
            await asyncio.sleep(0.1)
            assert guard.stats.open == 0
        finally:
            await runner.cleanup()
    asyncio.run(main())


def test_slow_handlers_keep_alive_and_pipelining_are_served():
    async def main():
        guard, runner, port = await serve()
        try:
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await response(r)).endswith(b"slow")
            await asyncio.sleep(0.3)  # within the idle deadline: the connection is reused
            w.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nabcde")
            assert (await response(r)).endswith(b"abcde")
            w.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n")  # two at once
            assert (await response(r)).endswith(b"hello")
            assert (await response(r)).endswith(b"hello")
            # then nothing: the idle deadline closes it
            t = await closed_after(r, 3.0)
            assert t is not None and 0.4 < t < 1.5, t
            assert guard.stats.timed_out == {"head": 0, "body": 0, "idle": 1}
            w.close()
        finally:
            await runner.cleanup()
    asyncio.run(main())


def test_connections_over_the_caps_are_closed_at_once_and_the_rest_served():
    async def main():
        # deadlines far away: only the caps act here
        limits = GuardLimits(head_timeout_s=30, body_timeout_s=30, idle_timeout_s=30, max_connections=6,
                             max_per_source=4)
        guard, runner, port = await serve(limits)
        try:
            held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(4)]
            await asyncio.sleep(0.1)
            assert guard.stats.open == 4
            extra = await asyncio.open_connection("127.0.0.1", port)  # the fifth from this address
            t = await closed_after(extra[0], 2.0)
            assert t is not None and t < 0.5, t
            assert guard.stats.refused == 1
            # another source address (127.0.0.2) still gets in, up to the total cap of 6
            others = [await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.0.2", 0))
                      for _ in range(2)]
            await asyncio.sleep(0.1)
            assert guard.stats.open == 6
            over = await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.0.3", 0))
            assert (await closed_after(over[0], 2.0) or 9) < 0.5
            assert guard.stats.refused == 2
            # one held connection gives its slot back; a request on a new one is served
            held[0][1].close()
            await asyncio.sleep(0.2)
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await response(r)).endswith(b"hello")
            for _, wr in [*held[1:], *others, (r, w), extra, over]:
                wr.close()
        finally:
            await runner.cleanup()
    asyncio.run(main())


def test_tls_connections_count_from_accept_not_from_the_handshake(tmp_path):
    """On a TLS site, sockets that never start (or finish) their handshake count against the
    caps from the moment they are accepted: a flood of silent connections from one source
    is refused beyond its share (before, none was counted and one source could take every
    file descriptor), and the silent ones go at the head deadline; a TLS client is served."""
    import ssl

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from edgistry.gateway.tls import ensure_identity

    identity = ensure_identity(tmp_path / "tls.key", tmp_path / "tls.pem", Ed25519PrivateKey.generate())
    server_ctx = identity.ssl_server_context(tmp_path / "tls.pem", tmp_path / "tls.key")
    client_ctx = ssl.create_default_context(cafile=str(tmp_path / "tls.pem"))

    async def main():
        guard, runner, port = await serve(LIMITS, tls=server_ctx)
        try:
            silent = [await asyncio.open_connection("127.0.0.1", port) for _ in range(4)]
            await asyncio.sleep(0.1)
            assert guard.stats.open == 4
            extra = await asyncio.open_connection("127.0.0.1", port)
            t = await closed_after(extra[0], 2.0)
            assert t is not None and t < 0.3, t
            assert guard.stats.refused == 1
            times = await asyncio.gather(*(closed_after(r, 3.0) for r, _ in silent))
            assert all(t is not None and t < 1.5 for t in times), times
            assert guard.stats.timed_out["head"] == 4 and guard.stats.open == 0
            r, w = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx, server_hostname="127.0.0.1")
            w.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await response(r)).endswith(b"hello")
            for _, wr in [*silent, extra, (r, w)]:
                wr.close()
        finally:
            await runner.cleanup()
    asyncio.run(main())


def test_a_source_is_an_ipv4_address_or_an_ipv6_slash_64():
    """One customer usually holds a whole IPv6 /64: its addresses share one per-source cap."""
    assert source_of(("2001:db8:1:2::1", 5, 0, 0)) == source_of(("2001:db8:1:2:ffff::9", 6, 0, 0)) == "2001:db8:1:2::/64"
    assert source_of(("2001:db8:1:3::1", 5, 0, 0)) != source_of(("2001:db8:1:2::1", 5, 0, 0))
    assert source_of(("::ffff:192.0.2.7", 5, 0, 0)) == source_of(("192.0.2.7", 5)) == "192.0.2.7"
    assert source_of(("192.0.2.7", 5)) != source_of(("192.0.2.8", 5))
    assert source_of("/run/x.sock") == "/run/x.sock"
