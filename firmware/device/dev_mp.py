"""The device program's MicroPython port: blocking sockets, ``select.poll``, ``time.sleep``.

It runs the portable core (dev_core.Wake) over one TCP connection per wake,
or, with ``"link": "udp"`` in device.json, dev_dgram.DgramWake over one UDP
socket (same host and port number), and sleeps between wakes with ``time.sleep`` (a board may swap in
``machine.deepsleep``: the state is on flash, so the next boot resumes where
this one stopped). It also runs on CPython, which is how the tests drive it
beside the real Unix port.

The board's directory (``edgistry device export`` writes it)::

    secret         the device secret (raw bytes)
    device.json    {"version": 1, "link_id", "root_token", "identity_token" (hex),
                    "gateway": "HOST:PORT" (the gateway's device link), "duty_cycle_s",
                    "encrypt", "link": "tcp" | "udp" (default tcp)}
    state.a/.b     durable state, two alternating slots (dev_store.py)

Forward secrecy: a board has no X25519 here, so its HELLO carries no key and the
gateway answers without one: the session keys come from the pairing secret
alone. This is negotiated in the open (the key's absence is in the HELLO that
both MACs cover, so nobody can strip it unnoticed) and reported
(``Report.forward_secret`` is False); it is never a silent downgrade of a
device that asked for it: ``require_forward_secrecy`` in device.json makes
the board refuse to start (docs/DEVICE.md).
"""

import json
import os
import select
import socket
import time

from .dev_boot import check_platform, unix_ms, ticks_ms, ticks_diff
from .dev_core import Wake, WakeFailed, backoff_delay, READ_SIZE, WAKE_TIMEOUT_S
from .dev_state import DevState, unhex
from .dev_store import SlotStore
from ..link.link_device import DeviceSession
from ..link.link_errors import E_AUTH, E_TICKET

MAX_CONFIG_BYTES = 4096
MAX_BOARD_ENTRIES = 32   # open requests a board stores; more wait at the gateway
MAX_BOARD_REVOKED = 64


def _read_file(path, limit):
    """The file's bytes, refused beyond ``limit``; read at its own size, so the heap
    gives one block of that size, not of the limit."""
    size = os.stat(path)[6]
    if size > limit:
        raise ValueError(path + " is larger than expected")
    with open(path, "rb") as fh:
        data = fh.read(size)
    if len(data) != size:
        raise ValueError(path + " changed while read")
    return data


def _rand01():
    return int.from_bytes(os.urandom(4), "big") / 4294967296


def _say(text):
    print("edgistry device: " + text)


