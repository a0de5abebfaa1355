"""The gateway's registry submitter against a real CometBFT validator: operations
coalesce into few batch txs, several in flight in nonce order, each operation gets
its own committed outcome, and revocations are never held back for a window."""

from __future__ import annotations

import asyncio
import os
import random
import time

import h3
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cluster_helpers import Procs, free_base_port, set_toml_values, start_app, start_cometbft, wait_for_height
from edgistry.abci_app.codes import Code
from edgistry.abci_app.revocation_rule import revocation_hash
from edgistry.chain import ChainClient, TxRejected
from edgistry.cli import main
from edgistry.cluster.cometbft import HOW_TO_GET, find_cometbft
from edgistry.cluster.cometbft_files import ConsensusSettings
from edgistry.config import NodeConfig, load_ed25519_pem
from edgistry.gateway.submitter import RegistrySubmitter
from edgistry.proto import registry_pb2 as pb
from edgistry.abci_app.batch import batch_of
from registry_helpers import device_fields, device_msg, open_test_epoch

BINARY = find_cometbft()
pytestmark = [pytest.mark.cometbft, pytest.mark.slow, pytest.mark.skipif(BINARY is None, reason=HOW_TO_GET)]
FAST = ConsensusSettings.fast()


def _device(seed: int) -> pb.RegisterDevice:
    cell = h3.str_to_int(h3.latlng_to_cell(52.0 + seed / 1000, 4.3, 7))
    return device_msg(os.urandom(16), cell, ("temperature",), res=7, k=1)


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    """One validator (edgistry node + cometbft), its RPC URL and the gateway key in its genesis."""
    tmp = tmp_path_factory.mktemp("submitter")
    home, chome = tmp / "home", tmp / "cometbft"
    result = CliRunner().invoke(main, ["init", "--home", str(home), "--cometbft-home", str(chome),
                                       "--chain-id", "edg-submit"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    base = free_base_port(10)
    url, abci = f"http://127.0.0.1:{base + 1}", f"tcp://127.0.0.1:{base + 2}"
    set_toml_values(chome / "config" / "config.toml", {
        "proxy_app": abci, "rpc.laddr": f"tcp://127.0.0.1:{base + 1}", "p2p.laddr": f"tcp://127.0.0.1:{base}",
        "instrumentation.prometheus_listen_addr": f"127.0.0.1:{base + 6}",
        "consensus.timeout_commit": FAST.timeout_commit, "consensus.timeout_propose": FAST.timeout_propose,
    })
    cfg = NodeConfig.load(home)
    cfg.abci_listen, cfg.rpc_url, cfg.rpc_listen = abci, url, f"127.0.0.1:{base + 1}"
    cfg.save()
    procs = Procs(tmp / "logs")
    try:
        start_app(procs, "app", home)
        start_cometbft(procs, "cmt", BINARY, chome)
        wait_for_height(url, 2, 60)
        open_test_epoch(url, load_ed25519_pem(home / "keys" / "admin.pem"))
        yield url, load_ed25519_pem(cfg.keys_dir / "gateway.pem")
    finally:
        procs.close()


async def test_a_burst_becomes_few_batches_with_per_operation_outcomes(node):
    """60 concurrent operations, some doomed, commit in a few batches; each caller gets its own result."""
    url, key = node
    async with ChainClient(url) as chain:
        sub = RegistrySubmitter(chain, key, window_s=0.05)
        devices = [_device(i) for i in range(50)]
        dup = devices[0]
        calls = [sub.submit(d) for d in devices] + [sub.submit(pb.UnregisterDevice(pseudonym=os.urandom(16)))
                                                    for _ in range(9)] + [sub.submit(dup)]
        results = await asyncio.gather(*calls, return_exceptions=True)
        await sub.close()
        ok = results[:50]
        assert all(getattr(r, "height", 0) > 0 for r in ok), [r for r in ok if not hasattr(r, "height")][:3]
        assert [r.data for r in ok] == [d.pseudonym for d in devices]
        missing = results[50:59]
        assert all(isinstance(r, TxRejected) and r.code == Code.DEVICE_NOT_FOUND and r.stage == "FinalizeBlock"
                   and r.log for r in missing)
        assert isinstance(results[59], TxRejected) and results[59].code == Code.DEVICE_EXISTS
        assert sub.stats["ops"] == 60 and sub.stats["batches"] <= 3, sub.stats
        assert sub.stats["ws_blocks"] > 0  # CometBFT pushed the blocks (NewBlock over the websocket)
        listed = {d.pseudonym for d in await chain.devices()}
        assert {d.pseudonym for d in devices} <= listed


async def test_several_batches_in_flight_keep_nonce_order(node):
    """Small batches, four in flight: every batch passes CheckTx (sent in nonce order) and commits."""
    url, key = node
    async with ChainClient(url) as chain:
        sub = RegistrySubmitter(chain, key, window_s=0.001, max_ops=3, max_in_flight=4)
        devices = [_device(100 + i) for i in range(30)]
        results = await asyncio.gather(*(sub.submit(d) for d in devices))
        await sub.close()
        assert sub.stats["batches"] >= 10 and sub.stats["max_ops"] <= 3
        assert len({r.tx_hash for r in results}) == sub.stats["batches"]
        # another sender of the same key (a plain tx) in between: the submitter resynchronises its nonce
        other = ChainClient(url)
        try:
            await other.submit(key, pb.UnregisterDevice(pseudonym=devices[0].pseudonym))
            await other.submit(key, pb.UnregisterDevice(pseudonym=devices[1].pseudonym))
        finally:
            await other.close()
        done = await sub.submit(pb.UnregisterDevice(pseudonym=devices[2].pseudonym))
        await sub.close()
        assert done.height > 0


async def test_a_sparse_stream_with_idle_gaps_settles_every_operation(node):
    """Operations arriving one by one, with gaps longer and shorter than a block, all settle:
    the follower stops when idle and starts again without skipping a height (here by
    polling, as against a node without a websocket)."""
    url, key = node
    rng = random.Random(7)
    async with ChainClient(url) as chain:
        sub = RegistrySubmitter(chain, key, window_s=0.005)
        sub._ws_usable = False  # the embedded node's case
        tasks = []
        for i in range(40):
            tasks.append(asyncio.ensure_future(sub.submit(_device(700 + i))))
            await asyncio.sleep(rng.choice((0.0, 0.01, 0.05, 0.2, 0.45)))
        results = await asyncio.wait_for(asyncio.gather(*tasks), 60)
        await sub.close()
    assert all(r.height > 0 for r in results) and sub.stats["ops"] == 40
    assert sub.stats["polled_blocks"] > 0 and sub.stats["ws_blocks"] == 0


async def test_while_batches_are_in_flight_the_next_one_grows(node):
    """With one batch in flight, a steady stream goes out as a few growing batches, not one tx per
    window; a revocation does not wait for the batch in flight."""
    url, key = node
    async with ChainClient(url) as chain:
        sub = RegistrySubmitter(chain, key, window_s=0.001, max_in_flight=1)
        tasks = []
        for i in range(40):
            tasks.append(asyncio.ensure_future(sub.submit(_device(800 + i))))
            await asyncio.sleep(0.01)
        t0 = time.monotonic()
        revoked = await sub.submit(pb.RevokeToken(tag_hash=revocation_hash(os.urandom(32)),
                                                  expires_at=int(time.time()) + 3600))
        took = time.monotonic() - t0
        results = await asyncio.wait_for(asyncio.gather(*tasks), 60)
        await sub.close()
    assert all(r.height > 0 for r in results)
    assert sub.stats["batches"] <= 12 and sub.stats["max_ops"] >= 4, sub.stats
    assert revoked.height <= max(r.height for r in results) + 1 and took < 3.0


async def test_a_batch_overtaken_by_a_later_nonce_is_sent_again(node):
    """A batch the node never got (as if dropped, or overtaken in gossip) is invalid once a
    later batch commits: its operations go out again in a new batch and succeed once."""
    url, key = node
    async with ChainClient(url) as chain:
        real_call, dropped = chain.call, []

        async def lossy_call(method, **params):
            if method == "broadcast_tx_sync" and not dropped:
                dropped.append(params["tx"])  # swallowed: the node never sees this batch
                return {"code": 0, "log": ""}
            return await real_call(method, **params)

        chain.call = lossy_call
        sub = RegistrySubmitter(chain, key, window_s=0.001)
        first = asyncio.ensure_future(sub.submit(_device(600)))
        await asyncio.sleep(0.3)
        assert dropped and not first.done()
        second = await asyncio.wait_for(sub.submit(_device(601)), 30)
        again = await asyncio.wait_for(first, 30)
        await sub.close()
    assert sub.stats["resent_ops"] == 1 and sub.stats["batches"] == 3
    assert again.height >= second.height and again.tx_hash != second.tx_hash


async def test_a_revocation_is_not_held_back(node):
    """With a 10 s window, a revocation (and what waits with it) commits in well under the window."""
    url, key = node
    async with ChainClient(url) as chain:
        sub = RegistrySubmitter(chain, key, window_s=10.0)
        held = asyncio.ensure_future(sub.submit(_device(500)))
        await asyncio.sleep(0.2)
        assert not held.done()  # a registration waits for its window...
        t0 = time.monotonic()
        revoked = await sub.submit(pb.RevokeToken(tag_hash=revocation_hash(os.urandom(32)),
                                                  expires_at=int(time.time()) + 3600))
        took = time.monotonic() - t0
        registered = await held  # ...unless a revocation sends the batch at once
        await sub.close()
        assert took < 5.0 and revoked.height == registered.height and revoked.tx_hash == registered.tx_hash


async def test_a_batch_refused_at_check_tx_fails_every_operation(node):
    """An unknown signer's batch is refused whole at CheckTx: each caller sees UNKNOWN_SIGNER."""
    url, _ = node
    async with ChainClient(url) as chain:
        sub = RegistrySubmitter(chain, Ed25519PrivateKey.generate(), window_s=0.01)
        results = await asyncio.gather(*(sub.submit(_device(900 + i)) for i in range(3)), return_exceptions=True)
        await sub.close()
    assert all(isinstance(r, TxRejected) and r.code == Code.UNKNOWN_SIGNER and r.stage == "CheckTx"
               for r in results), results


async def test_a_device_operation_in_clear_never_reaches_the_chain(node):
    """Device fields in clear: the submitter refuses that operation alone (its batch-mate
    commits), and a hand-signed batch holding it is refused whole by the node's CheckTx."""
    url, key = node
    leaky = _device(700)
    fields = device_fields()
    leaky.services.extend(fields.services)
    leaky.cell = fields.cell
    good, mate = _device(701), _device(702)
    async with ChainClient(url) as chain:
        sub = RegistrySubmitter(chain, key, window_s=0.05)
        ok, refused = await asyncio.gather(sub.submit(good), sub.submit(leaky), return_exceptions=True)
        await sub.close()
        assert getattr(ok, "height", 0) > 0, ok
        assert isinstance(refused, TxRejected) and refused.stage == "submit", refused
        assert refused.code == Code.INVALID_FIELD
        async with chain.sender(key.public_key().public_bytes_raw()):
            tx = await chain.sign(key, batch_of([mate, leaky]))
            with pytest.raises(TxRejected) as err:
                await chain.broadcast_commit(tx)
        assert err.value.code == Code.INVALID_FIELD and "batch operation 1" in err.value.log, err.value
        listed = {d.pseudonym for d in await chain.devices()}
        assert good.pseudonym in listed and not {mate.pseudonym, leaky.pseudonym} & listed


async def test_the_node_indexes_revocations_for_search_but_not_device_bulk(node):
    """CometBFT's tx indexer makes a revocation searchable by its tag hash; the same batch's
    device registration is in the block results but not searchable (handlers.SEARCHABLE_EVENTS)."""
    url, key = node
    tag_hash = revocation_hash(os.urandom(32))
    device = _device(600)
    async with ChainClient(url) as chain:
        sub = RegistrySubmitter(chain, key, window_s=0.2)
        registered, revoked = await asyncio.gather(
            sub.submit(device), sub.submit(pb.RevokeToken(tag_hash=tag_hash, expires_at=int(time.time()) + 3600)))
        await sub.close()
        assert registered.tx_hash == revoked.tx_hash  # one batch

        async def search(query: str) -> dict:
            return await chain.call("tx_search", query=query, prove=False, page="1", per_page="10",
                                    order_by="asc")

        deadline = time.monotonic() + 20  # the indexer runs just behind the commit
        while True:
            found = await search(f"token_revoked.tag_hash='{tag_hash.hex()}'")
            if int(found["total_count"]) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        assert int(found["total_count"]) == 1
        assert found["txs"][0]["hash"].lower() == revoked.tx_hash.lower()
        assert int(found["txs"][0]["height"]) == revoked.height
        # the same tx, indexed in the same step: its device event was not made searchable
        unfound = await search(f"device_registered.pseudonym='{device.pseudonym.hex()}'")
        assert int(unfound["total_count"]) == 0
        by_hash = await search(f"tx.hash='{revoked.tx_hash.upper()}'")
        assert int(by_hash["total_count"]) == 1  # lookups by hash still work
        events = [ev for ev in found["txs"][0]["tx_result"]["events"] if ev["type"] == "device_registered"]
        assert [a["value"] for a in events[0]["attributes"] if a["key"] == "pseudonym"] == [device.pseudonym.hex()]


async def _committed_batches(chain: ChainClient, first: int, last: int) -> list[list[str]]:
    """The op kinds of every batch tx of heights first..last, in order."""
    import base64

    out = []
    for h in range(first, last + 1):
        block = await chain.call("block", height=str(h))
        for raw in block["block"]["data"]["txs"] or []:
            body = pb.TxBody.FromString(pb.SignedTx.FromString(base64.b64decode(raw)).body)
            if body.WhichOneof("msg") == "batch":
                out.append([op.WhichOneof("op") for op in body.batch.ops])
    return out


def _catalog_submitter(chain: ChainClient, key, gap_s: float, **kw):
    from edgistry.abci_app.txs import gateway_id_for
    from edgistry.gateway.discovery import sealbox
    from edgistry.gateway.discovery.catalog import ManifestCatalog
    from registry_helpers import TEST_DATA_KEY

    gid = gateway_id_for(key.public_key().public_bytes_raw())
    sub = RegistrySubmitter(chain, key, **kw)
    catalog = ManifestCatalog(put_gap_s=gap_s)
    sub.use_catalog(catalog, lambda slot, m: sealbox.seal_manifest(TEST_DATA_KEY, 1, gid, slot, m))
    return sub, catalog, gid


async def test_a_new_kind_rides_right_after_its_catalog_slot_write(node):
    """A device whose kind has no slot waits for the batch that writes it and follows it there;
    the slot is on chain, opens to the kind's services, and the device resolves through it."""
    from registry_helpers import catalogs_of, test_keyring

    url, key = node
    async with ChainClient(url) as chain:
        sub, catalog, gid = _catalog_submitter(chain, key, gap_s=0.5, window_s=0.01)
        await catalog_loaded(chain, catalog, gid)
        kind = device_fields(types=("humidity", "fan")).services
        slot, held = catalog.ref(kind)
        assert held
        start = await chain.height()
        msg = device_msg(os.urandom(16), types=("humidity", "fan"))
        fields = test_keyring().open(msg.pseudonym, msg.sealed)
        fields.manifest = slot + 1  # the helper's slot choice is not the catalog's: re-seal with the catalog's
        from edgistry.gateway.discovery import sealbox
        from registry_helpers import TEST_DATA_KEY
        msg.sealed.CopyFrom(sealbox.seal_fields(TEST_DATA_KEY, 1, msg.pseudonym, fields))
        done = await asyncio.wait_for(sub.submit(msg, slot), 30)
        await sub.close()
        batches = await _committed_batches(chain, start + 1, done.height)
        assert ["put_manifest", "register_device"] in batches, batches
        assert catalog.committed[slot] and not catalog.waiting and catalog.puts["new"] == 1
        cats = catalogs_of(await chain.manifests(gid))
        assert [s.type for s in cats[(gid, slot)]] == ["humidity", "fan"]
        record = pb.DeviceRecord.FromString((await chain.query(
            "/device", pb.DeviceQuery(pseudonym=msg.pseudonym).SerializeToString())).value)
        assert [s.type for s in test_keyring().open_record(record, cats).services] == ["humidity", "fan"]


async def catalog_loaded(chain: ChainClient, catalog, gid: str) -> None:
    from edgistry.gateway.discovery.catalog import load_catalog
    from registry_helpers import test_keyring

    await load_catalog(catalog, chain, test_keyring(), gid)


async def test_slot_writes_ride_only_with_device_operations_at_most_one_per_gap(node):
    """A steady stream of known-kind devices for ~2.5 s: slot writes (covers) come at most one
    per gap, each in a batch that holds a device; a revocation alone carries none."""
    url, key = node
    async with ChainClient(url) as chain:
        sub, catalog, gid = _catalog_submitter(chain, key, gap_s=1.0, window_s=0.01, max_in_flight=8)
        await catalog_loaded(chain, catalog, gid)
        start = await chain.height()
        lone = await sub.submit(pb.RevokeToken(tag_hash=revocation_hash(os.urandom(32)), expires_at=2**40))
        tasks = []
        t0 = time.monotonic()
        while time.monotonic() - t0 < 2.5:
            tasks.append(asyncio.ensure_future(sub.submit(_device(int((time.monotonic() - t0) * 1000)))))
            await asyncio.sleep(0.05)
        results = await asyncio.wait_for(asyncio.gather(*tasks), 60)
        await sub.close()
        batches = await _committed_batches(chain, start + 1, max(r.height for r in results))
    assert all(r.height > 0 for r in results) and lone.height > 0
    with_put = [b for b in batches if "put_manifest" in b]
    assert 1 <= len(with_put) <= 4, batches  # 2.5 s at one per 0.5..1.5 s gap
    assert all(b[0] == "put_manifest" and b.count("put_manifest") == 1 and "register_device" in b for b in with_put)
    assert ["revoke_token"] in batches  # the lone revocation: no write rode with it
    assert catalog.puts["cover"] == len(with_put) and catalog.puts["new"] == 0


async def test_a_failed_read_beside_the_events_falls_back_to_polling_and_loses_nothing(node):
    """A node may answer a NewBlock's neighbours before it stored their results ("could not
    find results for height"): the follower then polls on from the last height it saw, and
    every operation settles with its own outcome instead of timing out."""
    from edgistry.chain import ChainError

    url, key = node
    async with ChainClient(url) as chain:
        sub = RegistrySubmitter(chain, key, window_s=0.01, commit_timeout_s=20)
        failures = []

        async def broken_ws() -> None:
            failures.append(1)
            raise ChainError("block_results: Internal error: could not find results for height #1")

        sub._follow_ws = broken_ws
        t0 = time.monotonic()
        results = await asyncio.wait_for(asyncio.gather(*(sub.submit(_device(900 + i)) for i in range(12))), 30)
        await sub.close()
    assert failures and all(r.height > 0 for r in results) and sub.stats["polled_blocks"] > 0
    assert time.monotonic() - t0 < 15  # settled by polling, not by the commit timeout
