"""A link id unpaired and paired again: what the old pairing held stops working, replay
protection does not start over, over both links and the real store.

* Paired again under ANOTHER root (another device, a new home keeping its link id): a
  resumption ticket or a datagram context made before opens nothing (tickets and
  contexts carry the root's fingerprint: backend.issued_for).
* Paired again under the SAME root (the owner unpairs and pairs the device again): the
  datagram link's WAKE counter floor is the link's own, so a WAKE recorded before is
  still refused, even once another device took the old context id meanwhile.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from edgistry.firmware.caplets import api as cl
from edgistry.firmware.link import link_dgram as dg
from edgistry.firmware.runtime.device import WakeFailed
from edgistry.gateway.link.backend import Ticket, root_fingerprint
from edgistry.gateway.link.dgram_server import DgramServer, _lid
from edgistry.gateway.link.store_backend import StoreLinkBackend
from edgistry.gateway.store.store import Device as StoredDevice
from edgistry.gateway.store.store import GatewayStore, RequestRecord, State, new_id
from link_helpers import raw_exchange as exchange
from runtime_helpers import GATEWAY_SECRET, device, make_home, start_server

pytestmark = pytest.mark.timeout(60)
MANIFEST = {"services": [{"type": "sensor", "methods": ["read"]}]}


class Paired:
    def __init__(self, link_id: bytes | None = None, root: bytes | None = None) -> None:
        self.link_id = link_id or os.urandom(16)
        self.root = root or cl.root(cl.new_secret()).to_bytes()
        self.pseudonym = new_id()

    def record(self) -> StoredDevice:
        return StoredDevice(self.link_id, self.pseudonym, self.root, MANIFEST, 0, 7, 1)

    def dgram(self, state: dict | None = None) -> dg.DgramDevice:  # a device without X25519 (MicroPython)
        return dg.DgramDevice(self.root, self.link_id, state if state is not None else {"ctr": 0}, os.urandom, None)


async def enqueue(store: GatewayStore, dev: Paired, args: bytes) -> bytes:
    app = cl.derive(cl.load(dev.root), [cl.Service("sensor", ["*"])])
    seq = max(int(time.time() * 1000), store.last_sequence(dev.link_id) + 1)
    rec = RequestRecord(new_id(), dev.link_id, "sensor", "read", args,
                        cl.request_token(app, "sensor", "read", args, seq).to_bytes(), b"d" * 32,
                        State.QUEUED, 0, 2**62, seq=seq)
    return (await store.enqueue([(rec, 10)]))[0][0].request_id


@pytest.fixture
async def gateway(tmp_path: Path):
    store = GatewayStore(tmp_path / "gw")
    backend = StoreLinkBackend(store, GATEWAY_SECRET)
    srv = DgramServer(backend, "127.0.0.1", 0)
    await srv.start()
    try:
        yield store, backend, srv
    finally:
        await srv.close()
        store.close()


async def test_a_datagram_context_of_the_old_root_opens_nothing_after_pairing_another(gateway) -> None:
    store, _, srv = gateway
    old = Paired()
    await store.put_device(old.record())
    holder = old.dgram()
    holder.receive((await asyncio.to_thread(exchange, srv.address, holder.wake(True)))[0])
    await store.remove_device(old.link_id, int(time.time() * 1000))
    new = Paired(old.link_id)  # the same link id, another root
    await store.put_device(new.record())
    rid = await enqueue(store, new, b'{"for":"the new device only"}')
    assert await asyncio.to_thread(exchange, srv.address, holder.wake(False)) == []  # saved-context wake
    assert srv.metrics.drops["unknown_context"] == 1 and srv.metrics.datagrams_out == 1
    assert await asyncio.to_thread(exchange, srv.address, holder.wake(True)) == []  # old root: bad MAC
    assert srv.metrics.drops["bad_mac"] == 1
    device = new.dgram()
    msg = device.receive((await asyncio.to_thread(exchange, srv.address, device.wake(True)))[0])
    assert [i["request_id"] for i in msg["items"]] == [rid]


@pytest.mark.parametrize("kid_taken", [False, True])
async def test_a_recorded_wake_stays_refused_after_the_same_root_pairs_again(gateway, kid_taken) -> None:
    """The device is unpaired and paired again as it was; meanwhile (``kid_taken``) another
    device was given its old context id. A WAKE recorded from its earlier session gets no
    WELCOME (which, without forward secrecy, would reuse that session's keystream)."""
    store, backend, srv = gateway
    a = Paired()
    await store.put_device(a.record())
    dev = a.dgram()
    recorded = dev.wake(True)
    dev.receive((await asyncio.to_thread(exchange, srv.address, recorded))[0])
    kid = dev.state["kid"]
    await store.remove_device(a.link_id, int(time.time() * 1000))
    if kid_taken:
        srv._kids.clear()  # as after a gateway restart
        b = Paired()
        await store.put_device(b.record())
        # B's link record names A's old id, which looks free while A is unpaired
        await backend.rotate_ticket(None, _lid(b.link_id), Ticket(b.link_id, dg.uv(kid), 2**62,
                                                                  root_fingerprint(b.root)))
        bdev = b.dgram()
        bdev.receive((await asyncio.to_thread(exchange, srv.address, bdev.wake(True)))[0])
        assert bdev.state["kid"] == kid
    await store.put_device(a.record())
    await enqueue(store, a, b'{"new":"work"}')
    answers = await asyncio.to_thread(exchange, srv.address, recorded)
    assert [x[0] for x in answers] == [dg.RESYNC], answers
    assert srv.metrics.drops["replayed"] == 1
    fresh = dev.wake(True)  # the device itself, its counter above the floor
    welcome = (await asyncio.to_thread(exchange, srv.address, fresh))[0]
    assert welcome[0] == dg.WELCOME and [i["args"] for i in dev.receive(welcome)["items"]] == [b'{"new":"work"}']
    assert dev.state["kid"] != kid or not kid_taken


async def test_a_resumption_ticket_of_the_old_root_is_refused_after_pairing_another(tmp_path: Path) -> None:
    """TCP link, the real store: a ticket made under the old root does not resume once the
    link id is paired under another; under the same root it does."""
    store = GatewayStore(tmp_path / "gw")
    backend = StoreLinkBackend(store, GATEWAY_SECRET)
    srv = await start_server(backend, handshake_timeout=1.0, idle_timeout=1.0)
    try:
        home = make_home(tmp_path / "a", None, srv.port)
        lid = home.link_id()
        await store.put_device(StoredDevice(lid, new_id(), home.root_token(), MANIFEST, 0, 7, 1))
        dev = device(home)
        assert not (await dev.wake()).resumed  # full handshake: the ticket is stored
        await store.remove_device(lid, int(time.time() * 1000))
        await store.put_device(StoredDevice(lid, new_id(), home.root_token(), MANIFEST, 0, 7, 1))
        assert (await dev.wake()).resumed  # the same root again: its ticket still resumes
        await store.remove_device(lid, int(time.time() * 1000))
        other_root = cl.root(cl.new_secret()).to_bytes()
        await store.put_device(StoredDevice(lid, new_id(), other_root, MANIFEST, 0, 7, 1))
        with pytest.raises(WakeFailed) as failed:
            await dev.wake()
        assert failed.value.resumed_with_ticket
        assert srv.metrics.rejections["bad_ticket"] == 1 and srv.metrics.handshakes_resumed == 1
    finally:
        await srv.close()
        store.close()


def test_a_ticket_record_names_its_root_by_fingerprint_only() -> None:
    """The fingerprint binds a ticket to its root without putting the root on disk."""
    from edgistry.gateway.store.records import dump_ticket, load_ticket
    a, b = cl.root(cl.new_secret()).to_bytes(), cl.root(cl.new_secret()).to_bytes()
    assert root_fingerprint(a) != root_fingerprint(b) and len(root_fingerprint(a)) == 16
    t = Ticket(b"l" * 16, b"s" * 32, 2**40, root_fingerprint(a))
    raw = dump_ticket(t)
    assert load_ticket(raw) == t and a not in raw and a[-16:] not in raw
    assert load_ticket(dump_ticket(Ticket(b"l" * 16, b"s" * 32, 2**40))).root_fp == b""  # the older form
