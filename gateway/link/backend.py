"""What the device-link server needs from the rest of the gateway.

The link server (``gateway/link/server.py``) speaks the device link
(docs/LINK_PROTOCOL.md) and knows nothing of queues, the chain or gRPC; the
gateway implements :class:`LinkBackend` over its durable store
(``gateway/link/store_backend.py``: StoreLinkBackend). Tests use :class:`MemoryBackend`.

The contract has three kinds of method:

* **reads** (plain methods): fast and non-blocking (memory, or an LMDB read
  transaction: microseconds, no fsync), so the link server calls them inline
  on its event loop;
* **hints** (plain methods): ``contact`` records what is worth knowing but
  not worth an fsync; it is kept in memory and persisted later (periodically,
  or with the next durable write). A crash may lose the last few seconds of
  hints, never anything acknowledged;
* **durable writes** (``async``): they return once the write is on disk.
  Writes *started* in the same event-loop turn (e.g. tasks created one after
  the other before awaiting any) are applied in the order they were started
  and may share one transaction and one fsync (group commit), with the writes
  of other connections too; a failing commit fails every write of it. The
  link server awaits them before it sends whatever acknowledges them (ACK of
  RESPONSES, RESUMED after a ticket rotation). A durable write must not block
  the event loop (StoreLinkBackend hands them to the store's group-commit writer).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Container
from dataclasses import dataclass, field
from typing import Protocol

from ..probe import LINK_BACKEND, Probe
from . import frame_sizes as fs
from ..twins import model
from ..twins.model import Twin


@dataclass(frozen=True)
class PairedDevice:
    link_id: bytes  # 16 bytes, the device's name on the link
    pseudonym: bytes  # 16 bytes, its name on the chain
    root_token: bytes  # binary CAPLets root token; origin: the device
    encrypt: bool = False  # encrypt link payloads
    duty_cycle_s: int = 0


@dataclass(frozen=True)
class QueuedRequest:
    request_id: bytes  # 16 bytes
    service: str
    method: str
    args: bytes  # JSON
    request_token: bytes  # binary leaf request token (service, method, args digest, sequence)
    expires_at_ms: int
    chain: tuple[bytes, ...] = ()  # revocation hashes of the client token's tags (delivery refuses revoked)


@dataclass(frozen=True)
class DeviceAnswer:
    request_id: bytes
    status: int  # 0 ok; docs/LINK_PROTOCOL.md lists the others
    payload: bytes = b""
    error: str = ""


@dataclass(frozen=True)
class Ticket:
    link_id: bytes
    resumption_secret: bytes
    expires_at_ms: int
    # root_fingerprint() of the root token the device was paired with when this was
    # issued: a link id unpaired and paired again under another root (another device,
    # or a new home) must not be resumable with what the old one held. b"": a record
    # from before the field, taken as it was.
    root_fp: bytes = b""


ROOT_FP_DOMAIN = b"edgistry/link/root-fingerprint/v1\0"


def root_fingerprint(root_token: bytes) -> bytes:
    """What a ticket records of the pairing it belongs to (16 bytes of a domain-separated
    SHA-256 of the root token: the root itself never goes into a ticket record)."""
    return hashlib.sha256(ROOT_FP_DOMAIN + root_token).digest()[:16]


def issued_for(ticket: Ticket, device: PairedDevice | None) -> bool:
    """Whether ``ticket`` belongs to ``device`` as paired now (same link, same root)."""
    if device is None or device.link_id != ticket.link_id:
        return False
    return not ticket.root_fp or ticket.root_fp == root_fingerprint(device.root_token)


class LinkBackend(Protocol):
    # ---- reads ----

    def identity_secret(self) -> bytes:
        """The gateway's HMAC secret: origin of the identity tokens it gave devices."""

    def device_for_link(self, link_id: bytes) -> PairedDevice | None:
        """The paired device with this link id, or None."""

    def ticket(self, ticket_id: bytes) -> Ticket | None:
        """The resumption ticket with this id (unexpired, of a device still
        paired, under the root it was issued for: :func:`issued_for`), or None.
        Does not spend it: single use is enforced by the link
        server, and made durable by :meth:`rotate_ticket` before it answers."""

    def pending(self, link_id: bytes, max_bytes: int) -> tuple[list[QueuedRequest], bool]:
        """Unanswered, unexpired requests for the device in queue order, at most
        ``max_bytes`` of them; the bool says whether more are waiting."""

    def revocations(self, link_id: bytes) -> tuple[list[bytes], int]:
        """Revocations the device has not been told about yet (each a 32-byte
        revocation hash and its be64 expiry), and the position to pass to
        :meth:`revocations_sent` once it has been."""

    def barred(self) -> Container[bytes]:
        """The revocation hashes in force now: a request whose client token's
        chain holds one is never delivered (delivery.py)."""

    def twin_delta(self, link_id: bytes) -> tuple[list[tuple[str, bytes, int]], list[bytes]]:
        """The desired twin changes the device has not applied, (key, value,
        version) ascending; it stops before a change made under a token now
        revoked and then also names its revocation hashes (to :meth:`twin_withdraw`)."""

    # ---- hints ----

    def contact(self, link_id: bytes, now_ms: int, sleep_s: int | None) -> None:
        """The device was seen now; ``sleep_s`` is its announced next wake (BYE).
        A hint: in memory at once, on disk later."""

    # ---- durable writes ----

    async def rotate_ticket(self, spent: bytes | None, ticket_id: bytes | None,
                            ticket: Ticket | None) -> None:
        """In one transaction: delete ticket ``spent`` (when not None) and store
        ``ticket`` under ``ticket_id`` (when not None)."""

    async def delivered(self, link_id: bytes, request_ids: list[bytes]) -> None:
        """The device acknowledged receipt."""

    async def answered(self, link_id: bytes, answers: list[DeviceAnswer]) -> list[bytes]:
        """Store responses; return the ids stored (then ACKed to the device).
        Answers for unknown, cancelled or expired requests are acknowledged and dropped."""

    async def revocations_sent(self, link_id: bytes, position: int) -> None:
        """The device was told the revocations up to ``position`` (from :meth:`revocations`)."""

    async def twin_report(self, link_id: bytes, applied: int, reported: list[tuple[str, bytes]],
                          replace: bool) -> None:
        """Store the device's twin report (docs/TWINS.md): applied version, reported properties."""

    async def twin_withdraw(self, link_id: bytes, hashes: list[bytes]) -> None:
        """Withdraw the undelivered twin changes made under revoked ``hashes``."""


