"""The sealed registry on the state machine's side: sizes, epochs, wraps; never contents.

Theory of operation (docs/REGISTRY_PRIVACY.md has the whole design):

* each gateway registers an X25519 *seal key* (``SetSealKey``) beside its
  Ed25519 identity;
* a *registry data key* is generated off chain by a gateway or an admin (the
  state machine has no randomness) and only its wraps go on chain:
  ``PutDataKey(epoch = current + 1, key_check, wraps)`` opens an epoch and must
  wrap the key to every gateway that has a seal key (none, before any has); ``PutDataKey(epoch <=
  current, wraps)`` adds wraps for gateways that lack one (a gateway joining
  later), and only a holder of that epoch (or an admin) may send it;
* a device's discovery fields (services, cell, policy, duty cycle) are an
  AEAD ciphertext under the current epoch's key, padded to one of a few fixed
  sizes; the state machine checks the epoch and the size, and hashes the
  bytes into the app hash like any other record;
* removing a gateway that held the current key drops its wraps and marks a
  rotation due; the next ``PutDataKey`` opening an epoch clears it. Records
  sealed before stay readable to whoever held the old keys: rotation protects
  what is written afterwards.

* manifests by reference (from the genesis ``manifest_ref_height`` on): a
  gateway keeps a catalog of the distinct service lists its devices offer, one
  sealed slot each (``PutManifest``, padded to ``SEALED_PLAIN_SIZES`` as a
  device's fields were before), and a device's sealed fields name their slot
  instead of carrying the services. From that height every device's blob is
  exactly ``DEVICE_REF_SIZE`` bytes, so its size says nothing at all, and the
  bulk of the registry's bytes (the services) is written once per kind of
  device, not once per device.

What cannot be checked here: that a ciphertext decrypts, that a wrap holds
the right key (``key_check`` lets the recipient notice a bad one), or that a
device's slot holds a manifest.
"""

from __future__ import annotations

from google.protobuf.message import Message

from . import keys
from .codes import Code, TxError
from .overlay import Overlay
from ..proto import registry_pb2 as pb

AEAD_TAG = 16
NONCE_LEN = 12
DATA_KEY_LEN = 32
KEY_CHECK_LEN = 16
X25519_LEN = 32
# Padded plaintext sizes of a device's sealed fields. Nearly every device fits
# the first; the second (one bit of leak, documented) holds the largest
# manifest the registry accepts (16 services x 32 methods).
SEALED_PLAIN_SIZES = (1024, 32 * 1024)
SEALED_SIZES = tuple(n + AEAD_TAG for n in SEALED_PLAIN_SIZES)
# From manifest_ref_height a device's sealed fields are its cell, policy, duty cycle and
# catalog slot (~30 bytes encoded at most), padded to this one size; room is left for a
# few more small fields.
DEVICE_REF_PLAIN_SIZE = 64
DEVICE_REF_SIZE = DEVICE_REF_PLAIN_SIZE + AEAD_TAG
DEVICE_SIZES = (DEVICE_REF_SIZE, *SEALED_SIZES)  # what a device blob may be at some height
# Catalog slots per gateway: the distinct kinds of device it can register. Its covers roam all
# of them from the start (a catalog that grew on demand would date the kind that made it grow).
MAX_MANIFEST_SLOTS = 64
WRAP_CIPHERTEXT_LEN = DATA_KEY_LEN + AEAD_TAG
MAX_WRAPS = 1000  # gateways per PutDataKey
ADMIN_OPENER = "admin"


def _bad(log: str) -> TxError:
    return TxError(Code.INVALID_FIELD, log)


# ---- stateless checks (validate_basic) ----


def check_sealed(sealed: pb.Sealed, sizes: tuple[int, ...] = DEVICE_SIZES) -> None:
    """Epoch, nonce and a padded size of ``sizes``; a device's size also depends on the height
    (:func:`require_device_size`, in its handler)."""
    if sealed.epoch < 1:
        raise _bad("a sealed field needs an epoch >= 1")
    if len(sealed.nonce) != NONCE_LEN:
        raise _bad(f"a sealed field's nonce is {NONCE_LEN} bytes")
    if len(sealed.ciphertext) not in sizes:
        raise _bad(f"a sealed field is {' or '.join(map(str, sizes))} bytes (padded), "
                   f"not {len(sealed.ciphertext)}")


