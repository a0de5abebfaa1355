"""Gateway domain logic in-process: token checks, cache, expiry, deadlines, watch, cancel."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from edgistry.firmware.caplets import api as cl
from edgistry.gateway.tokens import auth
from edgistry.gateway.link.store_backend import StoreLinkBackend
from edgistry.gateway.errors import BadRequest, Conflict, InvokeTimeout, NotFound, QueueFull, Unauthorized
from edgistry.gateway.link.backend import DeviceAnswer
from edgistry.gateway.api.service import Call, GatewayService, HandleGrant, Settings, owner_handle
from edgistry.gateway.store.store import Device, GatewayStore, State, new_id
from gateway_helpers import count_enqueue_ops

MANIFEST = {"duty_cycle_s": 5, "services": [
    {"type": "sensor", "methods": [{"name": "read", "cache_max_age_s": 30}, "info"]},
    {"type": "valve", "methods": ["get", {"name": "set", "mutating": True}]}]}
GATEWAY_SECRET = b"g" * 32


@pytest.fixture
async def env(tmp_path):
    store = GatewayStore(tmp_path / "gw")
    service = GatewayService(store, "gw-a", GATEWAY_SECRET, settings=Settings(max_queue_depth=3))
    secret = cl.new_secret()
    root = cl.root(secret)
    dev = Device(new_id(), auth.pseudonym_for(root.to_bytes()), root.to_bytes(), MANIFEST, 0, 7, 1, duty_cycle_s=5)
    await store.put_device(dev)
    app = auth.app_token(root.to_bytes(), {"sensor": ["info", "read"], "valve": ["get"]})
    yield store, service, dev, secret, app
    store.close()


def call(dev, method, token, **kw) -> Call:
    return Call(owner_handle(dev.pseudonym), method, token=token.to_bytes() if isinstance(token, cl.Token) else token,
                **kw)


async def answer(store, dev, payload=b'{"t": 21}', status=0):
    """What the link server does for a device flight of ACK + RESPONSES (one group commit)."""
    backend = StoreLinkBackend(store, GATEWAY_SECRET)
    items, _ = backend.pending(dev.link_id, 1 << 16)
    await asyncio.gather(backend.delivered(dev.link_id, [i.request_id for i in items]),
                         backend.answered(dev.link_id, [DeviceAnswer(i.request_id, status, payload)
                                                        for i in items]))
    return items


@pytest.mark.parametrize("make,why", [
    (lambda secret, root, app: cl.derive(cl.root(cl.new_secret()), [cl.Service("sensor", ["read"])]), "origin"),
    (lambda secret, root, app: app, "permit"),  # read-only token, mutating method
    (lambda secret, root, app: cl.Token(app.frames, bytes(32)), "origin"),  # forged tag
    (lambda secret, root, app: cl.request_token(root, "valve", "set", b"", 1), "request"),  # a captured leaf
    # a gateway token by pseudonym: refused for its origin before any right is looked at
    (lambda secret, root, app: cl.mint(GATEWAY_SECRET, [cl.Identity("link:00")]), "pseudonym"),
    (lambda secret, root, app: cl.derive(root, [cl.Service("valve", ["*"])], [cl.ExpiresAt(1)]), "Constraint"),
    (lambda secret, root, app: cl.derive(root, [cl.Service("valve", ["*"])], [cl.Gateway("gw-b")]), "Constraint"),
    (lambda secret, root, app: b"\x01garbage", "malformed"),
])
async def test_bad_tokens_are_refused_for_a_mutating_call(env, make, why):
    """Wrong origin, read-only, forged, leaf, identity, expired, other-gateway and garbage tokens are refused."""
    store, service, dev, secret, app = env
    token = make(secret, cl.load(dev.root_token), app)
    with pytest.raises(Unauthorized, match=f"(?i){why}"):
        await service.submit(call(dev, "set", token, service="valve"))
    assert store.depth(dev.link_id) == 0


async def test_owner_and_gateway_tokens_are_accepted(env):
    """A token the owner derived with the write right authorises a write by pseudonym; a
    gateway-origin token authorises it only on discovery's word (attested), never by pseudonym."""
    store, service, dev, secret, app = env
    owner = cl.derive(cl.load(dev.root_token), [cl.Service("valve", ["*"])])
    regional = cl.mint(GATEWAY_SECRET, [cl.Service("valve", ["set"])])
    with pytest.raises(Unauthorized, match="pseudonym"):
        await service.submit(call(dev, "set", regional, args=b'{"open": true}'))
    for token, attested in ((owner, False), (regional, True)):
        res = await service.submit(call(dev, "set", token, args=b'{"open": true}'), attested=attested)
        assert res.state == State.QUEUED and res.expected_at_ms > 0
    items = store.pending(dev.link_id, 1 << 16, int(time.time() * 1000))[0]
    assert len(items) == 2
    tok = cl.verify(items[0].request_token, secret, now=int(time.time()))
    assert tok.request.method == "set" and tok.request.digest == cl.request_digest(b'{"open": true}')