@dataclass
class MemoryBackend:
    """An in-memory LinkBackend for tests of the link alone (not durable)."""

    secret: bytes
    devices: dict[bytes, PairedDevice] = field(default_factory=dict)
    tickets: dict[bytes, Ticket] = field(default_factory=dict)
    queues: dict[bytes, list[QueuedRequest]] = field(default_factory=dict)
    answers: dict[bytes, DeviceAnswer] = field(default_factory=dict)
    acked: set[bytes] = field(default_factory=set)
    revoked: dict[bytes, list[bytes]] = field(default_factory=dict)
    in_force: set[bytes] = field(default_factory=set)  # revocation hashes (barred())
    contacts: list[tuple[bytes, int, int | None]] = field(default_factory=list)
    twins: dict[bytes, Twin] = field(default_factory=dict)
    commits: int = 0  # durable writes called (each would be a transaction)

    def identity_secret(self) -> bytes:
        return self.secret

    def device_for_link(self, link_id: bytes) -> PairedDevice | None:
        return self.devices.get(link_id)

    def ticket(self, ticket_id: bytes) -> Ticket | None:
        ticket = self.tickets.get(ticket_id)
        if ticket is None or not issued_for(ticket, self.devices.get(ticket.link_id)):
            return None
        return ticket

    def pending(self, link_id: bytes, max_bytes: int) -> tuple[list[QueuedRequest], bool]:
        out, size = [], 0
        waiting = [r for r in self.queues.get(link_id, []) if r.request_id not in self.answers]
        for req in waiting:
            cost = fs.item_size({k: v for k, v in vars(req).items() if k != "chain"})  # DeviceRequest fields
            if out and size + cost > max_bytes:
                return out, True
            out.append(req)
            size += cost
        return out, False

    def revocations(self, link_id: bytes) -> tuple[list[bytes], int]:
        tags = list(self.revoked.get(link_id, []))
        return tags, len(tags)

    def barred(self) -> Container[bytes]:
        return self.in_force

    def twin_delta(self, link_id: bytes) -> tuple[list[tuple[str, bytes, int]], list[bytes]]:
        twin = self.twins.get(link_id)
        return model.delta(twin, twin.applied, self.in_force) if twin is not None else ([], [])

    def contact(self, link_id: bytes, now_ms: int, sleep_s: int | None) -> None:
        self.contacts.append((link_id, now_ms, sleep_s))

    async def rotate_ticket(self, spent: bytes | None, ticket_id: bytes | None,
                            ticket: Ticket | None) -> None:
        self.commits += 1
        if spent is not None:
            self.tickets.pop(spent, None)
        if ticket_id is not None and ticket is not None:
            self.tickets[ticket_id] = ticket

    async def delivered(self, link_id: bytes, request_ids: list[bytes]) -> None:
        self.commits += 1
        self.acked.update(request_ids)

    async def answered(self, link_id: bytes, answers: list[DeviceAnswer]) -> list[bytes]:
        self.commits += 1
        for a in answers:
            self.answers.setdefault(a.request_id, a)
        return [a.request_id for a in answers]

    async def revocations_sent(self, link_id: bytes, position: int) -> None:
        self.commits += 1
        del self.revoked.get(link_id, [])[:position]

    async def twin_report(self, link_id: bytes, applied: int, reported: list[tuple[str, bytes]],
                          replace: bool) -> None:
        self.commits += 1
        model.report(self.twins.setdefault(link_id, Twin()), applied, reported, replace, int(time.time() * 1000))

    async def twin_withdraw(self, link_id: bytes, hashes: list[bytes]) -> None:
        self.commits += 1
        if link_id in self.twins:
            model.withdraw(self.twins[link_id], set(hashes), int(time.time() * 1000))


