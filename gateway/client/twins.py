"""Device twins in the SDK (docs/TWINS.md): values, request building, and the
methods :class:`~.sync.Client` and :class:`~.aio.AsyncClient` take from
:class:`TwinMethods` and :class:`AsyncTwinMethods`.

    twin = client.set_desired("dev-<pseudonym>", {"interval_s": 60, "mode": None})  # None deletes
    twin = client.set_desired(handle, {"mode": "eco"}, expect={"mode": twin.desired["mode"].version})
    for twin in client.watch_twin(handle, timeout=600):
        print(twin.pending, twin.reported_values())

A set is all or nothing; ``expect`` makes it a compare-and-set per key
(0: the key must not exist) and a lost race raises
:class:`~.errors.VersionConflict` (read again, decide, retry). Sets are never
retried by the SDK on their own; reads and watches are.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc

from . import retry as retries
from .base import encode_args
from .errors import ConfigError, DeadlineExceeded, Unavailable, from_rpc_error
from .models import Handle
from .tokens import TokenLike
from ...proto import twin_pb2 as tpb


@dataclass(frozen=True)
class TwinProperty:
    """One property: its JSON (``raw``), the version that set it, when, and (desired) whether applied."""

    key: str
    raw: bytes
    version: int
    at_ms: int
    applied: bool = False

    @property
    def value(self) -> Any:
        return json.loads(self.raw)

    def to_dict(self, desired: bool) -> dict[str, Any]:
        out = {"value": self.value, "version": self.version, "at_ms": self.at_ms}
        if desired:
            out["applied"] = self.applied
        return out


@dataclass(frozen=True)
class Twin:
    """A device's twin as the token may read it (``has_desired`` / ``has_reported`` say which parts)."""

    target: str
    desired: dict[str, TwinProperty] = field(default_factory=dict)
    reported: dict[str, TwinProperty] = field(default_factory=dict)
    version: int = 0
    applied: int = 0  # the device has applied every desired change up to this version
    applied_ms: int = 0
    pending: int = 0  # desired keys the device has not applied yet
    reported_ms: int = 0
    report_error: str = ""
    expected_at_ms: int = 0  # with pending changes: when the device is expected to wake
    has_desired: bool = False
    has_reported: bool = False

    def desired_values(self) -> dict[str, Any]:
        return {k: p.value for k, p in self.desired.items()}

    def reported_values(self) -> dict[str, Any]:
        return {k: p.value for k, p in self.reported.items()}

    @property
    def in_sync(self) -> bool:
        """The device has applied every desired change."""
        return self.pending == 0

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"target": self.target, "version": self.version, "applied": self.applied,
                               "applied_ms": self.applied_ms, "pending": self.pending,
                               "expected_at_ms": self.expected_at_ms}
        if self.has_desired:
            out["desired"] = {k: p.to_dict(True) for k, p in self.desired.items()}
        if self.has_reported:
            out["reported"] = {k: p.to_dict(False) for k, p in self.reported.items()}
            out["reported_ms"], out["report_error"] = self.reported_ms, self.report_error
        return out

    @classmethod
    def from_pb(cls, msg: tpb.TwinState) -> Twin:
        def props(items) -> dict[str, TwinProperty]:
            return {p.key: TwinProperty(p.key, bytes(p.value), p.version, p.at_ms, p.applied) for p in items}

        return cls(msg.target, props(msg.desired), props(msg.reported), msg.version, msg.applied, msg.applied_ms,
                   msg.pending, msg.reported_ms, msg.report_error, msg.expected_at_ms, msg.has_desired,
                   msg.has_reported)


def changes_of(values: Mapping[str, Any], expect: Mapping[str, int] | None) -> list[tpb.DesiredChange]:
    """DesiredChange messages: a value None deletes its key; ``expect`` adds compare-and-set versions."""
    if not values:
        raise ConfigError("give at least one key to set (a value None deletes the key)")
    extra = set(expect or ()) - set(values)
    if extra:
        raise ConfigError(f"expect names keys that are not being set: {', '.join(sorted(extra))}")
    out = []
    for key, value in values.items():
        change = tpb.DesiredChange(key=str(key), delete=value is None)
        if value is not None:
            change.value = encode_args(value)
        if expect is not None and key in expect:
            change.if_version = int(expect[key])
        out.append(change)
    return out