async def test_revoked_app_token_is_refused(env):
    """Revoking the application token's tag stops it at the gateway."""
    store, service, dev, secret, app = env
    service.revoked.revoke_token(app)
    with pytest.raises(Unauthorized, match="Revoked"):
        await service.submit(call(dev, "read", app))


async def test_cached_read_does_not_wake_the_device(env):
    """After one answer, a cacheable read is served from cache with nothing queued."""
    store, service, dev, secret, app = env
    first = await service.submit(call(dev, "read", app))
    assert first.state == State.QUEUED
    await answer(store, dev)
    again = await service.invoke(call(dev, "read", app, timeout_ms=100))
    assert again.state == State.DONE and again.from_cache and again.payload == b'{"t": 21}'
    assert store.depth(dev.link_id) == 0 and store.pending(dev.link_id, 1 << 16, 0) == ([], False)
    other = await service.submit(call(dev, "read", app, args=b"[1]"))  # other args: not cached
    assert other.state == State.QUEUED


async def test_invoke_waits_for_the_answer_and_deadline_keeps_request(env):
    """Invoke returns when the device answers; past its deadline it says how to fetch the result later."""
    store, service, dev, secret, app = env
    task = asyncio.create_task(service.invoke(call(dev, "info", app, timeout_ms=5000)))
    await asyncio.sleep(0.05)
    await answer(store, dev, b'"v1"')
    res = await asyncio.wait_for(task, 5)
    assert res.state == State.DONE and res.payload == b'"v1"'
    with pytest.raises(InvokeTimeout) as exc:
        await service.invoke(call(dev, "info", app, timeout_ms=100))
    assert exc.value.request_id and "edgistry result" in str(exc.value)
    assert (await service.get_result(exc.value.request_id, app.to_bytes())).state == State.QUEUED


async def test_expiry_is_reported_to_a_waiting_client(env):
    """A request whose TTL passes while a client waits comes back EXPIRED (dead-lettered)."""
    store, service, dev, secret, app = env
    task = asyncio.create_task(service.invoke(call(dev, "info", app, timeout_ms=5000, ttl_s=1)))
    await asyncio.sleep(0.05)
    await store.expire_due(int(time.time() * 1000) + 2000)
    res = await asyncio.wait_for(task, 5)
    assert res.state == State.EXPIRED and "dead-lettered" in res.error


async def test_overflow_is_refused_at_once(env):
    """The fourth request for a depth-3 queue is refused immediately."""
    store, service, dev, secret, app = env
    for _ in range(3):
        await service.submit(call(dev, "info", app))
    with pytest.raises(QueueFull):
        await service.submit(call(dev, "info", app))
    assert service.metrics.rejections.labels("queue_full")._value.get() == 1


async def test_result_needs_the_same_token_and_watch_streams(env):
    """GetResult/Cancel with another token are refused; WatchResult yields each state until DONE."""
    store, service, dev, secret, app = env
    res = await service.submit(call(dev, "info", app))
    other = cl.derive(cl.load(dev.root_token), [cl.Service("sensor", ["info"])])
    with pytest.raises(Unauthorized):
        await service.get_result(res.request_id, other.to_bytes())
    with pytest.raises(Unauthorized):
        await service.cancel(res.request_id, other.to_bytes())
    with pytest.raises(NotFound):
        await service.get_result(new_id().hex(), app.to_bytes())
    seen = []

    async def watch():
        async for r in service.watch(res.request_id, app.to_bytes()):
            seen.append(r.state)

    task = asyncio.create_task(watch())
    await asyncio.sleep(0.05)
    await answer(store, dev)
    await asyncio.wait_for(task, 5)
    assert seen[0] == State.QUEUED and seen[-1] == State.DONE


