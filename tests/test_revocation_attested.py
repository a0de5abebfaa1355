"""Requests made through a discovery handle (vouched for, "attested") answer to revocation
and expiry as any other: a revoked or expired application token can no longer read,
watch or cancel them, and such a request ends when its token does."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from edgistry.firmware.caplets import api as cl
from edgistry.firmware.caplets.cap_crypto import revocation_hash
from edgistry.gateway.api.service import Call, GatewayService, HandleGrant
from edgistry.gateway.errors import Unauthorized
from edgistry.gateway.link.backend import DeviceAnswer
from edgistry.gateway.link.store_backend import StoreLinkBackend
from edgistry.gateway.store.store import Device, GatewayStore
from edgistry.gateway.tokens import auth
from gateway_helpers import pair_device

MANIFEST = {"duty_cycle_s": 5, "services": [{"type": "sensor", "methods": ["info"]}]}
GS = b"g" * 32


@pytest.fixture
async def world(tmp_path: Path):
    store = GatewayStore(tmp_path / "gw")
    svc = GatewayService(store, "gw-a", GS)
    dev, _ = await pair_device(store, MANIFEST)

    def resolve(target, token):  # as discovery's handle resolver: a revoked token finds nothing new
        if target != "handle-1" or any(h in svc.revoked for h in auth.own_chain(token, GS)):
            return None
        return HandleGrant(dev.pseudonym, "sensor", lambda *a: True)
    svc.resolvers.append(resolve)
    yield svc, store, dev
    store.close()


async def answer(store: GatewayStore, dev: Device) -> None:
    backend = StoreLinkBackend(store, GS)
    items, _ = backend.pending(dev.link_id, 1 << 16)
    await backend.delivered(dev.link_id, [i.request_id for i in items])
    await backend.answered(dev.link_id, [DeviceAnswer(i.request_id, 0, b'{"v": 42}') for i in items])


async def test_a_revoked_application_token_no_longer_reads_what_it_asked_through_a_handle(world):
    svc, store, dev = world
    app = cl.mint(GS, [cl.Identity("app-1"), cl.Resource("/svc", cl.READ)]).to_bytes()
    res = await svc.submit(Call("handle-1", "info", token=app, service="sensor"))
    await answer(store, dev)
    assert (await svc.get_result(res.request_id, app)).payload == b'{"v": 42}'
    h = revocation_hash(cl.load(app).tag)
    svc.revoked.revoke(h)
    await svc.revoked_now([h])
    with pytest.raises(Unauthorized, match="Revoked"):
        await svc.get_result(res.request_id, app)
    with pytest.raises(Unauthorized, match="Revoked"):
        async for _ in svc.watch(res.request_id, app):
            pass
    with pytest.raises(Unauthorized, match="Revoked"):
        await svc.cancel(res.request_id, app)


async def test_a_request_through_a_handle_ends_with_its_token(world):
    svc, store, dev = world
    ends = int(time.time()) + 2
    app = cl.mint(GS, [cl.Identity("app-2"), cl.Resource("/svc", cl.READ), cl.ExpiresAt(ends)]).to_bytes()
    res = await svc.submit(Call("handle-1", "info", token=app, service="sensor", ttl_s=600))
    assert res.expires_at_ms <= ends * 1000  # not the 600 s asked for
    svc.clock = lambda: (ends + 1) * 1000
    with pytest.raises(Unauthorized, match="expire"):
        await svc.get_result(res.request_id, app)
    with pytest.raises(Unauthorized, match="expire"):
        await svc.cancel(res.request_id, app)
