"""Registry transactions: build and sign, decode and validate statelessly.

``validate_basic`` is the cheap stateless check shared by CheckTx,
ProcessProposal, FinalizeBlock and the gateway before it broadcasts; the
signature check is separate so callers can order the cheap checks first.
Bodies must be canonical protobuf encodings (re-encoding gives the same
bytes): no unknown fields, no alternative varint forms, so a signed body has
exactly one meaning.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import lru_cache

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf.message import DecodeError, Message
from h3.api import basic_int as h3i

from . import keys, sealing
from .codes import Code, TxError
from .ed25519_rule import VERIFIERS
from ..proto import registry_pb2 as pb

MAX_TX_BYTES = 64 * 1024  # a registry tx is a few hundred bytes; 64 KiB leaves room for batches
SIGN_DOMAIN = b"edgistry/tx/v1\0"
TLS_CERT_DOMAIN = b"edgistry/tls-cert/v1\0"  # a gateway's key signs its TLS certificate under this
MAX_TLS_CERT = 4096  # a self-signed P-256 certificate is about 600 bytes
MAX_ENDPOINT = 255
MAX_OPERATOR = 128
MAX_SERVICES = 16
MAX_METHODS = 32
MAX_LIVENESS_ENTRIES = 1000
MAX_K = 10_000
MAX_DUTY_CYCLE_S = 7 * 24 * 3600
LIVENESS_GRANULARITY_S = 300  # liveness is coarse on purpose: 5-minute buckets
MAX_BATCH_OPS = 256  # one gateway's window of operations; the encoding is bounded by MAX_TX_BYTES too
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
HOSTPORT_RE = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]{1,253}):([0-9]{1,5})$")

MESSAGE_NAMES = tuple(f.name for f in pb.TxBody.DESCRIPTOR.oneofs_by_name["msg"].fields)
# the kinds a Batch may carry: message full name -> BatchOp field name (abci_app/batch.py)
BATCH_OP_KINDS = {f.message_type.full_name: f.name for f in pb.BatchOp.DESCRIPTOR.oneofs_by_name["op"].fields}


@dataclass(slots=True)  # not frozen: frozen dataclass construction is slow on the hot path
class DecodedTx:
    """A transaction that passed validate_basic (not yet the signature check)."""

    raw_body: bytes
    signer: bytes
    signature: bytes
    chain_id: str
    nonce: int
    kind: str  # the TxBody.msg oneof field name, e.g. "register_device"
    msg: Message
    # batch.check_admissible's verdict, remembered (a pure function of the bytes and the
    # height's revocation form): -1 not yet passed, 0 passed where raw tags are taken,
    # 1 passed where only hashes are (which also passes where raw tags are taken)
    admitted: int = -1


def gateway_id_for(pubkey: bytes) -> str:
    """A gateway's id: derived from its key, so nobody picks someone else's."""
    return hashlib.sha256(pubkey).digest()[:16].hex()


def sign_tx(key: Ed25519PrivateKey, chain_id: str, nonce: int, msg: Message) -> bytes:
    """Encode and sign one transaction carrying ``msg`` (a registry_pb2 message)."""
    body = pb.TxBody(chain_id=chain_id, nonce=nonce)
    field = _field_for(type(msg))
    getattr(body, field).CopyFrom(msg)
    raw = body.SerializeToString(deterministic=True)
    signer = key.public_key().public_bytes_raw()
    tx = pb.SignedTx(body=raw, signer=signer, signature=key.sign(SIGN_DOMAIN + raw))
    return tx.SerializeToString(deterministic=True)


@lru_cache(maxsize=None)
def _field_for(msg_type: type) -> str:
    for f in pb.TxBody.DESCRIPTOR.oneofs_by_name["msg"].fields:
        if f.message_type.full_name == msg_type.DESCRIPTOR.full_name:
            return f.name
    raise TypeError(f"{msg_type.__name__} is not a registry transaction message")


def _parse_canonical(cls: type[Message], raw: bytes, what: str) -> Message:
    msg = cls()
    try:
        msg.ParseFromString(raw)
    except (DecodeError, UnicodeDecodeError, ValueError) as exc:
        # a fixed text: the library's own (and which exception it raises, e.g. for a string
        # field that is not UTF-8) differs between protobuf backends and versions, and a
        # result's log must be the same on every node
        raise TxError(Code.MALFORMED_TX, f"{what} does not decode") from exc
    msg.DiscardUnknownFields()  # recursive; re-encoding must then give the same bytes
    if msg.SerializeToString(deterministic=True) != raw:
        raise TxError(Code.MALFORMED_TX, f"{what} is not canonically encoded (unknown fields?)")
    return msg


# The tail of every well-formed SignedTx: field 2 (signer, 32 bytes), field 3 (signature, 64).
_SIGNER_TAG, _SIGNATURE_TAG = b"\x12\x20", b"\x1a\x40"
_TAIL = 2 + 32 + 2 + 64


def _split_signed(raw: bytes) -> tuple[bytes, bytes, bytes] | None:
    """(body, signer, signature) when ``raw`` is exactly the canonical encoding of a SignedTx
    with a non-empty body, a 32-byte signer and a 64-byte signature: the one form the full
    decode accepts, recognised without building a message. None for anything else, which
    then takes the full decode and gets its verdict and its error."""
    n = len(raw)
    if n < 1 + 2 + _TAIL or raw[0] != 0x0A:
        return None
    # field 1's length is a minimal varint of 1 to 3 bytes (a body is below MAX_TX_BYTES)
    for width, low, high in ((1, 1, 0x7F), (2, 0x80, 0x3FFF), (3, 0x4000, 0x1FFFFF)):
        size = n - 1 - width - _TAIL
        if low <= size <= high:
            break
    else:
        return None
    if width == 1:
        minimal = raw[1] == size
    elif width == 2:
        minimal = raw[1] == size & 0x7F | 0x80 and raw[2] == size >> 7
    else:
        minimal = raw[1] == size & 0x7F | 0x80 and raw[2] == (size >> 7) & 0x7F | 0x80 and raw[3] == size >> 14
    if not minimal:
        return None
    end = 1 + width + size
    if raw[end : end + 2] != _SIGNER_TAG or raw[end + 34 : end + 36] != _SIGNATURE_TAG:
        return None
    return raw[1 + width : end], raw[end + 2 : end + 34], raw[end + 36 :]


def decode_tx(raw: bytes) -> DecodedTx:
    """Decode and validate a transaction statelessly (validate_basic)."""
    if len(raw) > MAX_TX_BYTES:
        raise TxError(Code.TX_TOO_LARGE, f"tx of {len(raw)} bytes exceeds {MAX_TX_BYTES}")
    split = _split_signed(raw)
    if split is not None:
        raw_body, signer, signature = split
    else:
        tx = _parse_canonical(pb.SignedTx, raw, "SignedTx")
        if len(tx.signer) != 32:
            raise TxError(Code.MALFORMED_TX, "signer must be a 32-byte Ed25519 public key")
        if len(tx.signature) != 64:
            raise TxError(Code.MALFORMED_TX, "signature must be 64 bytes")
        raw_body, signer, signature = tx.body, tx.signer, tx.signature
    body = _parse_canonical(pb.TxBody, raw_body, "TxBody")
    kind = body.WhichOneof("msg")
    if kind is None:
        raise TxError(Code.NO_MESSAGE, "the tx carries no message")
    if not body.chain_id:
        raise TxError(Code.INVALID_FIELD, "chain_id is empty")
    if body.nonce == 0:
        raise TxError(Code.INVALID_FIELD, "nonce must be positive")
    msg = getattr(body, kind)
    VALIDATORS[kind](msg)
    return DecodedTx(raw_body, signer, signature, body.chain_id, body.nonce, kind, msg)


class DecodeCache:
    """Recently decoded txs by their exact bytes, so one tx is decoded once per node.

    CometBFT hands the same bytes to CheckTx, PrepareProposal, ProcessProposal
    and FinalizeBlock; decoding and validate_basic are pure functions of the
    bytes, so reusing the result cannot change any outcome. Failures are not
    cached (they are cheap to reproduce and attacker-controlled). Bounded.
    """

    def __init__(self, capacity: int = 20_000) -> None:
        self._items: dict[bytes, DecodedTx] = {}
        self.capacity = capacity

    def decode(self, raw: bytes) -> DecodedTx:
        tx = self._items.get(raw)
        if tx is None:
            tx = decode_tx(raw)
            self._items[raw] = tx
            if len(self._items) > self.capacity:
                del self._items[next(iter(self._items))]
        return tx

    def decode_last(self, raw: bytes) -> DecodedTx:
        """Decode for the last time (FinalizeBlock): use and drop a cached entry, cache nothing."""
        tx = self._items.pop(raw, None)
        return tx if tx is not None else decode_tx(raw)


class VerifiedCache:
    """Txs (exact bytes) whose signature this node has already verified, and under which rule.

    CheckTx (and the proposal methods) verify a tx's signature and remember its
    bytes with the acceptance rule that passed it (``ed25519_rule``);
    FinalizeBlock then skips the second Ed25519 verification of the very same
    bytes if, and only if, the block's rule is that rule. The verdict depends
    only on the bytes and the rule, so results stay deterministic: a tx passed
    by v1 before the activation height and executed after it is verified again
    under v2, exactly as on a node that never saw it. Bounded (oldest forgotten
    first).
    """

    def __init__(self, capacity: int = 50_000) -> None:
        self._seen: dict[bytes, int] = {}
        self.capacity = capacity

    def add(self, raw: bytes, rule: int) -> None:
        seen = self._seen
        seen[raw] = rule
        if len(seen) > self.capacity:
            del seen[next(iter(seen))]

    def has(self, raw: bytes, rule: int) -> bool:
        """True if ``raw`` was verified under ``rule`` (and keep it)."""
        return self._seen.get(raw) == rule

    def take(self, raw: bytes, rule: int) -> bool:
        """True if ``raw`` was verified under ``rule``; forget it either way."""
        return self._seen.pop(raw, None) == rule

    def __len__(self) -> int:
        return len(self._seen)


def verify_signature(tx: DecodedTx, rule: int) -> None:
    """Raise BAD_SIGNATURE unless ``tx``'s signature passes acceptance rule ``rule``."""
    if not VERIFIERS[rule](tx.signer, SIGN_DOMAIN + tx.raw_body, tx.signature):
        raise TxError(Code.BAD_SIGNATURE, "signature does not verify for the signer key")