async def test_revoked_or_expired_token_can_no_longer_read_watch_or_cancel(env):
    """Result, watch and cancel check the request's token again: once it is revoked (or has
    expired) it reaches nothing, not even what it asked for while it was good."""
    store, service, dev, secret, app = env
    res = await service.submit(call(dev, "info", app))
    assert (await service.get_result(res.request_id, app.to_bytes())).state == State.QUEUED
    service.revoked.revoke_token(app)
    for attempt in (service.get_result(res.request_id, app.to_bytes()),
                    service.cancel(res.request_id, app.to_bytes()), _first(service.watch(res.request_id, app.to_bytes()))):
        with pytest.raises(Unauthorized, match="Revoked"):
            await attempt
    assert store.depth(dev.link_id) == 1  # not cancelled
    now = int(time.time())
    brief = cl.derive(cl.load(dev.root_token), [cl.Service("sensor", ["info"])], [cl.ExpiresAt(now + 60)])
    res = await service.submit(call(dev, "info", brief))
    service.clock = lambda: (now + 120) * 1000
    with pytest.raises(Unauthorized, match="(?i)constraint"):
        await service.get_result(res.request_id, brief.to_bytes())


async def test_a_watch_ends_when_its_token_is_revoked_while_it_streams(env):
    """A WatchResult already streaming stops with Unauthorized once its token is revoked
    (checked at the next change, and at least every watch_recheck_s)."""
    store, service, dev, secret, app = env
    service.watch_recheck_s = 0.1
    res = await service.submit(call(dev, "info", app))
    stream = service.watch(res.request_id, app.to_bytes())
    assert (await asyncio.wait_for(stream.__anext__(), 5)).state == State.QUEUED
    service.revoked.revoke_token(app)
    with pytest.raises(Unauthorized, match="Revoked"):
        await asyncio.wait_for(stream.__anext__(), 5)
    assert store.depth(dev.link_id) == 1  # the request itself goes on


async def test_results_of_attested_requests_and_unpaired_devices_stay_readable(env):
    """A request made on a peer's word is read with the digest check alone (the forwarding
    gateway checked the client); so is the failure of a device since unpaired."""
    store, service, dev, secret, app = env
    forwarded = call(dev, "info", b"peer-vouched", service="sensor", attested=True, request_id=new_id().hex())
    res = await service.serve_forward("submit", forwarded)
    assert (await service.get_result(res.request_id, b"peer-vouched")).state == State.QUEUED
    mine = await service.submit(call(dev, "info", app))
    await store.remove_device(dev.link_id, int(time.time() * 1000))
    gone = await service.get_result(mine.request_id, app.to_bytes())
    assert gone.state == State.CANCELLED and gone.error == "the device was unpaired"


async def _first(agen):
    async for item in agen:
        return item


async def test_cancel(env):
    """A cancelled request leaves the queue and reports CANCELLED."""
    store, service, dev, secret, app = env
    res = await service.submit(call(dev, "info", app))
    done = await service.cancel(res.request_id, app.to_bytes())
    assert done.state == State.CANCELLED and store.depth(dev.link_id) == 0


async def test_unknown_method_and_handle(env):
    """Unknown methods and handles are refused before anything is queued."""
    store, service, dev, secret, app = env
    with pytest.raises(Exception, match="no method"):
        await service.submit(call(dev, "nope", app))
    with pytest.raises(NotFound):
        await service.submit(Call("dev-" + "00" * 16, "read", token=app.to_bytes()))


async def test_method_names_are_not_revealed_without_a_valid_token(env):
    """Asking for an unknown method with a foreign or missing token is refused as unauthorised."""
    store, service, dev, secret, app = env
    stranger = cl.derive(cl.root(cl.new_secret()), [cl.Service("sensor", ["read"])])
    for token in (stranger, b""):
        with pytest.raises(Unauthorized):
            await service.submit(call(dev, "nope", token))


async def test_a_batch_goes_to_the_writer_while_an_earlier_commit_runs(env):
    """Nothing waits for an earlier commit: a batch is handed to the writer while the
    commit before it is still running (so their work overlaps), and each batch is
    acknowledged only after its own commit."""
    store, service, dev, secret, app = env
    service.settings.max_queue_depth = 10
    handed: list[int] = []  # items of each enqueue operation, as it reaches the writer
    real_submit = store.writer.submit

    def recording(name, args, urgent=False):
        if name == "enqueue":
            handed.append(len(args[0]))
        return real_submit(name, args, urgent)
    store.writer.submit = recording
    pid = store.writer.pid
    os.kill(pid, signal.SIGSTOP)  # the writer holds the first batch's commit open until continued
    try:
        first = asyncio.ensure_future(service.submit_many([call(dev, "info", app)] * 2))
        for _ in range(200):
            if handed == [2]:
                break
            await asyncio.sleep(0.01)
        second = asyncio.ensure_future(service.submit_many([call(dev, "info", app)] * 3))
        for _ in range(200):
            if handed == [2, 3]:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        assert handed == [2, 3] and not first.done() and not second.done()
    finally:
        os.kill(pid, signal.SIGCONT)
    assert [r.state for r in await asyncio.wait_for(first, 10)] == [State.QUEUED] * 2
    assert [r.state for r in await asyncio.wait_for(second, 10)] == [State.QUEUED] * 3
    assert store.depth(dev.link_id) == 5


