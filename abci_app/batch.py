"""Batched registry operations: one signed tx carrying a gateway's operations of a short window.

Theory of operation. A gateway has many small registry writes (devices paired,
re-sealed, unregistered, liveness buckets, revocations). Signing, gossiping,
checking and ordering each as its own tx costs every validator one Ed25519
verification, one nonce and one mempool entry per write. A ``Batch`` carries up
to :data:`MAX_BATCH_OPS` of them under one signature and one nonce
(authentication, chain id and the nonce rule are ``state.execute_tx``'s, as for
any tx). Inside, every operation is an independent little tx:

* it is validated alone (the same stateless check a tx of its kind gets, plus
  the revocation form of the block height) and then applied by the same handler,
  with the same signer role, in a child overlay merged only when it succeeds;
* one that fails leaves nothing behind and does not stop the others;
* its outcome is recorded in order: the tx's data is a ``BatchResult`` (a code
  and the operation's own data per operation); the events open with one
  ``batch`` event (ops, failed, and ``codes``: every operation's code, in
  order, comma-separated), then each operation's own events as a single tx of
  its kind would emit them (followers read a batch as they read single txs),
  and a ``batch_op`` event (index, op kind, code, log) where an operation
  failed. The codes of successful operations travel in one attribute, not one
  event each, and none of these events is indexed (handlers.SEARCHABLE_EVENTS):
  followers read them from block results by height.

Operations run in the order they are listed, so the outcome is a function of
the state and the bytes only (determinism). They run in FinalizeBlock only:
CheckTx admits a batch on its bounds, signature, nonce and admissibility
(``state.execute_tx`` with ``batch_ops=False``), since no operation's outcome
can keep it out of a block.

Admissibility (:func:`check_admissible`): what must never reach a block at all,
because a block's bytes are public for ever once committed, whatever the
operation's result code says. A device's sealed fields in clear, and a raw
revocation tag where the height takes only hashes. A single tx of those kinds
fails its own checks (validate_basic, the revocation form) before it can be
admitted; a batch holding one such operation is refused whole by CheckTx,
left out by PrepareProposal and makes ProcessProposal reject the block. Only
those checks: an operation that is malformed in any other way still fails
alone when it runs. FinalizeBlock does not refuse such a batch (a block that a
byzantine majority did commit replays to the same results as before); its
offending operations fail there with their own codes.

The tx itself succeeds (code 0) once it authenticates: its nonce is
consumed whatever its operations do, as for any authenticated tx. Bounds on the whole tx are stateless and reject it whole
(``txs._check_batch``): at most MAX_BATCH_OPS operations, and MAX_TX_BYTES for
the encoding.
"""

from __future__ import annotations

from google.protobuf.message import Message

from .codes import Code, TxError
from .handlers import HANDLERS, Outcome, TxContext, event
from .revocation_rule import check_form, check_no_raw_tag, hashes_required, read_revocation_hash_height
from .sealing import (check_device_size, check_no_cleartext, check_refs_known, check_seal_key_admissible,
                      read_manifest_ref_height)
from .txs import BATCH_OP_KINDS, MAX_BATCH_OPS, VALIDATORS, DecodedTx
from ..proto import registry_pb2 as pb

BATCH_OP_EVENT = "batch_op"
BATCH_EVENT = "batch"
MAX_OP_LOG = 200  # a failed operation's log in its event: enough to read, bounded per op

__all__ = ["MAX_BATCH_OPS", "BATCH_OP_KINDS", "apply_batch", "batch_of", "check_admissible", "op_of"]


def op_of(msg: Message) -> pb.BatchOp:
    """A BatchOp carrying ``msg`` (one of the registry messages a batch may hold)."""
    kind = BATCH_OP_KINDS.get(msg.DESCRIPTOR.full_name)
    if kind is None:
        raise TypeError(f"{type(msg).__name__} cannot travel in a batch")
    op = pb.BatchOp()
    getattr(op, kind).CopyFrom(msg)
    return op


