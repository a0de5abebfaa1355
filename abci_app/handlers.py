"""One ``apply_<tx>`` per transaction type, registered in ``HANDLERS``.

Handlers are pure: they read and write an :class:`Overlay`, take height and
time from the block header (never the wall clock) and raise ``TxError`` to
reject. Authentication, nonces and the per-tx rollback happen in
``state.execute_tx`` before and around them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from google.protobuf.message import Message

from . import keys, sealing
from .codes import Code, TxError
from .overlay import Overlay
from .txs import gateway_id_for
from ..proto import abci_pb2 as abci
from ..proto import registry_pb2 as pb

LIVENESS_DRIFT_S = 600  # a gateway clock may run this far ahead of block time


@dataclass(slots=True)
class TxContext:
    kv: Overlay
    height: int
    time_s: int  # block time, unix seconds
    signer: bytes
    is_admin: bool
    gateway_id: str | None  # set when the signer is a registered gateway


Event = tuple[str, tuple[tuple[str, str], ...]]  # (type, ((key, value), ...)): built into protobuf once, in place


@dataclass
class Outcome:
    data: bytes = b""
    events: list[Event] = field(default_factory=list)
    validator_updates: list[abci.ValidatorUpdate] = field(default_factory=list)


# Event kinds whose attributes CometBFT's tx indexer makes searchable (``tx_search
# "token_revoked.tag_hash='...'"``): the rare ones an operator audits. Device
# lifecycle, liveness and batch bookkeeping are the registry's bulk (every
# operation of every batch); gateways read them from block results height by
# height and never search them, while indexing costs every node one key-value
# write per attribute. They stay in the block results, just unindexed; the flag
# is no part of consensus (CometBFT's results hash covers code, data and gas).
SEARCHABLE_EVENTS = frozenset({
    "gateway_registered", "gateway_updated", "gateway_tls_set", "gateway_removed",
    "token_revoked", "seal_key_set", "data_key", "validator_set",
})


def event(kind: str, **attrs: str) -> Event:
    """An event; attributes in keyword order (callers keep it fixed). Indexed
    when its kind is in :data:`SEARCHABLE_EVENTS`."""
    return kind, tuple(attrs.items())


def _ser(msg: Message) -> bytes:
    return msg.SerializeToString(deterministic=True)


def _require_admin(ctx: TxContext) -> None:
    if not ctx.is_admin:
        raise TxError(Code.UNAUTHORIZED, "only a genesis admin may send this")


def _require_gateway(ctx: TxContext) -> str:
    if ctx.gateway_id is None:
        raise TxError(Code.UNAUTHORIZED, "only a registered gateway may send this")
    return ctx.gateway_id


def load_device(kv: Overlay, pseudonym: bytes) -> pb.DeviceRecord:
    raw = kv.get(keys.device(pseudonym))
    if raw is None:
        raise TxError(Code.DEVICE_NOT_FOUND, f"no device {pseudonym.hex()}")
    record = pb.DeviceRecord()
    record.ParseFromString(raw)
    return record


# ---- indexes: derived from primary records ----


def index_entries(key: bytes, value: bytes) -> list[tuple[bytes, bytes]]:
    """The index entries the handlers below keep for the primary record ``key`` ->
    ``value`` (none for most). A restored snapshot's indexes are rebuilt with this
    rather than taken from the peer; tests hold it to what the handlers write.
    Raises DecodeError on a record that does not parse."""
    if key.startswith(keys.GATEWAY):
        return [(keys.gateway_by_key(pb.GatewayRecord.FromString(value).pubkey), key[len(keys.GATEWAY):])]
    if key.startswith(keys.DEVICE):
        record = pb.DeviceRecord.FromString(value)
        return [(keys.device_by_gateway(record.gateway_id, key[len(keys.DEVICE):]), b"")]
    if key.startswith(keys.REVOCATION):
        record = pb.RevocationRecord.FromString(value)
        return [(keys.revocation_by_expiry(record.expires_at, key[len(keys.REVOCATION):]), b"")]
    return []


# ---- gateways ----


def apply_register_gateway(ctx: TxContext, msg: pb.RegisterGateway) -> Outcome:
    _require_admin(ctx)
    gid = gateway_id_for(msg.pubkey)
    if ctx.kv.get(keys.gateway(gid)) is not None:
        raise TxError(Code.GATEWAY_EXISTS, f"gateway {gid} is already registered")
    put_gateway(ctx.kv, msg.pubkey, msg.endpoint, msg.operator, ctx.height)
    return Outcome(gid.encode(), [event("gateway_registered", gateway_id=gid)])


def put_gateway(kv: Overlay, pubkey: bytes, endpoint: str, operator: str, height: int) -> str:
    gid = gateway_id_for(pubkey)
    record = pb.GatewayRecord(
        id=gid, pubkey=pubkey, endpoint=endpoint, operator=operator, registered_height=height
    )
    kv.put(keys.gateway(gid), _ser(record))
    kv.put(keys.gateway_by_key(pubkey), gid.encode())
    return gid


def apply_update_gateway(ctx: TxContext, msg: pb.UpdateGateway) -> Outcome:
    gid = _require_gateway(ctx)
    record = pb.GatewayRecord()
    record.ParseFromString(ctx.kv.get(keys.gateway(gid)) or b"")
    record.endpoint, record.operator = msg.endpoint, msg.operator
    ctx.kv.put(keys.gateway(gid), _ser(record))
    return Outcome(gid.encode(), [event("gateway_updated", gateway_id=gid)])


def apply_set_gateway_tls(ctx: TxContext, msg: pb.SetGatewayTls) -> Outcome:
    """The gateway's own TLS pin and peer endpoint. The chain does not verify
    ``cert_signature`` (clients and peers do): the tx signature already proves the
    gateway sent it, and a second Ed25519 verification here would be one more place
    where validators on different libraries could disagree; a gateway publishing a
    bad signature only makes itself unreachable."""
    gid = _require_gateway(ctx)
    record = pb.GatewayRecord()
    record.ParseFromString(ctx.kv.get(keys.gateway(gid)) or b"")
    if set_gateway_tls(record, msg):
        ctx.kv.put(keys.gateway(gid), _ser(record))
        return Outcome(gid.encode(), [event("gateway_tls_set", gateway_id=gid)])
    return Outcome(gid.encode())


def set_gateway_tls(record: pb.GatewayRecord, msg: pb.SetGatewayTls) -> bool:
    """Copy the TLS fields of ``msg`` into ``record``; False when nothing changes."""
    new = (msg.cert, msg.cert_signature, msg.peer_endpoint)
    if (record.tls_cert, record.tls_cert_signature, record.peer_endpoint) == new:
        return False
    record.tls_cert, record.tls_cert_signature, record.peer_endpoint = new
    return True


def apply_remove_gateway(ctx: TxContext, msg: pb.RemoveGateway) -> Outcome:
    _require_admin(ctx)
    raw = ctx.kv.get(keys.gateway(msg.gateway_id))
    if raw is None:
        raise TxError(Code.GATEWAY_NOT_FOUND, f"no gateway {msg.gateway_id}")
    if next(ctx.kv.scan(keys.device_by_gateway(msg.gateway_id)), None) is not None:
        raise TxError(Code.GATEWAY_HAS_DEVICES, "unregister the gateway's devices first")
    record = pb.GatewayRecord()
    record.ParseFromString(raw)
    ctx.kv.delete(keys.gateway(msg.gateway_id))
    ctx.kv.delete(keys.gateway_by_key(record.pubkey))
    sealing.on_gateway_removed(ctx.kv, msg.gateway_id)
    sealing.drop_manifests(ctx.kv, msg.gateway_id)
    return Outcome(msg.gateway_id.encode(), [event("gateway_removed", gateway_id=msg.gateway_id)])


# ---- devices ----


def put_device(kv: Overlay, record: pb.DeviceRecord) -> None:
    kv.put(keys.device(record.pseudonym), _ser(record))
    kv.put(keys.device_by_gateway(record.gateway_id, record.pseudonym), b"")


def drop_device(kv: Overlay, record: pb.DeviceRecord) -> None:
    kv.delete(keys.device(record.pseudonym))
    kv.delete(keys.device_by_gateway(record.gateway_id, record.pseudonym))


def apply_register_device(ctx: TxContext, msg: pb.RegisterDevice) -> Outcome:
    gid = _require_gateway(ctx)
    raw = ctx.kv.get(keys.device(msg.pseudonym))
    if raw is not None:
        owner = pb.DeviceRecord.FromString(raw).gateway_id
        where = "this gateway (use update)" if owner == gid else f"gateway {owner}"
        raise TxError(Code.DEVICE_EXISTS, f"device {msg.pseudonym.hex()} is already registered by {where}")
    sealing.require_current_epoch(ctx.kv, msg.sealed)
    record = pb.DeviceRecord(pseudonym=msg.pseudonym, gateway_id=gid, registered_height=ctx.height)
    record.sealed.CopyFrom(msg.sealed)  # cheaper than passing it to the constructor
    put_device(ctx.kv, record)
    return Outcome(msg.pseudonym, [event("device_registered", pseudonym=msg.pseudonym.hex(), gateway_id=gid)])


def _owned(ctx: TxContext, pseudonym: bytes, allow_admin: bool = False) -> pb.DeviceRecord:
    record = load_device(ctx.kv, pseudonym)
    if ctx.gateway_id == record.gateway_id or (allow_admin and ctx.is_admin):
        return record
    raise TxError(Code.NOT_DEVICE_OWNER, f"device {pseudonym.hex()} belongs to gateway {record.gateway_id}")


def apply_update_device(ctx: TxContext, msg: pb.UpdateDevice) -> Outcome:
    _require_gateway(ctx)
    old = _owned(ctx, msg.pseudonym)
    sealing.require_current_epoch(ctx.kv, msg.sealed)
    new = pb.DeviceRecord()
    new.CopyFrom(old)
    new.sealed.CopyFrom(msg.sealed)
    put_device(ctx.kv, new)
    return Outcome(msg.pseudonym, [event("device_updated", pseudonym=msg.pseudonym.hex())])


def apply_unregister_device(ctx: TxContext, msg: pb.UnregisterDevice) -> Outcome:
    record = _owned(ctx, msg.pseudonym, allow_admin=True)
    drop_device(ctx.kv, record)
    return Outcome(msg.pseudonym, [event("device_unregistered", pseudonym=msg.pseudonym.hex())])


def apply_report_liveness(ctx: TxContext, msg: pb.ReportLiveness) -> Outcome:
    _require_gateway(ctx)
    seen = []
    for entry in msg.entries:
        if entry.last_seen > ctx.time_s + LIVENESS_DRIFT_S:
            raise TxError(Code.FUTURE_LIVENESS, f"last_seen {entry.last_seen} is ahead of block time {ctx.time_s}")
        record = _owned(ctx, entry.pseudonym)
        if entry.last_seen > record.last_seen:  # liveness only moves forward
            record.last_seen = entry.last_seen
            ctx.kv.put(keys.device(record.pseudonym), _ser(record))
            seen.append(event("device_seen", pseudonym=record.pseudonym.hex()))  # replicas re-read just these
    return Outcome(str(len(seen)).encode(), [event("liveness", updated=str(len(seen))), *seen])


# ---- revocations ----


def apply_revoke_token(ctx: TxContext, msg: pb.RevokeToken) -> Outcome:
    """Record a revocation under its hash (or, below the activation height of
    revocation_rule, its tag: the form was checked before authentication)."""
    if ctx.gateway_id is None and not ctx.is_admin:
        raise TxError(Code.UNAUTHORIZED, "only gateways and admins revoke tokens")
    if msg.expires_at <= ctx.time_s:
        raise TxError(Code.ALREADY_EXPIRED, "the token has already expired; nothing to revoke")
    key = msg.tag_hash or msg.tag
    raw = ctx.kv.get(keys.revocation(key))
    if raw is not None:
        old = pb.RevocationRecord.FromString(raw)
        if old.expires_at >= msg.expires_at:
            return Outcome(key)
        ctx.kv.delete(keys.revocation_by_expiry(old.expires_at, key))
    record = pb.RevocationRecord(tag=msg.tag, tag_hash=msg.tag_hash, expires_at=msg.expires_at)
    ctx.kv.put(keys.revocation(key), _ser(record))
    ctx.kv.put(keys.revocation_by_expiry(msg.expires_at, key), b"")
    # gateways follow this event block by block (gateway/discovery/replica.py)
    name = "tag_hash" if msg.tag_hash else "tag"
    return Outcome(key, [event("token_revoked", **{name: key.hex()}, expires_at=str(msg.expires_at))])


def prune_revocations(kv: Overlay, time_s: int) -> int:
    """Drop revocations whose tokens expired before ``time_s``; return how many."""
    end = keys.revocation_by_expiry(time_s)
    expired = []
    for key, _ in kv.scan(keys.REVOCATION_BY_EXPIRY):
        if key >= end:
            break
        expired.append(key)
    for key in expired:
        kv.delete(key)
        kv.delete(keys.revocation(key[-32:]))
    return len(expired)


# ---- the sealed registry's keys (abci_app/sealing.py) ----


def apply_set_seal_key(ctx: TxContext, msg: pb.SetSealKey) -> Outcome:
    gid = _require_gateway(ctx)
    changed = sealing.set_seal_key(ctx.kv, gid, msg.x25519_pubkey)
    return Outcome(gid.encode(), [event("seal_key_set", gateway_id=gid)] if changed else [])


def apply_put_manifest(ctx: TxContext, msg: pb.PutManifest) -> Outcome:
    gid = _require_gateway(ctx)
    sealing.put_manifest(ctx.kv, ctx.height, gid, msg)
    return Outcome(b"", [event("manifest_put", gateway_id=gid, slot=str(msg.slot))])


def apply_put_data_key(ctx: TxContext, msg: pb.PutDataKey) -> Outcome:
    if ctx.gateway_id is None and not ctx.is_admin:
        raise TxError(Code.UNAUTHORIZED, "only gateways and admins handle data keys")
    action = sealing.put_data_key(ctx.kv, msg, ctx.height, ctx.gateway_id, ctx.is_admin)
    return Outcome(str(msg.epoch).encode(), [event("data_key", epoch=str(msg.epoch), action=action,
                                                   wraps=str(len(msg.wraps)))])


# ---- validators ----


ED25519 = "ed25519"


def validator_update(pubkey: bytes, power: int) -> abci.ValidatorUpdate:
    """A validator update both CometBFT lines read: v0.38 takes pub_key (field 1) and
    skips fields 3-4; v1.x takes pub_key_bytes + pub_key_type and skips the reserved 1."""
    return abci.ValidatorUpdate(pub_key=abci.PublicKey(ed25519=pubkey), power=power,
                                pub_key_bytes=pubkey, pub_key_type=ED25519)


def ed25519_key_of(update: abci.ValidatorUpdate) -> bytes | None:
    """The Ed25519 key of a validator update in either shape (None: another key type)."""
    if update.pub_key.WhichOneof("sum") == ED25519:
        return update.pub_key.ed25519
    if update.pub_key_type == ED25519 and update.pub_key_bytes:
        return update.pub_key_bytes
    return None


def apply_set_validator(ctx: TxContext, msg: pb.SetValidator) -> Outcome:
    _require_admin(ctx)
    key = keys.validator(msg.pubkey)
    if msg.power == 0:
        if ctx.kv.get(key) is None:
            raise TxError(Code.INVALID_FIELD, "no such validator to remove")
        others = [k for k, _ in ctx.kv.scan(keys.VALIDATOR) if k != key]
        if not others:
            raise TxError(Code.LAST_VALIDATOR, "cannot remove the last validator")
        ctx.kv.delete(key)
    else:
        ctx.kv.put(key, _ser(pb.ValidatorRecord(pubkey=msg.pubkey, power=msg.power)))
    update = validator_update(msg.pubkey, msg.power)
    return Outcome(b"", [event("validator_set", pubkey=msg.pubkey.hex(), power=str(msg.power))], [update])


Handler = Callable[[TxContext, Message], Outcome]
HANDLERS: dict[str, Handler] = {
    "register_gateway": apply_register_gateway,
    "update_gateway": apply_update_gateway,
    "remove_gateway": apply_remove_gateway,
    "register_device": apply_register_device,
    "update_device": apply_update_device,
    "unregister_device": apply_unregister_device,
    "revoke_token": apply_revoke_token,
    "report_liveness": apply_report_liveness,
    "set_validator": apply_set_validator,
    "set_seal_key": apply_set_seal_key,
    "put_data_key": apply_put_data_key,
    "set_gateway_tls": apply_set_gateway_tls,
    "put_manifest": apply_put_manifest,
}
