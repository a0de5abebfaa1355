"""Revocation inside the gateway, in process: queued requests end REVOKED when the gateway
learns a revocation, forwarded ones are cancelled at their holder by a signed-peer style
call it honours whatever its own chain view, delivery never hands out a revoked chain, the
request token carries the client chain's hashes, and token checks fail closed when the
chain node is silent."""

from __future__ import annotations

import pytest

from edgistry.firmware.caplets import api as cl
from edgistry.firmware.link.link_device import REVOKED
from edgistry.gateway.api.service import Call, GatewayService, Result, owner_handle
from edgistry.gateway.errors import NotFound, Unauthorized, Unavailable
from edgistry.gateway.link.delivery import Backlog, Delivery
from edgistry.gateway.link.store_backend import StoreLinkBackend
from edgistry.gateway.store.store import GatewayStore, State, new_id
from edgistry.gateway.tokens.revocations import LiveRevocations
from gateway_helpers import pair_device

MANIFEST = {"duty_cycle_s": 5, "services": [
    {"type": "sensor", "methods": [{"name": "read", "cache_max_age_s": 30}, "info"]},
    {"type": "valve", "methods": ["get", {"name": "set", "mutating": True}]}]}
SECRET_A, SECRET_B = b"a" * 32, b"b" * 32


class Loopback:
    """The forwarder A uses: B's serve_forward, as the Peer service calls it (via = A's id)."""

    def __init__(self, holder: GatewayService, via: str) -> None:
        self.holder, self.via, self.calls = holder, via, []

    async def owner_of(self, pseudonym: bytes) -> str | None:
        return self.holder.gateway_id if self.holder.store.device_by_pseudonym(pseudonym) else None

    async def call(self, gateway_id: str, kind: str, call: Call | None = None, request_id: str = "",
                   token: bytes = b"") -> Result:
        self.calls.append(kind)
        if call is not None:  # what crosses the wire: a copy, with the peer's fields only
            call = Call(call.target, call.method, call.args, call.token, call.timeout_ms, call.ttl_s,
                        call.service, call.request_id, attested=call.attested, chain=call.chain)
        return await self.holder.serve_forward(kind, call, request_id, token, via=self.via)


@pytest.fixture
async def two(tmp_path):
    """A (forwards) and B (holds the device), each with its own store and revocation set."""
    sa, sb = GatewayStore(tmp_path / "a"), GatewayStore(tmp_path / "b")
    b = GatewayService(sb, "gw-b", SECRET_B)
    a = GatewayService(sa, "gw-a", SECRET_A, forwarder=Loopback(b, "gw-a"))
    dev, root = await pair_device(sb, MANIFEST)
    yield a, b, dev, root
    sa.close()
    sb.close()


def call(dev, method, token, **kw) -> Call:
    return Call(owner_handle(dev.pseudonym), method, token=token.to_bytes(), **kw)


async def test_learning_a_revocation_ends_queued_requests_revoked(two):
    """Every active request made with the revoked token, or one derived from it, ends REVOKED
    at once; others stay queued; the store forgets the token's index with its last request."""
    _, b, dev, root = two
    parent = cl.derive(root, [cl.Service("valve", ["*"]), cl.Service("sensor", ["*"])])
    child = cl.derive(parent, [cl.Service("sensor", ["info"])])
    other = cl.derive(root, [cl.Service("valve", ["get"])])
    mine = [await b.submit(call(dev, "set", parent, service="valve")),
            await b.submit(call(dev, "info", child, service="sensor"))]
    kept = await b.submit(call(dev, "get", other, service="valve"))
    h = cl.revocation_hash(parent.tag)
    b.revoked.revoke(h)
    assert await b.revoked_now([h]) == 2
    for res in mine:
        rec = b.store.get(bytes.fromhex(res.request_id))
        assert rec.st == State.REVOKED and rec.status == REVOKED and "revoked" in rec.error
    assert b.store.get(bytes.fromhex(kept.request_id)).st == State.QUEUED
    assert b.store.depth(dev.link_id) == 1
    assert await b.revoked_now([h]) == 0
    assert not [k for k, _ in b.store._scan(b"kh/") if k[3:35] == h]


