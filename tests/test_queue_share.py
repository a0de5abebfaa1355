"""One client cannot keep a sleeping device's other clients out of its queue: a client (its
token and every token derived from it) holds at most three quarters of the queue, so the
owner and other clients still get in; its share frees as its requests finish."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgistry.firmware.caplets import api as cl
from edgistry.gateway.api.service import Call, GatewayService, owner_handle
from edgistry.gateway.errors import GatewayError, QueueFull
from edgistry.gateway.link.backend import DeviceAnswer
from edgistry.gateway.link.store_backend import StoreLinkBackend
from edgistry.gateway.store.ops import client_share
from edgistry.gateway.store.store import GatewayStore
from edgistry.gateway.tokens import auth
from gateway_helpers import pair_device

MANIFEST = {"duty_cycle_s": 300, "services": [{"type": "sensor", "methods": ["info"]},
                                              {"type": "valve", "methods": [{"name": "set", "mutating": True}]}]}
GS = b"g" * 32


@pytest.fixture
async def world(tmp_path: Path):
    store = GatewayStore(tmp_path / "gw")
    svc = GatewayService(store, "gw-a", GS)
    dev, root = await pair_device(store, MANIFEST, duty_cycle_s=300)
    yield svc, store, dev, root
    store.close()


def queued(out: list) -> int:
    return sum(1 for r in out if not isinstance(r, GatewayError))


async def test_one_client_holds_at_most_its_share_and_the_owner_still_gets_in(world):
    svc, store, dev, root = world
    depth = svc.settings.max_queue_depth
    share = client_share(depth)
    assert share < depth
    h = owner_handle(dev.pseudonym)
    app = auth.app_token(root.to_bytes(), {"sensor": ["info"]})  # the read-only token pairing hands out
    out = await svc.submit_many([Call(h, "info", token=app.to_bytes(), service="sensor", args=b'{"n":%d}' % i)
                                 for i in range(depth)])
    assert queued(out) == share and all(isinstance(r, QueueFull) for r in out[share:])
    assert "share" in str(out[-1])
    # a token derived from it is the same client
    child = cl.derive(app, [cl.Service("sensor", ["info"])]).to_bytes()
    with pytest.raises(QueueFull, match="share"):
        await svc.submit(Call(h, "info", token=child, service="sensor", args=b'{"n":"child"}'))
    # the owner, another client, still gets in
    owner = cl.derive(root, [cl.Service("valve", ["set"])]).to_bytes()
    assert (await svc.submit(Call(h, "set", token=owner, service="valve", args=b'{"open": false}'))).request_id
    # the device wakes and answers: the client's share frees with its finished requests
    backend = StoreLinkBackend(store, GS)
    items, _ = backend.pending(dev.link_id, 1 << 20)
    await backend.delivered(dev.link_id, [i.request_id for i in items])
    await backend.answered(dev.link_id, [DeviceAnswer(i.request_id, 0, b"{}") for i in items])
    assert store.depth(dev.link_id) == 0
    out = await svc.submit_many([Call(h, "info", token=app.to_bytes(), service="sensor", args=b'{"m":%d}' % i)
                                 for i in range(share)])
    assert queued(out) == share