def batch_of(msgs: list[Message]) -> pb.Batch:
    return pb.Batch(ops=[op_of(m) for m in msgs])


def check_admissible(tx: DecodedTx, height: int, activation: int | None,
                     refs_activation: int | None = None) -> None:
    """Raise TxError when ``tx`` may not enter block ``height`` (revocation hash
    activation ``activation``, manifests by reference from ``refs_activation``): a raw
    tag, in a batch a device's fields in clear, or a PutManifest below its height. See
    the module docstring; a pure function of the bytes and the height, so a pass is
    remembered on ``tx`` (the decode cache hands CheckTx and both proposal checks the
    same object for the same bytes; a PutManifest passes only from its height on, and
    heights only grow)."""
    form = 1 if hashes_required(height, activation) else 0
    if tx.admitted >= form:
        return
    check_refs_known(tx.kind, tx.msg, height, refs_activation)
    if tx.kind == "revoke_token":
        check_no_raw_tag(tx.msg, height, activation)
    elif tx.kind == "set_seal_key":
        check_seal_key_admissible(tx.msg)
    elif tx.kind == "batch":
        for index, op in enumerate(tx.msg.ops):
            kind = op.WhichOneof("op")
            try:
                if kind == "revoke_token":
                    check_no_raw_tag(op.revoke_token, height, activation)
                elif kind == "register_device" or kind == "update_device":
                    check_no_cleartext(getattr(op, kind))
                elif kind == "set_seal_key":
                    check_seal_key_admissible(op.set_seal_key)
            except TxError as err:
                raise TxError(err.code, f"batch operation {index} ({kind}): {err.log}") from None
    tx.admitted = form


def _run_op(ctx: TxContext, op: pb.BatchOp, activation: int | None,
            refs_activation: int | None) -> tuple[str, Outcome]:
    kind = op.WhichOneof("op")
    if kind is None:
        raise TxError(Code.NO_MESSAGE, "the operation carries no message")
    msg = getattr(op, kind)
    VALIDATORS[kind](msg)  # the stateless check a tx of this kind gets
    if kind == "revoke_token":
        check_form(msg, ctx.height, activation)
    elif kind == "register_device" or kind == "update_device":
        check_device_size(msg.sealed, ctx.height, refs_activation)
    scratch = ctx.kv.child()
    outcome = HANDLERS[kind](TxContext(scratch, ctx.height, ctx.time_s, ctx.signer, ctx.is_admin, ctx.gateway_id),
                             msg)
    if outcome.validator_updates:  # no batchable kind makes them; a batch must never smuggle one in
        raise TxError(Code.UNAUTHORIZED, f"{kind} cannot change validators inside a batch")
    scratch.merge_into_parent()
    return kind, outcome


def apply_batch(ctx: TxContext, msg: pb.Batch) -> Outcome:
    """Apply every operation on its own, in order; see the module docstring."""
    result = pb.BatchResult()
    events = []
    failed = 0
    activation = read_revocation_hash_height(ctx.kv)
    refs_activation = read_manifest_ref_height(ctx.kv)
    for index, op in enumerate(msg.ops):
        try:
            kind, outcome = _run_op(ctx, op, activation, refs_activation)
        except TxError as err:
            failed += 1
            result.codes.append(int(err.code))
            result.data.append(b"")
            events.append(event(BATCH_OP_EVENT, index=str(index), op=op.WhichOneof("op") or "",
                                code=str(int(err.code)), log=err.log[:MAX_OP_LOG]))
            continue
        result.codes.append(0)
        result.data.append(outcome.data)
        events.extend(outcome.events)
    codes = ",".join(map(str, result.codes))
    summary = event(BATCH_EVENT, ops=str(len(msg.ops)), failed=str(failed), codes=codes)
    return Outcome(result.SerializeToString(deterministic=True), [summary, *events])
