"""Helpers for tests that run real processes: `edgistry node`, `cometbft`.

:class:`Procs` starts every process itself, remembers it by name and pid, and
stops only those (SIGTERM, SIGKILL after a bounded wait); its ``close()``
runs in the fixture teardown. Each start writes its own log file, whose tail
is attached to a failing test's report. Every wait here is bounded.

The RPC helpers are synchronous (urllib): they poll, they do not subscribe.
"""

from __future__ import annotations

import base64
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from edgistry.proto import registry_pb2 as pb

EDGISTRY = [sys.executable, "-m", "edgistry"]
STOP_TIMEOUT = 20.0  # seconds a process gets to exit on SIGTERM before SIGKILL
LOG_TAIL_LINES = 40
PORT_RANGE = (15000, 30000)  # below Linux's ephemeral range (32768..60999)

T = TypeVar("T")


class Procs:
    """Processes started by one test, by name; all killed on close()."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.running: dict[str, subprocess.Popen] = {}
        self.logs: list[Path] = []
        self._starts: dict[str, int] = {}

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        if name in self.running and self.running[name].poll() is None:
            raise AssertionError(f"{name} is already running (pid {self.running[name].pid})")
        self._starts[name] = self._starts.get(name, 0) + 1
        log = self.log_dir / f"{name}.{self._starts[name]}.log"
        self.logs.append(log)
        with open(log, "ab") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env={**os.environ, **(env or {})}, start_new_session=True)
        self.running[name] = proc
        return proc

    def log_of(self, name: str) -> Path:
        return self.log_dir / f"{name}.{self._starts[name]}.log"

    def alive(self, name: str) -> bool:
        proc = self.running.get(name)
        return proc is not None and proc.poll() is None

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int:
        """Send ``sig`` to the process started as ``name`` and wait; SIGKILL if it lingers."""
        proc = self.running.pop(name)
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        return proc.returncode

    def kill(self, name: str) -> int:
        return self.stop(name, signal.SIGKILL)

    def wait_exit(self, name: str, timeout: float) -> int | None:
        """The exit status of ``name`` if it exits within ``timeout``, else None."""
        try:
            return self.running[name].wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def close(self) -> None:
        for name in list(self.running):
            self.stop(name, signal.SIGKILL)

    def tails(self, lines: int = LOG_TAIL_LINES) -> str:
        parts = []
        for log in self.logs:
            text = log.read_text(errors="replace").splitlines() if log.exists() else []
            parts.append(f"==== {log.name} (last {lines} lines) ====\n" + "\n".join(text[-lines:]))
        return "\n".join(parts)


# ---- starting a node pair ----


def start_app(procs: Procs, name: str, home: Path, timeout: float = 20) -> subprocess.Popen:
    """`edgistry node --home HOME`, once it says it is serving ABCI."""
    proc = procs.start(name, [*EDGISTRY, "node", "--home", str(home)])
    wait_until(lambda: "serving ABCI" in procs.log_of(name).read_text(errors="replace") or proc.poll() is not None,
               timeout, f"{name} to serve ABCI")
    assert proc.poll() is None, f"{name} exited with status {proc.returncode}"
    return proc


def start_cometbft(procs: Procs, name: str, binary: str, home: Path) -> subprocess.Popen:
    return procs.start(name, [binary, "start", "--home", str(home)])


def start_pair(procs: Procs, name: str, binary: str, edgistry_home: Path, cometbft_home: Path) -> None:
    """Start a node's app, then its cometbft (names ``NAME-app`` and ``NAME-cmt``)."""
    start_app(procs, f"{name}-app", edgistry_home)
    start_cometbft(procs, f"{name}-cmt", binary, cometbft_home)


def stop_pair(procs: Procs, name: str, sig: int = signal.SIGTERM) -> None:
    """Stop a node: cometbft first (it needs its app to shut down cleanly), then the app."""
    procs.stop(f"{name}-cmt", sig)
    procs.stop(f"{name}-app", sig)


# ---- ports and config files ----