class Board:
    """A device directory brought to life on a board (or the Unix port)."""

    def __init__(self, root, services, on_twin=None, log=_say):
        check_platform()
        self.root = root
        self.services = services
        self.on_twin = on_twin
        self.log = log
        self.secret = _read_file(root + "/secret", 64)
        cfg = json.loads(_read_file(root + "/device.json", MAX_CONFIG_BYTES))
        self.services_spec = cfg.get("services") or []  # device.json's demo services (main.py)
        if cfg.get("require_forward_secrecy"):
            raise ValueError("this board has no X25519: it cannot give the forward secrecy "
                             "device.json requires (docs/DEVICE.md)")
        self.link_id = unhex(cfg["link_id"])
        self.root_token = unhex(cfg["root_token"])
        self.identity = unhex(cfg["identity_token"])
        host, port = cfg["gateway"].rsplit(":", 1)
        self.host = host.strip("[]")
        self.port = int(port)
        self.duty_cycle_s = int(cfg.get("duty_cycle_s") or 0)
        self.encrypt = bool(cfg.get("encrypt"))
        self.link = cfg.get("link") or "tcp"
        if self.link not in ("tcp", "udp"):
            raise ValueError("device.json: link is tcp or udp, not %r" % (self.link,))
        self.state = DevState(SlotStore(root, self.secret))
        self.state.max_entries = MAX_BOARD_ENTRIES
        self.state.max_acked = MAX_BOARD_ENTRIES
        self.state.max_revoked = MAX_BOARD_REVOKED
        self.failures = 0
        self.udp_retries = None     # datagrams sent again per turn (None: dev_dgram's default)
        self.udp_timeout_ms = None  # the first wait for a reply, doubled per retry (likewise)

    def report(self, key, value):
        """Set a reported twin property (None removes it); sent at the next wake."""
        self.state.report_twin(key, None if value is None else json.dumps(value))
        self.state.save()

    # -- one wake --

    def wake(self):
        """Connect, run one session to BYE; a Report, or WakeFailed."""
        if self.link == "udp":  # imported here: a TCP board does not ship the datagram modules
            from .dev_mp_udp import wake_udp
            return wake_udp(self)
        ticket = self.state.take_ticket(unix_ms())
        if ticket is not None:
            self.state.save()  # a ticket is spent once sent, whatever happens next
        session = DeviceSession(self.secret, self.root_token, self.link_id, self.identity,
                                os.urandom, ticket=ticket, require_encrypt=self.encrypt)
        w = Wake(self.state, self.services, session, self.secret, unix_ms, ticks_ms,
                 self.duty_cycle_s, log=self.log, on_twin=self.on_twin)
        sock = send = None
        try:
            try:
                addr = socket.getaddrinfo(self.host, self.port)[0][-1]
                sock = socket.socket()
                sock.connect(addr)
            except OSError as exc:
                raise WakeFailed("cannot reach %s:%d: %s" % (self.host, self.port, exc))
            # a blocking socket's stream write sends it all where a port has no sendall
            send = getattr(sock, "sendall", None) or sock.write
            w._flush = send
            poller = select.poll()
            poller.register(sock, select.POLLIN)
            start = ticks_ms()
            send(w.start())
            while True:
                left = WAKE_TIMEOUT_S * 1000 - ticks_diff(ticks_ms(), start)
                if left <= 0 or not poller.poll(left):
                    raise WakeFailed("no BYE within %d s" % WAKE_TIMEOUT_S)
                data = sock.recv(READ_SIZE)
                if not data:
                    raise WakeFailed("the gateway closed the connection")
                done = w.feed(data)
                out = w.take()
                if out:
                    send(out)
                if done:
                    return w.report
        except WakeFailed as exc:
            exc.resumed_with_ticket = ticket is not None
            try:
                out = w.take()
                if out and send is not None:
                    send(out)
            except OSError:
                pass
            raise
        except OSError as exc:
            failed = WakeFailed("link to %s:%d failed: %s" % (self.host, self.port, exc))
            failed.resumed_with_ticket = ticket is not None
            raise failed
        finally:
            if sock is not None:
                sock.close()

    def wake_with_fallback(self):
        """One wake; a refused ticket gets one immediate full-handshake retry."""
        try:
            return self.wake()
        except WakeFailed as exc:
            if exc.resumed_with_ticket and exc.code in (E_TICKET, E_AUTH):
                self.log("resumption refused (%s); full handshake" % exc)
                return self.wake()
            raise

    # -- the duty cycle --

    def run(self, wakes=0, sleep=time.sleep):
        """Wake, serve, sleep; ``wakes`` > 0 stops after that many successful wakes."""
        done = 0
        while True:
            try:
                r = self.wake_with_fallback()
                self.failures = 0
                done += 1
                self.log("wake %s%s%s: %d received, %d run, %d deduplicated, %d interrupted, "
                         "%d delivered, twin %d; sleeping %d s"
                         % ("resumed" if r.resumed else "full handshake",
                            " (encrypted)" if r.encrypted else "",
                            " over udp" if self.link == "udp" else "", r.received, r.executed,
                            r.deduplicated, r.interrupted, r.delivered, r.twin_applied, r.sleep_s))
                if wakes and done >= wakes:
                    return r
                delay = r.sleep_s
            except WakeFailed as exc:
                delay = backoff_delay(self.failures, self.duty_cycle_s, _rand01())
                self.failures += 1
                self.log("wake failed (%s); retrying in %d ms" % (exc, int(delay * 1000)))
            sleep(delay)
