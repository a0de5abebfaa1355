"""The one-time commissioning code pairs one device, however many pairings start with it at
once: pairings take turns, each checking the code inside its turn, and the code is rotated
when one succeeds. The chain's two round trips (the registry query, the tx waiting for its
block) are stand-ins that take their time, so the attempts overlap; pairing against a real
chain is tested end to end (tests/test_pair_visibility.py, tests/test_gateway_e2e.py)."""
import asyncio
import json
import os
import h3
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgistry.firmware.caplets import api as cl
from edgistry.gateway.pairing.channel import CommissionCode, Offers, ToolSession
from edgistry.gateway.errors import GatewayError
from edgistry.gateway.pairing.commissioner import Commissioner
from edgistry.gateway.store.store import GatewayStore
from edgistry.proto import gateway_pb2 as gw
from gateway_helpers import SENSOR_MANIFEST


async def test_one_code_pairs_one_device_when_many_try_it_at_once(tmp_path):
    store = GatewayStore(tmp_path / "gw")
    try:
        key = Ed25519PrivateKey.generate()
        offers = Offers(key, "test")
        code = CommissionCode(tmp_path / "commission.code")
        com = Commissioner(store, offers, code, None, key, b"s" * 32, "127.0.0.1:1")

        async def registered(pseudonym):  # the chain query (a network round trip)
            await asyncio.sleep(0.05)
            return None

        async def submit_sealed(cls, pseudonym, fields):  # the tx, waiting for its block
            await asyncio.sleep(0.5)
            return 7

        com._registered, com._submit_sealed = registered, submit_sealed
        the_code = code.code
        cell = h3.str_to_int(h3.latlng_to_cell(46.52, 6.57, 9))

        async def pair_one():
            tool = ToolSession()
            tool.accept(com.begin(tool.begin()))
            root = cl.root(cl.new_secret()).to_bytes()
            payload = gw.PairPayload(root_token=root, manifest=json.dumps(SENSOR_MANIFEST).encode(), resolution=7,
                                     k=1, link_id=os.urandom(16), commission_code=the_code, cell=cell)
            return tool.result(await com.complete(tool.complete(payload)))

        results = await asyncio.wait_for(asyncio.gather(*(pair_one() for _ in range(10)), return_exceptions=True), 20)
        ok = [r for r in results if isinstance(r, gw.PairResult)]
        refused = [r for r in results if not isinstance(r, gw.PairResult)]
        assert len(ok) == 1 and len(store.devices()) == 1 and code.code != the_code
        assert all(isinstance(r, GatewayError) for r in refused), refused
    finally:
        store.close()
