"""Helpers for link-server and device-runtime tests: homes, backends, servers."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from edgistry.firmware.caplets import api as cl
from edgistry.firmware.link import link_wire as wire
from edgistry.firmware.runtime.device import Device
from edgistry.firmware.runtime.home import DeviceHome
from edgistry.gateway.link.backend import MemoryBackend, PairedDevice, QueuedRequest
from edgistry.gateway.link.server import LinkServer
from edgistry.gateway.tokens.auth import identity_token

GATEWAY_SECRET = bytes(range(100, 132))
SERVICES = {"services": [{"type": "sensor", "methods": ["read", "info"]},
                         {"type": "actuator", "methods": ["get", "set", "toggle"]}],
            "duty_cycle_s": 7}


def make_home(path: Path, backend: MemoryBackend | None, port: int = 0, encrypt: bool = False,
              manifest: dict | None = None) -> DeviceHome:
    """A device home, paired with ``backend`` (registered there) at 127.0.0.1:port."""
    home = DeviceHome(path)
    home.create(dict(manifest or SERVICES, encrypt=encrypt))
    lid = home.link_id()
    if backend is not None:
        backend.devices[lid] = PairedDevice(lid, os.urandom(16), home.root_token(), encrypt)
    home.write_paired(f"127.0.0.1:{port}", identity_token(GATEWAY_SECRET, lid).to_bytes(),
                      "pseudo", "gw-test")
    return home


def repoint(home: DeviceHome, port: int) -> None:
    p = home.paired()
    home.write_paired(f"127.0.0.1:{port}", p.identity_token, p.pseudonym, p.gateway_id)


class Queue:
    """Queues requests for a device in a MemoryBackend, with real request tokens."""

    def __init__(self, backend: MemoryBackend, home: DeviceHome) -> None:
        self.backend = backend
        self.home = home
        self.link_id = home.link_id()
        self.app = cl.derive(home.root_token(), [cl.Service("sensor", ["*"]),
                                                 cl.Service("actuator", ["*"])])
        self.seq = int(time.time() * 1000)

    def add(self, service: str, method: str, args: bytes = b"", token: cl.Token | None = None,
            ttl_ms: int = 60_000) -> bytes:
        self.seq += 1
        rid = os.urandom(16)
        tok = cl.request_token(token or self.app, service, method, args, self.seq)
        self.backend.queues.setdefault(self.link_id, []).append(QueuedRequest(
            rid, service, method, args, tok.to_bytes(), int(time.time() * 1000) + ttl_ms))
        return rid


async def start_server(backend: MemoryBackend, **kw) -> LinkServer:
    kw.setdefault("handshake_timeout", 1.0)
    kw.setdefault("idle_timeout", 1.0)
    srv = LinkServer(backend, port=0, **kw)
    await srv.start()
    return srv


async def no_sleep(_: float) -> None:
    await asyncio.sleep(0)


def device(home: DeviceHome, **kw) -> Device:
    kw.setdefault("sleep", no_sleep)
    kw.setdefault("wake_timeout", 5.0)
    return Device(home, **kw)


async def read_to_eof(reader: asyncio.StreamReader, timeout: float = 5.0) -> bytes:
    """Everything until the server closes (bounded)."""
    out = b""
    async def loop():
        nonlocal out
        try:
            while chunk := await reader.read(65536):
                out += chunk
        except ConnectionError:
            pass
    await asyncio.wait_for(loop(), timeout)
    return out


def frame_types(data: bytes) -> list[int]:
    r = wire.FrameReader()
    r.feed(data)
    out = []
    while (f := r.next_frame()) is not None:
        out.append(f["type"])
    return out
