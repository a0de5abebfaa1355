"""What the gateway's store holds: flat dataclasses and their record codec.

A record is a format byte (0x01) and a MessagePack array of the dataclass's
fields in declaration order. New fields are only ever appended, with
defaults, so an older record still loads. MessagePack (via msgspec) because a
request's record is rewritten at every step of its life: binary (no base64)
and about 5x cheaper than JSON per record.

Stores written before this format hold JSON objects (bytes as base64); they
still load, and are rewritten as records when next changed.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import json
import operator
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum

import msgspec

from ..ids import time_ordered_id
from ..link.backend import QueuedRequest, Ticket
from ..manifest import Manifest

RECORD_FORMAT = b"\x01"
_PACK = msgspec.msgpack.Encoder().encode
_UNPACK = msgspec.msgpack.Decoder().decode
_FIELDS: dict[type, Callable[[object], tuple]] = {}


class State(IntEnum):
    """Request states; the numbers are gateway.proto's RequestState."""

    QUEUED = 1
    DELIVERED = 2
    DONE = 3
    EXPIRED = 4
    CANCELLED = 5
    FAILED = 6
    REVOKED = 7  # the token that made it (or one it derives from) was revoked before it ran

    @property
    def active(self) -> bool:
        return self in (State.QUEUED, State.DELIVERED)


def _field_values(cls: type) -> Callable[[object], tuple]:
    """A record's field values in declaration order, read by one C call
    (operator.attrgetter): records are dumped on every queue change."""
    get = _FIELDS.get(cls)
    if get is None:
        names = tuple(f.name for f in dataclasses.fields(cls))
        many = operator.attrgetter(*names)
        get = _FIELDS[cls] = many if len(names) > 1 else (lambda obj: (many(obj),))
    return get


class _Record:
    """The record codec of the dataclasses below. Fields are read directly
    (not with ``dataclasses.asdict``, which deep-copies every value): a
    record is dumped on every durable queue change."""

    _bytes: tuple[str, ...] = ()  # the fields that were base64 in the JSON form

    def dump(self) -> bytes:
        return RECORD_FORMAT + _PACK(_field_values(type(self))(self))  # a tuple packs as an array

    @classmethod
    def load(cls, raw: bytes):
        if raw[:1] == RECORD_FORMAT:
            try:
                return cls(*_UNPACK(raw[1:]))
            except (msgspec.DecodeError, TypeError) as exc:
                raise ValueError(f"corrupt {cls.__name__} record: {exc}") from exc
        d = json.loads(raw)  # the older JSON form
        for k in cls._bytes:
            d[k] = base64.b64decode(d[k])
        return cls(**d)


@dataclass
class Device(_Record):
    """A paired device as the gateway keeps it (never on chain: root token, exact cell).

    A value: the store never changes one in place (pairing writes a new one),
    so the store's reads may hand out one shared, cached object."""

    link_id: bytes
    pseudonym: bytes
    root_token: bytes
    manifest: dict
    cell: int  # coarse, at policy resolution: what the chain sees
    resolution: int
    k: int
    duty_cycle_s: int = 0
    encrypt: bool = False
    owner: str = ""  # owner handle
    exact_cell: int = 0  # as given at pairing; stays here
    paired_at_ms: int = 0
    _bytes = ("link_id", "pseudonym", "root_token")

    @functools.cached_property
    def parsed_manifest(self) -> Manifest:
        return Manifest.parse(self.manifest)  # once per loaded record (it is read on every call)


@dataclass
class RequestRecord(_Record):
    """A request from enqueue to purge: its queue entry while active, its
    response slot once finished."""

    request_id: bytes
    link_id: bytes
    service: str
    method: str
    args: bytes
    request_token: bytes
    token_digest: bytes  # SHA-256 of the client's token: GetResult needs the same token
    state: int
    created_ms: int
    expires_at_ms: int
    seq: int = 0
    status: int = 0
    payload: bytes = b""
    error: str = ""
    done_ms: int = 0
    from_cache: bool = False
    forwarded_to: str = ""  # set on a forwarding gateway's stub: the peer that holds it
    attested: bool = False  # made on a trusted caller's word (invoke-any), not checked against the device
    via: str = ""  # the gateway that forwarded it here (the one whose revocation cancel it honours)
    _bytes = ("request_id", "link_id", "args", "request_token", "token_digest", "payload")

    @property
    def st(self) -> State:
        return State(self.state)

    def queued(self, chain: tuple[bytes, ...] = ()) -> QueuedRequest:
        return QueuedRequest(self.request_id, self.service, self.method, self.args, self.request_token,
                             self.expires_at_ms, chain)


@dataclass
class CacheEntry(_Record):
    payload: bytes
    stored_ms: int
    max_age_s: int
    _bytes = ("payload",)

    def fresh(self, now_ms: int) -> bool:
        return now_ms < self.stored_ms + self.max_age_s * 1000


@dataclass
class Contact(_Record):
    last_ms: int = 0
    sleep_s: int | None = None  # announced at BYE; None while a session is open
    reported_s: int = 0  # last liveness bucket put on chain


def dump_ticket(ticket: Ticket) -> bytes:
    fields = [ticket.link_id, ticket.resumption_secret, ticket.expires_at_ms]
    if ticket.root_fp:  # records from before the field have three
        fields.append(ticket.root_fp)
    return RECORD_FORMAT + _PACK(fields)


def load_ticket(raw: bytes) -> Ticket:
    """A stored ticket (record, or the older JSON form with short field names)."""
    if raw[:1] == RECORD_FORMAT:
        return Ticket(*_UNPACK(raw[1:]))
    d = json.loads(raw)
    return Ticket(base64.b64decode(d["link_id"]), base64.b64decode(d["r"]), d["exp"])


def new_id() -> bytes:
    """A fresh 16-byte request id, the clock first (ids.py says why)."""
    return time_ordered_id()