async def test_request_tokens_carry_the_client_chain_hashes(two):
    """The device sees the hashes of every tag of the client token's chain, bound in the
    request frame (covered by its tag), so it can refuse the request on its own list."""
    _, b, dev, root = two
    parent = cl.derive(root, [cl.Service("sensor", ["*"])])
    child = cl.derive(parent, [cl.Service("sensor", ["info"])])
    res = await b.submit(call(dev, "info", child, service="sensor"))
    leaf = cl.load(b.store.get(bytes.fromhex(res.request_id)).request_token).frames[-1]
    (bound,) = [c for c in leaf.constraints if isinstance(c, cl.AuthorisedBy)]
    assert bound.hashes == tuple(cl.revocation_hash(t) for t in (root.tag, parent.tag, child.tag))


async def test_a_forwarded_request_is_cancelled_at_its_holder(two):
    """A learns a revocation B has not: A's cancel (reason revoked) ends B's copy REVOKED
    although B's own list is empty; B honours it only from the gateway that forwarded it."""
    a, b, dev, root = two
    gwtok = cl.mint(SECRET_A, [cl.Service("sensor", ["info"])])  # A's own token, vouched for
    owner = cl.derive(root, [cl.Service("sensor", ["*"])])
    vouched = await a.submit(call(dev, "info", gwtok, service="sensor"), attested=True)
    direct = await a.submit(call(dev, "info", owner, service="sensor"))
    rec = b.store.get(bytes.fromhex(vouched.request_id))
    assert rec.via == "gw-a" and rec.st == State.QUEUED
    for token, res in ((gwtok, vouched), (owner, direct)):
        h = cl.revocation_hash(token.tag)
        a.revoked.revoke(h)
        await a.revoked_now([h])
        assert b.store.get(bytes.fromhex(res.request_id)).st == State.REVOKED
    assert len(b.revoked) == 0 and a.forwarder.calls.count("revoke") == 2
    third = await b.submit(call(dev, "info", cl.derive(root, [cl.Service("sensor", ["info"])]), service="sensor"))
    with pytest.raises(Unauthorized, match="forwarded"):  # B's own request: no peer may end it
        await b.serve_forward("revoke", request_id=third.request_id, via="gw-a")
    with pytest.raises(NotFound):
        await b.serve_forward("revoke", request_id=new_id().hex(), via="gw-a")


async def test_a_gateway_refuses_to_forward_a_token_it_knows_is_revoked(two):
    """Once A knows of the revocation it forwards nothing made with the token (nor its children)."""
    a, b, dev, root = two
    token = cl.derive(root, [cl.Service("sensor", ["*"])])
    a.revoked.revoke(cl.revocation_hash(token.tag))
    with pytest.raises(Unauthorized, match="Revoked"):
        await a.submit(call(dev, "info", token, service="sensor"))
    assert b.store.depth(dev.link_id) == 0


async def test_delivery_never_hands_out_a_revoked_chain(two):
    """A queue read that raced with the revocation: the request is answered REVOKED, not sent."""
    _, b, dev, root = two
    bad_tok = cl.derive(root, [cl.Service("sensor", ["*"])])
    good_tok = cl.derive(root, [cl.Service("sensor", ["info"])])
    bad = await b.submit(call(dev, "info", bad_tok, service="sensor"))
    good = await b.submit(call(dev, "info", good_tok, service="sensor"))
    backend = StoreLinkBackend(b.store, SECRET_B, revoked={cl.revocation_hash(bad_tok.tag)})
    pending, more = backend.pending(dev.link_id, 1 << 16)
    d = Delivery().established(False, Backlog(pending, more, (), 0, backend.barred()), 0)
    sent = [i["request_id"] for f in d.frames for i in f.items]
    assert sent == [bytes.fromhex(good.request_id)]
    assert [(a.request_id, a.status) for a in d.refused] == [(bytes.fromhex(bad.request_id), REVOKED)]
    await backend.answered(dev.link_id, d.refused)
    assert b.store.get(bytes.fromhex(bad.request_id)).st == State.REVOKED