READS = ("identity_secret", "device_for_link", "ticket", "pending", "revocations", "barred", "twin_delta", "contact")
WRITES = ("rotate_ticket", "delivered", "answered", "revocations_sent", "twin_report", "twin_withdraw")


class TimedBackend:
    """A LinkBackend that reports how long each call of the one it wraps took
    (``link.<call>``; durable writes as ``link.await.<call>``) to a probe
    (gateway/probe.py): how benchmarks see where a wake spends its time."""

    def __init__(self, inner: LinkBackend, probe: Probe) -> None:
        self.inner, self.probe = inner, probe
        for name in READS:
            setattr(self, name, self._timed(name, getattr(inner, name)))
        for name in WRITES:
            setattr(self, name, self._timed_async(name, getattr(inner, name)))

    def _timed(self, name: str, fn: Callable) -> Callable:
        label = LINK_BACKEND + name

        def call(*args):
            t = time.perf_counter()
            try:
                return fn(*args)
            finally:
                self.probe.span(label, time.perf_counter() - t)
        return call

    def _timed_async(self, name: str, fn: Callable) -> Callable:
        label = LINK_BACKEND + "await." + name

        async def call(*args):
            t = time.perf_counter()
            try:
                return await fn(*args)
            finally:
                self.probe.span(label, time.perf_counter() - t)
        return call
