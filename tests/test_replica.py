"""The gateway's replica follower against a real embedded node (`edgistry up` subprocess)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time

import pytest
from edgistry.cluster.home import gateway_key
from edgistry.config import NodeConfig
from edgistry.chain import ChainClient, ChainError
from edgistry.abci_app.txs import gateway_id_for
from edgistry.gateway.discovery.keeper import SealKeeper
from edgistry.gateway.discovery.replica import ReplicaFollower
from edgistry.gateway.discovery.index import RegistryIndex, entry_from_record
from edgistry.gateway.discovery.sealbox import load_seal_key
from edgistry.gateway.errors import Unavailable
from edgistry.gateway.tokens.revocations import LiveRevocations
from edgistry.proto import registry_pb2 as pb
from proc_helpers import edgistry, free_port, stop, wait_for_port
from registry_helpers import cell_at
from registry_helpers import device_msg as _sealed_msg
from registry_helpers import manifest_msg

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    """One embedded node on free ports; yields (rpc url, home, gateway gRPC address)."""
    tmp = tmp_path_factory.mktemp("replica")
    home, rpc, grpc_port = tmp / "home", free_port(), free_port()
    proc = edgistry("up", "--home", str(home), "--rpc-listen", f"127.0.0.1:{rpc}",
                    "--grpc-listen", f"127.0.0.1:{grpc_port}", "--link-listen", f"127.0.0.1:{free_port()}",
                    "--http-listen", f"127.0.0.1:{free_port()}", "--peer-listen", f"127.0.0.1:{free_port()}",
                    log=tmp / "up.log",
                    env={"EDGISTRY_BLOCK_INTERVAL_MS": "50"})
    try:
        wait_for_port(rpc, timeout=30, proc=proc)
        yield f"http://127.0.0.1:{rpc}", home, f"127.0.0.1:{grpc_port}"
    finally:
        stop(proc)


async def keeper_of(chain: ChainClient, home) -> SealKeeper:
    """A keeper with the node gateway's own keys, holding the current data key."""
    cfg = NodeConfig.load(home)
    key = gateway_key(cfg)
    keeper = SealKeeper(chain, key, gateway_id_for(key.public_key().public_bytes_raw()), load_seal_key(cfg.keys_dir))
    await keeper.ready()
    return keeper


def device_msg(keeper: SealKeeper, *args, **kw):
    """A device tx sealed under the node's current data key."""
    ring = keeper.ring
    return _sealed_msg(*args, key=ring.keys[ring.current], epoch=ring.current, **kw)


async def put_manifests(chain: ChainClient, key, keeper: SealKeeper, *kinds: tuple[str, ...]) -> None:
    """Write the catalog slots that device_msg's devices of ``kinds`` name (as the node's gateway)."""
    ring, gid = keeper.ring, gateway_id_for(key.public_key().public_bytes_raw())
    for types in kinds:
        await chain.submit(key, manifest_msg(gid, types, key=ring.keys[ring.current], epoch=ring.current))


async def _settled(chain: ChainClient, index: RegistryIndex, keeper: SealKeeper) -> None:
    """The index equals a fresh read (opened with the data key) of the registry at the index's height."""
    catalogs = {(m.gateway_id, m.slot): list(keeper.ring.open_manifest(m).services)
                for m in await chain.manifests("", index.height)}
    records = [keeper.ring.open_record(r, catalogs)
               for r in await chain.devices("/devices", pb.DeviceQuery(limit=1000), index.height)]
    assert {r.pseudonym: entry_from_record(r) for r in records} == index.entries
    fresh = RegistryIndex()
    fresh.load(entry_from_record(r) for r in records)
    for t, ti in fresh.types.items():
        assert {k: g.members for k, g in ti.groups.items()} == {k: g.members for k, g in index.types[t].groups.items()}