async def test_token_checks_fail_closed_when_the_chain_is_silent(two):
    """A gateway that has not heard from its chain node within the bound refuses token checks
    with Unavailable (saying why), and its link hands out no work; hearing again restores them."""
    _, b, dev, root = two
    now = [100.0]
    live = LiveRevocations(max_silence_s=5.0, clock=lambda: now[0])
    b.revoked = live
    token = cl.derive(root, [cl.Service("sensor", ["*"])])
    with pytest.raises(Unavailable, match="not loaded"):
        await b.submit(call(dev, "info", token, service="sensor"))
    live.heard()
    res = await b.submit(call(dev, "info", token, service="sensor"))
    now[0] += 6
    for attempt in (b.submit(call(dev, "info", token, service="sensor")), b.get_result(res.request_id,
                                                                                        token.to_bytes())):
        with pytest.raises(Unavailable, match="not heard from its chain node"):
            await attempt
    assert StoreLinkBackend(b.store, SECRET_B, revoked=live).pending(dev.link_id, 1 << 16) == ([], False)
    assert b.status()["fail_closed"] is True
    live.heard()
    assert (await b.get_result(res.request_id, token.to_bytes())).state == State.QUEUED


async def test_a_forward_waits_for_the_holder_to_reach_the_forwarders_revocation_height(two):
    """B serves a forward only once its revocations reach A's height: it waits briefly for its
    follower (then serves, refusing what A's height revoked), else answers Unavailable."""
    import asyncio

    _, b, dev, root = two
    live = LiveRevocations()
    live.heard()
    live.height, b.revoked, b.catch_up_s = 5, live, 0.3
    token = cl.derive(root, [cl.Service("sensor", ["*"])])
    with pytest.raises(Unavailable, match="behind the forwarding gateway's 7"):
        await b.serve_forward("submit", call(dev, "info", token, service="sensor", revocation_height=7), via="gw-a")

    async def follower_applies_height_7() -> None:
        await asyncio.sleep(0.1)
        live.revoke(cl.revocation_hash(token.tag))
        live.height = 7

    b.catch_up_s = 3.0
    task = asyncio.create_task(follower_applies_height_7())
    with pytest.raises(Unauthorized, match="Revoked"):
        await b.serve_forward("submit", call(dev, "info", token, service="sensor", revocation_height=7), via="gw-a")
    await task
    assert b.store.depth(dev.link_id) == 0


async def test_a_vouched_read_is_not_answered_from_cache_once_its_token_is_revoked(two):
    """Invoke-any's path (a read vouched for by this gateway's own token): a cached answer is
    served while the token is good and refused once it is revoked, like every other path."""
    from edgistry.gateway.link.backend import DeviceAnswer

    _, b, dev, root = two
    gwtok = cl.mint(SECRET_B, [cl.Service("sensor", ["read"])])
    first = await b.submit(call(dev, "read", gwtok, service="sensor"), attested=True)
    backend = StoreLinkBackend(b.store, SECRET_B)
    await backend.answered(dev.link_id, [DeviceAnswer(bytes.fromhex(first.request_id), 0, b'{"t": 1}')])
    hit = await b.invoke(call(dev, "read", gwtok, service="sensor"), attested=True)
    assert hit.from_cache and hit.state == State.DONE
    b.revoked.revoke(cl.revocation_hash(gwtok.tag))
    with pytest.raises(Unauthorized, match="Revoked"):
        await b.invoke(call(dev, "read", gwtok, service="sensor"), attested=True)
    child = cl.derive(gwtok, [cl.Service("sensor", ["read"])], [cl.ExpiresAt(2**40)])
    with pytest.raises(Unauthorized, match="Revoked"):
        await b.invoke(call(dev, "read", child, service="sensor"), attested=True)
