"""A twin watch ends when its device is unpaired, also when the link id is paired again under
another root (another device, another owner) before the watch looks again: the old owner's
watch never shows the new owner's twin."""
import asyncio
import pytest

from edgistry.firmware.caplets import api as cl
from edgistry.gateway.errors import NotFound, Unauthorized
from edgistry.gateway.store.store import Device, GatewayStore, new_id
from edgistry.gateway.tokens import auth
from edgistry.gateway.tokens.revocations import LiveRevocations
from edgistry.gateway.twins.model import Change
from edgistry.gateway.twins.service import TwinService

MANIFEST = {"services": [{"type": "sensor", "methods": ["read"]}]}


async def test_a_watch_of_an_unpaired_device_never_shows_the_next_owners_twin(tmp_path):
    store = GatewayStore(tmp_path / "gw")
    try:
        revoked = LiveRevocations(); revoked.heard()
        twins = TwinService(store, "gw-a", b"g" * 32, revoked)
        link = new_id()
        r1 = cl.root(cl.new_secret())
        await store.put_device(Device(link, auth.pseudonym_for(r1.to_bytes()), r1.to_bytes(), MANIFEST, 0, 7, 1))
        h1 = "dev-" + auth.pseudonym_for(r1.to_bytes()).hex()
        watch = twins.watch(h1, r1.to_bytes()).__aiter__()
        first = await asyncio.wait_for(watch.__anext__(), 5)
        assert first.state["desired"] == {}

        async def new_owner():
            await asyncio.sleep(0.2)
            await store.remove_device(link, 0)  # old owner unpairs (twin dropped)
            r2 = cl.root(cl.new_secret())
            ps2 = auth.pseudonym_for(r2.to_bytes())
            await store.put_device(Device(link, ps2, r2.to_bytes(), MANIFEST, 0, 7, 1))  # paired under another root
            await store.twin_report(link, 0, [("gps", b'"46.5191,6.5668"')], False, 5)
            await twins.set_desired("dev-" + ps2.hex(), r2.to_bytes(), [Change("wifi_psk", b'"hunter2"')])
            # the old owner's token no longer reaches the new handle
            with pytest.raises(Unauthorized):
                await twins.get("dev-" + ps2.hex(), r1.to_bytes())

        task = asyncio.create_task(new_owner())
        shown = []
        try:
            with pytest.raises(NotFound, match="unpaired"):
                for _ in range(5):
                    shown.append(await asyncio.wait_for(watch.__anext__(), 10))
        finally:
            await task
            await watch.aclose()
        assert not any("wifi_psk" in v.state["desired"] or v.state["reported"] for v in shown), shown
    finally:
        store.close()