def check_no_cleartext(msg: Message) -> None:
    """RegisterDevice/UpdateDevice: none of the sealed fields in clear (the part of
    :func:`check_sealed_device` that keeps them out of every block; a batch's
    admission runs it on each operation: batch.check_admissible)."""
    if msg.services or msg.cell or msg.HasField("policy") or msg.duty_cycle_s:
        raise _bad("a device's services, cell, policy and duty cycle go on chain sealed only "
                   "(docs/REGISTRY_PRIVACY.md), never in clear")


def check_sealed_device(msg: Message) -> None:
    """RegisterDevice/UpdateDevice: a pseudonym and a sealed blob, nothing in clear."""
    if len(msg.pseudonym) != keys.PSEUDONYM_LEN:
        raise _bad(f"pseudonym must be {keys.PSEUDONYM_LEN} bytes")
    check_no_cleartext(msg)
    if not msg.HasField("sealed"):
        raise _bad("a device registration needs its sealed fields")
    check_sealed(msg.sealed)


def check_put_manifest(msg: pb.PutManifest) -> None:
    if not 0 <= msg.slot < MAX_MANIFEST_SLOTS:
        raise _bad(f"a catalog slot is 0..{MAX_MANIFEST_SLOTS - 1}, not {msg.slot}")
    if not msg.HasField("sealed"):
        raise _bad("a manifest goes on chain sealed")
    check_sealed(msg.sealed, SEALED_SIZES)


def check_wrap(wrap: pb.KeyWrap) -> None:
    if len(wrap.gateway_id) != keys.GATEWAY_ID_LEN:
        raise _bad("a wrap's gateway_id must be 32 hex characters")
    if wrap.epoch < 1:
        raise _bad("a wrap needs an epoch >= 1")
    if len(wrap.ephemeral) != X25519_LEN or len(wrap.nonce) != NONCE_LEN:
        raise _bad(f"a wrap has a {X25519_LEN}-byte ephemeral key and a {NONCE_LEN}-byte nonce")
    if len(wrap.ciphertext) != WRAP_CIPHERTEXT_LEN:
        raise _bad(f"a wrap's ciphertext is {WRAP_CIPHERTEXT_LEN} bytes")


def check_set_seal_key(msg: pb.SetSealKey) -> None:
    if len(msg.x25519_pubkey) != X25519_LEN:
        raise _bad(f"a seal key is a {X25519_LEN}-byte X25519 public key")


# X25519 public keys of small order (libsodium's blocklist, bit 255 masked): a shared secret
# with one is all zeros, and every keeper's wrap to it fails, so none could open or grant.
_SMALL_ORDER_X25519 = frozenset(bytes.fromhex(h) for h in (
    "00" * 32,
    "01" + "00" * 31,
    "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
    "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
    "ec" + "ff" * 30 + "7f",
    "ed" + "ff" * 30 + "7f",
    "ee" + "ff" * 30 + "7f",
))


def small_order_seal_key(key: bytes) -> bool:
    return len(key) == X25519_LEN and key[:31] + bytes([key[31] & 0x7F]) in _SMALL_ORDER_X25519


def check_seal_key_admissible(msg: pb.SetSealKey) -> None:
    """Raise TxError for a seal key of small order (batch.check_admissible runs it: CheckTx
    and the proposal checks refuse it; FinalizeBlock does not, so committed blocks replay alike,
    and an epoch needs no wrap for such a key should a byzantine block let one in)."""
    if small_order_seal_key(msg.x25519_pubkey):
        raise _bad("a seal key of small order (every wrap to it would fail): not an X25519 key of a gateway")


def check_put_data_key(msg: pb.PutDataKey) -> None:
    if msg.epoch < 1:
        raise _bad("epoch must be >= 1")
    if msg.key_check and len(msg.key_check) != KEY_CHECK_LEN:
        raise _bad(f"key_check is {KEY_CHECK_LEN} bytes")
    if len(msg.wraps) > MAX_WRAPS:
        raise _bad(f"a data key tx carries at most {MAX_WRAPS} wraps")
    ids = [w.gateway_id for w in msg.wraps]
    if len(set(ids)) != len(ids):
        raise _bad("two wraps for one gateway")
    for wrap in msg.wraps:
        check_wrap(wrap)
        if wrap.epoch != msg.epoch:
            raise _bad("every wrap must be for the tx's epoch")


# ---- state ----


