"""The registry as an ABCI 2.0 application: one thin method per ABCI call.

Theory of operation. Committed state lives in the :class:`Store`. InitChain
and FinalizeBlock stage their writes in a block :class:`Overlay`; FinalizeBlock
returns the app hash of the staged state (LtHash of all primary records), and
Commit persists the overlay, height and app hash in one LMDB transaction. If
the process dies before Commit the staged block is simply lost: Info reports
the last committed height and CometBFT replays the block. CheckTx runs every
tx against a separate check overlay (committed state plus the mempool's
effects), reset at Commit so the RECHECK pass sees the new state; a recheck
whose reads the block did not touch is a nonce lookup (``recheck.py``). A
batch tx is admitted on its signature, nonce and admissibility (nothing in it
that may never be on chain: ``batch.check_admissible``, which the proposal
methods apply to every tx as well); its operations run only in FinalizeBlock
(``batch.py``), where each fails or succeeds on its own. The proposal and vote
methods never write committed state (they read the revocation hash activation
height from it).

Signatures: every block height has one Ed25519 acceptance rule
(``ed25519_rule.rule_version``: v1 below the genesis activation height, v2
from it). FinalizeBlock uses its block's height; CheckTx and the proposal
methods use the height being built (last committed + 1). A signature verified
once is remembered with its rule (``txs.VerifiedCache``) and reused only under
the same rule. The RECHECK pass after the last v1 block verifies every pending
tx again, so txs only v1 accepts leave the mempool before the first v2 block.

Methods receive and return the generated protobuf messages (the socket server
and the embedded node call them the same way); nothing here does I/O except
through the store.
"""

from __future__ import annotations

import logging
from pathlib import Path

from .. import __version__
from . import ed25519_rule, keys, lthash, snapshots
from .sealing import read_manifest_ref_height, refs_required
from .lthash import LtHash, hashed_records, read_lthash_v2_height, version_at
from .codes import Code, TxError
from .genesis import Genesis, GenesisError, read_ed25519_v2_height
from .batch import check_admissible
from .handlers import prune_revocations
from .overlay import Overlay
from .queries import answer_query
from .recheck import TIME_DEPENDENT, CheckedTx, CheckedTxs, TrackingOverlay
from .revocation_rule import hashes_required, read_revocation_hash_height
from .state import TxResult, execute_tx
from .store import DEFAULT_RETAIN_HEIGHTS, Store
from .txs import MAX_TX_BYTES, DecodeCache, DecodedTx, VerifiedCache, verify_signature
from ..proto import abci_pb2 as abci

log = logging.getLogger(__name__)

APP_VERSION = 1
ACCEPT = abci.ResponseProcessProposal.ACCEPT
REJECT = abci.ResponseProcessProposal.REJECT


def _nonce_of(raw: bytes | None) -> int:
    return keys.from_be64(raw) if raw else 0


_SELF_TESTED = False


def _self_test_once() -> None:
    """The Ed25519 rules' and BLAKE3's self-tests, and the protobuf backend, once per process (before the
    first app serves). Decoding must behave alike on every node: protobuf's pure-Python
    backend raises where upb refuses (a string field that is not UTF-8), so a node on it
    could stop where the others answer a code."""
    global _SELF_TESTED
    if not _SELF_TESTED:
        from google.protobuf.internal import api_implementation

        if api_implementation.Type() != "upb":
            raise FatalAppError(f"refusing to start: protobuf runs its {api_implementation.Type()!r} backend, "
                                "not upb (unset PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION; install a protobuf "
                                "wheel built for this platform)")
        try:
            ed25519_rule.self_test()
        except RuntimeError as exc:
            raise FatalAppError(f"refusing to start: {exc}; reinstall the pinned PyNaCl and cryptography") from exc
        try:
            lthash.self_test()
        except RuntimeError as exc:
            raise FatalAppError(f"refusing to start: {exc}; reinstall the pinned blake3") from exc
        _SELF_TESTED = True


