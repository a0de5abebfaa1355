"""Sealing a device's discovery fields for the chain, and the gateways' keyring (pure crypto).

* A *registry data key* (32 random bytes, one per epoch) seals each device's
  :class:`~edgistry.proto.registry_pb2.DeviceFields` with ChaCha20-Poly1305.
  The plaintext is ``be16(length) || DeviceFields || zero padding`` up to one
  of :data:`~edgistry.abci_app.sealing.SEALED_PLAIN_SIZES`, so the ciphertext
  length says nothing about how many services a device offers. The AAD binds
  the blob to its pseudonym and epoch: a blob copied onto another record does
  not open.
* From the chain's ``manifest_ref_height`` on, a device's fields name a slot of
  its gateway's *catalog* (``DeviceFields.manifest`` = 1 + slot) instead of
  carrying services, and are padded to the one small
  :data:`~edgistry.abci_app.sealing.DEVICE_REF_PLAIN_SIZE`. Each slot holds a
  sealed :class:`~edgistry.proto.registry_pb2.Manifest`, padded like a
  device's fields were; its AAD binds gateway, slot and epoch, so a slot's blob
  copied to another slot or gateway does not open.
* A data key travels on chain only *wrapped* to each gateway's X25519 seal key:
  an ephemeral X25519 key agreement, HKDF-SHA256 (salt: both public keys;
  info: domain, recipient gateway id, epoch) and ChaCha20-Poly1305.
* ``key_check`` (HMAC-SHA256 of a fixed label under the key, 16 bytes) is
  public; a recipient compares it with the epoch record before using a key, so
  a garbled wrap is refused instead of silently sealing nonsense.

:class:`Keyring` holds the epochs' keys one gateway could unwrap.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from google.protobuf.message import DecodeError

from ...abci_app import sealing as rules
from ...abci_app.codes import TxError
from ...abci_app.txs import check_device_plaintext, check_services
from ...config import HomeError, write_secret_file
from ...proto import registry_pb2 as pb

DEVICE_AAD = b"edgistry/device-fields/v1\0"
MANIFEST_AAD = b"edgistry/manifest/v1\0"
WRAP_INFO = b"edgistry/datakey-wrap/v1\0"
CHECK_LABEL = b"edgistry/datakey-check/v1"
_LEN = struct.Struct(">H")


# (gateway id, slot) -> that slot's services, opened (a free slot is absent or empty)
Catalogs = dict[tuple[str, int], list]


class SealError(Exception):
    """A blob or wrap does not open (wrong key, tampered, or not for us)."""


class TooLarge(ValueError):
    """The device's fields do not fit the largest sealed size."""


def new_data_key() -> bytes:
    return os.urandom(rules.DATA_KEY_LEN)


def key_check(key: bytes) -> bytes:
    return hmac.new(key, CHECK_LABEL, hashlib.sha256).digest()[: rules.KEY_CHECK_LEN]


def _device_aad(pseudonym: bytes, epoch: int) -> bytes:
    return DEVICE_AAD + pseudonym + struct.pack(">I", epoch)


def pad(body: bytes, sizes: tuple[int, ...] = rules.SEALED_PLAIN_SIZES) -> bytes:
    """``be16(len) || body || zeros`` to the smallest of ``sizes`` that holds it."""
    for size in sizes:
        if len(body) + _LEN.size <= size:
            return _LEN.pack(len(body)) + body + bytes(size - _LEN.size - len(body))
    raise TooLarge(f"the device's description is {len(body)} bytes; at most "
                   f"{sizes[-1] - _LEN.size} fit the registry")


def unpad(plain: bytes) -> bytes:
    (n,) = _LEN.unpack_from(plain)
    if n > len(plain) - _LEN.size or any(plain[_LEN.size + n:]):
        raise SealError("bad padding")
    return plain[_LEN.size: _LEN.size + n]


def seal_fields(key: bytes, epoch: int, pseudonym: bytes, fields: pb.DeviceFields,
                nonce: bytes | None = None) -> pb.Sealed:
    """Seal ``fields`` for the chain (after the registry's own checks on the plaintext)."""
    try:
        check_device_plaintext(fields)
    except TxError as err:
        raise ValueError(err.log) from err
    nonce = os.urandom(rules.NONCE_LEN) if nonce is None else nonce
    sizes = (rules.DEVICE_REF_PLAIN_SIZE,) if fields.manifest else rules.SEALED_PLAIN_SIZES
    plain = pad(fields.SerializeToString(deterministic=True), sizes)
    ct = ChaCha20Poly1305(key).encrypt(nonce, plain, _device_aad(pseudonym, epoch))
    return pb.Sealed(epoch=epoch, nonce=nonce, ciphertext=ct)