def current_epoch(kv: Overlay) -> int:
    raw = kv.get(keys.SEAL_EPOCH)
    return keys.from_be32(raw) if raw else 0


def require_current_epoch(kv: Overlay, sealed: pb.Sealed) -> None:
    """A device is written under the current epoch only (rotation protects what comes after it)."""
    now = current_epoch(kv)
    if now == 0:
        raise TxError(Code.NO_DATA_KEY, "the registry has no data key yet (a gateway opens epoch 1)")
    if sealed.epoch != now:
        raise TxError(Code.STALE_EPOCH, f"sealed under epoch {sealed.epoch}; the current epoch is {now}")


def read_manifest_ref_height(reader) -> int | None:
    """The genesis activation height of manifests by reference (None: never)."""
    raw = reader.get(keys.MANIFEST_REF_HEIGHT)
    return keys.from_be64(raw) if raw else None


def refs_required(height: int, activation: int | None) -> bool:
    return activation is not None and height >= activation


def check_device_size(sealed: pb.Sealed, height: int, activation: int | None) -> None:
    """From manifest_ref_height (``activation``) on a device's blob is the one small size;
    before it, one of the padded sizes that held the services. Run before the nonce, as the
    stateless check that refused other sizes before this rule was, so older blocks replay
    alike (same code, same state)."""
    size = len(sealed.ciphertext)
    if refs_required(height, activation):
        if size != DEVICE_REF_SIZE:
            raise _bad(f"from this height a device's sealed fields are {DEVICE_REF_SIZE} bytes, naming "
                       f"its manifest's catalog slot (docs/REGISTRY_PRIVACY.md), not {size}")
    elif size not in SEALED_SIZES:
        raise _bad(f"a sealed field is {' or '.join(map(str, SEALED_SIZES))} bytes (padded), not {size}")


def check_refs_known(kind: str, msg: Message, height: int, activation: int | None) -> None:
    """Below manifest_ref_height a PutManifest, alone or in a batch, is what it was before this
    rule existed: a tx that does not decode (``MALFORMED_TX``, before the nonce, and refused
    by the proposal checks), so older chains replay alike and mixed versions agree."""
    if refs_required(height, activation):
        return
    if kind == "put_manifest" or (kind == "batch" and any(op.WhichOneof("op") == "put_manifest"
                                                          for op in msg.ops)):
        raise TxError(Code.MALFORMED_TX, "PutManifest is not a message of this chain below its genesis "
                                         "manifest_ref_height")


def put_manifest(kv: Overlay, height: int, gateway_id: str, msg: pb.PutManifest) -> None:
    """Write one slot of the gateway's catalog, under the current epoch. Below manifest_ref_height
    it never gets here: :func:`check_refs_known` refuses the tx (or its batch) before the nonce."""
    require_current_epoch(kv, msg.sealed)
    record = pb.ManifestRecord(gateway_id=gateway_id, slot=msg.slot, height=height)
    record.sealed.CopyFrom(msg.sealed)
    kv.put(keys.manifest(gateway_id, msg.slot), record.SerializeToString(deterministic=True))


def drop_manifests(kv: Overlay, gateway_id: str) -> int:
    """Delete a gateway's whole catalog (it is being removed); returns how many slots."""
    gone = [k for k, _ in kv.scan(keys.manifest(gateway_id))]
    for key in gone:
        kv.delete(key)
    return len(gone)


def _gateway(kv: Overlay, gateway_id: str) -> pb.GatewayRecord | None:
    raw = kv.get(keys.gateway(gateway_id))
    return pb.GatewayRecord.FromString(raw) if raw is not None else None


def _sealing_gateways(kv: Overlay) -> set[str]:
    """Ids of the gateways that have registered a seal key a data key can be wrapped to (one
    of small order cannot be: no opening could ever cover it, so it is not required)."""
    out = set()
    for _, raw in kv.scan(keys.GATEWAY):
        record = pb.GatewayRecord.FromString(raw)
        if record.seal_pubkey and not small_order_seal_key(record.seal_pubkey):
            out.add(record.id)
    return out


def set_seal_key(kv: Overlay, gateway_id: str, pubkey: bytes) -> bool:
    """Store a gateway's seal key; a changed key drops its wraps. False when unchanged."""
    record = _gateway(kv, gateway_id)
    assert record is not None, "the signer's gateway record exists"
    if record.seal_pubkey == pubkey:
        return False
    record.seal_pubkey = pubkey
    kv.put(keys.gateway(gateway_id), record.SerializeToString(deterministic=True))
    drop_wraps(kv, gateway_id)
    return True


