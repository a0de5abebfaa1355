"""Forwarded result, cancel and watch calls wait, as invoke and submit do, until the holder's
revocations reach the forwarding gateway's height: a token revoked at the forwarder (where
`token revoke` has returned) is not served by a holder that is still behind.

Two real GatewayServices over their stores; the forwarder's PeerForwarder builds the wire
messages, and a stand-in for PeerClient hands them to the holder as its Peer service does
(grpc_server.GatewayServicer.Forward / ForwardWatch), without the mTLS transport."""

from __future__ import annotations

import asyncio

import pytest

from edgistry.firmware.caplets import api as cl
from edgistry.gateway.api.convert import to_call, to_pb
from edgistry.gateway.api.service import Call, GatewayService, owner_handle
from edgistry.gateway.app import PeerForwarder
from edgistry.gateway.errors import Unauthorized, Unavailable
from edgistry.gateway.store.store import GatewayStore, State
from edgistry.gateway.tokens.revocations import LiveRevocations
from edgistry.proto import gateway_pb2 as gw
from gateway_helpers import pair_device

pytestmark = pytest.mark.timeout(30)
MANIFEST = {"duty_cycle_s": 5, "services": [{"type": "sensor", "methods": ["info"]}]}


class PeerWire:
    """PeerClient's calls, answered by the holder as its Peer service answers them."""

    def __init__(self, holder: GatewayService, via: str) -> None:
        self.holder, self.via = holder, via

    async def forward(self, gateway_id, kind, request=None, result=None, timeout=None):
        if request is not None:
            call = to_call(gw.InvokeRequest.FromString(request.SerializeToString()), from_peer=True)
            return to_pb(await self.holder.serve_forward(kind, call, via=self.via))
        return to_pb(await self.holder.serve_forward(kind, request_id=result.request_id, token=result.token,
                                                     via=self.via, revocation_height=result.revocation_height))

    async def watch(self, gateway_id, result):
        async for res in self.holder.serve_forward_watch(result.request_id, result.token, result.revocation_height):
            yield to_pb(res)


def live(height: int) -> LiveRevocations:
    r = LiveRevocations(max_silence_s=60)
    r.heard()
    r.height = height
    return r


@pytest.fixture
async def two(tmp_path):
    sa, sb = GatewayStore(tmp_path / "a"), GatewayStore(tmp_path / "b")
    b = GatewayService(sb, "gw-b", b"b" * 32, revoked=live(0), catch_up_s=0.3)
    a_revoked = live(0)
    forwarder = PeerForwarder(PeerWire(b, "gw-a"), None, lambda: a_revoked.height)
    forwarder.owner_of = lambda ps: _owner(b, ps)
    a = GatewayService(sa, "gw-a", b"a" * 32, revoked=a_revoked, forwarder=forwarder)
    dev, root = await pair_device(sb, MANIFEST)
    yield a, b, dev, root
    sa.close()
    sb.close()


async def _owner(holder: GatewayService, ps: bytes) -> str | None:
    return holder.gateway_id if holder.store.device_by_pseudonym(ps) else None


async def test_result_cancel_and_watch_wait_for_the_forwarders_revocations(two):
    a, b, dev, root = two
    parent = cl.derive(root, [cl.Service("sensor", ["*"])])
    child = cl.derive(parent, [cl.Service("sensor", ["info"])]).to_bytes()
    res = await a.submit(Call(owner_handle(dev.pseudonym), "info", token=child, service="sensor"))
    assert res.state == State.QUEUED
    h = cl.revocation_hash(parent.tag)  # the parent is revoked: in force at A (height 10), not yet at B (9)
    a.revoked.revoke(h)
    a.revoked.height, b.revoked.height = 10, 9
    for attempt in (lambda: a.get_result(res.request_id, child), lambda: a.cancel(res.request_id, child),
                    lambda: asyncio.wait_for(a.watch(res.request_id, child).__anext__(), 5)):
        with pytest.raises(Unavailable, match="behind"):
            await attempt()
    b.revoked.revoke(h)
    b.revoked.height = 10  # caught up: refused for the revocation itself
    with pytest.raises(Unauthorized, match="revocation"):
        await a.get_result(res.request_id, child)
    assert b.store.get(bytes.fromhex(res.request_id)).state == State.QUEUED  # nothing was cancelled meanwhile
