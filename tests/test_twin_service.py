"""The twin service in process over a real store (its writer process, LMDB): which tokens
reach which part, failing closed while revocations may be stale, a watch waking on a
report, a revocation withdrawing an undelivered change, and an unpaired device's twin."""

from __future__ import annotations

import asyncio

import pytest

from edgistry.firmware.caplets import api as cl
from edgistry.gateway.errors import NotFound, Unauthorized, Unavailable, VersionConflict
from edgistry.gateway.store.store import Device, GatewayStore, new_id
from edgistry.gateway.tokens import auth
from edgistry.gateway.tokens.app_tokens import mint_app_token
from edgistry.gateway.tokens.revocations import LiveRevocations
from edgistry.gateway.twins.model import Change
from edgistry.gateway.twins.service import TwinService

GATEWAY_SECRET = b"g" * 32
MANIFEST = {"services": [{"type": "sensor", "methods": ["read"]}]}


@pytest.fixture
async def env(tmp_path):
    store = GatewayStore(tmp_path / "gw")
    revoked = LiveRevocations()
    revoked.heard()
    twins = TwinService(store, "gw-a", GATEWAY_SECRET, revoked)
    root = cl.root(cl.new_secret())
    dev = Device(new_id(), auth.pseudonym_for(root.to_bytes()), root.to_bytes(), MANIFEST, 0, 7, 1)
    await store.put_device(dev)
    yield twins, store, dev, root, revoked
    store.close()


def handle(dev: Device) -> str:
    return "dev-" + dev.pseudonym.hex()


def derive(root: cl.Token, *caps) -> bytes:
    return cl.derive(root, list(caps)).to_bytes()


async def test_tokens_reach_exactly_the_parts_they_are_granted(env):
    """Owner: all; /twin/desired:rw sets and reads desired; /twin/reported:r reads reported only;
    the pairing's app token and a gateway-issued token reach nothing."""
    twins, store, dev, root, _ = env
    h = handle(dev)
    await twins.set_desired(h, root.to_bytes(), [Change("mode", b'"eco"')])
    await store.twin_report(dev.link_id, 0, [("temp", b"20")], False, 1)
    writer = derive(root, cl.Resource("/twin/desired", cl.READ | cl.WRITE))
    view = await twins.set_desired(h, writer, [Change("mode", b'"max"')])
    assert view.desired and not view.reported and view.state["reported"] == {}
    reader = derive(root, cl.Resource("/twin/reported", cl.READ))
    view = await twins.get(h, reader)
    assert view.reported and not view.desired and view.state["desired"] == {} and "temp" in view.state["reported"]
    with pytest.raises(Unauthorized, match="setting desired"):
        await twins.set_desired(h, reader, [Change("mode", b"1")])
    app = auth.app_token(root.to_bytes(), {"sensor": ["read"]}).to_bytes()
    with pytest.raises(Unauthorized, match="no twin access"):
        await twins.get(h, app)
    gateway_token = mint_app_token(GATEWAY_SECRET, "app").to_bytes()
    with pytest.raises(Unauthorized, match="derived from the device's root"):
        await twins.get(h, gateway_token)
    other = cl.root(cl.new_secret()).to_bytes()
    with pytest.raises(Unauthorized):
        await twins.get(h, other)


async def test_twin_calls_fail_closed_while_revocations_may_be_stale(env):
    """A gateway that has not heard from its chain refuses twin calls (Unavailable), like invokes."""
    twins, _, dev, root, revoked = env
    revoked.heard_at = None
    with pytest.raises(Unavailable, match="token checks refused"):
        await twins.get(handle(dev), root.to_bytes())


async def test_a_watch_wakes_on_a_report_and_a_conflict_writes_nothing(env):
    """The watch yields the state, then again once the device's report is stored."""
    twins, store, dev, root, _ = env
    h = handle(dev)
    view = await twins.set_desired(h, root.to_bytes(), [Change("k", b"1", 0)])
    with pytest.raises(VersionConflict):
        await twins.set_desired(h, root.to_bytes(), [Change("k", b"2", 0)])
    watch = twins.watch(h, root.to_bytes())
    first = await watch.__anext__()
    assert first.state["pending"] == 1 and first.state["desired"]["k"]["value"] == b"1"
    nxt = asyncio.ensure_future(watch.__anext__())
    await asyncio.sleep(0.05)
    assert not nxt.done()
    await store.twin_report(dev.link_id, view.state["version"], [("k", b"1")], False, 2)
    second = await asyncio.wait_for(nxt, 5)
    assert second.state["pending"] == 0 and second.state["reported"]["k"]["value"] == b"1"
    await watch.aclose()


async def test_revocation_withdraws_an_undelivered_change_and_unpairing_drops_the_twin(env):
    """A delegated writer's change is gone after its revocation; after unpairing the handle is unknown."""
    twins, store, dev, root, revoked = env
    h = handle(dev)
    await twins.set_desired(h, root.to_bytes(), [Change("mode", b'"eco"')])
    writer_token = cl.derive(root, [cl.Resource("/twin/desired", cl.READ | cl.WRITE)])
    ok = auth.authorise(writer_token.to_bytes(), "", "", root.to_bytes(), GATEWAY_SECRET, "gw-a", revoked,
                        check_permits=False)
    await twins.set_desired(h, writer_token.to_bytes(), [Change("mode", b'"evil"')])
    leaf = ok.chain[-1]  # the writer token's own hash (the owner's root stays good)
    revoked.revoke(leaf, None)
    assert await twins.revoked_now([leaf]) == 1
    view = await twins.get(h, root.to_bytes())
    assert view.state["desired"]["mode"]["value"] == b'"eco"'
    with pytest.raises(Unauthorized):
        await twins.get(h, writer_token.to_bytes())
    await store.remove_device(dev.link_id, 3)
    assert store.twin(dev.link_id) is None
    with pytest.raises(NotFound):
        await twins.get(h, root.to_bytes())
