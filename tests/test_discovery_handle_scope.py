"""A discovery handle through Gateway.Submit: it reaches the one service it was found for,
within the client token's rights, and tells nothing about the device's other services.

The real pieces: DiscoveryService and its handles, handle_resolver, GatewayService over
the LMDB store. A read through a handle needs no device token (discovery vouches for the
client), so the handle's service and the token's rights are what bound it."""

from __future__ import annotations

import pytest

import discovery_helpers as dh
from discovery_helpers import GW, NOW_MS, World
from edgistry.firmware.caplets import api as cl
from edgistry.gateway.api.service import HANDLE_SCOPE, Call, GatewayService
from edgistry.gateway.discovery.grpc_service import handle_resolver
from edgistry.gateway.discovery.index import DeviceEntry, ServiceInfo
from edgistry.gateway.discovery.regions import Region
from edgistry.gateway.errors import Unauthorized
from edgistry.gateway.store.store import Device, GatewayStore, State, new_id
from edgistry.gateway.tokens import auth
from edgistry.gateway.tokens.app_tokens import authenticate, mint_app_token

pytestmark = pytest.mark.timeout(30)
SENSOR = {"type": "sensor", "methods": [{"name": "read"}, {"name": "status"}]}
CAMERA = {"type": "camera", "methods": [{"name": "snapshot"}]}


@pytest.fixture
async def world(tmp_path):
    """Three sensors (k = 3) in one cell; the third also has a camera."""
    roots = [cl.root(cl.new_secret()) for _ in range(3)]
    pss = [auth.pseudonym_for(r.to_bytes()) for r in roots]
    cell = dh.cell_at(48.85, 2.35, 7)
    sensor = ServiceInfo("sensor", frozenset({"read", "status"}), frozenset())
    camera = ServiceInfo("camera", frozenset({"snapshot"}), frozenset())
    w = World([DeviceEntry(ps, GW, (sensor, camera) if i == 2 else (sensor,), cell, 3, 0, NOW_MS // 1000 - 60)
               for i, ps in enumerate(pss)])
    store = GatewayStore(tmp_path / "gw")
    service = GatewayService(store, GW, w.secret)
    service.resolvers.append(handle_resolver(w.service, w.secret, clock=lambda: NOW_MS / 1000))
    for i, (root, ps) in enumerate(zip(roots, pss)):
        manifest = {"duty_cycle_s": 5, "services": [SENSOR, CAMERA] if i == 2 else [SENSOR]}
        await store.put_device(Device(new_id(), ps, root.to_bytes(), manifest, 0, 7, 1))
    try:
        yield w, store, service
    finally:
        store.close()


def _handles(w: World, token) -> list[str]:
    client = authenticate(token, w.secret, now=NOW_MS // 1000)
    page = w.service.discover(client, "sensor", Region.disk(48.85, 2.35, 2), page_size=5, now_ms=NOW_MS)
    assert len(page.handles) == 3
    return [h.handle for h in page.handles]


async def test_a_handle_reaches_only_the_service_it_was_found_for(world) -> None:
    """Another service of the device, named or not, gets one answer on every handle: the
    camera that discovery withholds (one camera, k = 3) stays unreachable and unknown."""
    w, store, service = world
    token = mint_app_token(w.secret, "app")
    text = cl.to_text(token).encode()
    outcomes = set()
    for h in _handles(w, token):
        with pytest.raises(Unauthorized) as refused:
            await service.submit(Call(h, "snapshot", token=text, service="camera"))
        outcomes.add(str(refused.value))
        with pytest.raises(Exception) as unnamed:  # the sensor service has no such method
            await service.submit(Call(h, "snapshot", token=text))
        outcomes.add(str(unnamed.value))
        assert (await service.submit(Call(h, "read", token=text))).state == State.QUEUED
    assert outcomes == {HANDLE_SCOPE, "the device has no method sensor:snapshot"}
    assert all(store.get(rid).service == "sensor" for rid in _request_ids(store))


async def test_a_handle_keeps_the_token_narrowed(world) -> None:
    """Handles are bound to the client (its identity and first tag), which a narrowed child
    token shares with its parent: through the parent's handles the child reaches no more
    than its own rights, whichever token found them."""
    w, store, service = world
    parent = mint_app_token(w.secret, "app")
    handles = _handles(w, parent)
    sensor_only = cl.to_text(cl.derive(parent, [cl.Identity("app"), cl.Resource("/svc/sensor", cl.READ)])).encode()
    camera_only = cl.to_text(cl.derive(parent, [cl.Identity("app"), cl.Resource("/svc/camera", cl.READ)])).encode()
    for h in handles:
        assert (await service.submit(Call(h, "status", token=sensor_only))).state == State.QUEUED
        with pytest.raises(Unauthorized, match="discovery handle reaches only"):
            await service.submit(Call(h, "snapshot", token=sensor_only, service="camera"))
        with pytest.raises(Unauthorized, match="discovery handle reaches only"):
            await service.submit(Call(h, "read", token=camera_only))


def _request_ids(store: GatewayStore) -> list[bytes]:
    from edgistry.gateway.store import keys
    with store.env.begin() as txn:
        return [k[len(keys.REQUEST):] for k, _ in txn.cursor() if k.startswith(keys.REQUEST)]


async def test_a_handle_answer_carries_no_wake_time_of_the_device(world) -> None:
    """A device's expected wake (its last contact to the millisecond) would tell the devices
    of a group apart and link handles across answers and clients: through a handle it is
    never given, in Submit, GetResult, WatchResult nor Invoke's timeout; its owner gets it."""
    w, store, service = world
    token = mint_app_token(w.secret, "app")
    text = cl.to_text(token).encode()
    now = service.clock()
    for dev in [store.device_by_pseudonym(e.pseudonym) for e in w.index.entries.values()]:
        store.note_contact(dev.link_id, now - 1234, 600)
    seen = set()
    for h in _handles(w, token):
        res = await service.submit(Call(h, "read", token=text))
        assert res.state == State.QUEUED and res.expected_at_ms == 0
        assert (await service.get_result(res.request_id, text)).expected_at_ms == 0
        async for update in service.watch(res.request_id, text):
            seen.add(update.expected_at_ms)
            break
        with pytest.raises(Exception) as late:
            await service.invoke(Call(h, "status", token=text, timeout_ms=50))
        assert "expected about" not in str(late.value) and "stays queued" in str(late.value)
    assert seen == {0}
    owner = next(iter(w.index.entries.values())).pseudonym
    dev = store.device_by_pseudonym(owner)
    owned = cl.derive(cl.load(dev.root_token), [cl.Service("sensor", ["*"])])
    res = await service.submit(Call(owner.hex(), "read", token=owned.to_bytes()))
    assert res.expected_at_ms == now - 1234 + 600_000