# ---- per-message stateless checks ----


def _bad(log: str) -> TxError:
    return TxError(Code.INVALID_FIELD, log)


def _check_endpoint(endpoint: str) -> None:
    m = HOSTPORT_RE.match(endpoint)
    if len(endpoint) > MAX_ENDPOINT or not m or not 0 < int(m.group(2)) < 65536:
        raise _bad(f"endpoint {endpoint[:64]!a} is not HOST:PORT")


def _check_operator(operator: str) -> None:
    if len(operator) > MAX_OPERATOR:
        raise _bad(f"operator longer than {MAX_OPERATOR} characters")


def _check_pubkey(pubkey: bytes, what: str = "pubkey") -> None:
    if len(pubkey) != 32:
        raise _bad(f"{what} must be 32 bytes")


def _check_pseudonym(pseudonym: bytes) -> None:
    if len(pseudonym) != keys.PSEUDONYM_LEN:
        raise _bad(f"pseudonym must be {keys.PSEUDONYM_LEN} bytes")


@lru_cache(maxsize=8192)
def _name_ok(name: str) -> bool:
    return NAME_RE.match(name) is not None  # names repeat across devices: cache the verdict


@lru_cache(maxsize=1024)  # bounded: descriptors are attacker-chosen (at most a few KiB each)
def _service_verdict(raw: bytes) -> tuple[str, str | None]:
    """(type, problem or None) of one serialized ServiceDescriptor. Devices of one kind
    repeat the same descriptors, so the verdict is cached by the descriptor's bytes
    (a pure function of them: the cache cannot change an outcome)."""
    svc = pb.ServiceDescriptor.FromString(raw)
    kind = svc.type
    names = [m.name for m in svc.methods]
    if not _name_ok(kind):
        return kind, f"service type {kind[:64]!a} is malformed"
    if not 0 < len(names) <= MAX_METHODS or len(set(names)) != len(names):
        return kind, f"service {kind} needs 1..{MAX_METHODS} distinct methods"
    for name in names:
        if not _name_ok(name):
            return kind, f"service {kind!a} has a malformed method name {name[:64]!a}"
    return kind, None