def drop_wraps(kv: Overlay, gateway_id: str) -> int:
    """Delete every wrap held by ``gateway_id``; returns how many."""
    gone = [k for k, _ in kv.scan(keys.WRAP) if k.endswith(gateway_id.encode())]
    for key in gone:
        kv.delete(key)
    return len(gone)


def on_gateway_removed(kv: Overlay, gateway_id: str) -> None:
    """Its wraps go; if it held the current key, the next epoch is due."""
    epoch = current_epoch(kv)
    if epoch and kv.get(keys.wrap(epoch, gateway_id)) is not None:
        kv.put(keys.SEAL_ROTATE, b"1")
    drop_wraps(kv, gateway_id)


def put_data_key(kv: Overlay, msg: pb.PutDataKey, height: int, signer_gateway: str | None,
                 is_admin: bool) -> str:
    """Open an epoch or add wraps to one (see the module docstring); returns what it did."""
    now = current_epoch(kv)
    wrapped = {w.gateway_id for w in msg.wraps}
    for gid in sorted(wrapped):
        record = _gateway(kv, gid)
        if record is None:
            raise TxError(Code.GATEWAY_NOT_FOUND, f"no gateway {gid} to wrap the key for")
        if not record.seal_pubkey:
            raise TxError(Code.INVALID_FIELD, f"gateway {gid} has no seal key yet")
    if msg.epoch == now + 1:
        if len(msg.key_check) != KEY_CHECK_LEN:
            raise _bad("opening an epoch needs its key_check")
        missing = _sealing_gateways(kv) - wrapped
        if missing:
            raise TxError(Code.WRAPS_INCOMPLETE, f"a new epoch must be wrapped for every gateway with a seal key; "
                                                 f"missing {', '.join(sorted(missing))}")
        opener = ADMIN_OPENER if is_admin else signer_gateway or ""
        record = pb.DataKeyEpoch(epoch=msg.epoch, key_check=msg.key_check, height=height, opened_by=opener)
        kv.put(keys.data_key(msg.epoch), record.SerializeToString(deterministic=True))
        kv.put(keys.SEAL_EPOCH, keys.be32(msg.epoch))
        kv.delete(keys.SEAL_ROTATE)
        action = "opened"
    elif 1 <= msg.epoch <= now:
        if not msg.wraps:
            raise _bad("adding to an epoch needs at least one wrap")
        if msg.key_check:  # someone opened this epoch first (gateways race to rotate: one wins)
            raise TxError(Code.STALE_EPOCH, f"epoch {msg.epoch} is already open; key_check is only for opening")
        if kv.get(keys.data_key(msg.epoch)) is None:
            raise TxError(Code.STALE_EPOCH, f"epoch {msg.epoch} is no longer kept")
        if not is_admin and (signer_gateway is None or kv.get(keys.wrap(msg.epoch, signer_gateway)) is None):
            raise TxError(Code.UNAUTHORIZED, f"only a holder of epoch {msg.epoch}'s key (or an admin) grants it")
        for gid in sorted(wrapped):
            if kv.get(keys.wrap(msg.epoch, gid)) is not None:
                raise TxError(Code.WRAP_EXISTS, f"gateway {gid} already holds epoch {msg.epoch}")
        action = "granted"
    else:
        raise TxError(Code.STALE_EPOCH, f"epoch {msg.epoch} is neither an existing one nor the next ({now + 1})")
    for wrap in msg.wraps:
        kv.put(keys.wrap(msg.epoch, wrap.gateway_id), wrap.SerializeToString(deterministic=True))
    return action


def seal_state(reader) -> pb.SealState:
    """The /seal answer: epochs, every wrap, the current epoch and whether a rotation is due."""
    raw = reader.get(keys.SEAL_EPOCH)
    return pb.SealState(
        current_epoch=keys.from_be32(raw) if raw else 0,
        rotation_due=reader.get(keys.SEAL_ROTATE) is not None,
        epochs=[pb.DataKeyEpoch.FromString(v) for _, v in reader.scan(keys.DATA_KEY)],
        wraps=[pb.KeyWrap.FromString(v) for _, v in reader.scan(keys.WRAP)],
    )
