"""Synchronous reads of a CometBFT node's JSON-RPC, for the cluster tooling.

The tooling polls a handful of nodes once a second; plain urllib keeps it
free of an event loop. Transport failures map to :class:`NodeUnreachable`.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

TIMEOUT = 3.0


class NodeUnreachable(Exception):
    """The node's RPC did not answer (not running, paused, or refusing)."""


class RpcFailed(Exception):
    """The node answered with a JSON-RPC error."""


def call(url: str, method: str, timeout: float = TIMEOUT, **params: Any) -> Any:
    """One JSON-RPC call; its ``result``."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode()
    req = urllib.request.Request(url.rstrip("/") + "/", body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            msg = json.loads(resp.read())
    except (OSError, ValueError) as exc:  # URLError, refused, timeouts, bad JSON
        raise NodeUnreachable(f"{method} at {url}: {exc}") from exc
    if "error" in msg:
        raise RpcFailed(f"{method} at {url}: {msg['error']}")
    return msg["result"]


@dataclass(frozen=True)
class NodeStatus:
    height: int
    app_hash: str  # the latest header's app_hash: the state after height-1
    catching_up: bool
    node_id: str
    voting_power: int


def status(url: str, timeout: float = TIMEOUT) -> NodeStatus:
    res = call(url, "status", timeout)
    sync = res["sync_info"]
    return NodeStatus(int(sync["latest_block_height"]), sync["latest_app_hash"], bool(sync["catching_up"]),
                      res["node_info"]["id"], int(res["validator_info"]["voting_power"]))


def peers(url: str, timeout: float = TIMEOUT) -> list[str]:
    """Monikers of the node's connected peers (net_info)."""
    res = call(url, "net_info", timeout)
    return sorted(p["node_info"]["moniker"] for p in res.get("peers", []))


def header_app_hash(url: str, height: int, timeout: float = TIMEOUT) -> str:
    """The app_hash in the header of block ``height`` (the state after ``height - 1``)."""
    res = call(url, "blockchain", timeout, minHeight=str(height), maxHeight=str(height))
    metas = res["block_metas"]
    if not metas:
        raise RpcFailed(f"{url} has no header at height {height}")
    return metas[0]["header"]["app_hash"]


def block_hash(url: str, height: int, timeout: float = TIMEOUT) -> str:
    res = call(url, "blockchain", timeout, minHeight=str(height), maxHeight=str(height))
    return res["block_metas"][0]["block_id"]["hash"]


def validators(url: str, timeout: float = TIMEOUT) -> dict[str, int]:
    """The current validator set: upper-case hex address -> voting power."""
    out: dict[str, int] = {}
    page = 1
    while True:
        res = call(url, "validators", timeout, page=str(page), per_page="100")
        out.update({v["address"]: int(v["voting_power"]) for v in res["validators"]})
        if len(out) >= int(res["total"]):
            return out
        page += 1


def http_ok(url: str, timeout: float = TIMEOUT) -> tuple[bool, str]:
    """GET ``url``: (status is 2xx, the start of the body or the error)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            body = resp.read(200).decode(errors="replace").strip()
            return 200 <= resp.status < 300, body.splitlines()[0] if body else f"HTTP {resp.status}"
    except urllib.error.HTTPError as exc:
        return False, f"HTTP {exc.code}"
    except (OSError, ValueError) as exc:
        return False, str(getattr(exc, "reason", exc))