def check_device_plaintext(msg: Message) -> None:
    """The fields a gateway seals (services or a manifest's catalog slot, cell, policy,
    duty cycle), checked in clear.

    The chain sees them only sealed (sealing.check_sealed_device), so the
    sealing gateway runs this before it seals: the same rules as ever, applied
    where the plaintext is. A device that names a catalog slot (``manifest``,
    from manifest_ref_height) carries no services: its manifest's are checked
    when the manifest is sealed (:func:`check_services`)."""
    if getattr(msg, "manifest", 0):
        if msg.services:
            raise _bad("a device that names its manifest's catalog slot carries no services itself")
    else:
        check_services(msg.services)
    check_placement(msg)


def check_services(services) -> None:
    """A device's (or a catalog slot's) service list: 1..MAX_SERVICES, each well formed, no type twice."""
    if not 0 < len(services) <= MAX_SERVICES:
        raise _bad(f"a device offers 1..{MAX_SERVICES} services")
    verdicts = [_service_verdict(svc.SerializeToString(deterministic=True)) for svc in services]
    if len({kind for kind, _ in verdicts}) != len(verdicts):
        raise _bad("a service type is repeated")
    for _, problem in verdicts:
        if problem is not None:
            raise _bad(problem)


def check_placement(msg: Message) -> None:
    """Policy, cell and duty cycle of a device's fields."""
    policy = msg.policy
    if not msg.HasField("policy") or not 0 <= policy.resolution <= 15 or not 1 <= policy.k <= MAX_K:
        raise _bad(f"policy needs resolution 0..15 and k 1..{MAX_K}")
    cell = msg.cell
    if not h3i.is_valid_cell(cell):
        raise _bad(f"cell {cell:x} is not a valid H3 cell")
    if keys.h3_resolution(cell) != policy.resolution:
        raise _bad("cell resolution differs from the policy resolution")
    if msg.duty_cycle_s > MAX_DUTY_CYCLE_S:
        raise _bad(f"duty cycle above {MAX_DUTY_CYCLE_S} s")


