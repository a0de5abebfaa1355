"""A CPython device for the datagram link: one wake over a real UDP socket.

Drives :class:`link_dgram.DgramDevice` (the same core the MicroPython
firmware runs): send the wake, take the reply, hand its requests to the
application, acknowledge (with the answers), go on while the gateway says
``more`` or answers wait for their acknowledgement. Lost datagrams are sent
again (as new datagrams with fresh sequence numbers); a saved context that
gets no reply after ``retries`` tries is given up for a full wake. Every
datagram is logged in :attr:`WakeLog.flights` with its size, so tests and
benchmarks count bytes and round trips from the device's own I/O.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from . import link_dgram as dg
from . import link_wire as wire

Handler = Callable[[dict], "list | dict"]  # Requests dict -> DeviceResponse dicts, or a Responses dict


@dataclass
class WakeLog:
    flights: list[tuple[str, int]] = field(default_factory=list)  # ("->" | "<-", bytes)
    rtts: int = 0
    full: bool = False
    forward_secret: bool = False
    resyncs: int = 0
    retries: int = 0
    first_ack: int = -1  # index in flights of the first ACK sent (what benchmarks stop at)
    delivered: list[dict] = field(default_factory=list)
    revoked: list[bytes] = field(default_factory=list)

    def bytes_until_first_ack(self) -> tuple[int, int]:
        upto = self.flights[:self.first_ack + 1] if self.first_ack >= 0 else self.flights
        return (sum(n for d, n in upto if d == "->"), sum(n for d, n in upto if d == "<-"))


class DgramClient:
    def __init__(self, root_token: bytes, link_id: bytes, addr: tuple[str, int], state: dict | None = None,
                 x25519=None, timeout: float = 1.0, retries: int = 3, persist: Callable[[dict], None] | None = None
                 ) -> None:
        self.dev = dg.DgramDevice(root_token, link_id, state, os.urandom, x25519)
        self.addr = addr
        self.timeout, self.retries = timeout, retries
        self.persist = persist or (lambda state: None)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.connect(addr)
        self.drop_next_sends = 0  # tests: datagrams to "lose" on the way out

    @property
    def state(self) -> dict:
        return self.dev.state

    def close(self) -> None:
        self.sock.close()

    def _send(self, data: bytes, log: WakeLog) -> None:
        self.persist(self.dev.state)  # counters are durable before the datagram leaves
        log.flights.append(("->", len(data)))
        if self.drop_next_sends:
            self.drop_next_sends -= 1
            return
        self.sock.send(data)

    def _recv(self, log: WakeLog) -> dict | None | bool:
        """The reply (Requests dict), None after a RESYNC, False on timeout."""
        deadline = time.monotonic() + self.timeout
        counted = False
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except (TimeoutError, socket.timeout):
                return False
            except ConnectionRefusedError:  # ICMP port unreachable: nobody there (yet)
                time.sleep(min(left, 0.05))
                continue
            log.flights.append(("<-", len(data)))
            if not counted:
                log.rtts += 1
                counted = True
            try:
                return self.dev.receive(data)
            except dg.DgramError:
                continue  # not for us / stale: keep waiting

    def _exchange(self, make: Callable[[], bytes], log: WakeLog) -> dict | None:
        for attempt in range(self.retries + 1):
            if attempt:
                log.retries += 1
            self._send(make(), log)
            got = self._recv(log)
            if got is not False:
                return got
        raise TimeoutError("no reply from the gateway")

    def wake(self, handle: Handler, full: bool = False) -> WakeLog:
        """One wake: deliveries go to ``handle`` (its answers travel in the next DATA)."""
        log = WakeLog()
        full = full or not self.dev.has_context()
        msg = None
        if not full:
            try:
                msg = self._exchange(lambda: self.dev.wake(False), log)
            except TimeoutError:
                full = True  # the context may be gone at the gateway: start over
        if full:
            log.full = True
            for _ in range(3):
                msg = self._exchange(lambda: self.dev.wake(True), log)
                if msg is not None:
                    break
                log.resyncs += 1  # counter resynchronised: wake again above it
            if msg is None:
                raise RuntimeError("gateway kept resynchronising")
            log.forward_secret = self.dev.forward_secret
        pending: list[dict] = []  # answers not sent yet: one datagram's worth goes with each ACK
        while True:
            log.delivered += msg["items"]
            log.revoked += msg["revoked"]
            res = handle(msg)  # answers, or a Responses dict (answers and a twin report)
            items, twin = (res.get("items", []), res.get("twin")) if isinstance(res, dict) else (res, None)
            chunks = split_answers(pending + list(items))
            if twin is not None:  # the report rides with the first answers (or alone)
                (chunks[0] if chunks else chunks.append({"items": []}) or chunks[0])["twin"] = twin
            first = chunks.pop(0) if chunks else None
            pending = [a for c in chunks for a in c["items"]]
            if first is None and not msg["more"]:
                if log.first_ack < 0:
                    log.first_ack = len(log.flights)
                self._send(self.dev.ack(None), log)  # nothing to wait for
                return log
            if log.first_ack < 0:
                log.first_ack = len(log.flights)
            # every reply is acknowledged by the next DATA, which carries the next answers
            msg = self._exchange(lambda: self.dev.ack(first), log)
            if msg is None:
                raise RuntimeError("unexpected resync")


# A DATA datagram's overhead around its Responses: type, kid and seq (<= 5 B each), ack
# reference, tag; what is left of MAX_DATAGRAM for the answers.
ANSWER_BUDGET = dg.MAX_DATAGRAM - 32


def split_answers(answers: list[dict]) -> list[dict]:
    """Responses dicts that each fit one datagram; an answer too large for any is
    replaced by status 4 ("too large for the datagram link")."""
    out: list[dict] = []
    items: list[dict] = []
    size = 0
    for a in answers:
        n = wire.field_size(len(wire.encode("DeviceResponse", a)))
        if n > ANSWER_BUDGET:
            a = {"request_id": a["request_id"], "status": 4, "error": "answer too large for the datagram link"}
            n = wire.field_size(len(wire.encode("DeviceResponse", a)))
        if items and size + n > ANSWER_BUDGET:
            out.append({"items": items})
            items, size = [], 0
        items.append(a)
        size += n
    if items:
        out.append({"items": items})
    return out
