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

from . import keys
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


def event(kind: str, **attrs: str) -> Event:
    """An indexed event; attributes in keyword order (callers keep it fixed)."""
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
    return Outcome(msg.gateway_id.encode(), [event("gateway_removed", gateway_id=msg.gateway_id)])


# ---- devices ----


def put_device(kv: Overlay, record: pb.DeviceRecord) -> None:
    pseudonym = record.pseudonym
    kv.put(keys.device(pseudonym), _ser(record))
    for key in keys.device_by_cell_keys([svc.type for svc in record.services], record.cell, pseudonym):
        kv.put(key, b"")
    kv.put(keys.device_by_gateway(record.gateway_id, pseudonym), b"")


def drop_device(kv: Overlay, record: pb.DeviceRecord) -> None:
    kv.delete(keys.device(record.pseudonym))
    for svc in record.services:
        kv.delete(keys.device_by_cell(svc.type, record.cell, record.pseudonym))
    kv.delete(keys.device_by_gateway(record.gateway_id, record.pseudonym))


def apply_register_device(ctx: TxContext, msg: pb.RegisterDevice) -> Outcome:
    gid = _require_gateway(ctx)
    raw = ctx.kv.get(keys.device(msg.pseudonym))
    if raw is not None:
        owner = pb.DeviceRecord.FromString(raw).gateway_id
        where = "this gateway (use update)" if owner == gid else f"gateway {owner}"
        raise TxError(Code.DEVICE_EXISTS, f"device {msg.pseudonym.hex()} is already registered by {where}")
    record = pb.DeviceRecord(
        pseudonym=msg.pseudonym,
        gateway_id=gid,
        services=msg.services,
        cell=msg.cell,
        policy=msg.policy,
        duty_cycle_s=msg.duty_cycle_s,
        registered_height=ctx.height,
    )
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
    drop_device(ctx.kv, old)
    new = pb.DeviceRecord()
    new.CopyFrom(old)
    del new.services[:]
    new.services.extend(msg.services)
    new.cell, new.duty_cycle_s = msg.cell, msg.duty_cycle_s
    new.policy.CopyFrom(msg.policy)
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
}
