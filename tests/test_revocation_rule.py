"""The registry's revocation rule: from the genesis activation height only a tag's one-way
hash goes on chain (a raw tag is refused before it consumes a nonce); blocks below it
replay as they were made; genesis exports carry hashes; the hash the chain and the
firmware compute is one."""

from __future__ import annotations

import json

import pytest

from edgistry.abci_app import keys
from edgistry.abci_app.app import RegistryApp
from edgistry.abci_app.codes import Code
from edgistry.abci_app.genesis import Genesis, GenesisError
from edgistry.abci_app.revocation_rule import REVOCATION_DOMAIN, revocation_hash
from edgistry.firmware.caplets import api as cl
from edgistry.firmware.caplets import cap_crypto
from edgistry.proto import registry_pb2 as pb
from registry_helpers import T0, Actors, Driver

TAG = bytes(range(32))
HASH = revocation_hash(TAG)


def chain(tmp_path, name: str, activation: int | None):
    actors = Actors()
    genesis = actors.genesis()
    genesis.revocation_hash_height = activation
    app = RegistryApp(tmp_path / name)
    return actors, app, Driver(app, genesis)


def codes(resp) -> list[int]:
    return [r.code for r in resp.tx_results]


def test_the_chain_and_the_firmware_hash_tags_alike():
    """One domain, one hash: what `token revoke` computes is what the chain and devices hold."""
    assert REVOCATION_DOMAIN == cap_crypto.REVOCATION_DOMAIN
    assert HASH == cl.revocation_hash(TAG) != TAG


def test_from_the_activation_height_a_raw_tag_is_refused_before_its_nonce(tmp_path):
    """A new chain (activation 1) refuses RevokeToken(tag) without consuming the nonce, and
    records RevokeToken(tag_hash) under the hash, with an event naming only the hash."""
    a, app, d = chain(tmp_path, "new", 1)
    resp = d.block([a.tx(a.gw1, pb.RevokeToken(tag=TAG, expires_at=T0 + 100), nonce=1)])
    assert codes(resp) == [Code.INVALID_FIELD] and "raw tag" in resp.tx_results[0].log
    resp = d.block([a.tx(a.gw1, pb.RevokeToken(tag_hash=HASH, expires_at=T0 + 100), nonce=1)])  # same nonce
    assert codes(resp) == [0]
    assert json.dumps(str(resp)).find(TAG.hex()) < 0 and HASH.hex() in str(resp.tx_results[0].events)
    rec = pb.RevocationRecord.FromString(d.query("/revocation", HASH).value)
    assert rec.tag_hash == HASH and not rec.tag
    for bad in (pb.RevokeToken(tag_hash=HASH[:31], expires_at=T0 + 100),
                pb.RevokeToken(tag_hash=HASH, tag=TAG, expires_at=T0 + 100),
                pb.RevokeToken(tag_hash=HASH, expires_at=0)):
        assert codes(d.block([a.tx(a.gw1, bad)])) == [Code.INVALID_FIELD]


@pytest.mark.parametrize("activation", [None, 5])
def test_blocks_below_the_activation_height_replay_as_made(tmp_path, activation):
    """Below it (or with no activation height: an older chain) a raw tag is accepted and a
    tag_hash is refused as malformed, as the code before the field did; the same blocks give
    the same app hashes on a fresh app."""
    a, app, d = chain(tmp_path, "old", activation)
    blocks = [[a.tx(a.gw1, pb.RevokeToken(tag=TAG, expires_at=T0 + 100))],
              [a.tx(a.gw1, pb.RevokeToken(tag_hash=HASH, expires_at=T0 + 100))]]
    results = [codes(d.block(b)) for b in blocks]
    assert results == [[0], [Code.MALFORMED_TX]]
    hashes = app.app_hash
    again = RegistryApp(tmp_path / "replay")
    genesis = a.genesis()
    genesis.revocation_hash_height = activation
    d2 = Driver(again, genesis)
    assert [codes(d2.block(b)) for b in blocks] == results and again.app_hash == hashes
    if activation is None:
        with app.store.reader() as r:
            assert r.get(keys.REVOCATION_HASH_HEIGHT) is None  # older chains' app hashes unchanged
    else:
        while app.height + 1 < activation:
            d.block([])
        assert codes(d.block([a.tx(a.gw1, pb.RevokeToken(tag=TAG[::-1], expires_at=T0 + 100))])) == [
            Code.INVALID_FIELD]
    again.close()
    app.close()


def test_genesis_export_carries_hashes_and_the_height(tmp_path):
    """An export of a chain that recorded a raw tag holds only its hash, and a chain started
    from the export hashes from height 1 and still revokes the token."""
    a, app, d = chain(tmp_path, "old", None)
    d.block([a.tx(a.gw1, pb.RevokeToken(tag=TAG, expires_at=T0 + 100))])
    with app.store.reader() as r:
        exported = Genesis.export(r)
    text = json.dumps(exported.to_json())
    assert TAG.hex() not in text and HASH.hex() in text and exported.revocation_hash_height == 1
    fresh = RegistryApp(tmp_path / "fresh")
    d2 = Driver(fresh, Genesis.from_json(json.loads(text)))
    d2.block([])  # genesis state is committed with the first block
    assert pb.RevocationRecord.FromString(d2.query("/revocation", HASH).value).expires_at == T0 + 100
    fresh.close()
    app.close()
    for bad in ({"revocations": [{"tag_hash": "00", "expires_at": 5}]},
                {"revocation_hash_height": 0}, {"revocation_hash_height": "1"}):
        with pytest.raises(GenesisError):
            Genesis.from_json(bad)