def _check_liveness(msg: pb.ReportLiveness) -> None:
    if not 0 < len(msg.entries) <= MAX_LIVENESS_ENTRIES:
        raise _bad(f"a liveness report holds 1..{MAX_LIVENESS_ENTRIES} entries")
    for entry in msg.entries:
        _check_pseudonym(entry.pseudonym)
        if entry.last_seen <= 0 or entry.last_seen % LIVENESS_GRANULARITY_S:
            raise _bad(f"last_seen must be a positive multiple of {LIVENESS_GRANULARITY_S} s")


def _check_revoke(msg: pb.RevokeToken) -> None:
    if msg.tag_hash:
        return  # checked with the block height (revocation_rule, in state.execute_tx)
    if len(msg.tag) != 32:
        raise _bad("a revoked tag is 32 bytes")
    if msg.expires_at <= 0:
        raise _bad("a revocation needs a positive expiry")


def _check_validator(msg: pb.SetValidator) -> None:
    _check_pubkey(msg.pubkey)
    if msg.power < 0:
        raise _bad("validator power cannot be negative")


def _check_register_gateway(msg: pb.RegisterGateway) -> None:
    _check_pubkey(msg.pubkey)
    _check_endpoint(msg.endpoint)
    _check_operator(msg.operator)


def _check_update_gateway(msg: pb.UpdateGateway) -> None:
    _check_endpoint(msg.endpoint)
    _check_operator(msg.operator)


def tls_cert_signed_bytes(cert_der: bytes) -> bytes:
    """What a gateway's Ed25519 key signs to bind its TLS certificate to itself."""
    return TLS_CERT_DOMAIN + cert_der


def der_sequence_ok(der: bytes) -> bool:
    """True when ``der`` is exactly one DER SEQUENCE (tag, definite length, no trailing bytes).

    The chain checks only this shape, with its own code: parsing X.509 with a
    library would let two validators on different library versions disagree."""
    if len(der) < 2 or der[0] != 0x30:
        return False
    first = der[1]
    if first < 0x80:
        return len(der) == 2 + first
    n = first & 0x7F
    if not 1 <= n <= 4 or len(der) < 2 + n or der[2] == 0:
        return False
    length = int.from_bytes(der[2 : 2 + n], "big")
    return length >= 0x80 and len(der) == 2 + n + length


def _check_set_gateway_tls(msg: pb.SetGatewayTls) -> None:
    if msg.cert:
        if len(msg.cert) > MAX_TLS_CERT or not der_sequence_ok(msg.cert):
            raise _bad(f"cert must be one DER certificate of at most {MAX_TLS_CERT} bytes")
        if len(msg.cert_signature) != 64:
            raise _bad("cert_signature must be a 64-byte Ed25519 signature")
    elif msg.cert_signature:
        raise _bad("a cert_signature without a cert")
    _check_endpoint(msg.peer_endpoint)


def _check_remove_gateway(msg: pb.RemoveGateway) -> None:
    if len(msg.gateway_id) != keys.GATEWAY_ID_LEN:
        raise _bad("gateway_id must be 32 hex characters")


def _check_batch(msg: pb.Batch) -> None:
    """Only the batch's bounds: each operation is validated alone when it runs
    (abci_app/batch.py), so one malformed operation does not fail the others."""
    if not 0 < len(msg.ops) <= MAX_BATCH_OPS:
        raise TxError(Code.BATCH_TOO_LARGE if msg.ops else Code.INVALID_FIELD,
                      f"a batch holds 1..{MAX_BATCH_OPS} operations, not {len(msg.ops)}")


VALIDATORS = {
    "register_gateway": _check_register_gateway,
    "update_gateway": _check_update_gateway,
    "remove_gateway": _check_remove_gateway,
    "register_device": sealing.check_sealed_device,
    "update_device": sealing.check_sealed_device,
    "unregister_device": lambda msg: _check_pseudonym(msg.pseudonym),
    "revoke_token": _check_revoke,
    "report_liveness": _check_liveness,
    "set_validator": _check_validator,
    "set_seal_key": sealing.check_set_seal_key,
    "put_data_key": sealing.check_put_data_key,
    "set_gateway_tls": _check_set_gateway_tls,
    "batch": _check_batch,
    "put_manifest": sealing.check_put_manifest,
}
assert set(VALIDATORS) == set(MESSAGE_NAMES), "every tx message needs a stateless check"
