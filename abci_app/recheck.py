"""Cheap RECHECK: re-validate a pending tx by a nonce lookup unless a block touched what it read.

After every Commit CometBFT re-checks every tx still in its mempool, in mempool
order, against the new state (a RECHECK is not consensus: it only decides which
txs stay in the mempool). Re-running each tx in full would cost a handler run
per pending tx per block on every node. Instead, CheckTx remembers for every
tx it accepts what the tx read from the check state, what it wrote, and its
nonce (:class:`CheckedTx`). A tx's verdict is a function of the values it read
(plus block time for the kinds in :data:`TIME_DEPENDENT`), so a recheck can
take the short path when none of those keys changed since the tx was checked:

* keys the committed block wrote (``changed`` starts as the block's write set),
* keys written by pending txs before it whose recheck failed or ran in full
  (their effects on the check state may differ now: added to ``changed`` as the
  recheck pass goes, in mempool order).

On the short path the nonce is checked against the new check state (it must
still be above the signer's last nonce: the one read the short path always
makes) and the tx's remembered writes are applied to the check state, exactly
as re-running it would. Otherwise the tx runs in full, as before. The nonce
key is not part of a tx's read set: txs of one signer follow one another
(every block moves the signer's nonce) and "above the last nonce" is the whole
nonce rule.

A tx that scans (``Overlay.scan``) or reads block time is always re-run. A tx
not remembered (evicted, or checked before a restart or a state sync) is re-run.
FinalizeBlock never uses any of this.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from .overlay import Overlay, Reader

# tx kinds whose handler compares against block time: always rechecked in full
TIME_DEPENDENT = frozenset({"revoke_token", "report_liveness"})


class TrackingOverlay(Overlay):
    """An overlay that records which keys it read from below (and whether it scanned)."""

    def __init__(self, base: Reader) -> None:
        super().__init__(base)
        self.reads: set[bytes] = set()
        self.scanned = False

    def get(self, key: bytes) -> bytes | None:
        writes = self.writes
        if key in writes:
            return writes[key]
        self.reads.add(key)
        return self.base.get(key)

    def scan(self, prefix: bytes, start_after: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        self.scanned = True
        return super().scan(prefix, start_after)


@dataclass(slots=True)
class CheckedTx:
    """What CheckTx learnt about an accepted tx."""

    nonce_key: bytes
    nonce: int
    reads: frozenset[bytes] | None  # None: always re-run (scans or reads block time)
    writes: dict[bytes, bytes | None]
    data: bytes  # the CheckTx response data


class CheckedTxs:
    """Accepted txs by their bytes (bounded: the oldest are forgotten first)."""

    def __init__(self, capacity: int = 20_000) -> None:  # 4x CometBFT's default mempool size
        self._items: dict[bytes, CheckedTx] = {}
        self.capacity = capacity
        self.changed: set[bytes] | None = None  # None: no short path (nothing known about the last block)

    def __len__(self) -> int:
        return len(self._items)

    def remember(self, raw: bytes, entry: CheckedTx) -> None:
        items = self._items
        items.pop(raw, None)  # re-insert at the end: mempool order
        items[raw] = entry
        if len(items) > self.capacity:
            del items[next(iter(items))]

    def get(self, raw: bytes) -> CheckedTx | None:
        return self._items.get(raw)

    def forget(self, raw: bytes) -> CheckedTx | None:
        return self._items.pop(raw, None)

    def block_committed(self, written: Iterator[bytes] | set[bytes] | dict) -> None:
        """A new block: the keys it wrote start the recheck pass's change set."""
        self.changed = set(written)

    def reset(self) -> None:
        """State replaced (InitChain, state sync): nothing remembered holds."""
        self._items.clear()
        self.changed = None

    def still_valid(self, entry: CheckedTx, check: Overlay, last_nonce_of) -> bool:
        """The short path's test: nothing read has changed and the nonce is still fresh."""
        changed = self.changed
        if entry.reads is None or changed is None or not entry.reads.isdisjoint(changed):
            return False
        return last_nonce_of(check.get(entry.nonce_key)) < entry.nonce
