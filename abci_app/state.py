"""Executing one transaction against a staged view of the registry.

``execute_tx`` is the whole per-tx pipeline shared by CheckTx and
FinalizeBlock: stateless validation, signature, chain id, signer role, nonce,
then the handler in a child overlay that is merged only on success. A tx that
authenticates consumes its nonce even if the handler rejects it, so an old
signed intent can never be replayed later when it would succeed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from . import keys, sealing
from .codes import CODESPACE, Code, TxError
from .batch import apply_batch, check_admissible
from .handlers import HANDLERS, SEARCHABLE_EVENTS, Outcome, TxContext
from .overlay import Overlay
from .revocation_rule import check_form, read_revocation_hash_height
from .txs import DecodedTx, VerifiedCache, decode_tx, verify_signature
from ..proto import abci_pb2 as abci

TX_HANDLERS = {**HANDLERS, "batch": apply_batch}  # a batch runs the same handlers, one per operation


@dataclass(slots=True)
class TxResult:
    code: Code
    log: str = ""
    outcome: Outcome = field(default_factory=Outcome)
    tx: DecodedTx | None = None  # set when the tx succeeded

    def fill(self, out: abci.ExecTxResult | abci.ResponseCheckTx) -> None:
        """Write this result into a (freshly added) protobuf result in place."""
        if self.code:  # a fresh result's fields are their defaults: set only what differs
            out.code, out.log, out.codespace = int(self.code), self.log, CODESPACE
        if self.outcome.data:
            out.data = self.outcome.data
        for kind, attrs in self.outcome.events:
            add = out.events.add(type=kind).attributes.add
            if kind in SEARCHABLE_EVENTS:
                for key, value in attrs:
                    add(key=key, value=value, index=True)
            else:
                for key, value in attrs:
                    add(key=key, value=value)

    def to_check(self) -> abci.ResponseCheckTx:
        """The CheckTx answer: code, data and, on failure, log. No events: CometBFT
        (v0.38 and v1.x) neither indexes nor returns CheckTx events; FinalizeBlock's
        results carry them."""
        if self.code:
            return abci.ResponseCheckTx(code=int(self.code), data=self.outcome.data, log=self.log,
                                        codespace=CODESPACE)
        return abci.ResponseCheckTx(code=0, data=self.outcome.data)


def authenticate(kv: Overlay, tx: DecodedTx, chain_id: str, rule: int | None) -> tuple[bool, str | None]:
    """Check chain, signer, signature (under acceptance rule ``rule``; None: not
    checked) and nonce; return (is_admin, gateway_id)."""
    if tx.chain_id != chain_id:
        raise TxError(Code.WRONG_CHAIN, f"tx is for chain {tx.chain_id!a}, this is {chain_id!a}")
    is_admin = kv.get(keys.admin(tx.signer)) is not None
    gid = kv.get(keys.gateway_by_key(tx.signer))
    if not is_admin and gid is None:
        raise TxError(Code.UNKNOWN_SIGNER, f"signer {tx.signer.hex()[:16]}... is neither an admin nor a gateway")
    if rule is not None:
        verify_signature(tx, rule)
    last = kv.get(keys.nonce(tx.signer))
    last_nonce = keys.from_be64(last) if last else 0
    if tx.nonce == last_nonce:
        raise TxError(Code.NONCE_REUSED, f"nonce {tx.nonce} was already used")
    if tx.nonce < last_nonce:
        raise TxError(Code.STALE_NONCE, f"nonce {tx.nonce} is below the last nonce {last_nonce}")
    return is_admin, gid.decode() if gid else None


def execute_tx(kv: Overlay, raw: bytes, chain_id: str, height: int, time_s: int, rule: int | None,
               verified: VerifiedCache | None = None, remember: bool = False,
               decode: Callable[[bytes], DecodedTx] = decode_tx, batch_ops: bool = True) -> TxResult:
    """Run one transaction; its writes land in ``kv`` only if it authenticates.

    ``rule`` is the Ed25519 acceptance rule of the block (``ed25519_rule``);
    None skips the signature (a recheck). With ``verified``, a tx whose bytes
    this node already verified under that same rule skips it too
    (``remember``: CheckTx keeps entries and adds newly verified txs;
    FinalizeBlock consumes them). ``batch_ops`` False (CheckTx) admits an
    authenticated, admissible batch (batch.check_admissible) without running its
    operations: their failures are per-operation results that never keep the
    batch out of a block, so running them before the block would only double
    every validator's work.
    """
    try:
        tx = decode(raw)
        if tx.kind == "revoke_token":  # the form the height takes, before the nonce (revocation_rule)
            check_form(tx.msg, height, read_revocation_hash_height(kv))
        elif tx.kind == "register_device" or tx.kind == "update_device":  # the size the height takes
            sealing.check_device_size(tx.msg.sealed, height, sealing.read_manifest_ref_height(kv))
        elif tx.kind in ("batch", "set_seal_key", "put_manifest") and not batch_ops:  # never on chain
            check_admissible(tx, height, read_revocation_hash_height(kv), sealing.read_manifest_ref_height(kv))
        elif tx.kind == "put_manifest" or tx.kind == "batch":  # not a message of this chain below its height
            sealing.check_refs_known(tx.kind, tx.msg, height, sealing.read_manifest_ref_height(kv))
        check = rule
        if rule is not None and verified is not None:
            known = verified.has(raw, rule) if remember else verified.take(raw, rule)
            check = None if known else rule
        is_admin, gid = authenticate(kv, tx, chain_id, check)
        if remember and verified is not None and check is not None:
            verified.add(raw, check)
    except TxError as err:
        return TxResult(err.code, err.log)
    kv.put(keys.nonce(tx.signer), keys.be64(tx.nonce))
    if tx.kind == "batch" and not batch_ops:
        return TxResult(Code.OK, "", Outcome(), tx)  # admitted: its operations' codes are results, not refusals
    scratch = kv.child()
    ctx = TxContext(scratch, height, time_s, tx.signer, is_admin, gid)
    try:
        outcome = TX_HANDLERS[tx.kind](ctx, tx.msg)
    except TxError as err:
        return TxResult(err.code, err.log)
    scratch.merge_into_parent()
    return TxResult(Code.OK, "", outcome, tx)
