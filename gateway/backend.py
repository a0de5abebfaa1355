"""The :class:`LinkBackend` the link server uses, over the durable store.

Thin on purpose: the store does the work (and the fsyncs); this adapter
supplies the clock, refuses tickets of devices unpaired since, and counts
stored responses by outcome. Link sessions and handshakes are counted by the
link server itself (LinkMetrics, exported by metrics.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from edgistry.gateway.link_backend import DeviceAnswer, PairedDevice, QueuedRequest, Ticket
from edgistry.gateway.metrics import GatewayMetrics
from edgistry.gateway.store import GatewayStore, State


def _now_ms() -> int:
    return int(time.time() * 1000)


class StoreLinkBackend:
    def __init__(self, store: GatewayStore, secret: bytes, metrics: GatewayMetrics | None = None,
                 clock: Callable[[], int] = _now_ms) -> None:
        self.store, self.secret, self.clock = store, secret, clock
        self.metrics = metrics or GatewayMetrics()

    def identity_secret(self) -> bytes:
        return self.secret

    def device_for_link(self, link_id: bytes) -> PairedDevice | None:
        dev = self.store.device(link_id)
        if dev is None:
            return None
        return PairedDevice(dev.link_id, dev.pseudonym, dev.root_token, dev.encrypt, dev.duty_cycle_s)

    def store_ticket(self, ticket_id: bytes, ticket: Ticket) -> None:
        self.store.store_ticket(ticket_id, ticket)

    def take_ticket(self, ticket_id: bytes) -> Ticket | None:
        ticket = self.store.take_ticket(ticket_id, self.clock())
        if ticket is not None and self.store.device(ticket.link_id) is None:
            return None  # unpaired since the ticket was issued
        return ticket

    def pending(self, link_id: bytes, max_bytes: int) -> tuple[list[QueuedRequest], bool]:
        return self.store.pending(link_id, max_bytes, self.clock())

    def delivered(self, link_id: bytes, request_ids: list[bytes]) -> None:
        self.store.delivered(link_id, request_ids, self.clock())

    def answered(self, link_id: bytes, answers: list[DeviceAnswer]) -> list[bytes]:
        ids, changed = self.store.answered(link_id, answers, self.clock())
        for rec in changed:
            self.metrics.responses.labels(State(rec.state).name.lower()).inc()
        return ids

    def revoked_since_last_wake(self, link_id: bytes) -> list[bytes]:
        return self.store.revoked_since_last_wake(link_id, self.clock() // 1000)

    def contact(self, link_id: bytes, now_ms: int, sleep_s: int | None) -> None:
        self.store.contact(link_id, now_ms, sleep_s)
