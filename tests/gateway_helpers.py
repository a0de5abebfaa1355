"""Helpers for gateway tests: a scripted device that wakes once over the real link,
a node home with its gateway on free ports, and pairing through the real CLI path."""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

from edgistry.config import NodeConfig
from edgistry.firmware.caplets import api as cl
from edgistry.firmware.link.link_session import (
    CLOSED, NEED_DATA, Ack, Bye, Established, Requests, Responses,
)
from edgistry.firmware.link.link_device import OK, DeviceSession, check_request, request_sequence
from proc_helpers import free_port

SENSOR_MANIFEST = {
    "duty_cycle_s": 2, "encrypt": False, "location": {"lat": 46.52, "lon": 6.57},
    "services": [{"type": "sensor", "methods": [
        {"name": "read", "cache_max_age_s": 30, "mutating": False},
        {"name": "info", "cache_max_age_s": 0, "mutating": False}]},
        {"type": "valve", "methods": [{"name": "get", "mutating": False}, {"name": "set", "mutating": True}]}],
}


def make_device_home(path: Path, manifest: dict | None = None):
    """A device home in the device runtime's format (firmware/runtime/home.py)."""
    from edgistry.firmware.runtime.home import DeviceHome

    home = DeviceHome(path)
    home.create(dict(manifest or SENSOR_MANIFEST))
    return home


def node_home(path: Path, chain_id: str = "gw-test") -> tuple[NodeConfig, dict[str, int]]:
    """``edgistry init`` a home and move every listener to a free port."""
    from edgistry.cluster.home import init_home

    cfg = init_home(path, chain_id)
    ports = {k: free_port() for k in ("rpc", "grpc", "link", "http", "peer")}
    cfg.rpc_listen, cfg.rpc_url = f"127.0.0.1:{ports['rpc']}", f"http://127.0.0.1:{ports['rpc']}"
    cfg.grpc_listen = f"127.0.0.1:{ports['grpc']}"
    cfg.link_listen = f"127.0.0.1:{ports['link']}"
    cfg.http_listen = f"127.0.0.1:{ports['http']}"
    cfg.peer_listen = f"127.0.0.1:{ports['peer']}"
    cfg.block_interval_ms = 50
    cfg.extra["gateway"] = {"sweep_interval_s": 0.2, "liveness_interval_s": 1.0, "peer_roots_interval_s": 0.5}
    cfg.save()
    return cfg, ports


def wait_file(path: Path, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return path.read_text().strip()
        time.sleep(0.05)
    raise TimeoutError(f"{path} did not appear")


Handler = Callable[[dict], tuple[int, bytes, str]]


def echo_handler(item: dict) -> tuple[int, bytes, str]:
    return OK, json.dumps({"method": item["method"], "args": json.loads(item["args"] or b"null")}).encode(), ""


class ScriptedDevice:
    """One wake of a device over the real link: handshake, take requests, answer, BYE.

    Verifies every request token itself (as the firmware does) and counts wakes,
    so tests can assert that a cached read did not wake it.
    """

    def __init__(self, device_home, endpoint: str) -> None:
        self.home = device_home
        self.secret = device_home.secret()
        self.root = device_home.root_token()
        self.link_id = device_home.link_id()
        self.identity = device_home.paired().identity_token
        host, _, port = endpoint.rpartition(":")
        self.addr = (host, int(port))
        self.last_sequence: int | None = None
        self.wakes = 0
        self.seen: list[dict] = []

    def wake(self, handler: Handler = echo_handler, answer: bool = True, timeout: float = 10.0,
             sleep_s: int = 2) -> list[dict]:
        """Connect, run one session; return the requests received."""
        self.wakes += 1
        s = DeviceSession(self.secret, self.root, self.link_id, self.identity, os.urandom)
        got: list[dict] = []
        with socket.create_connection(self.addr, timeout=timeout) as sock:
            sock.sendall(s.initiate())
            deadline = time.monotonic() + timeout
            waiting_ack: set[bytes] = set()
            done = False
            while not done and time.monotonic() < deadline:
                data = sock.recv(65536)
                if not data:
                    break
                s.receive_data(data)
                while True:
                    ev = s.next_event()
                    out = s.data_to_send()
                    if out:
                        sock.sendall(out)
                    if ev is NEED_DATA:
                        break
                    if ev is CLOSED:
                        done = True
                        break
                    if isinstance(ev, Established):
                        continue
                    if isinstance(ev, Requests):
                        items = list(ev.items)
                        got.extend(items)
                        self.seen.extend(items)
                        if items:
                            sock.sendall(s.send(Ack([i["request_id"] for i in items])))
                        if not answer:
                            sock.sendall(s.send(Bye(sleep_s)))
                            done = True
                            break
                        answers = []
                        for item in sorted(items, key=request_sequence):
                            try:
                                seq = check_request(item, self.secret, int(time.time()), self.last_sequence)
                                self.last_sequence = seq
                                status, payload, err = handler(item)
                            except cl.TokenError as exc:
                                status, payload, err = 2, b"", str(exc)
                            answers.append({"request_id": item["request_id"], "status": status,
                                            "payload": payload, "error": err})
                        if answers:
                            waiting_ack = {a["request_id"] for a in answers}
                            sock.sendall(s.send(Responses(answers)))
                        if not ev.more and not waiting_ack:
                            sock.sendall(s.send(Bye(sleep_s)))
                            done = True
                            break
                    elif isinstance(ev, Ack):
                        waiting_ack -= set(ev.ids)
                        if not waiting_ack:
                            sock.sendall(s.send(Bye(sleep_s)))
                            done = True
                            break
        return got


def count_enqueue_ops(store) -> list[int]:
    """Wrap ``store.enqueue``: the returned list gets the size of every
    enqueue operation (the writer may still commit several in one transaction)."""
    commits: list[int] = []
    real = store.enqueue

    async def counting(items, urgent=False):
        commits.append(len(items))
        return await real(items, urgent)

    store.enqueue = counting
    return commits


async def pair_device(store, manifest: dict, duty_cycle_s: int = 5):
    """A new device (a fresh root) paired in ``store``: (its Device record, its root token)."""
    from edgistry.gateway.store.store import Device, new_id
    from edgistry.gateway.tokens import auth

    root = cl.root(cl.new_secret())
    dev = Device(new_id(), auth.pseudonym_for(root.to_bytes()), root.to_bytes(), manifest, 0, 7, 1,
                 duty_cycle_s=duty_cycle_s)
    await store.put_device(dev)
    return dev, root
