"""Revocation list with expiry pruning (CPython).

Revoking a tag revokes every token derived from it, because the verifier
checks every tag of the chain (cap_verify, step 4). Each entry carries the
revoked token's expiry; after it the expiry constraint rejects the token
anyway, so ``prune`` drops the entry and the list stays bounded.

The set is fed from any number of sources: a local file today
(``load``/``save``), the registry's on-chain revocation records later
(``merge(source.records())`` with any :class:`RevocationSource`).
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from collections.abc import Iterable
from typing import Protocol

from .cap_codec import Token

FILE_VERSION = 1
Record = tuple[bytes, int | None]  # (tag, expires_at Unix seconds or None)


class RevocationSource(Protocol):
    """Anything that can list revocation records (e.g. the registry)."""

    def records(self) -> Iterable[Record]: ...


class RevocationSet:
    """Revoked tags with their expiries; pass it as ``Context.revoked``."""

    def __init__(self, records: Iterable[Record] = ()) -> None:
        self._entries: dict[bytes, int | None] = {}
        self._lock = threading.Lock()
        self.merge(records)

    def __contains__(self, tag: object) -> bool:
        return tag in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def revoke(self, tag: bytes, expires_at: int | None = None) -> None:
        """Revoke ``tag`` until ``expires_at`` (None: for ever)."""
        if len(tag) != 32:
            raise ValueError("a tag is 32 bytes")
        with self._lock:
            old = self._entries.get(tag, 0)
            # keep the later expiry; None (never expires) wins
            if old is None or expires_at is None:
                self._entries[tag] = None
            else:
                self._entries[tag] = max(old, expires_at)

    def revoke_token(self, token: Token) -> bytes:
        """Revoke a token (and everything derived from it); returns its tag."""
        self.revoke(token.tag, token.expires_at)
        return token.tag

    def merge(self, records: Iterable[Record]) -> None:
        """Add records from a source (file, registry feed)."""
        for tag, expires_at in records:
            self.revoke(tag, expires_at)

    def records(self) -> list[Record]:
        """All entries, for feeding other verifiers (a RevocationSource)."""
        with self._lock:
            return sorted(self._entries.items())

    def prune(self, now: float | None = None) -> int:
        """Drop entries whose token has expired; returns how many."""
        t = time.time() if now is None else now
        with self._lock:
            dead = [k for k, e in self._entries.items() if e is not None and e <= t]
            for k in dead:
                del self._entries[k]
        return len(dead)

    def to_json(self) -> dict:
        return {"version": FILE_VERSION,
                "revoked": [{"tag": t.hex(), "expires_at": e} for t, e in self.records()]}

    @classmethod
    def from_json(cls, data: dict) -> RevocationSet:
        if not isinstance(data, dict) or data.get("version") != FILE_VERSION:
            raise ValueError("not a version-1 revocation list")
        try:
            return cls((bytes.fromhex(r["tag"]), r.get("expires_at"))
                       for r in data["revoked"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"bad revocation record: {exc}") from exc

    @classmethod
    def load(cls, path: str | os.PathLike) -> RevocationSet:
        """Read a list file; a missing file is an empty list."""
        try:
            with open(path, encoding="utf-8") as fh:
                return cls.from_json(json.load(fh))
        except FileNotFoundError:
            return cls()
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not JSON: {exc}") from exc

    def save(self, path: str | os.PathLike) -> None:
        """Write the list atomically (temp file + rename)."""
        folder = os.path.dirname(os.path.abspath(path))
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".revoked-")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(self.to_json(), fh, indent=1)
                fh.write("\n")
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
