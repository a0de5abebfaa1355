"""The SDK's values: plain frozen dataclasses, converted from protobuf at the edge.

Each has ``to_dict()``, the one JSON shape the CLI prints with ``--json``:
ids and cells in hex, states and latency classes by name, times in
milliseconds since the epoch.
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError, RequestFailed
from ...proto import discovery_pb2 as dpb
from ...proto import gateway_pb2 as gpb


class State(enum.IntEnum):
    """Where a request is (values as in gateway.proto's RequestState)."""

    UNKNOWN = 0
    QUEUED = 1  # waiting for the device to wake
    DELIVERED = 2  # the device has it; no answer yet
    DONE = 3  # answered
    EXPIRED = 4  # its TTL passed before an answer (dead-lettered)
    CANCELLED = 5
    FAILED = 6  # the device answered with an error
    REVOKED = 7  # refused before it ran: the token that made it (or one it derives from) was revoked

    @property
    def final(self) -> bool:
        """Nothing more will happen to the request."""
        return self not in (State.QUEUED, State.DELIVERED, State.UNKNOWN)


class Latency(enum.IntEnum):
    """Expected-latency classes of discovery, fastest first (ANY: no filter)."""

    ANY = 0
    IMMEDIATE = 1
    SECONDS = 2
    MINUTES = 3
    HOURS = 4
    STALE = 5


@dataclass(frozen=True)
class Result:
    """A request's state, and its answer once DONE (``payload``: the device's JSON bytes)."""

    request_id: str
    state: State
    payload: bytes = b""
    error: str = ""
    expected_at_ms: int = 0  # when the device should be able to answer (duty cycle, last contact)
    expires_at_ms: int = 0
    from_cache: bool = False
    device_status: int = 0

    @property
    def final(self) -> bool:
        return self.state.final

    @property
    def ok(self) -> bool:
        return self.state is State.DONE

    def json(self) -> Any:
        """The payload parsed as JSON (its text when it is not JSON; None when empty)."""
        if not self.payload:
            return None
        try:
            return json.loads(self.payload)
        except ValueError:
            return self.payload.decode(errors="replace")

    @property
    def value(self) -> Any:
        """The answer (:meth:`json`); raises :class:`~.errors.RequestFailed` unless DONE."""
        if self.state is not State.DONE:
            raise RequestFailed(self)
        return self.json()

    def to_dict(self) -> dict[str, Any]:
        return {"request_id": self.request_id, "state": self.state.name, "payload": self.json(),
                "error": self.error, "expected_at_ms": self.expected_at_ms, "expires_at_ms": self.expires_at_ms,
                "from_cache": self.from_cache, "device_status": self.device_status}

    @classmethod
    def from_pb(cls, msg: gpb.Result) -> Result:
        try:
            state = State(msg.state)
        except ValueError:
            state = State.UNKNOWN
        return cls(msg.request_id, state, bytes(msg.payload), msg.error, msg.expected_at_ms, msg.expires_at_ms,
                   msg.from_cache, msg.device_status)


@dataclass(frozen=True)
class Handle:
    """An opaque, expiring handle to one device, usable only at ``gateway`` by the client it was
    issued to; ``cell`` is a coarse H3 cell at least k devices of the type share."""

    handle: str
    cell: int
    latency: Latency
    gateway: str
    expires_at_ms: int

    @property
    def cell_hex(self) -> str:
        return f"{self.cell:x}"

    def __str__(self) -> str:
        return self.handle

    def to_dict(self) -> dict[str, Any]:
        return {"handle": self.handle, "cell": self.cell_hex, "latency": self.latency.name.lower(),
                "gateway": self.gateway, "expires_at_ms": self.expires_at_ms}

    @classmethod
    def from_pb(cls, msg: dpb.Handle) -> Handle:
        try:
            latency = Latency(msg.latency)
        except ValueError:
            latency = Latency.ANY
        return cls(msg.handle, msg.cell, latency, msg.gateway, msg.expires_at_ms)


@dataclass(frozen=True)
class Page:
    """One page of a discovery answer (iterate it for its handles)."""

    handles: tuple[Handle, ...]
    next_page_token: str = ""

    def __iter__(self) -> Iterator[Handle]:
        return iter(self.handles)

    def __len__(self) -> int:
        return len(self.handles)


@dataclass(frozen=True)
class WatchEvent:
    """A discovery change: ``kind`` is "appear" (a fresh handle) or "leave" (the handle it appeared with)."""

    kind: str
    handle: Handle
    height: int

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "height": self.height, **self.handle.to_dict()}

    @classmethod
    def from_pb(cls, msg: dpb.WatchEvent) -> WatchEvent:
        kind = {dpb.WatchEvent.APPEAR: "appear", dpb.WatchEvent.LEAVE: "leave"}.get(msg.kind, "unknown")
        return cls(kind, Handle.from_pb(msg.handle), msg.height)


@dataclass(frozen=True)
class Resolved:
    """What a gateway says of a handle without naming the device (``valid`` False: expired or foreign)."""

    valid: bool
    cell: int = 0
    service_type: str = ""
    gateway: str = ""
    expires_at_ms: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"valid": self.valid, "cell": f"{self.cell:x}", "service_type": self.service_type,
                "gateway": self.gateway, "expires_at_ms": self.expires_at_ms}


@dataclass(frozen=True)
class Region:
    """Where to look: a centre and radius, or a list of H3 cells (any resolutions)."""

    lat: float = 0.0
    lon: float = 0.0
    radius_km: float = 1.0
    cells: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.cells:
            return
        for name, value, bound in (("latitude", self.lat, 90), ("longitude", self.lon, 180)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and -bound <= value <= bound):
                raise ConfigError(f"{name} must be within -{bound}..{bound}, got {value}")
        if not (math.isfinite(self.radius_km) and 0 < self.radius_km <= 20_000):
            raise ConfigError(f"radius_km must be within 0..20000 (exclusive of 0), got {self.radius_km}")

    @classmethod
    def near(cls, lat: float, lon: float, radius_km: float = 1.0) -> Region:
        return cls(lat, lon, radius_km)

    @classmethod
    def of_cells(cls, *cells: int | str) -> Region:
        """Cells as ints or hex strings."""
        try:
            parsed = tuple(int(c, 16) if isinstance(c, str) else int(c) for c in cells)
        except ValueError as exc:
            raise ConfigError(f"H3 cells are hex strings or ints: {exc}") from exc
        if not parsed:
            raise ConfigError("give at least one cell")
        return cls(cells=parsed)

    def to_pb(self) -> dpb.Region:
        if self.cells:
            return dpb.Region(cells=list(self.cells))
        return dpb.Region(lat=self.lat, lon=self.lon, radius_km=self.radius_km)


@dataclass(frozen=True)
class Filters:
    """Discovery filters: the slowest acceptable latency class, last contact within N seconds."""

    max_latency: Latency = Latency.ANY
    seen_within_s: int = 0

    def to_pb(self) -> dpb.Filters:
        return dpb.Filters(max_latency=int(self.max_latency), seen_within_s=self.seen_within_s)


@dataclass(frozen=True)
class Call:
    """One item of :meth:`Client.batch`: a submit to ``target`` (a handle)."""

    target: str | Handle
    method: str
    args: Any = None
    service: str = ""
    ttl_s: int = 0
    request_id: str | None = None
    token: Any = None  # TokenLike; None: the client's token