def _manifest_aad(gateway_id: str, slot: int, epoch: int) -> bytes:
    return MANIFEST_AAD + gateway_id.encode() + struct.pack(">II", slot, epoch)


def seal_manifest(key: bytes, epoch: int, gateway_id: str, slot: int, manifest: pb.Manifest,
                  nonce: bytes | None = None) -> pb.Sealed:
    """Seal one catalog slot (no services: a free slot, padded the same)."""
    if manifest.services:
        try:
            check_services(manifest.services)
        except TxError as err:
            raise ValueError(err.log) from err
    nonce = os.urandom(rules.NONCE_LEN) if nonce is None else nonce
    plain = pad(manifest.SerializeToString(deterministic=True))
    ct = ChaCha20Poly1305(key).encrypt(nonce, plain, _manifest_aad(gateway_id, slot, epoch))
    return pb.Sealed(epoch=epoch, nonce=nonce, ciphertext=ct)


def open_manifest(key: bytes, record: pb.ManifestRecord) -> pb.Manifest:
    sealed = record.sealed
    try:
        plain = ChaCha20Poly1305(key).decrypt(sealed.nonce, sealed.ciphertext,
                                              _manifest_aad(record.gateway_id, record.slot, sealed.epoch))
        return pb.Manifest.FromString(unpad(plain))
    except (InvalidTag, ValueError, DecodeError, struct.error) as exc:
        raise SealError(f"catalog slot {record.slot} of {record.gateway_id} does not open under epoch "
                        f"{sealed.epoch}") from exc


def open_fields(key: bytes, pseudonym: bytes, sealed: pb.Sealed) -> pb.DeviceFields:
    try:
        plain = ChaCha20Poly1305(key).decrypt(sealed.nonce, sealed.ciphertext, _device_aad(pseudonym, sealed.epoch))
        return pb.DeviceFields.FromString(unpad(plain))
    except (InvalidTag, ValueError, DecodeError, struct.error) as exc:
        raise SealError(f"sealed fields of {pseudonym.hex()} do not open under epoch {sealed.epoch}") from exc


def _wrap_key(shared: bytes, eph: bytes, recipient: bytes, gateway_id: str, epoch: int) -> bytes:
    info = WRAP_INFO + gateway_id.encode() + struct.pack(">I", epoch)
    return HKDF(hashes.SHA256(), 32, salt=eph + recipient, info=info).derive(shared)


def wrap_key(key: bytes, epoch: int, gateway_id: str, recipient_pub: bytes) -> pb.KeyWrap:
    """Wrap a data key to one gateway's X25519 seal key."""
    eph = X25519PrivateKey.generate()
    eph_pub = eph.public_key().public_bytes_raw()
    shared = eph.exchange(X25519PublicKey.from_public_bytes(recipient_pub))
    kek = _wrap_key(shared, eph_pub, recipient_pub, gateway_id, epoch)
    nonce = os.urandom(rules.NONCE_LEN)
    ct = ChaCha20Poly1305(kek).encrypt(nonce, key, gateway_id.encode())
    return pb.KeyWrap(gateway_id=gateway_id, epoch=epoch, ephemeral=eph_pub, nonce=nonce, ciphertext=ct)


def unwrap_key(wrap: pb.KeyWrap, private: X25519PrivateKey) -> bytes:
    mine = private.public_key().public_bytes_raw()
    try:
        shared = private.exchange(X25519PublicKey.from_public_bytes(wrap.ephemeral))
        kek = _wrap_key(shared, wrap.ephemeral, mine, wrap.gateway_id, wrap.epoch)
        return ChaCha20Poly1305(kek).decrypt(wrap.nonce, wrap.ciphertext, wrap.gateway_id.encode())
    except (InvalidTag, ValueError) as exc:
        raise SealError(f"the wrap of epoch {wrap.epoch} does not open with this seal key") from exc


