"""Revocation list with expiry pruning (CPython).

Revoking a tag revokes every token derived from it, because the verifier
checks every tag of the chain (cap_verify, step 4). The list holds only the
one-way hash of each revoked tag (``cap_crypto.revocation_hash``), never the
tag: a tag is the key that derives the next frame, so a published tag would
let its reader mint children of the revoked token. Each entry carries the
revoked token's expiry; after it the expiry constraint rejects the token
anyway, so ``prune`` drops the entry and the list stays bounded.

File format 2 stores hashes; a format-1 file (raw tags) is read by hashing
its tags, and written back as format 2.

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

from .cap_token import Token
from .cap_crypto import revocation_hash

FILE_VERSION = 2
Record = tuple[bytes, int | None]  # (revocation hash of a tag, expires_at Unix seconds or None)


class RevocationSource(Protocol):
    """Anything that can list revocation records (e.g. the registry)."""

    def records(self) -> Iterable[Record]: ...


class RevocationSet:
    """Revocation hashes of revoked tags with their expiries; pass it as ``Context.revoked``."""

    def __init__(self, records: Iterable[Record] = ()) -> None:
        self._entries: dict[bytes, int | None] = {}
        self._lock = threading.Lock()
        self.merge(records)

    def __contains__(self, digest: object) -> bool:
        return digest in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def revoke(self, digest: bytes, expires_at: int | None = None) -> bool:
        """Revoke the tag whose revocation hash is ``digest`` until
        ``expires_at`` (None: for ever); True when that changed the set."""
        if len(digest) != 32:
            raise ValueError("a revocation hash is 32 bytes")
        with self._lock:
            old = self._entries.get(digest, 0)
            # keep the later expiry; None (never expires) wins
            new = None if old is None or expires_at is None else max(old, expires_at)
            if digest in self._entries and new == old:
                return False
            self._entries[digest] = new
            return True

    def revoke_token(self, token: Token) -> bytes:
        """Revoke a token (and everything derived from it); returns its revocation hash."""
        digest = revocation_hash(token.tag)
        self.revoke(digest, token.expires_at)
        return digest

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
                "revoked": [{"hash": h.hex(), "expires_at": e} for h, e in self.records()]}

    @classmethod
    def from_json(cls, data: dict) -> RevocationSet:
        version = data.get("version") if isinstance(data, dict) else None
        if version not in (1, FILE_VERSION):
            raise ValueError("not a version-1 or -2 revocation list")
        try:
            if version == 1:  # raw tags: hashed on reading
                return cls((revocation_hash(bytes.fromhex(r["tag"])), r.get("expires_at"))
                           for r in data["revoked"])
            return cls((bytes.fromhex(r["hash"]), r.get("expires_at"))
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