class FatalAppError(Exception):
    """A broken invariant: the node must halt rather than diverge."""


class RegistryApp:
    """The replicated registry state machine behind CometBFT."""

    def __init__(self, store_dir: Path | str, retain_heights: int = DEFAULT_RETAIN_HEIGHTS,
                 snapshot_interval: int = 0, snapshot_dir: Path | str | None = None,
                 snapshot_keep: int = snapshots.KEEP_SNAPSHOTS) -> None:
        _self_test_once()
        self.store = Store(store_dir, retain_heights)
        self._adopt_committed()
        self._block: Overlay | None = None  # staged by InitChain/FinalizeBlock
        self._staged: tuple[int, bytes, LtHash] | None = None  # (height, app_hash, acc)
        self._genesis_height = 0
        self.checked = CheckedTxs()  # what CheckTx learnt about accepted txs: cheap rechecks
        self.stats = {"check": 0, "recheck": 0}
        self._info_logged = False
        self.verified = VerifiedCache()  # signatures checked in CheckTx are not checked again
        self.decoded = DecodeCache()  # one decode per tx across CheckTx, proposals and FinalizeBlock
        self.snapshots = snapshots.SnapshotManager(
            self.store, Path(snapshot_dir) if snapshot_dir else Path(store_dir).parent / "snapshots",
            interval=snapshot_interval, keep=snapshot_keep,
        )

    @classmethod
    def from_config(cls, cfg) -> RegistryApp:
        """The app of a node home (NodeConfig): store and snapshot settings."""
        return cls(cfg.registry_dir, snapshot_interval=int(cfg.extra.get("snapshot_interval", 0)),
                   snapshot_keep=int(cfg.extra.get("snapshot_keep", snapshots.KEEP_SNAPSHOTS)))

    def close(self) -> None:
        self.store.close()

    def _adopt_committed(self) -> None:
        """Take the chain's settings and sum from the committed state (at start, and once a
        snapshot is restored): its rules' activation heights, the sum as the version its
        height takes, and CheckTx's view and clock."""
        self.chain_id = (self.store.get(keys.meta("chain_id")) or b"").decode()
        self.ed25519_v2_height = read_ed25519_v2_height(self.store)
        self.lthash_v2_height = read_lthash_v2_height(self.store)
        self._acc = LtHash.from_bytes(self.store.lthash, version_at(self.store.height, self.lthash_v2_height))
        self._check = Overlay(self.store)
        self._block_time = self._last_block_time()  # of the last committed block: CheckTx's clock

    @property
    def height(self) -> int:
        return self.store.height

    @property
    def app_hash(self) -> bytes:
        return self.store.app_hash

    @property
    def next_height(self) -> int:
        """The height being built: last committed + 1 (the genesis height before the first)."""
        return self.height + 1 if self.height else max(self._genesis_height, 1)

    def rule_at(self, height: int) -> int:
        """The Ed25519 acceptance rule of block ``height`` (ed25519_rule.RULE_V1/RULE_V2)."""
        return ed25519_rule.rule_version(height, self.ed25519_v2_height)

    def _signature_ok(self, raw: bytes, tx: DecodedTx, rule: int) -> bool:
        """Verify (once per rule, remembered) for the proposal methods."""
        if self.verified.has(raw, rule):
            return True
        try:
            verify_signature(tx, rule)
        except TxError:
            return False
        self.verified.add(raw, rule)
        return True

    # ---- info/query connection ----

    def echo(self, req: abci.RequestEcho) -> abci.ResponseEcho:
        return abci.ResponseEcho(message=req.message)

    def info(self, req: abci.RequestInfo) -> abci.ResponseInfo:
        # the handshake's Info is worth a line; every RPC abci_info call (pollers) is one too
        log.log(logging.DEBUG if self._info_logged else logging.INFO,
                "Info from CometBFT %s (ABCI %s): at height %d", req.version, req.abci_version, self.height)
        self._info_logged = True
        return abci.ResponseInfo(
            data="edgistry registry",
            version=__version__,
            app_version=APP_VERSION,
            last_block_height=self.height,
            last_block_app_hash=self.app_hash,
        )

    def query(self, req: abci.RequestQuery) -> abci.ResponseQuery:
        return answer_query(self.store, self.chain_id, req)

    # ---- consensus connection ----

    def init_chain(self, req: abci.RequestInitChain) -> abci.ResponseInitChain:
        if self.height:
            raise FatalAppError(f"InitChain at committed height {self.height}")
        try:
            genesis = Genesis.from_bytes(req.app_state_bytes)
        except GenesisError as exc:
            raise FatalAppError(f"invalid genesis: {exc}") from exc
        self.chain_id = req.chain_id
        self.ed25519_v2_height = genesis.ed25519_v2_height
        self.lthash_v2_height = genesis.lthash_v2_height
        self._block = Overlay(self.store)
        self._genesis_height = max(req.initial_height, 1)
        genesis.init(self._block, req.chain_id, list(req.validators), self._genesis_height)
        # the state before the first block is that of the height below it
        self._acc = LtHash(version=version_at(self._genesis_height - 1, self.lthash_v2_height))
        app_hash = self._block.fold_hash(self._acc, self.store).digest()
        self._check = Overlay(self._block)  # txs may reach the mempool before block 1
        self.checked.reset()
        log.info("InitChain %s: %d admins, %d gateways, %d devices; Ed25519 rule v2 from height %s",
                 req.chain_id, len(genesis.admins), len(genesis.gateways), len(genesis.devices),
                 genesis.ed25519_v2_height if genesis.ed25519_v2_height is not None else "never")
        return abci.ResponseInitChain(app_hash=app_hash)

    def _committed_or_genesis(self) -> Overlay | Store:
        """What the next block is checked against: the committed state, or before block 1
        (nothing committed yet) the genesis InitChain staged, where revocation_hash_height
        and the rest of the chain's rules are."""
        if self.height == 0 and self._block is not None:
            return self._block
        return self.store

    def prepare_proposal(self, req: abci.RequestPrepareProposal) -> abci.ResponsePrepareProposal:
        """Keep mempool order; drop txs that can never be valid at this height (undecodable,
        not admissible: batch.check_admissible, or a signature the height's rule rejects);
        respect max_tx_bytes."""
        out, total = [], 0
        height = self.next_height
        rule = self.rule_at(height)
        activation = read_revocation_hash_height(self._committed_or_genesis())
        refs = read_manifest_ref_height(self._committed_or_genesis())
        for tx in req.txs:
            if total + len(tx) > req.max_tx_bytes:
                break
            try:
                decoded = self.decoded.decode(tx)
                check_admissible(decoded, height, activation, refs)
            except TxError:
                continue
            if not self._signature_ok(tx, decoded, rule):
                continue
            out.append(tx)
            total += len(tx)
        return abci.ResponsePrepareProposal(txs=out)

    def process_proposal(self, req: abci.RequestProcessProposal) -> abci.ResponseProcessProposal:
        """Accept exactly what an honest PrepareProposal could produce: a block that
        would put on chain what may never be there (batch.check_admissible) is refused
        before anyone commits its bytes."""
        height = self.next_height
        rule = self.rule_at(height)
        activation = read_revocation_hash_height(self._committed_or_genesis())
        refs = read_manifest_ref_height(self._committed_or_genesis())
        for tx in req.txs:
            try:
                decoded = self.decoded.decode(tx)
                check_admissible(decoded, height, activation, refs)
            except TxError as err:
                log.warning("rejecting proposal at height %d: %s", req.height, err)
                return abci.ResponseProcessProposal(status=REJECT)
            if not self._signature_ok(tx, decoded, rule):
                log.warning("rejecting proposal at height %d: a signature fails Ed25519 rule v%d", req.height, rule)
                return abci.ResponseProcessProposal(status=REJECT)
        return abci.ResponseProcessProposal(status=ACCEPT)

    def extend_vote(self, req: abci.RequestExtendVote) -> abci.ResponseExtendVote:
        return abci.ResponseExtendVote()  # the registry uses no vote extensions

    def verify_vote_extension(self, req: abci.RequestVerifyVoteExtension) -> abci.ResponseVerifyVoteExtension:
        ok = not req.vote_extension
        status = abci.ResponseVerifyVoteExtension.ACCEPT if ok else abci.ResponseVerifyVoteExtension.REJECT
        return abci.ResponseVerifyVoteExtension(status=status)

    def finalize_block(self, req: abci.RequestFinalizeBlock) -> abci.ResponseFinalizeBlock:
        if req.height != self.height + 1 and not (self.height == 0 and req.height == self._genesis_height):
            raise FatalAppError(f"FinalizeBlock for height {req.height} after committed height {self.height}")
        if self._block is None or req.height != self._genesis_height or self.height:
            self._block = Overlay(self.store)  # a replayed height starts from committed state
        block = self._block
        if req.syncing_to_height > req.height and req.height % 1000 == 0:  # v1.x says when it is catching up
            log.info("catching up: block %d of %d", req.height, req.syncing_to_height)
        time_s = req.time.seconds
        block.put(keys.BLOCK_TIME, keys.be64(max(time_s, 0)))  # not hashed: for CheckTx
        prune_revocations(block, time_s)
        resp = abci.ResponseFinalizeBlock()
        forget = self.checked.forget
        rule = self.rule_at(req.height)
        for raw in req.txs:
            forget(raw)  # leaves the mempool
            result = execute_tx(block, raw, self.chain_id, req.height, time_s, rule, verified=self.verified,
                                decode=self.decoded.decode_last)
            result.fill(resp.tx_results.add())
            if result.outcome.validator_updates:
                resp.validator_updates.extend(result.outcome.validator_updates)
        version = version_at(req.height, self.lthash_v2_height)
        if self._acc.version != version:  # the first block under a new sum: every record once
            log.info("block %d: the app hash changes to LtHash v%d; re-hashing the state", req.height, version)
            self._acc = LtHash.rehash(hashed_records(self.store), version)
        acc = block.fold_hash(self._acc, self.store)
        resp.app_hash = acc.digest()
        self._staged = (req.height, resp.app_hash, acc)
        return resp

    def commit(self, req: abci.RequestCommit) -> abci.ResponseCommit:
        if self._staged is None or self._block is None:
            raise FatalAppError("Commit without FinalizeBlock")
        height, app_hash, acc = self._staged
        self.store.commit(height, self._block.writes, app_hash, acc.to_bytes())
        self.checked.block_committed(self._block.writes)
        self._acc, self._block, self._staged, self._genesis_height = acc, None, None, 0
        self._check = Overlay(self.store)
        self._block_time = self._last_block_time()
        self.snapshots.maybe_take(height)
        return abci.ResponseCommit(retain_height=0)

    # ---- mempool connection ----

    def check_tx(self, req: abci.RequestCheckTx) -> abci.ResponseCheckTx:
        raw = req.tx
        if len(raw) > MAX_TX_BYTES:  # before any decoding work
            return TxResult(Code.TX_TOO_LARGE, f"tx of {len(raw)} bytes exceeds {MAX_TX_BYTES}").to_check()
        # v0.38 sends the type in field 2, v1.x in field 3. A recheck re-runs
        # the stateful checks against the new state (by a nonce lookup when
        # the block touched nothing the tx read: recheck.py); signatures
        # cannot have changed, so they are not verified again, except in the
        # one pass where the next block is the first under a new rule.
        recheck = req.type == abci.RECHECK or req.type_v1 == abci.CHECK_TX_TYPE_RECHECK
        self.stats["recheck" if recheck else "check"] += 1
        height = self.next_height
        rule = self.rule_at(height)
        reverify = recheck and rule != self.rule_at(height - 1)
        # the first block that takes only revocation hashes, or devices only by reference:
        # what was admitted in the old form must leave the mempool, so run every recheck in full
        reform = recheck and self._form_changes(height)
        if recheck and not reverify and not reform:
            short = self._recheck_unchanged(raw)
            if short is not None:
                return short
        # CheckTx sees the last committed block time: the next block's is not
        # known yet, and FinalizeBlock repeats every time-dependent check.
        view = TrackingOverlay(self._check)
        result = execute_tx(view, raw, self.chain_id, height, self._block_time,
                            None if recheck and not reverify else rule,
                            verified=self.verified, remember=True, decode=self.decoded.decode, batch_ops=False)
        self._check.writes.update(view.writes)  # an authenticated tx consumed its nonce even if it failed
        self._note_checked(raw, result, view, recheck)
        return result.to_check()

    def _form_changes(self, height: int) -> bool:
        """Whether block ``height`` is the first that takes only revocation hashes, or the first
        whose devices name a catalog slot."""
        activation = read_revocation_hash_height(self._check)
        refs = read_manifest_ref_height(self._check)
        return (hashes_required(height, activation) != hashes_required(height - 1, activation)
                or refs_required(height, refs) != refs_required(height - 1, refs))

    def _recheck_unchanged(self, raw: bytes) -> abci.ResponseCheckTx | None:
        """The short recheck (recheck.py): the remembered verdict when nothing the
        tx read has changed and its nonce is still fresh; None to run it in full."""
        entry = self.checked.get(raw)
        if entry is None or not self.checked.still_valid(entry, self._check, _nonce_of):
            return None
        self._check.writes.update(entry.writes)
        return abci.ResponseCheckTx(code=0, data=entry.data)

    def _note_checked(self, raw: bytes, result: TxResult, view: TrackingOverlay, recheck: bool) -> None:
        """Remember what an accepted tx read and wrote (for the next short recheck)."""
        checked = self.checked
        if recheck and checked.changed is not None:
            # later rechecks may have read this tx's earlier effects: re-run them if they do
            old = checked.forget(raw)
            if old is not None:
                checked.changed.update(old.writes)
            checked.changed.update(view.writes)
        tx = result.tx
        if tx is None:
            checked.forget(raw)
            return
        nonce_key = keys.nonce(tx.signer)
        reads = None
        if not view.scanned and tx.kind not in TIME_DEPENDENT:
            view.reads.discard(nonce_key)
            reads = frozenset(view.reads)
        checked.remember(raw, CheckedTx(nonce_key, tx.nonce, reads, view.writes, result.outcome.data))

    def _last_block_time(self) -> int:
        raw = self.store.get(keys.BLOCK_TIME)
        return keys.from_be64(raw) if raw else 0

    # ---- snapshot connection ----

    def list_snapshots(self, req: abci.RequestListSnapshots) -> abci.ResponseListSnapshots:
        return abci.ResponseListSnapshots(snapshots=self.snapshots.list())

    def offer_snapshot(self, req: abci.RequestOfferSnapshot) -> abci.ResponseOfferSnapshot:
        return abci.ResponseOfferSnapshot(result=self.snapshots.offer(req.snapshot, req.app_hash))

    def load_snapshot_chunk(self, req: abci.RequestLoadSnapshotChunk) -> abci.ResponseLoadSnapshotChunk:
        return abci.ResponseLoadSnapshotChunk(chunk=self.snapshots.load_chunk(req.height, req.format, req.chunk))

    def apply_snapshot_chunk(self, req: abci.RequestApplySnapshotChunk) -> abci.ResponseApplySnapshotChunk:
        result = self.snapshots.apply_chunk(req.index, req.chunk)
        if result == abci.ResponseApplySnapshotChunk.ACCEPT and self.snapshots.restored:
            self._adopt_committed()
            self.checked.reset()
        return abci.ResponseApplySnapshotChunk(result=result)
