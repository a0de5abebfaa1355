"""The status page on the gateway's HTTP side (aiohttp): routes, the operator guard, live updates.

:func:`install` adds to the gateway's aiohttp application:

* a middleware that lets only /healthz and the login form through without
  operator authentication (auth.py); everything else, /metrics included,
  answers 401 (the page itself redirects to the login form);
* ``GET /status`` (the page), ``/status/app.js``, ``/status/app.css``;
* ``GET /status/api``: one snapshot (snapshot.py) as JSON;
* ``GET /status/events``: server-sent events, a snapshot whenever it
  differs from the last one sent (checked every ``interval_s``), a comment
  line every ``PING_S`` otherwise; the session is re-checked each time, so a
  logout ends the stream;
* ``GET|POST /status/login``, ``POST /status/logout``.

Why /metrics is guarded too: its gauges (queue depths, devices with work,
sessions open) move when a device is paired or wakes, which is what the
status page's guard is there to hide; a Prometheus scrape passes the
operator secret as a bearer credential (``credentials_file``).

Every response of these routes carries a strict Content-Security-Policy
(own scripts and styles only; images from the configured tile host only),
``no-store`` caching and no referrer beyond this origin (with none at all, a
browser posts forms with ``Origin: null``, which the cross-site check refuses).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from aiohttp import web

from . import page
from .auth import COOKIE, FAILURE_DELAY_S, SESSION_TTL_S, OperatorAuth
from .snapshot import StatusSource

PUBLIC = frozenset({"/healthz", "/status/login"})
PING_S = 15.0
MAX_STREAMS = 32  # event streams open at once (each costs a snapshot per interval)
STREAM_WRITE_S = 30.0  # a stream whose reader takes no update for this long ends (and frees its slot)


def _headers(tiles: str = "") -> dict[str, str]:
    origin = ""
    if tiles:
        parts = urlsplit(tiles)
        origin = f" {parts.scheme}://{parts.netloc}" if parts.scheme in ("http", "https") and parts.netloc else ""
    csp = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
           f"img-src 'self'{origin}; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
    return {"Content-Security-Policy": csp, "Cache-Control": "no-store", "Referrer-Policy": "same-origin",
            "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY"}


def _authorised(auth: OperatorAuth, request: web.Request) -> bool:
    return auth.check_bearer(request.headers.get("Authorization")) or auth.check_session(request.cookies.get(COOKIE))


def _same_origin(request: web.Request) -> bool:
    """A browser's post from another site carries its Origin: refuse it (no Origin: not a browser's)."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    return origin != "null" and urlsplit(origin).netloc == request.host


def install(app: web.Application, auth: OperatorAuth, source: StatusSource, interval_s: float = 1.0,
            tiles: str = "") -> None:
    """Guard ``app`` and add the status routes (see the module docstring)."""
    headers = _headers(tiles)
    streams = {"open": 0}

    @web.middleware
    async def guard(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]):
        if request.path not in PUBLIC and not _authorised(auth, request):
            if request.method == "GET" and request.path in ("/status", "/status/"):
                raise web.HTTPSeeOther("/status/login", headers=headers)
            return web.json_response({"error": "operator authentication required (the status page's login, or "
                                               "Authorization: Bearer <keys/operator.secret>)"},
                                     status=401, headers={**headers, "WWW-Authenticate": 'Bearer realm="edgistry"'})
        return await handler(request)

    async def status(request: web.Request) -> web.Response:
        return web.Response(text=page.status_page(tiles), content_type="text/html", headers=headers)

    async def script(request: web.Request) -> web.Response:
        return web.Response(text=page.SCRIPT, content_type="application/javascript", headers=headers)

    async def style(request: web.Request) -> web.Response:
        return web.Response(text=page.CSS, content_type="text/css", headers=headers)

    async def api(request: web.Request) -> web.Response:
        return web.json_response(await source.snapshot(), headers=headers)

    async def events(request: web.Request) -> web.StreamResponse:
        if streams["open"] >= MAX_STREAMS:
            return web.json_response({"error": "too many status streams open"}, status=503, headers=headers)
        streams["open"] += 1
        resp = web.StreamResponse(headers={**headers, "Content-Type": "text/event-stream",
                                           "X-Accel-Buffering": "no"})
        try:
            await resp.prepare(request)
            sent, quiet = None, 0.0
            while _authorised(auth, request):
                body = json.dumps(await source.snapshot(), separators=(",", ":"))
                if body != sent:
                    await asyncio.wait_for(resp.write(b"data: " + body.encode() + b"\n\n"), STREAM_WRITE_S)
                    sent, quiet = body, 0.0
                elif quiet >= PING_S:
                    await asyncio.wait_for(resp.write(b": ping\n\n"), STREAM_WRITE_S)
                    quiet = 0.0
                await asyncio.sleep(interval_s)
                quiet += interval_s
        except asyncio.TimeoutError:  # a reader that stopped reading: its slot goes to someone else
            if request.transport is not None:
                request.transport.abort()
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            streams["open"] -= 1
        return resp

    async def login_form(request: web.Request) -> web.Response:
        return web.Response(text=page.login_page(), content_type="text/html", headers=headers)

    async def login(request: web.Request) -> web.Response:
        if not _same_origin(request):
            return web.Response(text="cross-site login refused", status=403, headers=headers)
        source_ip = request.remote or "?"
        if auth.locked_out(source_ip):
            return web.Response(text=page.login_page("too many failed logins; wait a few minutes"), status=429,
                                content_type="text/html", headers=headers)
        form = await request.post()
        if not auth.check_secret(str(form.get("secret", ""))):
            auth.failed(source_ip)
            await asyncio.sleep(FAILURE_DELAY_S)
            return web.Response(text=page.login_page("wrong operator secret"), status=401, content_type="text/html",
                                headers=headers)
        resp = web.HTTPSeeOther("/status", headers=headers)
        resp.set_cookie(COOKIE, auth.new_session(), max_age=SESSION_TTL_S, path="/", httponly=True,
                        samesite="Strict", secure=request.secure)
        raise resp

    async def logout(request: web.Request) -> web.Response:
        if not _same_origin(request):
            return web.Response(text="cross-site logout refused", status=403, headers=headers)
        auth.end_session(request.cookies.get(COOKIE))
        resp = web.HTTPSeeOther("/status/login", headers=headers)
        resp.del_cookie(COOKIE, path="/")
        raise resp

    app.middlewares.append(guard)
    r = app.router
    r.add_get("/status", status)
    r.add_get("/status/app.js", script)
    r.add_get("/status/app.css", style)
    r.add_get("/status/api", api)
    r.add_get("/status/events", events)
    r.add_get("/status/login", login_form)
    r.add_post("/status/login", login)
    r.add_post("/status/logout", logout)
