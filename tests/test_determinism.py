"""Determinism: fresh apps fed the same random blocks agree on every app hash and answer."""

from __future__ import annotations

import random

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgistry.abci_app.app import RegistryApp
from edgistry.gateway.discovery import sealbox
from edgistry.proto import registry_pb2 as pb
from registry_helpers import T0, TEST_DATA_KEY, Actors, Driver, cell_at, device_msg, pub


def random_blocks(seed: int, actors: Actors, n_blocks: int = 12) -> list[tuple[list[bytes], int]]:
    """Blocks of valid and invalid txs: devices, updates, revocations, liveness, gateways."""
    rng = random.Random(seed)
    gateways = [actors.gw1, actors.gw2]
    devices: list[bytes] = []
    now, blocks = T0, []
    for _ in range(n_blocks):
        txs = []
        for _ in range(rng.randint(0, 12)):
            gw = rng.choice(gateways)
            op = rng.random()
            if op < 0.35 or not devices:
                p = rng.randbytes(16) if rng.random() < 0.9 or not devices else rng.choice(devices)
                devices.append(p)
                cell = cell_at(rng.uniform(-60, 60), rng.uniform(-179, 179), rng.choice([4, 6, 8]))
                res = (cell >> 52) & 0xF
                txs.append(actors.tx(gw, device_msg(p, cell, tuple(rng.sample(["sensor", "valve", "cam"], 2)), res=res)))
            elif op < 0.5:
                p = rng.choice(devices)
                txs.append(actors.tx(gw, device_msg(p, cell_at(10, 10, 5), ("cam",), res=5, cls=pb.UpdateDevice)))
            elif op < 0.6:
                txs.append(actors.tx(gw, pb.UnregisterDevice(pseudonym=rng.choice(devices))))
            elif op < 0.75:
                txs.append(actors.tx(gw, pb.RevokeToken(tag_hash=rng.randbytes(32), expires_at=now + rng.randint(-50, 400))))
            elif op < 0.85:
                entries = [pb.LivenessEntry(pseudonym=rng.choice(devices), last_seen=(now // 300) * 300)]
                txs.append(actors.tx(gw, pb.ReportLiveness(entries=entries)))
            elif op < 0.9:
                newgw = Ed25519PrivateKey.generate()
                gateways.append(newgw)
                txs.append(actors.tx(actors.admin, pb.RegisterGateway(pubkey=pub(newgw), endpoint="10.1.1.1:1")))
            else:
                txs.append(rng.randbytes(rng.randint(0, 80)))  # garbage
        dt = rng.randint(1, 120)
        now += dt
        blocks.append((txs, dt))
    return blocks


def run(app: RegistryApp, genesis, blocks) -> list[tuple[bytes, list[int], bytes]]:
    d = Driver(app, genesis)
    trace = []
    for txs, dt in blocks:
        resp = d.block(txs, dt)
        answer = d.query("/devices", pb.DeviceQuery().SerializeToString()).value
        trace.append((resp.app_hash, [r.code for r in resp.tx_results], answer))
    return trace


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32))
def test_three_fresh_apps_agree_at_every_height(tmp_path_factory, seed):
    """Three apps in separate stores produce identical app hashes, results and query answers."""
    actors = Actors()
    blocks = random_blocks(seed, actors)
    traces = []
    for i in range(3):
        app = RegistryApp(tmp_path_factory.mktemp(f"app{i}"))
        traces.append(run(app, actors.genesis(), blocks))
        app.close()
    assert traces[0] == traces[1] == traces[2]
    assert len({h for h, _, _ in traces[0]}) > 1, "the random blocks changed nothing"


def test_restarts_do_not_change_hashes(tmp_path):
    """An app closed and reopened between blocks follows the same hashes as one that never stops."""
    actors = Actors()
    blocks = random_blocks(7, actors)
    ref_app = RegistryApp(tmp_path / "ref")
    reference = [h for h, _, _ in run(ref_app, actors.genesis(), blocks)]
    ref_app.close()
    hashes, app = [], RegistryApp(tmp_path / "restarting")
    d = Driver(app, actors.genesis())
    for txs, dt in blocks:
        hashes.append(d.block(txs, dt).app_hash)
        app.close()
        app = RegistryApp(tmp_path / "restarting")
        d.app = app
    app.close()
    assert hashes == reference


def test_repeated_queries_answer_identically(tmp_path):
    """The same query at the same height gives byte-identical answers every time."""
    actors = Actors()
    app = RegistryApp(tmp_path / "q")
    run(app, actors.genesis(), random_blocks(3, actors))
    d = Driver(app, actors.genesis())
    answers = {d.query("/devices", b"", app.height - 2).SerializeToString() for _ in range(20)}
    assert len(answers) == 1
    app.close()


PINNED_APP_HASHES = [  # the sealed registry's state (sealed device records, data key epochs)
    "1831a808ae2434a79ade1a7babd65cc99e59e70ed67c9a3eee3a16ae146bfe6e",
    "341413754863ff302bfe9136e307669799e24ce9de7fc3c517be3c5e7ee923c6",
    "cbac98cb900352c96265f7addfae4b41de14ca7af8e2bd57e264a13cf7ac231d",
    "fc0df0d36f4dff159c79c7c74ff3622593a1dae645a70e3d1ea041468174f367",
    "fc0df0d36f4dff159c79c7c74ff3622593a1dae645a70e3d1ea041468174f367",
]


def test_app_hashes_of_a_fixed_chain_are_pinned(tmp_path):
    """A fixed chain whose genesis predates the v2 signature rule gets, block by block, the app
    hashes and codes the code before that rule (and before the hashing and store optimisations)
    gave: replaying an existing chain with this version cannot halt on an app hash mismatch.
    Everything is fixed, so the genesis opens epoch 1 without wraps (a wrap's ephemeral key is
    random); device txs are sealed with nonces derived from their contents."""
    def key(i: int) -> Ed25519PrivateKey:
        return Ed25519PrivateKey.from_private_bytes(bytes([i]) * 32)  # Ed25519 signing is deterministic

    a = Actors(admin=key(1), gw1=key(2), gw2=key(3), stranger=key(4))
    genesis = a.genesis(sealed=False)
    genesis.seal = pb.SealState(current_epoch=1,
                                epochs=[pb.DataKeyEpoch(epoch=1, key_check=sealbox.key_check(TEST_DATA_KEY))])
    genesis.ed25519_v2_height = None  # as in every genesis written before the v2 rule
    genesis.revocation_hash_height = None  # ... and before revocations went on chain as hashes
    genesis.lthash_v2_height = None  # ... and before app hashes were BLAKE3 sums
    genesis.manifest_ref_height = None  # ... and before devices named a catalog slot (services inline)
    blocks = [
        [a.tx(a.gw1, device_msg(b"A" * 16, inline=True)),
         a.tx(a.gw2, device_msg(b"B" * 16, types=("valve", "cam"), inline=True))],
        [a.tx(a.gw1, device_msg(b"A" * 16, cell_at(10, 10, 5), ("cam",), res=5, cls=pb.UpdateDevice, inline=True)),
         a.tx(a.gw2, pb.RevokeToken(tag=b"t" * 32, expires_at=T0 + 10000)),
         a.tx(a.stranger, device_msg(b"C" * 16, inline=True))],
        [a.tx(a.gw1, pb.ReportLiveness(entries=[pb.LivenessEntry(pseudonym=b"A" * 16, last_seen=(T0 // 300) * 300)])),
         a.tx(a.admin, pb.RegisterGateway(pubkey=pub(key(5)), endpoint="10.0.0.1:1", operator="x"))],
        [a.tx(a.gw2, pb.UnregisterDevice(pseudonym=b"B" * 16))],
        [],
    ]
    app = RegistryApp(tmp_path / "r")
    d = Driver(app, genesis)
    got = [d.block(b, dt=60) for b in blocks]
    app.close()
    assert [r.app_hash.hex() for r in got] == PINNED_APP_HASHES
    assert [[x.code for x in r.tx_results] for r in got] == [[0, 0], [0, 0, 11], [0, 0], [0], []]
