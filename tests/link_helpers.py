"""Helpers for device-link tests: paired identities, a key store, in-memory pumping."""

from __future__ import annotations

import hashlib
import os
import socket
import time
from dataclasses import dataclass, field

from edgistry.firmware.caplets import api as cl
from edgistry.firmware.link.link_session import CLOSED, NEED_DATA
from edgistry.firmware.link.link_device import DeviceSession
from edgistry.firmware.link.link_gateway import GatewaySession, identity_name
from edgistry.firmware.link.link_errors import LinkError
from edgistry.firmware.link.x25519 import x25519

GATEWAY_SECRET = bytes(range(100, 132))


class DetRand:
    """Deterministic 'random' bytes (SHA-256 counter mode), same on MicroPython."""

    def __init__(self, seed: bytes) -> None:
        self.seed = seed
        self.n = 0

    def __call__(self, k: int) -> bytes:
        out = b""
        while len(out) < k:
            self.n += 1
            out += hashlib.sha256(self.seed + self.n.to_bytes(4, "big")).digest()
        return out[:k]


@dataclass
class Dev:
    """A paired device as the tests see it."""

    secret: bytes
    link_id: bytes
    root: cl.Token
    identity: bytes

    @classmethod
    def make(cls, n: int = 0) -> Dev:
        secret = hashlib.sha256(b"device secret %d" % n).digest()
        link_id = hashlib.sha256(b"link id %d" % n).digest()[:16]
        identity = cl.mint(GATEWAY_SECRET, [cl.Identity(identity_name(link_id))]).to_bytes()
        return cls(secret, link_id, cl.root(secret), identity)

    def session(self, rand=os.urandom, ticket=None, fs=False, **kw) -> DeviceSession:
        return DeviceSession(self.secret, self.root.to_bytes(), self.link_id, self.identity, rand,
                             ticket=ticket, x25519=x25519() if fs else None, **kw)

    def request(self, service: str, method: str, args: bytes, seq: int, rid: bytes | None = None,
                token_args: bytes | None = None, secret: bytes | None = None) -> dict:
        app = cl.derive(cl.root(secret or self.secret), [cl.Service(service, ["*"])])
        tok = cl.request_token(app, service, method, args if token_args is None else token_args, seq)
        return {"request_id": rid or hashlib.sha256(b"%d" % seq).digest()[:16], "service": service,
                "method": method, "args": args, "request_token": tok.to_bytes(), "expires_at_ms": 0}


@dataclass
class Keys:
    """The GatewaySession key store, in memory."""

    devices: dict = field(default_factory=dict)   # link_id -> (root bytes, encrypt)
    tickets: dict = field(default_factory=dict)

    def add(self, dev: Dev, encrypt: bool = False) -> None:
        self.devices[dev.link_id] = (dev.root.to_bytes(), encrypt)

    def identity_secret(self) -> bytes:
        return GATEWAY_SECRET

    def device(self, link_id):
        return self.devices.get(link_id)

    def store_ticket(self, ticket_id, link_id, secret, expires_at_ms):
        self.tickets[ticket_id] = (link_id, secret, expires_at_ms)

    def take_ticket(self, ticket_id):
        return self.tickets.pop(ticket_id, None)


def gateway(keys: Keys, rand=os.urandom, fs=False, now_ms=None) -> GatewaySession:
    return GatewaySession(keys, rand, now_ms or (lambda: int(time.time() * 1000)),
                          x25519() if fs else None)


def events(session) -> list:
    """Drain events until NEED_DATA (an exception is returned as the last item)."""
    out = []
    while True:
        try:
            ev = session.next_event()
        except LinkError as exc:
            out.append(exc)
            return out
        if ev is NEED_DATA or ev is CLOSED:
            return out
        out.append(ev)


def handshake(d: DeviceSession, g: GatewaySession) -> tuple[list, list, list[bytes]]:
    """Run the handshake in memory; returns (device events, gateway events, d->g wire chunks)."""
    dev_ev, gw_ev, wire_d = [], [], []
    data = d.initiate()
    for _ in range(4):
        wire_d.append(data)
        g.receive_data(data)
        gw_ev += events(g)
        d.receive_data(g.data_to_send())
        dev_ev += events(d)
        data = d.data_to_send()
        if not data:
            break
    return dev_ev, gw_ev, wire_d


def raw_exchange(addr, data: bytes, wait: float = 0.3) -> list[bytes]:
    """Send one datagram from a fresh UDP socket; every answer within ``wait`` seconds."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.sendto(data, addr)
        s.settimeout(wait)
        out = []
        while True:
            try:
                out.append(s.recv(65536))
            except (TimeoutError, socket.timeout):
                return out
    finally:
        s.close()
