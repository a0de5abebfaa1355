"""A discovery Watch ends soon after its token is revoked or expires, even when nothing in
the index changes (it checked the token once, then streamed fresh handles for ever)."""

from __future__ import annotations

import asyncio
import random

import pytest

from discovery_helpers import NOW_MS, World, entry
from edgistry.firmware.caplets.cap_crypto import revocation_hash
from edgistry.firmware.caplets.mint import to_text
from edgistry.firmware.caplets.revocation import RevocationSet
from edgistry.gateway.discovery import grpc_service
from edgistry.gateway.discovery.grpc_service import DiscoveryServicer
from edgistry.gateway.tokens.app_tokens import mint_app_token
from edgistry.proto import discovery_pb2 as dpb


class Follower:
    """The replica's wait, without a chain: the index version, or the timeout."""

    def __init__(self, index) -> None:
        self.index = index

    async def wait_changed(self, version: int, timeout: float | None = None) -> int:
        deadline = asyncio.get_running_loop().time() + (timeout if timeout is not None else 3600)
        while self.index.version == version and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        return self.index.version


class Aborted(Exception):
    pass


class Ctx:
    async def abort(self, code, msg, **kw):
        raise Aborted(code, msg)


@pytest.mark.parametrize("how", ["revoked", "expired"])
async def test_a_watch_ends_when_its_token_is_revoked_or_expires(monkeypatch, how):
    monkeypatch.setattr(grpc_service, "WATCH_TOKEN_S", 0.05)
    rng = random.Random(1)
    world = World([entry(rng, 48.85, 2.35, k=3, duty=0) for _ in range(3)])
    revoked = RevocationSet()
    now = [NOW_MS / 1000]
    sv = DiscoveryServicer(world.service, world.secret, None, Follower(world.index), clock=lambda: now[0],
                           revoked=revoked)
    tok = mint_app_token(world.secret, "app", expires_at=int(NOW_MS / 1000) + 60)
    stream = sv.Watch(dpb.WatchRequest(token=to_text(tok).encode(), service_type="sensor",
                                       region=dpb.Region(lat=48.85, lon=2.35, radius_km=2)), Ctx())
    first = [await stream.__anext__() for _ in range(3)]
    assert {e.kind for e in first} == {dpb.WatchEvent.APPEAR}
    if how == "revoked":
        revoked.revoke(revocation_hash(tok.tag))
    else:
        now[0] += 3600
    with pytest.raises(Aborted) as info:  # nothing changed in the index: the watch ends on its own
        await asyncio.wait_for(stream.__anext__(), 5)
    assert "refused" in info.value.args[1]
