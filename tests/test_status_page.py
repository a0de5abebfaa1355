"""The gateway's status page in headless Chromium against a real node (`edgistry up`):
nothing but /healthz without the operator secret, the login refusing a wrong one, the
map drawing discovery's cells (a screenshot counted pixel by pixel) and never a cell
with fewer than k devices, and the page following a new pairing live."""

from __future__ import annotations

import asyncio
import json
import ssl
import urllib.error
import urllib.request

import h3
import pytest
from click.testing import CliRunner

from browser_helpers import Browser
from gateway_helpers import SENSOR_MANIFEST, make_device_home, node_home, wait_file
from proc_helpers import edgistry, stop, wait_for_port

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]

LAUSANNE = (46.52, 6.57)
GENEVA = (46.20, 6.14)


def cli(*args: str) -> tuple[int, str]:
    from edgistry.cli import main

    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout if result.exit_code == 0 else result.output  # progress: stderr


def pair(cfg, directory, where: tuple[float, float], k: int) -> str:
    """Pair a new device at ``where`` with anonymity set ``k``; its pseudonym (hex)."""
    manifest = dict(SENSOR_MANIFEST, location={"lat": where[0], "lon": where[1]})
    home = make_device_home(directory, manifest)
    code, out = cli("pair", "--device", str(home.path), "--gateway", cfg.grpc_listen, "--k", str(k),
                    "--code", wait_file(cfg.home / "commission.code"), "--json")
    assert code == 0, out
    return json.loads(out)["pseudonym"]


def cell_of(where: tuple[float, float], res: int = 7) -> str:
    return h3.latlng_to_cell(where[0], where[1], res)


def http(port: int, path: str, bearer: str | None = None) -> tuple[int, str, dict]:
    """GET over HTTPS trusting only the gateway's certificate (the test's CERT); status, body, headers."""
    req = urllib.request.Request(f"https://127.0.0.1:{port}{path}",
                                 headers={"Authorization": f"Bearer {bearer}"} if bearer else {})

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    try:
        tls = urllib.request.HTTPSHandler(context=ssl.create_default_context(cafile=str(CERT[0])))
        with urllib.request.build_opener(NoRedirect, tls).open(req, timeout=5) as resp:
            return resp.status, resp.read().decode(), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(), dict(exc.headers)


CERT: list = []  # the gateway's TLS certificate of the running test


def orange(px: tuple[int, int, int]) -> bool:
    """The map's hexagon fills (page.py) are its only orange."""
    r, g, b = px
    return r > 150 and b < 110 and r - b > 100 and g < 190


def orange_pixels(img, box: dict) -> int:
    x0, y0, x1, y1 = (int(box[k]) for k in ("left", "top", "right", "bottom"))
    return sum(1 for x in range(x0, x1) for y in range(y0, y1) if orange(img.getpixel((x, y))))


MAP_BOX = "(() => { const r = document.getElementById('map').getBoundingClientRect(); " \
          "return {left: r.left, top: r.top, right: r.right, bottom: r.bottom}; })()"
POLY_AREA = """(() => { let a = 0; for (const p of document.querySelectorAll('#map polygon')) {
  const pts = p.getAttribute('points').split(' ').map((s) => s.split(',').map(Number));
  let s = 0; for (let i = 0; i < pts.length; i++) { const [x1, y1] = pts[i], [x2, y2] = pts[(i + 1) % pts.length];
  s += x1 * y2 - x2 * y1; } a += Math.abs(s) / 2; } return a; })()"""


