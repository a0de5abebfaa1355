"""SubmitBatch over real gRPC on loopback: items are authorised and queued one by one,
fail independently with Submit's status codes, share one durable commit, and a batch
beyond the limit is refused whole."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import grpc
import pytest

from edgistry.firmware.caplets import api as cl
from edgistry.gateway.tokens import auth
from edgistry.gateway.api.grpc_server import start_grpc
from edgistry.gateway.metrics import GatewayMetrics
from edgistry.gateway.api.service import GatewayService, Settings, owner_handle
from edgistry.gateway.store.store import Device, GatewayStore, new_id
from edgistry.proto import gateway_pb2 as pb
from edgistry.proto import gateway_pb2_grpc as pbg
from gateway_helpers import count_enqueue_ops

MANIFEST = {"duty_cycle_s": 5, "services": [
    {"type": "sensor", "methods": ["read"]}, {"type": "valve", "methods": [{"name": "set", "mutating": True}]}]}
SECRET = b"s" * 32


@pytest.fixture
async def gateway(tmp_path):
    store = GatewayStore(tmp_path / "gw")
    service = GatewayService(store, "gw-a", SECRET, settings=Settings(max_queue_depth=3, max_batch=8))
    devs = []
    for _ in range(2):
        root = cl.root(cl.new_secret())
        dev = Device(new_id(), auth.pseudonym_for(root.to_bytes()), root.to_bytes(), MANIFEST, 0, 7, 1)
        await store.put_device(dev)
        devs.append((dev, auth.app_token(root.to_bytes(), {"sensor": ["read"]}).to_bytes()))
    server, port = await start_grpc("127.0.0.1:0", service, None, None, GatewayMetrics())
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield pbg.GatewayStub(channel), store, service, devs, tmp_path
    await channel.close()
    await server.stop(None)
    store.close()


def req(dev, token, method="read", service="sensor", **kw) -> pb.InvokeRequest:
    return pb.InvokeRequest(target=owner_handle(dev.pseudonym), method=method, service=service, token=token,
                            args=b'{"n": 1}', **kw)


async def test_items_fail_independently_with_submit_codes(gateway):
    stub, store, service, devs, _ = gateway
    (d1, t1), (d2, t2) = devs
    ops = count_enqueue_ops(store)
    batch = [req(d1, t1), req(d2, t2), req(d1, t2),  # t2 is d2's token: wrong origin for d1
             req(d1, t1, method="set", service="valve"),  # read-only token, mutating method
             pb.InvokeRequest(target="own-" + "00" * 16, method="read", token=t1),  # nobody
             req(d1, t1), req(d1, t1), req(d1, t1)]  # d1 holds 3: the last is over the depth
    reply = await stub.SubmitBatch(pb.SubmitBatchRequest(requests=batch), timeout=10)
    codes = [grpc.StatusCode.OK.value[0] if not it.code else it.code for it in reply.items]
    sc = grpc.StatusCode
    assert codes == [sc.OK.value[0], sc.OK.value[0], sc.PERMISSION_DENIED.value[0], sc.PERMISSION_DENIED.value[0],
                     sc.NOT_FOUND.value[0], sc.OK.value[0], sc.OK.value[0], sc.RESOURCE_EXHAUSTED.value[0]]
    assert "queue is full" in reply.items[7].error and reply.items[2].error
    assert ops == [5]  # every item that reached the queue (4 for d1, 1 for d2): one operation, one transaction
    rejected = {s.labels["reason"]: s.value for m in service.metrics.rejections.collect() for s in m.samples
                if s.name.endswith("_total")}
    assert sum(rejected.values()) == 4 and len(rejected) == 3  # each refused item counted once, by reason
    ok = [it.result for it in reply.items if not it.code]
    assert all(r.state == pb.QUEUED and len(r.request_id) == 32 for r in ok)
    now = int(time.time() * 1000)
    assert [i.request_id.hex() for i in store.pending(d1.link_id, 1 << 16, now)[0]] == \
        [ok[0].request_id, ok[2].request_id, ok[3].request_id]
    assert [i.request_id.hex() for i in store.pending(d2.link_id, 1 << 16, now)[0]] == [ok[1].request_id]


async def test_queued_items_are_durable(gateway):
    stub, store, service, devs, tmp_path = gateway
    (d1, t1), _ = devs
    reply = await stub.SubmitBatch(pb.SubmitBatchRequest(requests=[req(d1, t1), req(d1, t1)]), timeout=10)
    ids = [it.result.request_id for it in reply.items]
    # another process reads what is on disk
    script = ("import json, sys; from edgistry.gateway.store.store import GatewayStore; from edgistry.firmware.caplets import "
              "api as cl; s = GatewayStore(sys.argv[1]); items = s.pending(bytes.fromhex(sys.argv[2]), 1 << 16, "
              "int(sys.argv[3]))[0]; print(json.dumps([[i.request_id.hex(), cl.load(i.request_token).request.method]"
              " for i in items])); s.close()")
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "gw"), d1.link_id.hex(),
                          str(int(time.time() * 1000))], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [[rid, "read"] for rid in ids]


async def test_oversized_batch_is_refused_whole_and_empty_batch_is_empty(gateway):
    stub, store, service, devs, _ = gateway
    (d1, t1), _ = devs
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.SubmitBatch(pb.SubmitBatchRequest(requests=[req(d1, t1)] * 9), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "at most 8" in err.value.details()
    assert store.depth(d1.link_id) == 0
    assert list((await stub.SubmitBatch(pb.SubmitBatchRequest(), timeout=10)).items) == []


async def test_retried_batch_with_request_ids_is_idempotent(gateway):
    stub, store, service, devs, _ = gateway
    (d1, t1), _ = devs
    batch = pb.SubmitBatchRequest(requests=[req(d1, t1, request_id=new_id().hex()) for _ in range(2)])
    first = await stub.SubmitBatch(batch, timeout=10)
    again = await stub.SubmitBatch(batch, timeout=10)
    assert [i.result.request_id for i in first.items] == [i.result.request_id for i in again.items]
    assert store.depth(d1.link_id) == 2


async def test_deeply_nested_arguments_are_refused_alone(gateway):
    """Valid JSON nested beyond the parser's depth is a bad argument of its item, not a failed call."""
    stub, store, service, devs, _ = gateway
    (d1, t1), _ = devs
    deep = req(d1, t1)
    deep.args = b"[" * 5000 + b"]" * 5000
    reply = await stub.SubmitBatch(pb.SubmitBatchRequest(requests=[req(d1, t1), deep]), timeout=10)
    assert not reply.items[0].code
    assert reply.items[1].code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "nested too deeply" in reply.items[1].error
    assert store.depth(d1.link_id) == 1


async def test_an_unexpected_error_fails_the_call_but_queued_items_are_announced(gateway, monkeypatch):
    """An error that is not the caller's (a bug, a failing dependency) fails the whole call,
    yet every item queued before and after it is counted and announced to the link server."""
    stub, store, service, devs, _ = gateway
    (d1, t1), (d2, t2) = devs
    announced = []
    service.on_queued = announced.append
    prepare = service._prepare

    def flaky(dev, call, now, *a):
        if call.args == b'{"n": 2}':
            raise RuntimeError("boom")
        return prepare(dev, call, now, *a)
    monkeypatch.setattr(service, "_prepare", flaky)
    bad = req(d1, t1)
    bad.args = b'{"n": 2}'
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.SubmitBatch(pb.SubmitBatchRequest(requests=[req(d1, t1), bad, req(d2, t2)]), timeout=10)
    assert err.value.code() == grpc.StatusCode.UNKNOWN
    assert (store.depth(d1.link_id), store.depth(d2.link_id)) == (1, 1)
    assert announced == [d1.link_id, d2.link_id]
    queued = [s.value for m in service.metrics.requests.collect() for s in m.samples
              if s.name.endswith("_total") and s.labels["kind"] == "queued"]
    assert queued == [2.0]
