"""The sealed registry on the state machine: seal keys, data key epochs, grants, rotation, sizes."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from edgistry.abci_app import sealing
from edgistry.abci_app.app import RegistryApp
from edgistry.abci_app.codes import Code
from edgistry.abci_app.genesis import Genesis
from edgistry.gateway.discovery import sealbox
from edgistry.proto import registry_pb2 as pb
from registry_helpers import (TEST_DATA_KEY, Actors, Driver, cell_at, device_fields, device_msg, driver_catalogs,
                              manifest_msg, pub, test_keyring)


@pytest.fixture
def env(tmp_path):
    actors = Actors()
    app = RegistryApp(tmp_path / "reg")
    driver = Driver(app, actors.genesis())
    yield actors, app, driver
    app.close()


def codes(resp) -> list[int]:
    return [r.code for r in resp.tx_results]


def seal_state(d: Driver) -> pb.SealState:
    resp = d.query("/seal")
    assert resp.code == 0, resp.log
    return pb.SealState.FromString(resp.value)


def xpub(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes_raw()


def open_epoch(a: Actors, epoch: int, key: bytes, recipients: dict[str, X25519PrivateKey], signer=None) -> bytes:
    wraps = [sealbox.wrap_key(key, epoch, gid, xpub(sk)) for gid, sk in sorted(recipients.items())]
    return a.tx(signer or a.gw1, pb.PutDataKey(epoch=epoch, key_check=sealbox.key_check(key), wraps=wraps))


def test_cleartext_device_fields_are_refused(env):
    """A device tx carrying services, a cell, a policy or a duty cycle in clear is refused statelessly."""
    a, app, d = env
    sealed = device_msg(b"A" * 16)
    for clear in (dict(services=device_fields().services), dict(cell=cell_at(1, 1, 6)),
                  dict(policy=pb.PrivacyPolicy(resolution=6, k=2)), dict(duty_cycle_s=30), dict()):
        msg = pb.RegisterDevice(pseudonym=b"A" * 16, **clear)
        if clear:
            msg.sealed.CopyFrom(sealed.sealed)
        assert codes(d.block([a.tx(a.gw1, msg)])) == [Code.INVALID_FIELD]
    short = pb.RegisterDevice(pseudonym=b"A" * 16, sealed=pb.Sealed(epoch=1, nonce=b"n" * 12, ciphertext=b"c" * 100))
    assert codes(d.block([a.tx(a.gw1, short)])) == [Code.INVALID_FIELD]
    assert codes(d.block([a.tx(a.gw1, sealed)])) == [0]


def test_sealed_size_does_not_depend_on_the_number_of_services(env):
    """One service or sixteen: a device's blob has the same length (one size, naming a slot), and
    so has a catalog slot's (one padded size, the largest manifest in the second); devices with
    their services inline (chains without manifests by reference) pad the same way."""
    one = device_msg(b"B" * 16, types=("sensor",))
    many = device_msg(b"C" * 16, types=tuple(f"svc{i}" for i in range(16)))
    assert len(one.sealed.ciphertext) == len(many.sealed.ciphertext) == sealing.DEVICE_REF_SIZE
    slot_one = manifest_msg("a" * 32, ("sensor",))
    slot_many = manifest_msg("a" * 32, tuple(f"svc{i}" for i in range(16)))
    assert len(slot_one.sealed.ciphertext) == len(slot_many.sealed.ciphertext) == sealing.SEALED_SIZES[0]
    free = sealbox.seal_manifest(TEST_DATA_KEY, 1, "a" * 32, 3, pb.Manifest())
    assert len(free.ciphertext) == sealing.SEALED_SIZES[0]  # a free (cover) slot looks the same
    inline = device_msg(b"B" * 16, types=tuple(f"svc{i}" for i in range(16)), inline=True)
    assert len(inline.sealed.ciphertext) == sealing.SEALED_SIZES[0]
    huge = pb.DeviceFields(services=[pb.ServiceDescriptor(type=f"t{i:02d}" + "x" * 40, methods=[
        pb.ServiceMethod(name=f"m{j:02d}" + "y" * 40) for j in range(32)]) for i in range(16)],
        cell=cell_at(1, 1, 6), policy=pb.PrivacyPolicy(resolution=6, k=2))
    blob = sealbox.seal_fields(TEST_DATA_KEY, 1, b"D" * 16, huge)
    assert len(blob.ciphertext) == sealing.SEALED_SIZES[1]
    slot = sealbox.seal_manifest(TEST_DATA_KEY, 1, "a" * 32, 0, pb.Manifest(services=huge.services))
    assert len(slot.ciphertext) == sealing.SEALED_SIZES[1]
    assert sealbox.open_fields(TEST_DATA_KEY, b"D" * 16, blob) == huge


def test_a_blob_moved_to_another_pseudonym_does_not_open(env):
    """The AEAD binds sealed fields to their pseudonym and epoch."""
    msg = device_msg(b"E" * 16)
    with pytest.raises(sealbox.SealError):
        sealbox.open_fields(TEST_DATA_KEY, b"F" * 16, msg.sealed)
    moved = pb.Sealed(epoch=2, nonce=msg.sealed.nonce, ciphertext=msg.sealed.ciphertext)
    with pytest.raises(sealbox.SealError):
        sealbox.open_fields(TEST_DATA_KEY, b"E" * 16, moved)


def test_seal_key_is_set_by_the_gateway_and_a_new_one_drops_its_wraps(env):
    """SetSealKey: gateways only; replacing the key drops the gateway's wraps so peers grant again."""
    a, app, d = env
    assert codes(d.block([a.tx(a.admin, pb.SetSealKey(x25519_pubkey=b"k" * 32))])) == [Code.UNAUTHORIZED]
    assert {w.gateway_id for w in seal_state(d).wraps} == {a.gw1_id, a.gw2_id}
    new = X25519PrivateKey.generate()
    assert codes(d.block([a.tx(a.gw2, pb.SetSealKey(x25519_pubkey=xpub(new)))])) == [0]
    assert {w.gateway_id for w in seal_state(d).wraps} == {a.gw1_id}
    # gw2 cannot grant itself (it holds nothing); gw1, a holder, can
    grant = pb.PutDataKey(epoch=1, wraps=[sealbox.wrap_key(TEST_DATA_KEY, 1, a.gw2_id, xpub(new))])
    assert codes(d.block([a.tx(a.gw2, grant)])) == [Code.UNAUTHORIZED]
    assert codes(d.block([a.tx(a.gw1, grant)])) == [0]
    ring = sealbox.Keyring.from_state(seal_state(d), a.gw2_id, new)
    assert ring.ready and ring.keys[1] == TEST_DATA_KEY


