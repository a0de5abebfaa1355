"""Shared helpers for registry tests: keys, genesis, messages, a block driver."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import h3
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from google.protobuf.timestamp_pb2 import Timestamp

from edgistry.abci_app import txs
from edgistry.abci_app.app import RegistryApp
from edgistry.abci_app.genesis import Genesis, GatewaySpec
from edgistry.gateway.discovery import sealbox
from edgistry.proto import abci_pb2 as abci
from edgistry.proto import registry_pb2 as pb

CHAIN = "test-chain"
T0 = 1_800_000_000  # block time of height 1 (unix seconds)


def pub(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes_raw()


def cell_at(lat: float, lon: float, res: int) -> int:
    return h3.str_to_int(h3.latlng_to_cell(lat, lon, res))


TEST_DATA_KEY = bytes(range(32))  # epoch 1's data key in Actors' genesis (tests only)


def device_fields(cell: int | None = None, types: tuple[str, ...] = ("sensor",), res: int = 6,
                  k: int = 2) -> pb.DeviceFields:
    return pb.DeviceFields(
        services=[pb.ServiceDescriptor(type=t, methods=[pb.ServiceMethod(name="read", cache_max_age_s=5)]) for t in types],
        cell=cell if cell is not None else cell_at(52.52, 13.40, res),
        policy=pb.PrivacyPolicy(resolution=res, k=k),
        duty_cycle_s=30,
    )


def slot_for(types: tuple[str, ...]) -> int:
    """The catalog slot tests give a service list: fixed per list, so equal calls give equal bytes."""
    return hashlib.sha256(",".join(types).encode()).digest()[0] % 32


def device_msg(pseudonym: bytes, cell: int | None = None, types: tuple[str, ...] = ("sensor",),
               res: int = 6, k: int = 2, cls=pb.RegisterDevice, key: bytes = TEST_DATA_KEY, epoch: int = 1,
               inline: bool = False):
    """A device tx with its fields sealed (a nonce derived from its contents: equal calls, equal bytes).
    By default its fields name catalog slot :func:`slot_for` ``(types)`` (the chain's form from its
    manifest_ref_height; :func:`manifest_msg` writes that slot); ``inline``: the services inside,
    the form of chains without manifests by reference."""
    fields = device_fields(cell, types, res, k)
    if not inline:
        del fields.services[:]
        fields.manifest = slot_for(types) + 1
    nonce = hashlib.sha256(pseudonym + fields.SerializeToString(deterministic=True) + bytes([epoch])).digest()[:12]
    return cls(pseudonym=pseudonym, sealed=sealbox.seal_fields(key, epoch, pseudonym, fields, nonce=nonce))


def manifest_msg(gateway_id: str, types: tuple[str, ...] = ("sensor",), key: bytes = TEST_DATA_KEY,
                 epoch: int = 1, slot: int | None = None) -> pb.PutManifest:
    """The catalog slot write that :func:`device_msg` ``(types=types)`` names, for the signing gateway."""
    slot = slot_for(types) if slot is None else slot
    manifest = pb.Manifest(services=device_fields(types=types).services)
    nonce = hashlib.sha256(gateway_id.encode() + bytes([slot, epoch])).digest()[:12]
    return pb.PutManifest(slot=slot, sealed=sealbox.seal_manifest(key, epoch, gateway_id, slot, manifest, nonce=nonce))


def open_test_epoch(url: str, admin: Ed25519PrivateKey) -> None:
    """Open data key epoch 1 with TEST_DATA_KEY on a live chain that has no sealing gateway
    (tests that submit device txs themselves, with no gateway running)."""
    import asyncio

    from edgistry.chain import ChainClient

    async def go() -> None:
        async with ChainClient(url) as chain:
            await chain.submit(admin, pb.PutDataKey(epoch=1, key_check=sealbox.key_check(TEST_DATA_KEY)))

    asyncio.run(go())


def catalogs_of(manifests, ring: sealbox.Keyring | None = None) -> sealbox.Catalogs:
    """The catalog slots ``ring`` (default: the test key's) opens, as a replica keeps them."""
    ring = ring or test_keyring()
    return {(m.gateway_id, m.slot): list(ring.open_manifest(m).services) for m in manifests}


def driver_catalogs(driver, height: int = 0) -> sealbox.Catalogs:
    """Every catalog slot on an in-process chain at ``height``, opened with the test key."""
    resp = driver.query("/manifests", pb.DeviceQuery(limit=1000).SerializeToString(), height)
    assert resp.code == 0, resp.log
    return catalogs_of(pb.ManifestList.FromString(resp.value).manifests)


def test_keyring(key: bytes = TEST_DATA_KEY, epoch: int = 1) -> sealbox.Keyring:
    """A keyring holding the test data key."""
    return sealbox.Keyring(keys={epoch: key}, current=epoch, checks={epoch: sealbox.key_check(key)})


test_keyring.__test__ = False  # a helper, not a test


@dataclass
class Actors:
    admin: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    gw1: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    gw2: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    stranger: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    seal1: X25519PrivateKey = field(default_factory=X25519PrivateKey.generate)
    seal2: X25519PrivateKey = field(default_factory=X25519PrivateKey.generate)
    nonces: dict = field(default_factory=dict)
    _wraps: dict = field(default_factory=dict)

    def genesis(self, sealed: bool = True) -> Genesis:
        """Two gateways; ``sealed``: with seal keys and epoch 1 of TEST_DATA_KEY wrapped to both
        (the wraps made once per Actors: every genesis of one Actors is the same)."""
        s1, s2 = (k.public_key().public_bytes_raw() for k in (self.seal1, self.seal2)) if sealed else (b"", b"")
        genesis = Genesis(admins=[pub(self.admin)],
                          gateways=[GatewaySpec(pub(self.gw1), "127.0.0.1:26670", "one", s1),
                                    GatewaySpec(pub(self.gw2), "127.0.0.1:26680", "two", s2)])
        if sealed:
            genesis.seal = pb.SealState(
                current_epoch=1, epochs=[pb.DataKeyEpoch(epoch=1, key_check=sealbox.key_check(TEST_DATA_KEY))],
                wraps=self._wraps.setdefault("epoch1", [sealbox.wrap_key(TEST_DATA_KEY, 1, self.gw1_id, s1),
                                                        sealbox.wrap_key(TEST_DATA_KEY, 1, self.gw2_id, s2)]))
        return genesis

    def tx(self, key: Ed25519PrivateKey, msg, nonce: int | None = None, chain: str = CHAIN) -> bytes:
        if nonce is None:
            nonce = self.nonces.get(pub(key), 0) + 1
        self.nonces[pub(key)] = max(nonce, self.nonces.get(pub(key), 0))
        return txs.sign_tx(key, chain, nonce, msg)

    @property
    def gw1_id(self) -> str:
        return txs.gateway_id_for(pub(self.gw1))

    @property
    def gw2_id(self) -> str:
        return txs.gateway_id_for(pub(self.gw2))


class Driver:
    """Drives a RegistryApp in CometBFT's call order (no sockets)."""

    def __init__(self, app: RegistryApp, genesis: Genesis, chain: str = CHAIN) -> None:
        self.app = app
        self.time = T0
        if app.height == 0:
            app.init_chain(abci.RequestInitChain(chain_id=chain, initial_height=1,
                                                 app_state_bytes=json.dumps(genesis.to_json()).encode()))

    def block(self, txs_: list[bytes], dt: int = 5) -> abci.ResponseFinalizeBlock:
        self.time += dt
        height = self.app.height + 1
        prep = self.app.prepare_proposal(abci.RequestPrepareProposal(max_tx_bytes=1 << 22, txs=txs_, height=height))
        assert self.app.process_proposal(abci.RequestProcessProposal(txs=prep.txs, height=height)).status == 1
        resp = self.app.finalize_block(abci.RequestFinalizeBlock(txs=txs_, height=height, time=Timestamp(seconds=self.time)))
        self.app.commit(abci.RequestCommit())
        return resp

    def query(self, path: str, data: bytes = b"", height: int = 0) -> abci.ResponseQuery:
        return self.app.query(abci.RequestQuery(path=path, data=data, height=height))