class TwinMethods:
    """The twin calls of the blocking client (mixed into :class:`~.sync.Client`)."""

    def get_twin(self, target: str | Handle, *, timeout: float | None = None,
                 token: TokenLike | None = None) -> Twin:
        """The device's twin (desired and reported state) without waking it."""
        req = tpb.GetTwinRequest(target=str(target), token=self._token(token))
        return Twin.from_pb(self.unary("twins", "GetTwin", req, timeout=timeout))

    def set_desired(self, target: str | Handle, values: Mapping[str, Any], *, expect: Mapping[str, int] | None = None,
                    timeout: float | None = None, token: TokenLike | None = None) -> Twin:
        """Set desired properties (None deletes), all or none; the device gets them at its next wake.
        ``expect``: key -> version it must have now (0: absent), else VersionConflict."""
        req = tpb.SetDesiredRequest(target=str(target), token=self._token(token), changes=changes_of(values, expect))
        return Twin.from_pb(self.unary("twins", "SetDesired", req, timeout=timeout, idempotent=False))

    def watch_twin(self, target: str | Handle, *, timeout: float | None = None,
                   token: TokenLike | None = None) -> Iterator[Twin]:
        """The twin now, then after each change (a set, a report, the device applying), until
        ``timeout`` (None: until you stop iterating). A broken stream is reopened."""
        req = tpb.GetTwinRequest(target=str(target), token=self._token(token))
        deadline = None if timeout is None else time.monotonic() + timeout
        backoff, last = retries.Backoff(self.retry), None
        while True:
            left = None if deadline is None else max(deadline - time.monotonic(), 0.001)
            stream = self._stub("twins").WatchTwin(req, timeout=left)
            try:
                for msg in stream:
                    backoff.reset()
                    twin = Twin.from_pb(msg)
                    if twin != last:
                        yield twin
                    last = twin
                return
            except grpc.RpcError as exc:
                err = from_rpc_error(exc, self.target)
                if isinstance(err, DeadlineExceeded) and deadline is not None:
                    return
                if not isinstance(err, Unavailable) or backoff.retries + 1 >= self.retry.attempts:
                    raise err from exc
            finally:
                stream.cancel()
            time.sleep(backoff.next())


class AsyncTwinMethods:
    """The twin calls of the asyncio client (mixed into :class:`~.aio.AsyncClient`)."""

    async def get_twin(self, target: str | Handle, *, timeout: float | None = None,
                       token: TokenLike | None = None) -> Twin:
        """As :meth:`TwinMethods.get_twin`."""
        req = tpb.GetTwinRequest(target=str(target), token=self._token(token))
        return Twin.from_pb(await self.unary("twins", "GetTwin", req, timeout=timeout))

    async def set_desired(self, target: str | Handle, values: Mapping[str, Any], *,
                          expect: Mapping[str, int] | None = None, timeout: float | None = None,
                          token: TokenLike | None = None) -> Twin:
        """As :meth:`TwinMethods.set_desired`."""
        req = tpb.SetDesiredRequest(target=str(target), token=self._token(token), changes=changes_of(values, expect))
        return Twin.from_pb(await self.unary("twins", "SetDesired", req, timeout=timeout, idempotent=False))

    async def watch_twin(self, target: str | Handle, *, timeout: float | None = None,
                         token: TokenLike | None = None) -> AsyncIterator[Twin]:
        """As :meth:`TwinMethods.watch_twin` (``async for``)."""
        req = tpb.GetTwinRequest(target=str(target), token=self._token(token))
        deadline = None if timeout is None else time.monotonic() + timeout
        backoff, last = retries.Backoff(self.retry), None
        while True:
            left = None if deadline is None else max(deadline - time.monotonic(), 0.001)
            stream = self._stub("twins").WatchTwin(req, timeout=left)
            try:
                async for msg in stream:
                    backoff.reset()
                    twin = Twin.from_pb(msg)
                    if twin != last:
                        yield twin
                    last = twin
                return
            except grpc.RpcError as exc:
                err = from_rpc_error(exc, self.target)
                if isinstance(err, DeadlineExceeded) and deadline is not None:
                    return
                if not isinstance(err, Unavailable) or backoff.retries + 1 >= self.retry.attempts:
                    raise err from exc
            finally:
                stream.cancel()
            await asyncio.sleep(backoff.next())