async def test_status_page_login_map_and_live_pairing(tmp_path):
    """Wrong secret refused; right secret shows chain, devices and the map; a cell holding
    fewer than k devices is not drawn; pairing the k-th device draws it live."""
    cfg, ports = node_home(tmp_path / "node")
    up = edgistry("up", "--home", str(cfg.home), log=tmp_path / "up.log")
    try:
        wait_for_port(ports["grpc"], proc=up)
        wait_for_port(ports["http"], proc=up)
        secret = (cfg.keys_dir / "operator.secret").read_text().strip()
        CERT[:] = [cfg.tls_cert_path]
        assert ((cfg.keys_dir / "operator.secret").stat().st_mode & 0o777) == 0o600

        # ---- unauthenticated: nothing but /healthz (and the login form) ----
        status, body, _ = http(ports["http"], "/healthz")
        assert status == 200 and "devices" not in json.loads(body)  # a count would show pairings
        status, _, headers = http(ports["http"], "/status")
        assert status == 303 and headers["Location"] == "/status/login"
        for path in ("/status/api", "/status/events", "/metrics", "/status/app.js", "/nothing"):
            assert http(ports["http"], path)[0] == 401, path
            assert http(ports["http"], path, bearer="0" * 64)[0] == 401, path
        status, body, headers = http(ports["http"], "/status/api", bearer=secret)
        assert status == 200 and "default-src 'none'" in headers["Content-Security-Policy"]
        assert json.loads(body)["gateway"]["id"]

        lone = await asyncio.to_thread(pair, cfg, tmp_path / "lone", LAUSANNE, 1)
        crowd = [await asyncio.to_thread(pair, cfg, tmp_path / f"crowd{i}", GENEVA, 3) for i in range(2)]

        async with Browser(trust_cert=cfg.tls_cert_path) as b:
            base = f"https://127.0.0.1:{ports['http']}"
            await b.goto(base + "/status")
            assert await b.js("location.pathname") == "/status/login"
            await b.js("document.getElementById('secret').value = 'not the secret'")
            await b.js("document.querySelector('form').submit()")
            await b.wait_event("Page.loadEventFired")
            assert "wrong operator secret" in await b.js("document.body.innerText")
            assert await b.js("fetch('/status/api').then((r) => r.status)") == 401
            assert await b.js("document.cookie") == ""

            await b.js(f"document.getElementById('secret').value = {json.dumps(secret)}")
            await b.js("document.querySelector('form').submit()")
            await b.wait_event("Page.loadEventFired")
            assert await b.js("location.pathname") == "/status"
            await b.until("document.getElementById('device-count').textContent === '3'")
            await b.until("document.querySelectorAll('#map polygon').length === 1")
            await b.js("window.notReloaded = true")
            rows = await b.js("[...document.querySelectorAll('#device-rows tr')].map((r) => r.dataset.pseudonym)")
            assert sorted(rows) == sorted([lone, *crowd])
            assert await b.js(f"!!document.querySelector('[data-cell=\"{cell_of(LAUSANNE)}\"]')")
            assert await b.js(f"!document.querySelector('[data-cell=\"{cell_of(GENEVA)}\"]')")  # 2 < k = 3
            assert "2 withheld" in await b.js("document.getElementById('map-note').textContent")
            chain = await b.js("document.getElementById('chain-facts').innerText")
            assert "height" in chain and "node peers\nnone" in chain  # one embedded node: no peers

            box = await b.js(MAP_BOX)
            area = await b.js(POLY_AREA)
            img = await b.screenshot()
            one = orange_pixels(img, box)
            assert one > 2000 and 0.7 * area < one < 1.3 * area  # one hexagon's worth, filled
            cx, cy = await b.js("(() => { const r = document.querySelector('#map polygon').getBoundingClientRect();"
                                " return [r.left + r.width / 2, r.top + r.height / 3]; })()")
            assert orange(img.getpixel((int(cx), int(cy))))

            crowd.append(await asyncio.to_thread(pair, cfg, tmp_path / "crowd2", GENEVA, 3))  # the k-th: it shows now
            await b.until("document.getElementById('device-count').textContent === '4'")
            await b.until("document.querySelectorAll('#map polygon').length === 2")
            assert await b.js("window.notReloaded === true")  # updated live, not reloaded
            assert await b.js(f"document.querySelector('[data-cell=\"{cell_of(GENEVA)}\"]').dataset.count") == "3"
            img = await b.screenshot()
            two = orange_pixels(img, await b.js(MAP_BOX))
            area = await b.js(POLY_AREA)
            assert 0.7 * area < two < 1.3 * area and two > 2 * 500

            await b.js("document.querySelector('header form').submit()")
            await b.wait_event("Page.loadEventFired")
            assert await b.js("location.pathname") == "/status/login"
            assert await b.js("fetch('/status/api').then((r) => r.status)") == 401
    finally:
        stop(up)
