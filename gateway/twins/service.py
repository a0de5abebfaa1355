"""Device twins at the device's gateway: who may do what, and the calls (no gRPC here).

Access (docs/TWINS.md). A twin is reached by the device's owner handle with a
token *derived from the device's root* (origin: the device; a gateway-issued
discovery token reaches no twin), checked like any call: its chain, the
gateway's revocations, its constraints (expiry, gateway). Then its rights:

* the root capability (the owner): everything;
* ``Resource("/twin/desired", r)`` reads the desired state, ``w`` sets it;
* ``Resource("/twin/reported", r)`` reads the reported state;
* ``Resource("/twin", ...)`` covers both.

So the read-only application token made at pairing reaches no twin: an owner
grants twin access deliberately (``edgistry token derive --resource
/twin/reported:r``). A read returns the parts the token may read.

Every desired change keeps the revocation hashes of its token's chain
(``auth.Authorised.chain``): until the device has applied it, a revocation of any
withdraws it (model.withdraw, through :meth:`TwinService.revoked_now` and the
delivery's own check), so a change made with a token revoked before delivery
is never applied.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from ...firmware.caplets import api as cl
from ...firmware.caplets.cap_caps import prefix_within
from ...firmware.caplets.revocation import RevocationSet
from ..errors import NotFound, Precondition, Unauthorized
from ..store.store import Device, GatewayStore
from ..store.twin_ops import changed_id
from ..tokens import auth
from . import model

DESIRED, REPORTED = "/twin/desired", "/twin/reported"
OWNER_HANDLE_PREFIX = "dev-"  # as api/service.py: "dev-" + pseudonym hex


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class Access:
    """What one token may do with one twin."""

    read_desired: bool = False
    write_desired: bool = False
    read_reported: bool = False


def access_of(token: cl.Token) -> Access:
    """The twin rights a verified token's leaf grants (see the module docstring)."""
    caps = token.capabilities
    if any(isinstance(c, cl.Root) for c in caps):
        return Access(True, True, True)

    def has(path: str, right: int) -> bool:
        return any(isinstance(c, cl.Resource) and c.rights & right and prefix_within(path, c.prefix) for c in caps)

    return Access(has(DESIRED, cl.READ), has(DESIRED, cl.WRITE), has(REPORTED, cl.READ))


@dataclass
class TwinView:
    """A twin as one reader may see it (``model.view`` less what the token may not read)."""

    target: str
    state: dict
    desired: bool
    reported: bool
    expected_at_ms: int = 0