async def test_load_then_follow_device_events(node):
    """Initial load pages /devices at one height; new heights' events re-read exactly the changed devices."""
    url, home, _ = node
    key = gateway_key(NodeConfig.load(home))
    ps = [os.urandom(16) for _ in range(8)]
    async with ChainClient(url) as chain:
        keeper = await keeper_of(chain, home)
        await put_manifests(chain, key, keeper, ("sensor",), ("sensor", "valve"))
        for p in ps[:5]:
            await chain.submit(key, device_msg(keeper, p, cell_at(52.52, 13.40, 7), res=7, k=2))
        follower = ReplicaFollower(chain, keeper=keeper)
        height = await follower.load()
        assert height >= 1 and set(ps[:5]) <= set(follower.index.entries)
        assert follower.index.disclosure_cell("sensor", ps[0]) == cell_at(52.52, 13.40, 7)
        await _settled(chain, follower.index, keeper)

        for p in ps[5:]:
            await chain.submit(key, device_msg(keeper, p, cell_at(48.85, 2.35, 6), res=6, k=3))
        moved = device_msg(keeper, ps[0], cell_at(48.85, 2.35, 6), types=("sensor", "valve"), res=6, k=3,
                           cls=pb.UpdateDevice)
        await chain.submit(key, moved)
        await chain.submit(key, pb.UnregisterDevice(pseudonym=ps[1]))
        assert await follower.step() >= 3
        idx = follower.index
        assert ps[1] not in idx.entries and set(ps[5:]) <= set(idx.entries)
        assert idx.entries[ps[0]].types == ("sensor", "valve")
        assert idx.disclosure_cell("sensor", ps[0]) == cell_at(48.85, 2.35, 6)  # 4 devices of k=3 there now
        await _settled(chain, idx, keeper)

        now = int(time.time()) // 300 * 300
        await chain.submit(key, pb.ReportLiveness(entries=[pb.LivenessEntry(pseudonym=ps[2], last_seen=now)]))
        await follower.step()
        assert idx.entries[ps[2]].last_seen == now
        await _settled(chain, idx, keeper)


async def test_run_loop_follows_and_notifies_watchers(node):
    """The run loop loads, follows new blocks, and wakes waiters on change."""
    url, home, _ = node
    key = gateway_key(NodeConfig.load(home))
    async with ChainClient(url) as chain:
        keeper = await keeper_of(chain, home)
        await put_manifests(chain, key, keeper, ("sensor",), ("sensor", "valve"))
        follower = ReplicaFollower(chain, keeper=keeper, poll_s=0.05)
        task = asyncio.ensure_future(follower.run())
        try:
            for _ in range(200):
                if follower.loaded:
                    break
                await asyncio.sleep(0.05)
            version = follower.index.version
            p = os.urandom(16)
            await chain.submit(key, device_msg(keeper, p, cell_at(40.0, -3.7, 7), res=7, k=1))
            await asyncio.wait_for(follower.wait_changed(version), 10)
            for _ in range(100):
                if p in follower.index.entries:
                    break
                await asyncio.sleep(0.05)
            assert follower.index.disclosure_cell("sensor", p) == cell_at(40.0, -3.7, 7)
        finally:
            task.cancel()


async def test_pairing_waits_for_the_polling_replica_to_reach_a_commit(node):
    """A running replica that polls slowly: pairing's visibility waits for the registration's
    height (not answering from the index as it was) and then reads the new device from it."""
    from edgistry.gateway.pairing import visibility

    url, home, _ = node
    key = gateway_key(NodeConfig.load(home))
    async with ChainClient(url) as chain:
        keeper = await keeper_of(chain, home)
        await put_manifests(chain, key, keeper, ("sensor",), ("sensor", "valve"))
        follower = ReplicaFollower(chain, keeper=keeper, poll_s=1.0)
        task = asyncio.ensure_future(follower.run())
        try:
            await asyncio.wait_for(follower.wait_height(1, 30), 31)
            p = os.urandom(16)
            height = (await chain.submit(key, device_msg(keeper, p, cell_at(35.68, 139.69, 7), res=7, k=1))).height
            assert p not in follower.index.entries  # the commit is ahead of the replica's last poll
            (v,) = await visibility.after_commit(follower, p, height, timeout=10)
            assert v.service_type == "sensor" and v.disclosed_cell == cell_at(35.68, 139.69, 7)
        finally:
            task.cancel()


async def test_discover_end_to_end_through_up(node, tmp_path):
    """`edgistry up` serves Discovery from its replica: `token app` + `discover` find new devices."""
    from click.testing import CliRunner
    from edgistry.cli import main

    url, home, gateway = node
    key = gateway_key(NodeConfig.load(home))
    async with ChainClient(url) as chain:
        keeper = await keeper_of(chain, home)
        await put_manifests(chain, key, keeper, ("sensor",), ("sensor", "valve"))
        for _ in range(3):
            await chain.submit(key, device_msg(keeper, os.urandom(16), cell_at(-33.86, 151.21, 7), res=7, k=3))
    runner = CliRunner()
    res = runner.invoke(main, ["token", "app", "--home", str(home), "--name", "e2e"])
    assert res.exit_code == 0, res.output
    tok = tmp_path / "app.token"
    tok.write_text(res.stdout)
    wait_for_port(int(gateway.rsplit(":", 1)[1]), timeout=30)
    rows = []
    for _ in range(100):
        res = await asyncio.to_thread(runner.invoke, main, [
            "discover", "sensor", "--near", "-33.86,151.21", "--radius-km", "3", "--gateway", gateway,
            "--token", str(tok), "--pin", str(home / "keys" / "tls.crt"), "--json"])
        rows = json.loads(res.stdout) if res.exit_code == 0 else []
        if len(rows) == 3:
            break
        await asyncio.sleep(0.1)
    assert len(rows) == 3, res.output
    assert {r["cell"] for r in rows} == {f"{cell_at(-33.86, 151.21, 7):x}"}


