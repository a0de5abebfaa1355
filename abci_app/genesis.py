"""The registry's genesis state: default, validate, init, export.

It travels as the ``app_state`` object of CometBFT's genesis.json::

    {"admins": ["<hex ed25519 pubkey>", ...],
     "gateways": [{"pubkey": "<hex>", "endpoint": "HOST:PORT", "operator": "...",
                   "seal_pubkey": "<hex x25519, optional>",
                   "tls_cert": "<hex DER>", "tls_cert_signature": "<hex>", "peer_endpoint": "HOST:PORT"}],
     "devices": [<DeviceRecord as protobuf JSON: pseudonym, gateway, sealed>, ...],
     "seal": <SealState as protobuf JSON, optional: epochs and wraps>,
     "revocations": [{"tag_hash": "<hex>", "expires_at": <unix s>}, ...],
     "ed25519_v2_height": 1,
     "revocation_hash_height": 1,
     "lthash_v2_height": 1,
     "manifest_ref_height": 1,
     "manifests": [<ManifestRecord as protobuf JSON: gateway_id, slot, sealed>, ...]}

Devices and revocations in genesis are for exports and bulk loads; normally
they arrive through transactions. Device fields are sealed as on chain, so a
genesis that holds devices also holds the data key epochs (and wraps) they were
sealed under. An export carries every revocation as its hash (one recorded by
tag below the activation height is hashed on export), so a chain started from
it revokes the same tokens and publishes no tag.
A gateway's TLS fields are optional (as SetGatewayTls sets them): present,
clients can pin the gateway from the first block.

``ed25519_v2_height`` is the first block whose transaction signatures are
checked with the v2 acceptance rule (``ed25519_rule``: our canonical and
small-order checks, then libsodium); blocks below it use v1 (cryptography).
A new chain's genesis (``Genesis()``) has v2 from height 1. A genesis without
the key, or with an empty app_state, means "never": a chain started before the
v2 rule existed keeps replaying its blocks with the rule they were made under.
The height is written to the state (``keys.ED25519_V2_HEIGHT``, so it is in the
app hash and in snapshots) only when it is set, which keeps the app hashes of
such older chains unchanged.

``revocation_hash_height`` works the same way for revocations: from it on a
revocation names only a tag's hash (``revocation_rule``); below it, or without
the key, raw tags as before. New chains have it from height 1
(``keys.REVOCATION_HASH_HEIGHT``, written only when set).

``lthash_v2_height`` is the first block whose app hash is the v2 LtHash sum
(``lthash``: BLAKE3 instead of SHAKE-128 to expand a record); that block
re-hashes the whole committed state once. New chains have it from height 1
(the app hash InitChain returns stays v1 when block 1 is the chain's first);
absent means never, so older chains keep their app hashes at every height
(``keys.LTHASH_V2_HEIGHT``, written only when set).

``manifest_ref_height`` is the first block whose device registrations name a
slot of their gateway's sealed manifest catalog instead of carrying their
services (abci_app/sealing.py); new chains have it from height 1, absent means
never (``keys.MANIFEST_REF_HEIGHT``, written only when set). An export carries
the catalogs (``manifests``) beside the devices that name them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format

from . import keys, sealing, txs
from .codes import TxError
from .handlers import ed25519_key_of, put_device, put_gateway, set_gateway_tls
from .lthash import read_lthash_v2_height
from .overlay import Overlay, Reader
from .revocation_rule import DEFAULT_REVOCATION_HASH_HEIGHT, read_revocation_hash_height, revocation_hash
from ..proto import abci_pb2 as abci
from ..proto import registry_pb2 as pb


DEFAULT_ED25519_V2_HEIGHT = 1  # new chains verify with v2 from their first block
DEFAULT_LTHASH_V2_HEIGHT = 1  # new chains' app hashes are v2 sums from their first block
DEFAULT_MANIFEST_REF_HEIGHT = 1  # new chains' devices name a catalog slot from their first block
ACTIVATION_HEIGHTS = ("ed25519_v2_height", "revocation_hash_height", "lthash_v2_height", "manifest_ref_height")
_MAX_HEIGHT = 2**63 - 1  # CometBFT heights are int64


class GenesisError(ValueError):
    """The genesis app_state is malformed; the chain must not start with it."""


@dataclass
class GatewaySpec:
    pubkey: bytes
    endpoint: str
    operator: str = ""
    seal_pubkey: bytes = b""
    tls_cert: bytes = b""  # the SetGatewayTls fields, all empty when absent
    tls_cert_signature: bytes = b""
    peer_endpoint: str = ""

    def tls_msg(self) -> pb.SetGatewayTls | None:
        if not (self.tls_cert or self.tls_cert_signature or self.peer_endpoint):
            return None
        return pb.SetGatewayTls(cert=self.tls_cert, cert_signature=self.tls_cert_signature,
                                peer_endpoint=self.peer_endpoint)

    def to_json(self) -> dict[str, str]:
        out = {"pubkey": self.pubkey.hex(), "endpoint": self.endpoint, "operator": self.operator}
        if self.seal_pubkey:
            out["seal_pubkey"] = self.seal_pubkey.hex()
        if self.tls_msg() is not None:
            out.update(tls_cert=self.tls_cert.hex(), tls_cert_signature=self.tls_cert_signature.hex(),
                       peer_endpoint=self.peer_endpoint)
        return out

    @classmethod
    def from_json(cls, g: dict) -> GatewaySpec:
        return cls(bytes.fromhex(g["pubkey"]), g["endpoint"], g.get("operator", ""),
                   seal_pubkey=bytes.fromhex(g.get("seal_pubkey", "")),
                   tls_cert=bytes.fromhex(g.get("tls_cert", "")),
                   tls_cert_signature=bytes.fromhex(g.get("tls_cert_signature", "")),
                   peer_endpoint=g.get("peer_endpoint", ""))


@dataclass
class Genesis:
    admins: list[bytes] = field(default_factory=list)
    gateways: list[GatewaySpec] = field(default_factory=list)
    devices: list[pb.DeviceRecord] = field(default_factory=list)
    seal: pb.SealState = field(default_factory=pb.SealState)
    ed25519_v2_height: int | None = DEFAULT_ED25519_V2_HEIGHT  # None: v1 at every height
    revocations: list[pb.RevocationRecord] = field(default_factory=list)  # tag_hash + expires_at
    revocation_hash_height: int | None = DEFAULT_REVOCATION_HASH_HEIGHT  # None: raw tags at every height
    lthash_v2_height: int | None = DEFAULT_LTHASH_V2_HEIGHT  # None: v1 sums at every height
    manifest_ref_height: int | None = DEFAULT_MANIFEST_REF_HEIGHT  # None: services inline at every height
    manifests: list[pb.ManifestRecord] = field(default_factory=list)

    # ---- JSON ----
    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "admins": [a.hex() for a in self.admins],
            "gateways": [g.to_json() for g in self.gateways],
            "devices": [json_format.MessageToDict(d) for d in self.devices],
        }
        if self.seal.epochs:
            out["seal"] = json_format.MessageToDict(self.seal)
        if self.ed25519_v2_height is not None:
            out["ed25519_v2_height"] = self.ed25519_v2_height
        if self.revocations:
            out["revocations"] = [{"tag_hash": r.tag_hash.hex(), "expires_at": r.expires_at}
                                  for r in self.revocations]
        if self.revocation_hash_height is not None:
            out["revocation_hash_height"] = self.revocation_hash_height
        if self.lthash_v2_height is not None:
            out["lthash_v2_height"] = self.lthash_v2_height
        if self.manifest_ref_height is not None:
            out["manifest_ref_height"] = self.manifest_ref_height
        if self.manifests:
            out["manifests"] = [json_format.MessageToDict(m) for m in self.manifests]
        return out

    @classmethod
    def from_json(cls, data: Any) -> Genesis:
        if not isinstance(data, dict):
            raise GenesisError("app_state must be a JSON object")
        try:
            admins = [bytes.fromhex(a) for a in data.get("admins", [])]
            gateways = [GatewaySpec.from_json(g) for g in data.get("gateways", [])]
            devices = [json_format.ParseDict(d, pb.DeviceRecord()) for d in data.get("devices", [])]
            seal = json_format.ParseDict(data.get("seal", {}), pb.SealState())
            revocations = [pb.RevocationRecord(tag_hash=bytes.fromhex(r["tag_hash"]), expires_at=r["expires_at"])
                           for r in data.get("revocations", [])]
            manifests = [json_format.ParseDict(m, pb.ManifestRecord()) for m in data.get("manifests", [])]
        except (KeyError, TypeError, ValueError, AttributeError, json_format.ParseError) as exc:
            raise GenesisError(f"malformed app_state: {exc}") from exc
        genesis = cls(admins, gateways, devices, seal, data.get("ed25519_v2_height"),  # absent: never
                      revocations, data.get("revocation_hash_height"),  # absent: never
                      data.get("lthash_v2_height"),  # absent: never
                      data.get("manifest_ref_height"), manifests)  # absent: never
        genesis.validate()
        return genesis

    @classmethod
    def from_bytes(cls, raw: bytes) -> Genesis:
        if not raw.strip():
            # an empty app_state names no activation height
            return cls(ed25519_v2_height=None, revocation_hash_height=None, lthash_v2_height=None,
                       manifest_ref_height=None)
        try:
            return cls.from_json(json.loads(raw))
        except json.JSONDecodeError as exc:
            raise GenesisError(f"app_state is not JSON: {exc}") from exc

    # ---- validate / init / export ----
    def validate(self) -> None:
        for name in ACTIVATION_HEIGHTS:
            h = getattr(self, name)
            if h is not None and (type(h) is not int or not 1 <= h <= _MAX_HEIGHT):
                raise GenesisError(f"{name} must be a whole number 1..{_MAX_HEIGHT}, not {h!r}")
        for r in self.revocations:
            if len(r.tag_hash) != 32 or r.tag or type(r.expires_at) is not int or r.expires_at <= 0:
                raise GenesisError("a revocation is a 32-byte tag_hash and a positive expires_at")
        if len({r.tag_hash for r in self.revocations}) != len(self.revocations):
            raise GenesisError("duplicate revocation")
        for admin in self.admins:
            if len(admin) != 32:
                raise GenesisError("an admin key is 32 bytes")
        if len(set(self.admins)) != len(self.admins):
            raise GenesisError("duplicate admin key")
        ids = set()
        try:
            for g in self.gateways:
                txs.VALIDATORS["register_gateway"](pb.RegisterGateway(pubkey=g.pubkey, endpoint=g.endpoint, operator=g.operator))
                if g.seal_pubkey:
                    sealing.check_set_seal_key(pb.SetSealKey(x25519_pubkey=g.seal_pubkey))
                if g.tls_msg() is not None:
                    txs.VALIDATORS["set_gateway_tls"](g.tls_msg())
                ids.add(txs.gateway_id_for(g.pubkey))
            self._validate_seal(ids)
            epochs = {e.epoch for e in self.seal.epochs}
            for d in self.devices:
                msg = pb.RegisterDevice(pseudonym=d.pseudonym, services=d.services, cell=d.cell,
                                        policy=d.policy if d.HasField("policy") else None,
                                        duty_cycle_s=d.duty_cycle_s,
                                        sealed=d.sealed if d.HasField("sealed") else None)
                txs.VALIDATORS["register_device"](msg)
                if self.manifest_ref_height is None:  # no height ever takes the small size
                    sealing.check_device_size(d.sealed, 0, None)
                if d.gateway_id not in ids:
                    raise GenesisError(f"device {d.pseudonym.hex()} names unknown gateway {d.gateway_id}")
                if d.sealed.epoch not in epochs:
                    raise GenesisError(f"device {d.pseudonym.hex()} is sealed under an epoch the genesis lacks")
        except TxError as err:
            raise GenesisError(err.log) from err
        if len(ids) != len(self.gateways):
            raise GenesisError("duplicate gateway key")
        if len({d.pseudonym for d in self.devices}) != len(self.devices):
            raise GenesisError("duplicate device pseudonym")
        self._validate_manifests(ids)

    def _validate_manifests(self, gateway_ids: set[str]) -> None:
        if self.manifests and self.manifest_ref_height is None:
            raise GenesisError("manifests need a manifest_ref_height")
        epochs = {e.epoch for e in self.seal.epochs}
        for m in self.manifests:
            try:
                sealing.check_put_manifest(pb.PutManifest(slot=m.slot, sealed=m.sealed))
            except TxError as exc:
                raise GenesisError(f"manifest {m.gateway_id}/{m.slot}: {exc.log}") from exc
            if m.gateway_id not in gateway_ids:
                raise GenesisError(f"a manifest names unknown gateway {m.gateway_id}")
            if m.sealed.epoch not in epochs:
                raise GenesisError(f"manifest {m.gateway_id}/{m.slot} is sealed under an epoch the genesis lacks")
        if len({(m.gateway_id, m.slot) for m in self.manifests}) != len(self.manifests):
            raise GenesisError("duplicate manifest slot")

    def _validate_seal(self, gateway_ids: set[str]) -> None:
        epochs = [e.epoch for e in self.seal.epochs]
        if epochs != list(range(1, len(epochs) + 1)) or self.seal.current_epoch != len(epochs):
            raise GenesisError("seal epochs must run 1..current_epoch")
        for e in self.seal.epochs:
            if len(e.key_check) != sealing.KEY_CHECK_LEN:
                raise GenesisError(f"epoch {e.epoch} needs a {sealing.KEY_CHECK_LEN}-byte key_check")
        for w in self.seal.wraps:
            sealing.check_wrap(w)
            if w.gateway_id not in gateway_ids or w.epoch not in epochs:
                raise GenesisError(f"a wrap names unknown gateway {w.gateway_id} or epoch {w.epoch}")

    def init(self, kv: Overlay, chain_id: str, validators: list[abci.ValidatorUpdate], height: int) -> None:
        """Write this genesis into ``kv`` (staged; persisted by the first Commit)."""
        kv.put(keys.meta("chain_id"), chain_id.encode())
        if self.ed25519_v2_height is not None:
            kv.put(keys.ED25519_V2_HEIGHT, keys.be64(self.ed25519_v2_height))
        if self.revocation_hash_height is not None:
            kv.put(keys.REVOCATION_HASH_HEIGHT, keys.be64(self.revocation_hash_height))
        if self.lthash_v2_height is not None:
            kv.put(keys.LTHASH_V2_HEIGHT, keys.be64(self.lthash_v2_height))
        if self.manifest_ref_height is not None:
            kv.put(keys.MANIFEST_REF_HEIGHT, keys.be64(self.manifest_ref_height))
        for r in self.revocations:
            kv.put(keys.revocation(r.tag_hash), r.SerializeToString(deterministic=True))
            kv.put(keys.revocation_by_expiry(r.expires_at, r.tag_hash), b"")
        for admin in self.admins:
            kv.put(keys.admin(admin), b"1")
        for g in self.gateways:
            gid = put_gateway(kv, g.pubkey, g.endpoint, g.operator, height)
            if g.seal_pubkey:
                sealing.set_seal_key(kv, gid, g.seal_pubkey)
            if g.tls_msg() is not None:
                record = pb.GatewayRecord.FromString(kv.get(keys.gateway(gid)))
                set_gateway_tls(record, g.tls_msg())
                kv.put(keys.gateway(gid), record.SerializeToString(deterministic=True))
        for e in self.seal.epochs:
            kv.put(keys.data_key(e.epoch), e.SerializeToString(deterministic=True))
        for w in self.seal.wraps:
            kv.put(keys.wrap(w.epoch, w.gateway_id), w.SerializeToString(deterministic=True))
        if self.seal.current_epoch:
            kv.put(keys.SEAL_EPOCH, keys.be32(self.seal.current_epoch))
        if self.seal.rotation_due:
            kv.put(keys.SEAL_ROTATE, b"1")
        for d in self.devices:
            record = pb.DeviceRecord()
            record.CopyFrom(d)
            record.registered_height = height
            put_device(kv, record)
        for m in self.manifests:
            record = pb.ManifestRecord()
            record.CopyFrom(m)
            record.height = height
            kv.put(keys.manifest(m.gateway_id, m.slot), record.SerializeToString(deterministic=True))
        for v in validators:  # v0.38 sends pub_key, v1.x pub_key_bytes + pub_key_type
            key = ed25519_key_of(v)
            if key is not None and v.power > 0:
                record = pb.ValidatorRecord(pubkey=key, power=v.power)
                kv.put(keys.validator(key), record.SerializeToString(deterministic=True))

    @classmethod
    def export(cls, reader: Reader) -> Genesis:
        genesis = cls(admins=[k[len(keys.ADMIN):] for k, _ in reader.scan(keys.ADMIN)],
                      ed25519_v2_height=read_ed25519_v2_height(reader),
                      revocation_hash_height=read_revocation_hash_height(reader),
                      lthash_v2_height=read_lthash_v2_height(reader),
                      manifest_ref_height=sealing.read_manifest_ref_height(reader))
        if genesis.revocation_hash_height is None and any(True for _ in reader.scan(keys.REVOCATION)):
            genesis.revocation_hash_height = DEFAULT_REVOCATION_HASH_HEIGHT  # its tags leave as hashes
        for _, raw in reader.scan(keys.REVOCATION):
            r = pb.RevocationRecord.FromString(raw)
            genesis.revocations.append(pb.RevocationRecord(
                tag_hash=r.tag_hash or revocation_hash(r.tag), expires_at=r.expires_at))
        genesis.revocations.sort(key=lambda r: r.tag_hash)
        for _, raw in reader.scan(keys.GATEWAY):
            g = pb.GatewayRecord.FromString(raw)
            genesis.gateways.append(GatewaySpec(g.pubkey, g.endpoint, g.operator, seal_pubkey=g.seal_pubkey,
                                                tls_cert=g.tls_cert, tls_cert_signature=g.tls_cert_signature,
                                                peer_endpoint=g.peer_endpoint))
        for _, raw in reader.scan(keys.DEVICE):
            genesis.devices.append(pb.DeviceRecord.FromString(raw))
        for _, raw in reader.scan(keys.MANIFEST):
            genesis.manifests.append(pb.ManifestRecord.FromString(raw))
        genesis.seal = sealing.seal_state(reader)
        return genesis


def read_ed25519_v2_height(reader: Reader) -> int | None:
    """The v2 activation height recorded in the state (None: never)."""
    raw = reader.get(keys.ED25519_V2_HEIGHT)
    return keys.from_be64(raw) if raw else None