async def test_concurrent_submits_share_a_commit_and_keep_queue_order(env):
    """Submits arriving together are written by one transaction (group commit); each keeps its own
    outcome (the depth-3 queue refuses the rest) and sequences rise in queue order."""
    store, service, dev, secret, app = env
    ops = count_enqueue_ops(store)
    before = store.writer.commits
    results = await asyncio.gather(*(service.submit(call(dev, "info", app, args=b'{"n": %d}' % i))
                                     for i in range(5)), return_exceptions=True)
    assert ops == [1] * 5 and store.writer.commits == before + 1  # five operations, one transaction
    assert sum(1 for r in results if isinstance(r, QueueFull)) == 2
    queued = [r for r in results if not isinstance(r, Exception)]
    assert len(queued) == 3 and all(r.state == State.QUEUED for r in queued)
    items = store.pending(dev.link_id, 1 << 16, int(time.time() * 1000))[0]
    seqs = [cl.verify(i.request_token, secret, now=int(time.time())).request.sequence for i in items]
    assert seqs == sorted(seqs) and len(set(seqs)) == 3
    assert [i.request_id.hex() for i in items] == [r.request_id for r in queued]


async def test_gateway_app_tokens_read_through_resource_rights(env):
    """A gateway-origin application token with READ on /svc reads through a discovery handle (never by
    pseudonym), and never writes."""
    store, service, dev, secret, app = env
    grants = {"handle-1": "sensor", "handle-2": "valve"}
    service.resolvers.append(lambda target, token: HandleGrant(dev.pseudonym, grants[target], lambda *a: True)
                             if target in grants else None)
    reader = cl.mint(GATEWAY_SECRET, [cl.Identity("app-1"), cl.Resource("/svc", cl.READ)])
    res = await service.submit(Call("handle-1", "info", token=reader.to_bytes(), service="sensor"))
    assert res.state == State.QUEUED
    with pytest.raises(Unauthorized, match="pseudonym"):
        await service.submit(call(dev, "info", reader, service="sensor"))
    with pytest.raises(Unauthorized, match="permit"):  # a write needs a device token, handle or not
        await service.submit(Call("handle-2", "set", token=reader.to_bytes(), service="valve"))
    with pytest.raises(Unauthorized, match="discovery handle reaches only"):  # a handle is for one service
        await service.submit(Call("handle-1", "set", token=reader.to_bytes(), service="valve"))
    narrow = cl.mint(GATEWAY_SECRET, [cl.Identity("app-2"), cl.Resource("/svc/valve", cl.READ)])
    with pytest.raises(Unauthorized):
        await service.submit(call(dev, "info", narrow, service="sensor"))


async def test_attestation_comes_only_from_signed_peer_forwards(env):
    """A client cannot claim a peer's attestation; a peer's attestation covers reads only."""
    store, service, dev, secret, app = env
    with pytest.raises(Unauthorized):
        await service.submit(call(dev, "info", b"", service="sensor", attested=True))
    forwarded = call(dev, "info", b"", service="sensor", attested=True, request_id=new_id().hex())
    assert (await service.serve_forward("submit", forwarded)).state == State.QUEUED
    with pytest.raises(Unauthorized):
        await service.serve_forward("submit", call(dev, "set", b"", service="valve", attested=True))


@pytest.mark.parametrize("args,ok", [
    (b'{"unit": "C"}', True), (b"[1e400]", True), (b'"\\ud800"', True), (b"NaN", True),  # json's verdict
    (b"{", False), (b"{'a': 1}", False), (b"\xff", False), (b"[" * 5000 + b"]" * 5000, False)],
    ids=["object", "huge-number", "lone-surrogate", "nan", "truncated", "quotes", "not-utf8", "deep"])
async def test_arguments_must_be_json_as_python_reads_it(env, args, ok):
    """The fast JSON check never refuses what json.loads accepts, and refuses what it refuses."""
    store, service, dev, secret, app = env
    sub = service.submit(call(dev, "info", app, args=args))
    if ok:
        assert (await sub).state == State.QUEUED
    else:
        with pytest.raises(BadRequest, match="not JSON|nested too deeply"):
            await sub


