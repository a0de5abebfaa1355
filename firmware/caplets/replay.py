"""Replay protection with per-client sequence numbers (CPython).

Theory of operation: a request token carries a sequence number, the
client's clock in milliseconds (``mint.sequence_now``). The verifier keeps
the last sequence it accepted per client key and accepts a request only when
its sequence is above that (else Replayed) and within ``max_drift_ms`` of the
verifier's own clock (else ClockDrift carrying the verifier's current
sequence, so an honest client can resynchronise and retry). Entries older
than the drift window are forgotten: any request that old fails the drift
check anyway, so memory stays bounded by the clients active in one window.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable

from .cap_token import Token
from .cap_errors import NotPermitted, Replayed
from .cap_verify import Context
from .cap_verify import verify as _core_verify
from .mint import TokenLike, load

DEFAULT_MAX_DRIFT_MS = 30_000  # tolerate 30 s of client clock error
PRUNE_EVERY = 1024  # prune stale clients after this many new keys


class ClockDrift(Replayed):
    """The request's sequence (a timestamp) is too far from the verifier's clock.

    ``current_sequence`` is the verifier's own current sequence, so an honest
    client whose clock drifted can resynchronise and retry.
    """

    def __init__(self, message, sequence=None, current_sequence=None):
        super().__init__(message, sequence)
        self.current_sequence = current_sequence


class SequenceVerifier:
    """Verifies request tokens once each, in increasing sequence order.

    ``per_client``: keep one sequence per client key (the ``client`` passed to
    :meth:`verify`); when False every client shares one sequence.
    """

    def __init__(self, *, max_drift_ms: int = DEFAULT_MAX_DRIFT_MS, per_client: bool = True,
                 clock: Callable[[], float] = time.time) -> None:
        self.max_drift_ms = max_drift_ms
        self.per_client = per_client
        self._clock = clock
        self._last: dict[Hashable, int] = {}
        self._added = 0
        self._lock = threading.Lock()

    def current(self) -> int:
        """The verifier's current sequence (its clock in milliseconds)."""
        return int(self._clock() * 1000)

    def last(self, client: Hashable = None) -> int | None:
        """The last sequence accepted for ``client``."""
        return self._last.get(client if self.per_client else None)

    def verify(self, token: TokenLike, secret: bytes, client: Hashable = None,
               **fields) -> Token:
        """Verify a request token (see ``Context`` for ``fields``) and record
        its sequence. Raises Replayed, ClockDrift or any other TokenError."""
        key = client if self.per_client else None
        with self._lock:
            now_seq = self.current()
            fields.setdefault("now", now_seq // 1000)
            ctx = Context(last_sequence=self._last.get(key), **fields)
            verified = _core_verify(load(token), secret, ctx)
            req = verified.request
            if req is None:
                raise NotPermitted("not a request token")
            if abs(req.sequence - now_seq) > self.max_drift_ms:
                raise ClockDrift(
                    f"sequence {req.sequence} is {req.sequence - now_seq:+d} ms from the "
                    f"verifier's clock; resynchronise to {now_seq}",
                    req.sequence, now_seq)
            if key not in self._last:
                self._added += 1
                if self._added >= PRUNE_EVERY:
                    self._prune(now_seq)
            self._last[key] = req.sequence
            return verified

    def _prune(self, now_seq: int) -> None:
        horizon = now_seq - self.max_drift_ms
        for k in [k for k, s in self._last.items() if s < horizon]:
            del self._last[k]
        self._added = 0