class _HeightOnlyChain:
    """A node that answers its height but never its blocks (timeouts, dropped calls)."""

    latest = 5

    async def height(self) -> int:
        return self.latest

    async def call(self, method, **params):
        raise ChainError("cannot reach the node RPC: timeout")


async def test_revocations_go_stale_while_the_follower_cannot_apply_the_chains_heights():
    """Hearing the node's height is not hearing its revocations: until every height up to it
    is applied the revocation set ages, and the gateway fails closed past its bound."""
    revoked = LiveRevocations(max_silence_s=0.3)
    follower = ReplicaFollower(_HeightOnlyChain(), max_backoff_s=0.05, poll_s=0.01)
    follower.loaded, follower.index.height = True, 1
    follower.on_heard = revoked.heard
    revoked.heard()
    task = asyncio.create_task(follower.run())
    try:
        deadline = time.monotonic() + 5
        while not revoked.stale and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert revoked.stale and follower.index.height == 1
        with pytest.raises(Unavailable):
            revoked.check_fresh()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_a_slot_rewrite_moves_the_devices_naming_it_and_a_cover_moves_none(node):
    """A catalog slot written anew with other services re-resolves its devices at that height; a
    cover write (same services, fresh nonce) changes no device and re-reads none."""
    from edgistry.gateway.discovery import sealbox
    from registry_helpers import device_fields, slot_for

    url, home, _ = node
    key = gateway_key(NodeConfig.load(home))
    gid = gateway_id_for(key.public_key().public_bytes_raw())
    cell = cell_at(59.33, 18.07, 7)
    async with ChainClient(url) as chain:
        keeper = await keeper_of(chain, home)
        ring = keeper.ring
        data_key, epoch, slot = ring.keys[ring.current], ring.current, slot_for(("dial",))

        def slot_write(*types: str) -> pb.PutManifest:
            manifest = pb.Manifest(services=device_fields(types=types).services)
            return pb.PutManifest(slot=slot, sealed=sealbox.seal_manifest(data_key, epoch, gid, slot, manifest))

        await chain.submit(key, slot_write("dial"))
        p = os.urandom(16)
        await chain.submit(key, device_msg(keeper, p, cell, types=("dial",), res=7, k=1))
        follower = ReplicaFollower(chain, keeper=keeper)
        await follower.load()
        assert follower.index.disclosure_cell("dial", p) == cell

        async def moved_by(msg) -> int:
            height = (await chain.submit(key, msg)).height
            moved = 0
            for h in range(follower.index.height + 1, height + 1):
                moved += await follower.apply_height(h)
            return moved

        assert await moved_by(slot_write("dial")) == 0  # a cover: nothing to re-read
        assert follower.index.disclosure_cell("dial", p) == cell
        assert await moved_by(slot_write("knob")) >= 1
        assert follower.index.disclosure_cell("knob", p) == cell and follower.index.disclosure_cell("dial", p) is None
        await _settled(chain, follower.index, keeper)


async def test_a_load_that_fails_midway_leaves_the_replica_to_load_again(node):
    """A LOAD whose reads fail part way (here the catalogs) raises and leaves the replica not
    loaded, so the run loop loads again; it never follows on with half a snapshot."""
    url, home, _ = node
    async with ChainClient(url) as chain:
        keeper = await keeper_of(chain, home)
        follower = ReplicaFollower(chain, keeper=keeper)
        await follower.load()
        before = dict(follower.catalogs)
        assert follower.loaded and before

        async def gone(*args, **kwargs):
            raise ChainError("the node went away")

        chain.manifests = gone
        with pytest.raises(ChainError):
            await follower.load()
        assert not follower.loaded and follower.catalogs == before
        del chain.manifests  # the class's method again
        await follower.load()
        assert follower.loaded and follower.catalogs == before
