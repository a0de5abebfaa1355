"""The gateway's revocations in force: hashes, the height they are complete to,
and failing closed when they may be stale.

The set is fed block by block from the chain (gateway/discovery/replica.py
follows ``token_revoked`` events; gateway/app.py applies them) and from the
local list file. ``height`` says up to which block every revocation is in
force here: ``edgistry token revoke`` waits for it (the Status call).

A gateway that has not heard from its chain node for longer than
``max_silence_s`` cannot know that nothing was revoked meanwhile, so every
token check fails closed: reading the set (``len``, ``in``: what every
verifier does first) raises Unavailable saying why, until the follower hears
from the node again. The same holds before the first load.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from ...firmware.caplets.revocation import Record, RevocationSet
from ..errors import Unavailable

DEFAULT_MAX_SILENCE_S = 10.0


class LiveRevocations(RevocationSet):
    """A RevocationSet that refuses to answer while it may be stale."""

    def __init__(self, records: Iterable[Record] = (), max_silence_s: float = DEFAULT_MAX_SILENCE_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(records)
        self.max_silence_s, self.clock = max_silence_s, clock
        self.height = 0  # revocations of every block up to here are in force
        self.heard_at: float | None = None  # when the chain node last answered (clock)

    def heard(self) -> None:
        """The chain node answered now (the follower calls this each poll)."""
        self.heard_at = self.clock()

    def silent_s(self) -> float | None:
        """Seconds since the chain node last answered (None: never)."""
        return None if self.heard_at is None else self.clock() - self.heard_at

    @property
    def stale(self) -> bool:
        silent = self.silent_s()
        return silent is None or silent > self.max_silence_s

    def check_fresh(self) -> None:
        """Raise Unavailable when token checks must fail closed."""
        silent = self.silent_s()
        if silent is None:
            raise Unavailable("token checks refused: this gateway has not loaded the registry's revocations yet "
                              "(its chain node has not answered); retry shortly")
        if silent > self.max_silence_s:
            raise Unavailable(f"token checks refused: this gateway has not heard from its chain node for "
                              f"{silent:.0f} s (bound {self.max_silence_s:g} s), so its revocation list may be "
                              "stale; retry later or at another gateway")

    def view(self) -> _View:
        """The hashes without the staleness check (the link's delivery filter:
        while stale the link hands out no work at all, see StoreLinkBackend)."""
        return _View(self)

    def __len__(self) -> int:
        self.check_fresh()
        return super().__len__()

    def __contains__(self, digest: object) -> bool:
        self.check_fresh()
        return super().__contains__(digest)


class _View:
    """Membership in a LiveRevocations without its staleness check."""

    __slots__ = ("_set",)

    def __init__(self, live: LiveRevocations) -> None:
        self._set = live

    def __contains__(self, digest: object) -> bool:
        return RevocationSet.__contains__(self._set, digest)

    def __len__(self) -> int:
        return RevocationSet.__len__(self._set)
