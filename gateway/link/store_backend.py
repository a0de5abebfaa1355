"""The :class:`LinkBackend` the link server uses, over the durable store.

Thin on purpose: the store does the work; this adapter supplies the clock,
refuses tickets of devices unpaired since, and counts stored responses by
outcome. Reads are LMDB read transactions (inline, microseconds); durable
writes are the store's operations, awaited (the store's writer process
commits them: the event loop never waits for an fsync, and the writes one
device flight starts - ticket, delivered, answered, revocation cursor -
share one transaction, with other devices' writes too); last contact is a
hint (GatewayStore.note_contact).
Link sessions and handshakes are counted by the link server itself
(LinkMetrics, exported by metrics.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Container

from .backend import DeviceAnswer, PairedDevice, QueuedRequest, Ticket, issued_for
from ..metrics import GatewayMetrics
from ..store.store import GatewayStore, State
from ..twins import model


def _now_ms() -> int:
    return int(time.time() * 1000)


class StoreLinkBackend:
    def __init__(self, store: GatewayStore, secret: bytes, metrics: GatewayMetrics | None = None,
                 clock: Callable[[], int] = _now_ms, revoked: Container[bytes] = frozenset()) -> None:
        self.store, self.secret, self.clock = store, secret, clock
        self.metrics = metrics or GatewayMetrics()
        self.revoked = revoked  # the gateway's revocation hashes in force (the service's set)

    def identity_secret(self) -> bytes:
        return self.secret

    def device_for_link(self, link_id: bytes) -> PairedDevice | None:
        dev = self.store.device(link_id)
        if dev is None:
            return None
        return PairedDevice(dev.link_id, dev.pseudonym, dev.root_token, dev.encrypt, dev.duty_cycle_s)

    def ticket(self, ticket_id: bytes) -> Ticket | None:
        ticket = self.store.ticket(ticket_id, self.clock())
        if ticket is None or not issued_for(ticket, self.device_for_link(ticket.link_id)):
            return None  # unpaired since the ticket was issued, or paired again under another root
        return ticket

    def pending(self, link_id: bytes, max_bytes: int) -> tuple[list[QueuedRequest], bool]:
        if getattr(self.revoked, "stale", False):
            return [], False  # fail closed: no work leaves while revocations may be stale
        return self.store.pending(link_id, max_bytes, self.clock())

    def revocations(self, link_id: bytes) -> tuple[list[bytes], int]:
        return self.store.revocations(link_id, self.clock() // 1000)

    def barred(self) -> Container[bytes]:
        view = getattr(self.revoked, "view", None)
        return view() if view is not None else self.revoked

    def twin_delta(self, link_id: bytes) -> tuple[list[tuple[str, bytes, int]], list[bytes]]:
        twin = self.store.twin(link_id)
        if twin is None:
            return [], []
        if getattr(self.revoked, "stale", False):
            return [], []  # fail closed, as pending(): nothing leaves while revocations may be stale
        barred = self.barred()
        return model.delta(twin, twin.applied, barred if len(barred) else ())

    def contact(self, link_id: bytes, now_ms: int, sleep_s: int | None) -> None:
        self.store.note_contact(link_id, now_ms, sleep_s)

    async def rotate_ticket(self, spent: bytes | None, ticket_id: bytes | None,
                            ticket: Ticket | None) -> None:
        await self.store.rotate_ticket(spent, ticket_id, ticket)

    async def delivered(self, link_id: bytes, request_ids: list[bytes]) -> None:
        await self.store.delivered(link_id, request_ids)

    async def answered(self, link_id: bytes, answers: list[DeviceAnswer]) -> list[bytes]:
        ids, finished = await self.store.answered(link_id, answers, self.clock())
        for _, state in finished:
            self.metrics.responses.labels(State(state).name.lower()).inc()
        return ids

    async def revocations_sent(self, link_id: bytes, position: int) -> None:
        await self.store.revocations_sent(link_id, position)

    async def twin_report(self, link_id: bytes, applied: int, reported: list[tuple[str, bytes]],
                          replace: bool) -> None:
        await self.store.twin_report(link_id, applied, reported, replace, self.clock())

    async def twin_withdraw(self, link_id: bytes, hashes: list[bytes]) -> None:
        await self.store.twin_withdraw(hashes, self.clock())