@dataclass
class Keyring:
    """The data keys one gateway holds, by epoch, and the chain's view of the epochs."""

    keys: dict[int, bytes] = field(default_factory=dict)
    current: int = 0
    rotation_due: bool = False
    checks: dict[int, bytes] = field(default_factory=dict)  # epoch -> key_check on chain

    @classmethod
    def from_state(cls, state: pb.SealState, gateway_id: str, private: X25519PrivateKey | None) -> Keyring:
        """Unwrap every wrap of ``gateway_id`` in ``state``; wraps that fail their key_check are skipped."""
        ring = cls(current=state.current_epoch, rotation_due=state.rotation_due,
                   checks={e.epoch: e.key_check for e in state.epochs})
        if private is not None:
            for wrap in state.wraps:
                if wrap.gateway_id == gateway_id:
                    try:
                        key = unwrap_key(wrap, private)
                    except SealError:
                        continue
                    if hmac.compare_digest(key_check(key), ring.checks.get(wrap.epoch, b"")):
                        ring.keys[wrap.epoch] = key
        return ring

    @property
    def ready(self) -> bool:
        """True when this gateway can seal under the current epoch, and that epoch is not
        due to be replaced: a holder was removed, and what is sealed now must wait for the
        next epoch (the removed gateway may still hold this one's key)."""
        return self.current in self.keys and not self.rotation_due

    def seal(self, pseudonym: bytes, fields: pb.DeviceFields) -> pb.Sealed:
        if not self.ready:
            raise SealError(f"this gateway does not hold the current data key (epoch {self.current})")
        return seal_fields(self.keys[self.current], self.current, pseudonym, fields)

    def open(self, pseudonym: bytes, sealed: pb.Sealed) -> pb.DeviceFields:
        key = self.keys.get(sealed.epoch)
        if key is None:
            raise SealError(f"no data key for epoch {sealed.epoch}")
        return open_fields(key, pseudonym, sealed)

    def seal_manifest(self, gateway_id: str, slot: int, manifest: pb.Manifest) -> pb.Sealed:
        if not self.ready:
            raise SealError(f"this gateway does not hold the current data key (epoch {self.current})")
        return seal_manifest(self.keys[self.current], self.current, gateway_id, slot, manifest)

    def open_manifest(self, record: pb.ManifestRecord) -> pb.Manifest:
        key = self.keys.get(record.sealed.epoch)
        if key is None:
            raise SealError(f"no data key for epoch {record.sealed.epoch}")
        return open_manifest(key, record)

    def slot_services(self, record: pb.ManifestRecord) -> list | None:
        """A catalog slot's services (None: a free slot, or one sealed under an epoch not held)."""
        try:
            return list(self.open_manifest(record).services) or None
        except SealError:
            return None

    def open_catalogs(self, records: list[pb.ManifestRecord]) -> Catalogs:
        """The slots of ``records`` this keyring opens to services, as discovery resolves them."""
        opened = ((r, self.slot_services(r)) for r in records)
        return {(r.gateway_id, r.slot): services for r, services in opened if services}

    def open_record(self, record: pb.DeviceRecord, catalog: Catalogs | None = None) -> pb.DeviceRecord:
        """A copy of ``record`` with its sealed fields opened into the clear fields; a device
        that names a catalog slot takes its services from ``catalog``."""
        return resolve(record, self.open(record.pseudonym, record.sealed), catalog)


def resolve(record: pb.DeviceRecord, fields: pb.DeviceFields, catalog: Catalogs | None) -> pb.DeviceRecord:
    """A copy of ``record`` with its opened ``fields`` in the clear fields, services from its
    catalog slot when it names one (SealError when that slot is unknown or free here)."""
    services = fields.services
    if fields.manifest:
        found = catalog.get((record.gateway_id, fields.manifest - 1)) if catalog is not None else None
        if not found:
            raise SealError(f"device {record.pseudonym.hex()} names catalog slot {fields.manifest - 1} of "
                            f"{record.gateway_id}, which is not readable here")
        services = found
    out = pb.DeviceRecord()
    out.CopyFrom(record)
    out.services.extend(services)
    out.cell, out.duty_cycle_s = fields.cell, fields.duty_cycle_s
    out.policy.CopyFrom(fields.policy)
    return out


# ---- the gateway's seal key on disk ----

SEAL_KEY_FILE = "seal.pem"  # in the home's keys/ (0600), beside gateway.pem


def load_seal_key(keys_dir: Path, create: bool = False) -> X25519PrivateKey | None:
    """The home's X25519 seal key; made (0600) when missing and ``create``; else None if absent."""
    path = keys_dir / SEAL_KEY_FILE
    if not path.exists():
        if not create:
            return None
        key = X25519PrivateKey.generate()
        write_secret_file(path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()))
        return key
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise HomeError(f"cannot read seal key {path}: {exc}") from exc
    if not isinstance(key, X25519PrivateKey):
        raise HomeError(f"{path} is not an X25519 key")
    return key