def test_opening_an_epoch_must_wrap_for_every_sealing_gateway(env):
    """A new epoch is current + 1, carries its key check, and covers every gateway with a seal key."""
    a, app, d = env
    key2 = bytes([7]) * 32
    assert codes(d.block([open_epoch(a, 2, key2, {a.gw1_id: a.seal1})])) == [Code.WRAPS_INCOMPLETE]
    assert codes(d.block([open_epoch(a, 3, key2, {a.gw1_id: a.seal1, a.gw2_id: a.seal2})])) == [Code.STALE_EPOCH]
    assert codes(d.block([open_epoch(a, 2, key2, {a.gw1_id: a.seal1, a.gw2_id: a.seal2})])) == [0]
    state = seal_state(d)
    assert state.current_epoch == 2 and [e.opened_by for e in state.epochs] == ["", a.gw1_id]
    # a rival opening of the same epoch loses
    assert codes(d.block([open_epoch(a, 2, key2, {a.gw1_id: a.seal1, a.gw2_id: a.seal2}, a.gw2)])) == [Code.STALE_EPOCH]
    # devices are written under the current epoch only
    assert codes(d.block([a.tx(a.gw1, device_msg(b"G" * 16))])) == [Code.STALE_EPOCH]
    assert codes(d.block([a.tx(a.gw1, device_msg(b"G" * 16, key=key2, epoch=2))])) == [0]


def test_removing_a_key_holder_drops_its_wraps_and_makes_rotation_due(env):
    """RemoveGateway: its wraps go, a rotation is due until a new epoch opens without it."""
    a, app, d = env
    assert codes(d.block([a.tx(a.admin, pb.RemoveGateway(gateway_id=a.gw2_id))])) == [0]
    state = seal_state(d)
    assert state.rotation_due and {w.gateway_id for w in state.wraps} == {a.gw1_id}
    ring = sealbox.Keyring.from_state(state, a.gw1_id, a.seal1)
    # gw1 still holds the epoch, but seals nothing under it: the removed gateway may hold it too
    assert ring.rotation_due and ring.current in ring.keys and not ring.ready
    assert codes(d.block([open_epoch(a, 2, bytes([9]) * 32, {a.gw1_id: a.seal1}, a.admin)])) == [0]
    state = seal_state(d)
    assert not state.rotation_due and state.current_epoch == 2 and state.epochs[-1].opened_by == "admin"


