"""The status page's HTML, CSS and script (served by routes.py; no external resource).

The script fetches /status/api once, then follows /status/events (server-sent
events: a new snapshot whenever one differs) and redraws. The map projects
the server's H3 cell boundaries (Web Mercator) into an SVG fitted to the
cells of the chosen service type; with a tile URL configured, tiles are drawn
underneath. Hexagon fills are shades of orange and nothing else on the page
is, so a screenshot can be checked for them.
"""

from __future__ import annotations

import html

LOGIN = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Edgistry gateway: operator login</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body>
<h1>Edgistry gateway</h1>
<p>The status page is for this node's operators. Give the operator secret
(<code>keys/operator.secret</code> in the node home).</p>
{message}
<form method="post" action="/status/login">
<label>Operator secret <input id="secret" name="secret" type="password" autocomplete="current-password"
 required autofocus></label>
<button id="login" type="submit">Log in</button>
</form>
</body></html>
"""


def login_page(message: str = "") -> str:
    note = f'<p id="message" role="alert"><strong>{html.escape(message)}</strong></p>' if message else ""
    return LOGIN.replace("{message}", note)


STATUS = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Edgistry gateway status</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="/status/app.css"></head>
<body data-tiles="{tiles}">
<header><h1>Edgistry gateway <span id="gw-id"></span></h1>
<form method="post" action="/status/logout"><button type="submit">Log out</button></form></header>
<p id="live">connecting…</p>
<main>
<section id="chain"><h2>Chain</h2><dl id="chain-facts"></dl></section>
<section id="queues"><h2>Queues and link</h2><dl id="queue-facts"></dl></section>
<section id="map-section"><h2>Map <select id="layer" aria-label="service type"></select></h2>
<p id="map-note"></p>
<svg id="map" viewBox="0 0 800 480" width="800" height="480" role="img" aria-label="H3 cells with device counts"></svg>
</section>
<section id="devices"><h2>Paired devices (<span id="device-count">0</span>)</h2>
<table><thead><tr><th>pseudonym</th><th>services</th><th>queue</th><th>session</th><th>last seen</th>
<th>twin pending</th></tr></thead><tbody id="device-rows"></tbody></table></section>
<section id="errors"><h2>Recent warnings and errors</h2><ol id="error-list"></ol></section>
</main>
<script src="/status/app.js"></script>
</body></html>
"""

def status_page(tiles: str = "") -> str:
    """The page; ``tiles``: an optional map tile URL template ({z}/{x}/{y})."""
    return STATUS.replace("{tiles}", html.escape(tiles, quote=True))


CSS = """
body { font: 14px system-ui, sans-serif; margin: 1em 2em; color: #222; background: #fff; }
header { display: flex; align-items: center; justify-content: space-between; }
h1 { font-size: 1.3em; } h2 { font-size: 1.1em; margin-top: 1.2em; }
#gw-id { font-family: monospace; font-weight: normal; color: #555; }
main { display: grid; grid-template-columns: 1fr 1fr; gap: 0 2em; }
#map-section, #devices, #errors { grid-column: 1 / 3; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: 0.2em 1em; margin: 0; }
dt { color: #555; } dd { margin: 0; font-family: monospace; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 0.2em 0.6em; border-bottom: 1px solid #ddd; font-family: monospace; }
th { font-family: system-ui, sans-serif; color: #555; }
#map { border: 1px solid #ccc; background: #f4f6f8; }
#map polygon { stroke: #5a2a00; stroke-width: 1; }
#map text { font: 12px monospace; fill: #000; text-anchor: middle; dominant-baseline: middle; }
#live { color: #555; } #live.down { color: #a00; }
#error-list li { font-family: monospace; }
"""

