"""What the device-link server needs from the rest of the gateway.

The link server (``gateway/link_server.py``) speaks the device link
(docs/LINK_PROTOCOL.md) and knows nothing of queues, the chain or gRPC; the
gateway service implements :class:`LinkBackend` over its durable store. Tests
use :class:`MemoryBackend`. All methods are synchronous and fast (LMDB or
memory); durability guarantees are stated per method.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


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


class LinkBackend(Protocol):
    def identity_secret(self) -> bytes:
        """The gateway's HMAC secret: origin of the identity tokens it gave devices."""

    def device_for_link(self, link_id: bytes) -> PairedDevice | None:
        """The paired device with this link id, or None."""

    def store_ticket(self, ticket_id: bytes, ticket: Ticket) -> None:
        """Remember a resumption ticket (durable: survives a gateway restart)."""

    def take_ticket(self, ticket_id: bytes) -> Ticket | None:
        """Return and delete a ticket (single use), or None if unknown."""

    def pending(self, link_id: bytes, max_bytes: int) -> tuple[list[QueuedRequest], bool]:
        """Unanswered, unexpired requests for the device in queue order, at most
        ``max_bytes`` of them; the bool says whether more are waiting."""

    def delivered(self, link_id: bytes, request_ids: list[bytes]) -> None:
        """The device acknowledged receipt (durable)."""

    def answered(self, link_id: bytes, answers: list[DeviceAnswer]) -> list[bytes]:
        """Store responses durably; return the ids stored (then ACKed to the device).
        Answers for unknown, cancelled or expired requests are acknowledged and dropped."""

    def revoked_since_last_wake(self, link_id: bytes) -> list[bytes]:
        """Revoked tags the device has not been told about yet."""

    def contact(self, link_id: bytes, now_ms: int, sleep_s: int | None) -> None:
        """The device was seen now; ``sleep_s`` is its announced next wake (BYE)."""


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
    contacts: list[tuple[bytes, int, int | None]] = field(default_factory=list)

    def identity_secret(self) -> bytes:
        return self.secret

    def device_for_link(self, link_id: bytes) -> PairedDevice | None:
        return self.devices.get(link_id)

    def store_ticket(self, ticket_id: bytes, ticket: Ticket) -> None:
        self.tickets[ticket_id] = ticket

    def take_ticket(self, ticket_id: bytes) -> Ticket | None:
        return self.tickets.pop(ticket_id, None)

    def pending(self, link_id: bytes, max_bytes: int) -> tuple[list[QueuedRequest], bool]:
        out, size = [], 0
        waiting = [r for r in self.queues.get(link_id, []) if r.request_id not in self.answers]
        for req in waiting:
            cost = len(req.args) + len(req.request_token) + 64
            if out and size + cost > max_bytes:
                return out, True
            out.append(req)
            size += cost
        return out, False

    def delivered(self, link_id: bytes, request_ids: list[bytes]) -> None:
        self.acked.update(request_ids)

    def answered(self, link_id: bytes, answers: list[DeviceAnswer]) -> list[bytes]:
        for a in answers:
            self.answers.setdefault(a.request_id, a)
        return [a.request_id for a in answers]

    def revoked_since_last_wake(self, link_id: bytes) -> list[bytes]:
        return self.revoked.pop(link_id, [])

    def contact(self, link_id: bytes, now_ms: int, sleep_s: int | None) -> None:
        self.contacts.append((link_id, now_ms, sleep_s))