def test_a_garbled_wrap_is_not_taken_into_the_keyring(env):
    """A wrap holding a key that fails the epoch's key check is skipped, not used to seal."""
    a, app, d = env
    newcomer, seal = Ed25519PrivateKey.generate(), X25519PrivateKey.generate()
    nid = d.block([a.tx(a.admin, pb.RegisterGateway(pubkey=pub(newcomer), endpoint="h:3"))]).tx_results[0].data.decode()
    assert codes(d.block([a.tx(newcomer, pb.SetSealKey(x25519_pubkey=xpub(seal)))])) == [0]
    wrong = sealbox.wrap_key(bytes(32), 1, nid, xpub(seal))  # a holder may send anything: the chain cannot tell
    assert codes(d.block([a.tx(a.gw1, pb.PutDataKey(epoch=1, wraps=[wrong]))])) == [0]
    ring = sealbox.Keyring.from_state(seal_state(d), nid, seal)
    assert not ring.ready and ring.keys == {}


def test_genesis_exports_and_imports_the_seal_state(env, tmp_path):
    """Export then init gives the same app hash, sealed devices, epochs and wraps included."""
    a, app, d = env
    assert codes(d.block([a.tx(a.gw1, manifest_msg(a.gw1_id)), a.tx(a.gw1, device_msg(b"H" * 16))])) == [0, 0]
    with app.store.reader() as r:
        exported = Genesis.export(r)
    again = Genesis.from_json(exported.to_json())
    assert again.seal == exported.seal and again.devices == exported.devices
    assert again.manifests == exported.manifests and len(again.manifests) == 1
    other = RegistryApp(tmp_path / "other")
    try:
        d2 = Driver(other, again)
        d2.block([])
        assert seal_state(d2) == seal_state(d)
        rec = pb.DeviceRecord.FromString(d2.query("/device", pb.DeviceQuery(pseudonym=b"H" * 16).SerializeToString()).value)
        assert test_keyring().open_record(rec, driver_catalogs(d2)).services[0].type == "sensor"
    finally:
        other.close()


@pytest.mark.parametrize("key", [bytes(32), bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
                                 b"\xec" + b"\xff" * 30 + b"\xff"])  # p - 1 with bit 255 set
def test_a_seal_key_of_small_order_never_reaches_a_block_and_blocks_no_epoch(env, key):
    """Every wrap to a seal key of small order fails, so one let in stopped every keeper from
    opening or granting (a due rotation never came). CheckTx refuses it, alone or in a
    batch; PrepareProposal drops it and ProcessProposal rejects its block. Should a byzantine
    block commit one anyway, an epoch needs no wrap for it, and keepers pass it over."""
    from edgistry.abci_app.batch import batch_of
    from edgistry.gateway.discovery.keeper import _wraps
    from edgistry.proto import abci_pb2 as abci

    a, app, d = env
    single = a.tx(a.gw2, pb.SetSealKey(x25519_pubkey=key))
    batched = a.tx(a.gw2, batch_of([pb.SetSealKey(x25519_pubkey=key)]), nonce=a.nonces[pub(a.gw2)] + 1)
    for tx in (single, batched):
        assert app.check_tx(abci.RequestCheckTx(tx=tx)).code == Code.INVALID_FIELD
        assert list(app.prepare_proposal(abci.RequestPrepareProposal(max_tx_bytes=1 << 20, txs=[tx],
                                                                     height=app.height + 1)).txs) == []
        assert app.process_proposal(abci.RequestProcessProposal(txs=[tx], height=app.height + 1)).status == \
            abci.ResponseProcessProposal.REJECT
    assert codes(d.block([single])) == [0]  # FinalizeBlock as before: a byzantine block replays alike
    assert _wraps(bytes([5]) * 32, 2, [(a.gw1_id, xpub(a.seal1)), (a.gw2_id, key)])[0].gateway_id == a.gw1_id
    assert len(_wraps(bytes([5]) * 32, 2, [(a.gw1_id, xpub(a.seal1)), (a.gw2_id, key)])) == 1
    assert codes(d.block([open_epoch(a, 2, bytes([5]) * 32, {a.gw1_id: a.seal1})])) == [0]
