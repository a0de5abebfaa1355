"""Open twin watches count as calls waiting on a device, apart from the short calls: however
many a device owner holds open, every other client's short calls are still served."""
import asyncio
import grpc
import pytest

from edgistry.config import Limits
from edgistry.firmware.caplets import api as cl
from edgistry.gateway.admission import Admission
from edgistry.gateway.api.admission_grpc import service_hook
from edgistry.gateway.api.grpc_server import start_grpc
from edgistry.gateway.api.service import GatewayService
from edgistry.gateway.metrics import GatewayMetrics
from edgistry.gateway.store.store import Device, GatewayStore, new_id
from edgistry.gateway.tokens import auth
from edgistry.gateway.tokens.revocations import LiveRevocations
from edgistry.gateway.twins import grpc_service as twin_grpc
from edgistry.gateway.twins.service import TwinService
from edgistry.proto import twin_pb2 as tpb, twin_pb2_grpc as tgrpc
from edgistry.proto import gateway_pb2 as gw, gateway_pb2_grpc as gw_grpc

SECRET = b"g" * 32
MANIFEST = {"services": [{"type": "sensor", "methods": ["read"]}]}
SLOTS = 16  # max_in_flight (256 by default)
pytestmark = pytest.mark.timeout(60)


async def test_open_twin_watches_leave_the_short_calls_their_slots(tmp_path):
    store = GatewayStore(tmp_path / "gw")
    admission = Admission(Limits(max_in_flight=SLOTS))
    metrics = GatewayMetrics()
    service = GatewayService(store, "gw-a", SECRET, metrics)
    service.admit = service_hook(admission)
    revoked = LiveRevocations(); revoked.heard()
    twins = TwinService(store, "gw-a", SECRET, revoked)
    root = cl.root(cl.new_secret())
    dev = Device(new_id(), auth.pseudonym_for(root.to_bytes()), root.to_bytes(), MANIFEST, 0, 7, 1)
    await store.put_device(dev)
    server, port = await start_grpc("127.0.0.1:0", service, None, None, metrics, admission=admission,
                                    extra=[lambda s: twin_grpc.add_to_server(s, twins)])
    calls = []
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            tw = tgrpc.TwinsStub(ch)
            req = tpb.GetTwinRequest(target="dev-" + dev.pseudonym.hex(), token=root.to_bytes())
            for _ in range(SLOTS):  # the owner watches their own twin SLOTS times
                call = tw.WatchTwin(req, timeout=30)
                await asyncio.wait_for(call.read(), 5)  # first state received: the stream is open
                calls.append(call)
            assert admission.in_flight == 0 and admission.waiting == SLOTS
            await gw_grpc.GatewayStub(ch).Status(gw.StatusRequest(), timeout=5)  # served
            assert (await tw.GetTwin(req, timeout=5)).desired is not None
    finally:
        for c in calls:
            c.cancel()
        await server.stop(0)
        store.close()
