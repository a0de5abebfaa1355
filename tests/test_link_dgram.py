"""The datagram link (UDP) end to end: real sockets on loopback, a real gateway store.

A DgramServer over StoreLinkBackend (LMDB store, group-commit writer) or the
MemoryBackend, and the CPython device client driving the same sans-I/O core
the firmware runs. Covered: full wakes with and without forward secrecy and
saved-context wakes deliver and get answers stored; replayed WAKE and DATA
datagrams are refused; forged or unknown datagrams get no reply (and the one
answer to an authenticated stale WAKE is smaller than it); floods are rate
limited; revocations are pushed, acknowledged and enforced; lost datagrams are
retried; lost ACKs mean redelivery; the counter resynchronises.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time

import pytest

from edgistry.firmware.caplets import api as cl
from edgistry.firmware.link import link_dgram as dg
from edgistry.firmware.link.dgram_client import DgramClient
from edgistry.firmware.link.x25519 import x25519
from edgistry.firmware.link.link_device import check_request
from edgistry.gateway.link.backend import DeviceAnswer, MemoryBackend, PairedDevice, QueuedRequest
from edgistry.gateway.link.dgram_server import DgramServer, RateLimiter
from edgistry.gateway.tokens import auth
from link_helpers import raw_exchange

SECRET = os.urandom(32)


class Dev:
    """A paired device: secret, root token, link id, and its durable link state."""

    def __init__(self) -> None:
        self.secret = cl.new_secret()
        self.root = cl.root(self.secret).to_bytes()
        self.link_id = os.urandom(16)
        self.state: dict = {"ctr": 0}
        self.seq = int(time.time() * 1000)
        self.last = None  # last request-token sequence accepted
        self.revoked: set[bytes] = set()
        self.seen: dict[bytes, dict] = {}  # request id -> stored answer (at-least-once dedup)

    def client(self, srv: DgramServer, fs: bool = False, **kw) -> DgramClient:
        return DgramClient(self.root, self.link_id, srv.address, self.state, x25519() if fs else None, **kw)

    def handle(self, msg: dict) -> list[dict]:
        """What a device does with a reply: learn revocations, check and run requests."""
        for entry in msg["revoked"]:
            self.revoked.add(entry[:32])
        out = []
        for it in msg["items"]:
            if it["request_id"] in self.seen:
                out.append(self.seen[it["request_id"]])
                continue
            try:
                self.last = check_request(it, self.secret, now_s=int(time.time()), last_sequence=self.last,
                                          revoked=self.revoked)
                r = {"request_id": it["request_id"], "status": 0, "payload": b'{"t":21}'}
            except cl.TokenError as exc:
                r = {"request_id": it["request_id"], "status": 2, "error": type(exc).__name__}
            self.seen[it["request_id"]] = r
            out.append(r)
        return out

    def token(self, src=None, args: bytes = b'{"unit":"C"}') -> bytes:
        self.seq += 1
        return auth.request_token(src or self.root, "sensor", "read", args, self.seq)


def queue(backend: MemoryBackend, dev: Dev, src=None, chain=()) -> bytes:
    rid = os.urandom(16)
    args = b'{"unit":"C"}'
    tok = dev.token(src, args)
    backend.queues.setdefault(dev.link_id, []).append(
        QueuedRequest(rid, "sensor", "read", args, tok, int(time.time() * 1000) + 600_000, tuple(chain)))
    return rid


@pytest.fixture
async def mem():
    backend = MemoryBackend(SECRET)
    srv = DgramServer(backend, "127.0.0.1", 0, burst=1000, rate=1000)
    await srv.start()
    yield srv, backend
    await srv.close()


def pair(backend: MemoryBackend) -> Dev:
    d = Dev()
    backend.devices[d.link_id] = PairedDevice(d.link_id, os.urandom(16), d.root)
    return d


async def run(fn, *a, **kw):
    return await asyncio.to_thread(fn, *a, **kw)


async def _over_store(path):
    """A GatewayStore at ``path``, a DgramServer over it (started), a device paired in it,
    and a coroutine function that queues one request for the device as the service would
    (a rising sequence, the request token) and gives its id."""
    from edgistry.gateway.link.store_backend import StoreLinkBackend
    from edgistry.gateway.store.store import Device as StoredDevice
    from edgistry.gateway.store.store import GatewayStore, RequestRecord, State, new_id

    store = GatewayStore(path / "gw")
    srv = DgramServer(StoreLinkBackend(store, SECRET), "127.0.0.1", 0)
    await srv.start()
    d = Dev()
    await store.put_device(StoredDevice(d.link_id, new_id(), d.root,
                                        {"services": [{"type": "sensor", "methods": ["read"]}]}, 0, 7, 1))
    app = cl.derive(cl.load(d.root), [cl.Service("sensor", ["*"])])

    async def enqueue() -> bytes:
        seq = max(int(time.time() * 1000), store.last_sequence(d.link_id) + 1)
        rec = RequestRecord(new_id(), d.link_id, "sensor", "read", b"{}",
                            cl.request_token(app, "sensor", "read", b"{}", seq).to_bytes(), b"d" * 32,
                            State.QUEUED, 0, 2**62, seq=seq)
        return (await store.enqueue([(rec, 10)]))[0][0].request_id
    return store, srv, d, enqueue


@pytest.mark.parametrize("fs", [True, False])
async def test_full_then_saved_wake_over_the_store(tmp_path, fs) -> None:
    """Full wake (FS on/off) then a saved-context wake: each request is delivered once,
    answered, and its answer is in the store when the device hears back."""
    from edgistry.gateway.store.store import State

    store, srv, d, enqueue = await _over_store(tmp_path)
    try:
        c = d.client(srv, fs=fs)
        rid = await enqueue()
        log = await run(c.wake, d.handle)
        assert log.full and log.forward_secret == fs and log.rtts == 2  # wake/welcome, answers/stored
        assert [i["request_id"] for i in log.delivered] == [rid]
        assert store.get(rid).st == State.DONE and store.get(rid).payload == b'{"t":21}'
        assert d.state["master"] is not None and d.state["kid"] < 128
        rid2 = await enqueue()
        log2 = await run(c.wake, d.handle)
        assert not log2.full and [i["request_id"] for i in log2.delivered] == [rid2]
        assert store.get(rid2).st == State.DONE
        # nothing queued: a saved wake is one round trip and two small datagrams
        log3 = await run(c.wake, d.handle)
        assert not log3.delivered and log3.rtts == 1 and len(log3.flights) == 3
        assert srv.metrics.wakes == {("full_fs" if fs else "full"): 1, "saved": 2}
        c.close()
    finally:
        await srv.close()
        store.close()


class _Tap:
    """A device socket that keeps a copy of every datagram sent."""

    def __init__(self, sock: socket.socket, sent: list[bytes]) -> None:
        self._s, self._sent = sock, sent

    def send(self, data: bytes) -> int:
        self._sent.append(bytes(data))
        return self._s.send(data)

    def __getattr__(self, name):
        return getattr(self._s, name)


async def test_a_wake_costs_two_commits_and_replays_stay_refused_after_a_restart(tmp_path) -> None:
    """Over the store: a saved-context wake with a request costs two group commits (the
    wake's sequence before its reply; then what the ACK records, the answer and the
    sequence together), and the bare ACK ending it writes nothing. A gateway started
    again on the same store still refuses every datagram of that wake that got a reply;
    the unsaved bare ACK gets nothing either, and the device wakes on as before."""
    from edgistry.gateway.link.store_backend import StoreLinkBackend
    from edgistry.gateway.store.store import State

    store, srv, d, enqueue = await _over_store(tmp_path)
    try:
        async def settled(n_in: int) -> None:  # the server has handled every datagram sent so far
            for _ in range(200):
                if srv.metrics.datagrams_in >= n_in and not srv._tasks:
                    return
                await asyncio.sleep(0.01)
            raise AssertionError("datagrams not handled")

        c = d.client(srv, fs=True)
        first = await run(c.wake, d.handle)  # the full wake: a context
        out = sum(1 for way, _ in first.flights if way == "->")
        await settled(out)
        sent: list[bytes] = []
        c.sock = _Tap(c.sock, sent)
        rid = await enqueue()
        before = store.writer.commits
        log = await run(c.wake, d.handle)
        assert [i["request_id"] for i in log.delivered] == [rid] and not log.full
        assert len(sent) == 3  # the wake, the ACK with the answer, the bare ACK ending the wake
        await settled(out + len(sent))
        await asyncio.sleep(0.2)  # (a write the bare ACK started would have landed by now)
        assert store.writer.commits - before == 2
        assert store.get(rid).st == State.DONE
        c.close()
    finally:
        await srv.close()

    again = DgramServer(StoreLinkBackend(store, SECRET), "127.0.0.1", 0)  # a restart: memory gone
    await again.start()
    try:
        for data in sent:
            assert await run(raw_exchange, again.address, data, 0.2) == []
        assert again.metrics.drops["replayed"] == 2  # the two that got replies
        assert again.metrics.datagrams_out == 0 and store.get(rid).st == State.DONE
        rid2 = await enqueue()
        c = d.client(again)
        log = await run(c.wake, d.handle)
        assert not log.full and [i["request_id"] for i in log.delivered] == [rid2]
        assert store.get(rid2).st == State.DONE
        c.close()
    finally:
        await again.close()
        store.close()


async def test_sizes_one_request(mem) -> None:
    """The byte budget the protocol is built for: one 145-byte-class request."""
    srv, backend = mem
    d = pair(backend)
    c = d.client(srv, fs=True)
    queue(backend, d)
    log = await run(c.wake, lambda m: [])
    wake, welcome, ack = [n for _, n in log.flights]
    assert wake == 1 + 16 + 1 + 32 + 8 and ack == 1 + 1 + 1 + 8
    queue(backend, d)
    log = await run(c.wake, lambda m: [])
    w, _, a = [n for _, n in log.flights]
    assert w == 11 and a == 11  # type, kid, seq, tag
    c.close()


async def test_replays_are_refused_and_get_nothing_larger(mem) -> None:
    srv, backend = mem
    d = pair(backend)
    dev = dg.DgramDevice(d.root, d.link_id, d.state, os.urandom, x25519())
    queue(backend, d)
    wake = dev.wake(True)
    got = await run(raw_exchange, srv.address, wake)
    assert len(got) == 1 and got[0][0] == dg.WELCOME_FS
    assert len(dev.receive(got[0])["items"]) == 1
    # the same WAKE again: authenticated but stale -> only a RESYNC, smaller than the WAKE
    again = await run(raw_exchange, srv.address, wake)
    assert [g[0] for g in again] == [dg.RESYNC] and len(again[0]) < len(wake)
    assert srv.metrics.drops["replayed"] == 1
    # a DATA replayed: nothing
    data = dev.wake(False)
    first = await run(raw_exchange, srv.address, data)
    assert len(first) == 1 and dev.receive(first[0]) is not None
    assert await run(raw_exchange, srv.address, data) == []
    assert srv.metrics.drops["replayed"] == 2


async def test_forged_and_unknown_datagrams_get_no_reply(mem) -> None:
    srv, backend = mem
    d = pair(backend)
    lk = dg.link_key(d.root)
    forged = bytearray(dg.seal_wake(lk, d.link_id, 1))
    forged[-1] ^= 1
    stranger = dg.seal_wake(os.urandom(32), os.urandom(16), 1)
    other_key = dg.seal_wake(os.urandom(32), d.link_id, 1)
    unknown_ctx = dg.seal_data(dg.context_keys(os.urandom(32)), 5, 1, b"x" * 40)
    for data in (bytes(forged), stranger, other_key, unknown_ctx, b"\x07" + os.urandom(30), b"\x01"):
        assert await run(raw_exchange, srv.address, data, 0.15) == []
    drops = srv.metrics.drops
    assert drops["bad_mac"] == 2 and drops["unknown_link"] == 1 and drops["unknown_context"] == 1
    assert srv.metrics.datagrams_out == 0


async def test_floods_are_rate_limited_per_source() -> None:
    backend = MemoryBackend(SECRET)
    srv = DgramServer(backend, "127.0.0.1", 0, rate=5, burst=10)
    await srv.start()
    try:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for _ in range(200):
            s.sendto(dg.seal_wake(os.urandom(32), os.urandom(16), 1), srv.address)
        s.close()
        for _ in range(50):
            if srv.metrics.datagrams_in >= 200:
                break
            await asyncio.sleep(0.02)
        assert srv.metrics.drops["rate_limited"] >= 185
        assert srv.metrics.drops["unknown_link"] <= 15
    finally:
        await srv.close()


def test_senders_cycling_through_sources_share_one_bucket() -> None:
    """More sources than the table holds would each start with a full bucket: a source the
    table does not hold passes the shared newcomers' bucket first, so together they are
    bounded; sources already tracked do not pay for them."""
    lim = RateLimiter(rate=5, burst=10, size=64, new_rate=10, new_burst=20)
    assert lim.allow("known", 0.0)
    admitted = sum(lim.allow(f"10.0.{i // 256}.{i % 256}", 0.0) for i in range(1000))
    assert admitted == 19  # the shared burst, less the one "known" took
    assert all(lim.allow("known", 0.0) for _ in range(5))  # tracked: its own bucket
    assert sum(lim.allow(f"10.1.0.{i}", 1.0) for i in range(100)) == 10  # the shared rate over a second
    assert all(lim.allow(f"10.1.0.{i}", 1.0) for i in range(10))  # admitted ones are tracked now
    assert sum(lim.allow("flood", 2.0) for _ in range(100)) == 10  # one source: its own burst
    small = RateLimiter(rate=5, burst=10, size=2, new_rate=0.001, new_burst=3)
    assert [small.allow(s, 0.0) for s in "abca"] == [True, True, True, False]  # "a" was evicted by "c"


async def test_revocation_pushed_acknowledged_and_enforced(mem) -> None:
    srv, backend = mem
    d = pair(backend)
    app = cl.derive(cl.load(d.root), [cl.Service("sensor", ["read"])])
    h = cl.revocation_hash(app.tag)
    backend.revoked[d.link_id] = [h + (int(time.time()) + 3600).to_bytes(8, "big")]
    rid = queue(backend, d, src=app)  # a token derived from the revoked one
    c = d.client(srv)
    log = await run(c.wake, d.handle)
    assert log.revoked and log.revoked[0][:32] == h
    assert d.seen[rid]["status"] == 2 and d.seen[rid]["error"] == "Revoked"  # the device refuses it
    assert backend.revoked[d.link_id] == []  # cursor advanced: acknowledged
    # the gateway bars a request whose client chain holds a hash in force: never sent
    backend.in_force.add(h)
    rid2 = queue(backend, d, chain=(h,))
    log = await run(c.wake, d.handle)
    assert rid2 not in [i["request_id"] for i in log.delivered]
    assert backend.answers[rid2].status == 6
    c.close()


async def test_lost_datagrams_are_retried_and_lost_acks_redeliver(mem) -> None:
    srv, backend = mem
    d = pair(backend)
    c = d.client(srv, timeout=0.3)
    rid = queue(backend, d)
    c.drop_next_sends = 1  # the WAKE is lost: sent again
    log = await run(c.wake, d.handle)
    assert log.retries == 1 and backend.answers[rid].status == 0
    # an ACK that needs no reply: recorded once it lands
    rid2 = queue(backend, d)
    log = await run(c.wake, lambda m: [])
    assert rid2 in [i["request_id"] for i in log.delivered]
    for _ in range(100):
        if rid2 in backend.acked:
            break
        await asyncio.sleep(0.01)
    assert rid2 in backend.acked
    # the final ACK lost: not delivered, so the next wake carries the request again
    backend.answers[rid2] = DeviceAnswer(rid2, 0)  # (answered elsewhere: not carried again)
    rid3 = queue(backend, d)

    def lose_the_ack(msg):
        c.drop_next_sends = 1
        return []
    log = await run(c.wake, lose_the_ack)
    assert rid3 in [i["request_id"] for i in log.delivered]
    await asyncio.sleep(0.2)
    assert rid3 not in backend.acked
    log = await run(c.wake, d.handle)
    assert rid3 in [i["request_id"] for i in log.delivered] and backend.answers[rid3].status == 0
    c.close()


async def test_counter_resync_and_lost_context(mem) -> None:
    srv, backend = mem
    d = pair(backend)
    c = d.client(srv, timeout=0.3)
    await run(c.wake, d.handle, True)
    await run(c.wake, d.handle, True)
    assert d.state["ctr"] == 2
    c.dev.state = {"ctr": 0}  # the device lost its counter (restored an old image)
    queue(backend, d)
    log = await run(c.wake, d.handle)
    assert log.full and log.resyncs == 1 and c.dev.state["ctr"] == 3
    assert srv.metrics.resyncs == 1
    # the gateway forgot the context: the saved wake gets nothing, the device falls back
    backend.tickets.clear()
    srv._contexts.clear()
    rid = queue(backend, d)
    log = await run(c.wake, d.handle)
    assert log.full and backend.answers[rid].status == 0
    c.close()


async def test_batches_beyond_one_datagram_go_in_numbered_turns(mem) -> None:
    """20 queued requests (about 3 KB) and 300-byte answers: several replies (each
    saying ``more``) and several DATA, every datagram within MAX_DATAGRAM, all answered."""
    srv, backend = mem
    d = pair(backend)
    rids = [queue(backend, d) for _ in range(20)]

    def handle(msg):
        return [dict(r, payload=b"x" * 300) for r in d.handle(msg)]
    c = d.client(srv)
    log = await run(c.wake, handle)
    assert sorted(i["request_id"] for i in log.delivered) == sorted(rids)
    assert all(backend.answers[r].status == 0 and len(backend.answers[r].payload) == 300 for r in rids)
    assert max(n for _, n in log.flights) <= dg.MAX_DATAGRAM
    assert sum(1 for dirn, _ in log.flights if dirn == "<-") >= 3
    c.close()


async def test_a_device_requiring_forward_secrecy_refuses_a_gateway_without_it() -> None:
    backend = MemoryBackend(SECRET)
    srv = DgramServer(backend, "127.0.0.1", 0, forward_secrecy=False)
    await srv.start()
    try:
        d = pair(backend)
        dev = dg.DgramDevice(d.root, d.link_id, d.state, os.urandom, x25519(), require_fs=True)
        got = await run(raw_exchange, srv.address, dev.wake(True))
        assert got and got[0][0] == dg.WELCOME
        with pytest.raises(dg.DgramError) as err:
            dev.receive(got[0])
        assert err.value.reason == "downgrade" and not dev.has_context()
    finally:
        await srv.close()


async def test_twin_changes_travel_and_the_report_is_stored(mem) -> None:
    """Desired changes ride in the reply; the device's report (applied version, reported
    properties) rides with its ACK and is stored before the gateway's reply."""
    from edgistry.gateway.twins import model
    srv, backend = mem
    d = pair(backend)
    twin = backend.twins[d.link_id] = model.Twin()
    model.set_desired(twin, [model.Change("mode", b'"eco"')], [], int(time.time() * 1000))
    seen = []

    def handle(msg):
        if not msg["twin"]:
            return []  # nothing new: no report (each report is answered)
        seen.extend(msg["twin"])
        top = max(c["version"] for c in msg["twin"])
        return {"items": [], "twin": {"applied": top, "reported": [{"key": "temp", "value": b"20"}]}}
    c = d.client(srv)
    await run(c.wake, handle)
    assert [(x["key"], x["value"]) for x in seen] == [("mode", b'"eco"')]
    assert twin.applied == seen[0]["version"] and model.view(twin)["reported"]["temp"]["value"] == b"20"
    assert backend.twin_delta(d.link_id) == ([], [])
    c.close()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_gateway_serves_the_datagram_link_across_kill9(tmp_path) -> None:
    """`edgistry up` serves UDP on the link port: pair, invoke while asleep, a full wake over
    UDP answers it; the gateway is killed -9 and restarted: the saved context survived (a
    one-round-trip wake works); /metrics shows the datagram link; unpaired, the device gets nothing."""
    import json
    import urllib.request
    import ssl
    from click.testing import CliRunner
    from edgistry.cli import main
    from gateway_helpers import make_device_home, node_home, wait_file
    from proc_helpers import edgistry, kill9, stop, wait_for_port

    def cli(*args: str) -> tuple[int, str]:
        r = CliRunner().invoke(main, list(args), catch_exceptions=False)
        return r.exit_code, r.stdout if r.exit_code == 0 else r.output

    cfg, ports = node_home(tmp_path / "node")

    def up(log: str):
        p = edgistry("up", "--home", str(cfg.home), log=tmp_path / log)
        wait_for_port(ports["grpc"], proc=p)
        return p

    proc = up("up.log")
    try:
        home = make_device_home(tmp_path / "dev")
        code, out = cli("pair", "--device", str(home.path), "--gateway", cfg.grpc_listen, "--code",
                        wait_file(cfg.home / "commission.code"), "--json")
        assert code == 0, out
        paired = json.loads(out)
        via = ["--gateway", cfg.grpc_listen, "--pin", str(cfg.tls_cert_path), "--token", paired["app_token_file"]]
        host, _, port = paired["link_endpoint"].rpartition(":")
        secret = home.secret()
        state: dict = {"ctr": 0}
        last = [None]

        def handle(msg: dict) -> list[dict]:
            out = []
            for it in msg["items"]:
                last[0] = check_request(it, secret, int(time.time()), last[0])
                out.append({"request_id": it["request_id"], "status": 0, "payload": b'{"t":21}'})
            return out

        def wake(full: bool = False):
            c = DgramClient(home.root_token(), home.link_id(), (host, int(port)), state, x25519(), timeout=1.0)
            try:
                return c.wake(handle, full)
            finally:
                c.close()

        rid = cli("invoke", paired["owner_handle"], "sensor.info", "--async", *via)[1].strip()
        log = wake()
        assert log.full and log.forward_secret and [i["request_id"].hex() for i in log.delivered] == [rid]
        code, out = cli("result", rid, *via, "--json")
        assert code == 0 and json.loads(out)["state"] == "DONE", out

        kill9(proc)
        proc = up("up2.log")
        rid2 = cli("invoke", paired["owner_handle"], "sensor.info", "--async", *via)[1].strip()
        log = wake()
        assert not log.full and log.rtts == 2 and [i["request_id"].hex() for i in log.delivered] == [rid2]
        code, out = cli("result", rid2, *via, "--json")
        assert code == 0 and json.loads(out)["state"] == "DONE", out

        ctx = ssl.create_default_context(cafile=str(cfg.tls_cert_path))
        req = urllib.request.Request(f"https://127.0.0.1:{ports['http']}/metrics", headers={
            "Authorization": "Bearer " + (cfg.home / "keys" / "operator.secret").read_text().strip()})
        with urllib.request.urlopen(req, timeout=5, context=ctx) as resp:
            metrics = resp.read().decode()
        assert 'edgistry_link_dgram_wakes_total{kind="saved"} 1.0' in metrics, metrics
        assert 'edgistry_link_dgram_datagrams_total{direction="in"}' in metrics

        code, out = cli("pair", "--device", str(home.path), "--gateway", cfg.grpc_listen, "--unpair")
        assert code == 0, out
        with pytest.raises(TimeoutError):
            DgramClient(home.root_token(), home.link_id(), (host, int(port)), state, None, timeout=0.3,
                        retries=1).wake(handle)
    finally:
        stop(proc)
