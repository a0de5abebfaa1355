"""Operator authentication for the gateway's HTTP side: everything but /healthz.

Why: pseudonyms, per-device queues and live counts let a watcher see a device
being paired (and the map's counts change), so the status page, its data and
/metrics are for the node's operators only.

The credential is a random operator secret in the node home
(``keys/operator.secret``, 32 bytes as hex, 0600, made at the gateway's first
start). It is accepted two ways, compared in constant time:

* ``Authorization: Bearer <secret>`` (scripts, a Prometheus scrape with
  ``credentials_file`` pointing at the secret);
* the login form (POST /status/login): the secret never travels in a URL (so
  never in an access log or a browser history). A good login gets a session:
  a fresh random id in an HttpOnly, SameSite=Strict cookie (Secure over TLS),
  kept in memory for ``SESSION_TTL_S``; logout or a restart ends it.

Rotating the secret: write a new one to the file. Each check looks whether the
file changed (a stat); when it did, the new secret is the only one accepted and
every session ends, and so do the event streams opened with the old one (they
check again before each update). A secret file that cannot be read accepts
nothing (fail closed) until it can.

Failed logins are counted per client address and slowed down; state-changing
posts from another origin are refused (the cookie is SameSite=Strict too).
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

SECRET_FILE = "operator.secret"
COOKIE = "edgistry_operator"
SESSION_TTL_S = 12 * 3600
MAX_SESSIONS = 256  # sessions kept at once (the oldest go first)
FAILURE_DELAY_S = 0.5  # every failed login waits this long (brute force is hopeless anyway: 256 bits)
MAX_FAILURES = 20  # failed logins per address per window before it is refused outright
FAILURE_WINDOW_S = 300


def _file_id(path: Path) -> tuple[int, int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size


def load_or_create_secret(keys_dir: Path, create: bool = True) -> str:
    """The operator secret (hex); made (0600) when the node home has none yet."""
    path = Path(keys_dir) / SECRET_FILE
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        if not create:
            raise
        text = secrets.token_hex(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(text + "\n")
        return text
    if len(text) < 32:
        raise ValueError(f"{path}: an operator secret is at least 32 characters")
    return text


class OperatorAuth:
    """Checks credentials and keeps login sessions (in memory). With ``path``, the secret
    is that file's and follows it (see the module notes on rotating it)."""

    def __init__(self, secret: str, clock: Callable[[], float] = time.monotonic, path: Path | None = None) -> None:
        self._secret = secret.encode()
        self.clock = clock
        self._sessions: dict[str, float] = {}  # session id -> expiry (monotonic)
        self._failures: dict[str, list[float]] = {}
        self.path = path
        self._seen = _file_id(path) if path is not None else None

    @classmethod
    def from_keys(cls, keys_dir: Path) -> OperatorAuth:
        """The node home's operator secret (made on first use), followed as it changes."""
        return cls(load_or_create_secret(keys_dir), path=Path(keys_dir) / SECRET_FILE)

    def _follow(self) -> None:
        """Take a rotated secret: a changed file replaces it and ends every session."""
        if self.path is None:
            return
        seen = _file_id(self.path)
        if seen == self._seen:
            return
        self._seen = seen
        try:
            secret = load_or_create_secret(self.path.parent, create=False).encode()
        except (OSError, ValueError) as exc:
            log.warning("operator secret %s unreadable (%s): no operator access until it is", self.path, exc)
            secret = b""
        if secret != self._secret:
            self._secret = secret
            self._sessions.clear()

    def check_secret(self, given: str) -> bool:
        """Whether ``given`` is the operator secret (constant time)."""
        self._follow()
        if not self._secret:
            return False
        # headers arrive decoded with surrogate escapes: bytes that are not UTF-8 compare, unequal
        return hmac.compare_digest(given.strip().encode("utf-8", "surrogateescape"), self._secret)

    def check_bearer(self, header: str | None) -> bool:
        if not header:
            return False
        scheme, _, value = header.partition(" ")
        return scheme.lower() == "bearer" and self.check_secret(value)

    def new_session(self) -> str:
        now = self.clock()
        self._sessions = {s: t for s, t in self._sessions.items() if t > now}
        while len(self._sessions) >= MAX_SESSIONS:
            self._sessions.pop(min(self._sessions, key=self._sessions.__getitem__))
        sid = secrets.token_urlsafe(32)
        self._sessions[sid] = now + SESSION_TTL_S
        return sid

    def check_session(self, sid: str | None) -> bool:
        self._follow()
        if not sid:
            return False
        expiry = None
        for known, t in self._sessions.items():  # compare every id in constant time, not a dict lookup
            if hmac.compare_digest(known.encode(), sid.encode("utf-8", "surrogateescape")):
                expiry = t
        return expiry is not None and expiry > self.clock()

    def end_session(self, sid: str | None) -> None:
        if sid:
            self._sessions.pop(sid, None)

    def failed(self, source: str) -> None:
        now = self.clock()
        recent = [t for t in self._failures.get(source, []) if t > now - FAILURE_WINDOW_S]
        recent.append(now)
        self._failures[source] = recent
        if len(self._failures) > 10_000:
            self._failures.clear()

    def locked_out(self, source: str) -> bool:
        now = self.clock()
        return len([t for t in self._failures.get(source, []) if t > now - FAILURE_WINDOW_S]) >= MAX_FAILURES