@dataclass
class TwinService:
    store: GatewayStore
    gateway_id: str
    secret: bytes
    revoked: RevocationSet = field(default_factory=RevocationSet)
    clock: Callable[[], int] = _now_ms
    on_changed: Callable[[bytes], object] | None = None  # the link server's notify: push to an awake device
    expected_at: Callable[[Device, int], int] | None = None  # when the device should next wake
    owner_of: Callable[[bytes], object] | None = None  # async pseudonym -> gateway id (the registry), for errors
    watch_recheck_s: float = 5.0

    def __post_init__(self) -> None:
        self._waiters: dict[bytes, list[asyncio.Future]] = {}
        self.store.listeners.append(self._heard)

    # ---- who and what ----

    async def _device(self, target: str) -> Device:
        text = target[len(OWNER_HANDLE_PREFIX):] if target.startswith(OWNER_HANDLE_PREFIX) else target
        try:
            ps = bytes.fromhex(text)
        except ValueError:
            ps = b""
        if len(ps) != 16:
            raise NotFound(f"unknown handle {target[:80]!r} (twins are reached by the owner handle, dev-<pseudonym>)")
        dev = self.store.device_by_pseudonym(ps)
        if dev is not None:
            return dev
        owner = await self.owner_of(ps) if self.owner_of is not None else None
        if owner and owner != self.gateway_id:
            raise Precondition(f"the device is paired with gateway {owner}: its twin is kept there, ask that gateway")
        raise NotFound("no such device paired with this gateway")

    def _authorise(self, token: bytes, dev: Device) -> tuple[Access, list[bytes]]:
        check = getattr(self.revoked, "check_fresh", None)  # the gateway's live set: fail closed while stale
        if check is not None:
            check()
        ok = auth.authorise(token, "", "", dev.root_token, self.secret, self.gateway_id, self.revoked,
                            self.clock() // 1000, check_permits=False)
        if ok.origin != "device":
            raise Unauthorized("a twin is reached with a token derived from the device's root (the owner's, or "
                               "one the owner derived with --resource /twin/...), not a gateway-issued token")
        return access_of(ok.token), list(ok.chain)

    def _view(self, dev: Device, target: str, access: Access) -> TwinView:
        twin = self.store.twin(dev.link_id) or model.Twin()
        state = model.view(twin)
        if not access.read_desired:
            state["desired"], state["pending"] = {}, 0
        if not access.read_reported:
            state["reported"], state["reported_ms"], state["report_error"] = {}, 0, ""
        now = self.clock()
        expected = self.expected_at(dev, now) if self.expected_at is not None and state["pending"] else 0
        return TwinView(target, state, access.read_desired, access.read_reported, expected)

    # ---- calls ----

    async def get(self, target: str, token: bytes) -> TwinView:
        """The twin as the token may read it (Unauthorized when it may read none of it)."""
        dev = await self._device(target)
        access, _ = self._authorise(token, dev)
        if not (access.read_desired or access.read_reported):
            raise Unauthorized("token grants no twin access (needs the owner's token or a /twin resource right)")
        return self._view(dev, target, access)

    async def set_desired(self, target: str, token: bytes, changes: list[model.Change]) -> TwinView:
        """Apply desired changes (all or none; VersionConflict when an expected version is stale)."""
        dev = await self._device(target)
        access, chain = self._authorise(token, dev)
        if not access.write_desired:
            raise Unauthorized("token does not grant setting desired state (needs the owner's token or "
                               "/twin/desired:w)")
        checked = [model.Change(model.check_key(c.key), c.value if c.value is None else model.canonical_value(c.value),
                                c.if_version) for c in changes]
        await self.store.twin_set(dev.link_id, [(c.key, c.value, c.if_version) for c in checked], chain,
                                  self.clock())
        if self.on_changed is not None:
            self.on_changed(dev.link_id)  # an awake device gets it now
        return self._view(dev, target, access)

    async def watch(self, target: str, token: bytes) -> AsyncIterator[TwinView]:
        """The twin now, then again after every change, until the caller stops. The token
        is checked again before each update and at least every ``watch_recheck_s``."""
        dev = await self._device(target)
        last = None
        while True:
            access, _ = self._authorise(token, dev)
            if not (access.read_desired or access.read_reported):
                raise Unauthorized("token grants no twin access")
            now = self.store.device(dev.link_id)
            if now is None or now.root_token != dev.root_token:  # (its link id paired again: another device)
                raise NotFound("the device was unpaired")
            view = self._view(dev, target, access)
            if view.state != last:
                last = view.state
                yield view
            await self._next_change(dev.link_id, self.watch_recheck_s)

    async def revoked_now(self, hashes: list[bytes]) -> int:
        """Revocations just learnt: withdraw every undelivered desired change made
        under them; returns how many twins changed (their awake devices are told)."""
        if not hashes:
            return 0
        changed = await self.store.twin_withdraw(list(hashes), self.clock())
        for link, _ in changed:
            if self.on_changed is not None:
                self.on_changed(link)
        return len(changed)

    # ---- change notifications ----

    def _heard(self, changed: bytes) -> None:
        if len(changed) == 18 and changed[:2] == changed_id(b"")[:2]:
            for fut in self._waiters.pop(changed[2:], []):
                if not fut.done():
                    fut.set_result(None)

    async def _next_change(self, link_id: bytes, timeout: float) -> None:
        fut = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(link_id, []).append(fut)
        try:
            await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            pass
        finally:
            waiting = self._waiters.get(link_id)
            if waiting and fut in waiting:
                waiting.remove(fut)
                if not waiting:
                    del self._waiters[link_id]