async def test_request_sequences_rise_durably_and_a_stale_one_is_refused_then_caught_up(env):
    """The service mints sequences the device accepts in queue order; a new service on the
    same store (a restart, its clock behind) continues above the stored last; a sequence
    not above the stored one is refused, never reused, and the next request catches up."""
    from edgistry.firmware.link.link_device import check_request
    from edgistry.gateway.store.ops import StaleSequence
    from edgistry.gateway.store.store import RequestRecord

    store, service, dev, secret, app = env
    service.settings.max_queue_depth = 10
    await service.submit(call(dev, "info", app))
    restarted = GatewayService(store, "gw-a", GATEWAY_SECRET, settings=Settings(max_queue_depth=10),
                               clock=lambda: 1000)  # a clock far behind the sequences on disk
    await restarted.submit(call(dev, "info", app))
    last = store.last_sequence(dev.link_id)
    other = RequestRecord(new_id(), dev.link_id, "sensor", "info", b"", b"t", b"d" * 32, State.QUEUED, 1000,
                          2**50, seq=last + 100)  # someone else enqueued: the service's memory is behind
    assert (await store.enqueue([(other, 10)]))[0][1]
    with pytest.raises(StaleSequence):
        await restarted.submit(call(dev, "info", app))
    assert store.last_sequence(dev.link_id) == last + 100  # the refused one wrote nothing
    await restarted.submit(call(dev, "info", app))
    items = [i for i in store.pending(dev.link_id, 1 << 16, 0)[0] if i.request_id != other.request_id]
    seen = None
    for i in items:  # what the device does, in queue order: each sequence above the last
        seen = check_request({"request_token": i.request_token, "service": i.service, "method": i.method,
                              "args": i.args}, secret, now_s=int(time.time()), last_sequence=seen)
    assert len(items) == 3 and seen == last + 101


@pytest.mark.parametrize("batched", [False, True])
async def test_a_cached_answer_never_takes_over_another_requests_id(env, batched):
    """A cacheable read submitted under a request id already on record (another client's
    queued write) is refused with Conflict; the record, its queue place and its owner's
    access stay as they were. The same read again under its own id is answered as before."""
    store, service, dev, secret, app = env
    owner = cl.derive(cl.load(dev.root_token), [cl.Service("valve", ["*"])])
    rid = new_id().hex()
    queued = await service.submit(call(dev, "set", owner, service="valve", args=b'{"open": true}', request_id=rid))
    first = await service.submit(call(dev, "read", app, service="sensor"))
    await answer(store, dev)  # the read is answered: the next one is a cache hit
    taking = call(dev, "read", app, service="sensor", request_id=rid)
    if batched:
        (refused,) = await service.submit_many([taking])
        assert isinstance(refused, Conflict)
    else:
        with pytest.raises(Conflict):
            await service.submit(taking)
    rec = store.get(bytes.fromhex(rid))
    assert (rec.service, rec.method, rec.from_cache, rec.payload) == ("valve", "set", False, b'{"t": 21}')
    assert (await service.get_result(rid, owner.to_bytes())).request_id == queued.request_id
    again = new_id().hex()
    hit = await service.submit(call(dev, "read", app, service="sensor", request_id=again))
    assert hit.state == State.DONE and (await service.submit(call(dev, "read", app, service="sensor",
                                                                 request_id=again))).state == State.DONE
    assert first.request_id != rid


async def test_a_request_never_outlives_the_token_that_asked(env):
    """The request token a device gets carries no expiry, and a device forgets a revocation
    once the revoked token would have expired: so a request ends when its client token does,
    whatever TTL it asked for, and is not handed to the device after that."""
    store, service, dev, secret, app = env
    now_s = service.clock() // 1000
    short = cl.derive(app, None, [cl.ExpiresAt(now_s + 60)])
    res = await service.submit(call(dev, "read", short, service="sensor", ttl_s=3600))
    assert res.expires_at_ms == (now_s + 60) * 1000
    lasting = await service.submit(call(dev, "read", app, service="sensor", ttl_s=3600))
    assert lasting.expires_at_ms > (now_s + 3500) * 1000
    later = StoreLinkBackend(store, GATEWAY_SECRET, clock=lambda: (now_s + 61) * 1000)
    pending, _ = later.pending(dev.link_id, 1 << 16)
    assert [q.request_id.hex() for q in pending] == [lasting.request_id]