def free_base_port(count: int, attempts: int = 100) -> int:
    """A base port B such that B..B+count-1 are all free on 127.0.0.1 right now."""
    rng = random.Random()
    for _ in range(attempts):
        base = rng.randrange(PORT_RANGE[0], PORT_RANGE[1] - count) // 10 * 10
        if all(_port_free(p) for p in range(base, base + count)):
            return base
    raise RuntimeError(f"no {count} consecutive free loopback ports found")


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def set_toml_values(path: Path, values: dict[str, Any]) -> None:
    """Set existing keys of a TOML file in place, keeping its comments and layout.

    Keys are ``"section.key"`` (or ``"key"`` for the top table); values are
    str, bool or int. Every key must already be present.
    """
    lines = path.read_text().splitlines()
    section, seen = "", set()
    for i, line in enumerate(lines):
        header = re.match(r"^\s*\[([^\]]+)\]\s*$", line)
        if header:
            section = header.group(1).strip()
            continue
        m = re.match(r"^(\s*)([A-Za-z0-9_.-]+)(\s*=\s*)", line)
        if not m:
            continue
        full = f"{section}.{m.group(2)}" if section else m.group(2)
        if full in values:
            lines[i] = m.group(1) + m.group(2) + m.group(3) + _toml_value(values[full])
            seen.add(full)
    missing = set(values) - seen
    if missing:
        raise KeyError(f"{path} has no {sorted(missing)}")
    path.write_text("\n".join(lines) + "\n")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return json.dumps(str(value))


# ---- waiting ----


def wait_until(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.2) -> T:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


# ---- CometBFT RPC (synchronous) ----


class RpcError(Exception):
    pass


def rpc(url: str, method: str, timeout: float = 5.0, **params: Any) -> Any:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode()
    req = urllib.request.Request(url.rstrip("/") + "/", body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            msg = json.loads(resp.read())
    except (OSError, ValueError) as exc:  # URLError, connection refused, timeouts, bad JSON
        raise RpcError(f"{method} at {url}: {exc!r}") from exc
    if "error" in msg:
        raise RpcError(f"{method} at {url}: {msg['error']}")
    return msg["result"]


def height(url: str) -> int | None:
    """The node's latest committed height, or None when its RPC does not answer."""
    try:
        return int(rpc(url, "status", timeout=2)["sync_info"]["latest_block_height"])
    except RpcError:
        return None


def wait_for_height(url: str, target: int, timeout: float, what: str = "") -> int:
    return wait_until(lambda: (h := height(url)) is not None and h >= target and h,
                      timeout, what or f"{url} to reach height {target}")


def header_app_hashes(url: str, lo: int, hi: int) -> dict[int, str]:
    """Header app_hash of every block lo..hi (the state after block h-1), via `blockchain`."""
    out: dict[int, str] = {}
    top = hi
    while top >= lo:  # `blockchain` returns at most 20 metas per call, newest first
        res = rpc(url, "blockchain", minHeight=str(max(lo, top - 19)), maxHeight=str(top))
        for meta in res["block_metas"]:
            out[int(meta["header"]["height"])] = meta["header"]["app_hash"]
        top -= 20
    missing = set(range(lo, hi + 1)) - set(out)
    assert not missing, f"{url} returned no header for heights {sorted(missing)[:5]}"
    return out


def summary_app_hash(url: str, at: int) -> str:
    """The app's own record of its app hash after block ``at`` (abci_query /summary)."""
    res = rpc(url, "abci_query", path="/summary", data="", height=str(at), prove=False)["response"]
    assert int(res.get("code", 0)) == 0, f"/summary at {at} on {url}: {res.get('log')}"
    summary = pb.NodeSummary.FromString(base64.b64decode(res.get("value") or ""))
    assert summary.height == at, f"/summary asked for {at} answered {summary.height}"
    return summary.app_hash.hex().upper()


def app_hashes(url: str, lo: int, hi: int) -> dict[int, str]:
    """App hash after every block lo..hi as the app reports it."""
    return {h: summary_app_hash(url, h) for h in range(lo, hi + 1)}