# Fills by count (light to dark): the only orange on the page.
SCRIPT = r"""
"use strict";
const FILLS = ["#fdae6b", "#fd8d3c", "#e6550d", "#a63603"];
const W = 800, H = 480, PAD = 24;
const $ = (id) => document.getElementById(id);
let last = null, tiles = "";

function fmtTime(ms) { return ms ? new Date(ms).toLocaleTimeString() : "-"; }
function facts(el, pairs) {
  el.replaceChildren();
  for (const [k, v] of pairs) {
    const dt = document.createElement("dt"); dt.textContent = k;
    const dd = document.createElement("dd"); dd.textContent = v;
    el.append(dt, dd);
  }
}
function merc(lat, lon) {
  const s = Math.sin(lat * Math.PI / 180);
  return [(lon + 180) / 360, 0.5 - Math.log((1 + s) / (1 - s)) / (4 * Math.PI)];
}
function drawMap(map) {
  const svg = $("map"), select = $("layer");
  const types = Object.keys(map.layers || {});
  const chosen = types.includes(select.value) ? select.value : types[0];
  select.replaceChildren(...types.map((t) => new Option(t, t, false, t === chosen)));
  svg.replaceChildren();
  const layer = chosen ? map.layers[chosen] : null;
  const cells = layer ? layer.cells : [];
  $("map-note").textContent = chosen === undefined ? "no device in the registry yet" :
    `${chosen}: ${layer.disclosed} device(s) in ${cells.length} cell(s); ${layer.withheld} withheld ` +
    "(fewer than k share any cell: discovery shows them nowhere, nor does this map)";
  if (!cells.length) return;
  const shapes = cells.map((c) => {
    let ref = c.boundary[0][1];
    return c.boundary.map(([lat, lon]) => {  // unwrap across the antimeridian
      while (lon - ref > 180) lon -= 360;
      while (lon - ref < -180) lon += 360;
      return merc(lat, lon);
    });
  });
  const xs = shapes.flat().map((p) => p[0]), ys = shapes.flat().map((p) => p[1]);
  const x0 = Math.min(...xs), x1 = Math.max(...xs), y0 = Math.min(...ys), y1 = Math.max(...ys);
  const scale = Math.min((W - 2 * PAD) / Math.max(x1 - x0, 1e-9), (H - 2 * PAD) / Math.max(y1 - y0, 1e-9));
  const ox = (W - (x1 - x0) * scale) / 2 - x0 * scale, oy = (H - (y1 - y0) * scale) / 2 - y0 * scale;
  const ns = "http://www.w3.org/2000/svg";
  if (tiles) drawTiles(svg, ns, scale, ox, oy);
  const top = Math.max(...cells.map((c) => c.count));
  cells.forEach((c, i) => {
    const pts = shapes[i].map(([x, y]) => [x * scale + ox, y * scale + oy]);
    const poly = document.createElementNS(ns, "polygon");
    poly.setAttribute("points", pts.map((p) => p.join(",")).join(" "));
    poly.setAttribute("fill", FILLS[Math.min(FILLS.length - 1, Math.floor((c.count / top) * (FILLS.length - 1)))]);
    poly.setAttribute("data-cell", c.cell);
    poly.setAttribute("data-count", c.count);
    const title = document.createElementNS(ns, "title");
    title.textContent = `cell ${c.cell} (resolution ${c.res}): ${c.count} devices`;
    poly.append(title);
    const label = document.createElementNS(ns, "text");
    label.setAttribute("x", pts.reduce((a, p) => a + p[0], 0) / pts.length);
    label.setAttribute("y", pts.reduce((a, p) => a + p[1], 0) / pts.length);
    label.textContent = c.count;
    svg.append(poly, label);
  });
}
function drawTiles(svg, ns, scale, ox, oy) {
  const z = Math.max(0, Math.min(18, Math.round(Math.log2(scale / 256))));
  const n = 2 ** z, size = scale / n;
  const tx0 = Math.max(0, Math.floor(-ox / size)), ty0 = Math.max(0, Math.floor(-oy / size));
  for (let tx = tx0; tx < Math.min(n, tx0 + Math.ceil(W / size) + 1); tx++) {
    for (let ty = ty0; ty < Math.min(n, ty0 + Math.ceil(H / size) + 1); ty++) {
      const img = document.createElementNS(ns, "image");
      img.setAttribute("href", tiles.replace("{z}", z).replace("{x}", tx).replace("{y}", ty));
      img.setAttribute("x", tx * size + ox); img.setAttribute("y", ty * size + oy);
      img.setAttribute("width", size); img.setAttribute("height", size);
      svg.append(img);
    }
  }
}
function render(s) {
  last = s;
  $("gw-id").textContent = s.gateway.id;
  const c = s.chain;
  facts($("chain-facts"), [
    ["node RPC", c.rpc], ["reachable", c.reachable ? "yes" : "no" + (c.error ? ` (${c.error})` : "")],
    ["chain id", c.chain_id || "-"], ["height", c.height ?? "-"], ["replica height", s.map.height],
    ["node peers", !c.peers ? "unknown (the node does not say)" :
      c.peers.length ? `${c.peers.length}: ${c.peers.join(", ")}` : "none"],
    ["peer gateways", s.peer_gateways.length ? s.peer_gateways.map((g) => `${g.id} ${g.endpoint}`).join(", ") : "none"],
  ]);
  const l = s.link;
  facts($("queue-facts"), [
    ["requests waiting", s.queues.total], ["deepest queue", s.queues.max],
    ["devices with work", s.queues.devices_with_work], ["link sessions open", l.sessions_open ?? 0],
    ["handshakes full / resumed", `${l.handshakes_full ?? 0} / ${l.handshakes_resumed ?? 0}`],
    ["link rejections", Object.entries(l.rejections || {}).map(([k, v]) => `${k} ${v}`).join(", ") || "none"],
    ["gateway up", `${s.gateway.up_s} s`],
  ]);
  $("device-count").textContent = s.devices.total;
  $("device-rows").replaceChildren(...s.devices.list.map((d) => {
    const tr = document.createElement("tr");
    tr.setAttribute("data-pseudonym", d.pseudonym);
    for (const v of [d.pseudonym, d.services.join(" "), d.queue, d.session ? "open" : "-",
                     fmtTime(d.last_seen_ms), d.twin_pending]) {
      const td = document.createElement("td"); td.textContent = v; tr.append(td);
    }
    return tr;
  }));
  $("error-list").replaceChildren(...s.errors.map((e) => {
    const li = document.createElement("li");
    li.textContent = `${fmtTime(e.at_ms)} ${e.level} ${e.logger}: ${e.message}`;
    return li;
  }));
  if (!s.errors.length) $("error-list").textContent = "none since the gateway started";
  drawMap(s.map);
  const live = $("live");
  live.className = ""; live.textContent = `live, updated ${new Date().toLocaleTimeString()}`;
  document.body.dataset.version = String(Number(document.body.dataset.version || 0) + 1);
}
async function start() {
  tiles = document.body.dataset.tiles || "";
  $("layer").addEventListener("change", () => last && drawMap(last.map));
  const first = await fetch("/status/api", { credentials: "same-origin" });
  if (first.status === 401) { location.href = "/status/login"; return; }
  render(await first.json());
  const events = new EventSource("/status/events");
  events.onmessage = (ev) => render(JSON.parse(ev.data));
  events.onerror = async () => {
    const live = $("live"); live.className = "down"; live.textContent = "connection lost; retrying…";
    const probe = await fetch("/status/api", { credentials: "same-origin" }).catch(() => null);
    if (probe && probe.status === 401) { events.close(); location.href = "/status/login"; }
  };
}
start();
"""
