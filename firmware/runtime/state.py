"""The device's durable runtime state: ``<home>/state.json``.

What it holds: the resumption ticket, the last request sequence accepted,
the revocations pushed by the gateway (revocation hashes of tags, never tags,
with their expiries), and the request/response store that
makes delivery at-least-once with dedupe. Each request id moves through::

    stored   received and stored; ACKed to the gateway (it may redeliver anyway)
    running  token verified, last_sequence advanced, the service function started
    done     response computed; sent on this or a later wake until the gateway ACKs
    acked    the gateway stored the response; kept (bounded) to answer redeliveries

A crash leaves ``running`` entries behind; on the next wake they are re-run
when the method is read-only or idempotent, and answered "interrupted,
outcome unknown" otherwise (see device.py).

Why a JSON file: the state is small (a ticket, a counter, a bounded set of
entries), it is written at a handful of points per request, and every write
is one atomic replace (temp file, fsync, rename, fsync of the directory), so
a kill -9 leaves either the old or the new state, never a torn one. It needs
nothing beyond the standard library and keeps the same shape a MicroPython
device would write with ``json`` on its flash filesystem; sqlite or LMDB
would add a dependency for no gain at this size.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

from .home import write_json

STATE_VERSION = 1
MAX_ENTRIES = 256       # stored + running + done; beyond, requests are not ACKed (redelivered later)
MAX_ACKED = 64          # answered-and-acknowledged entries kept to answer redeliveries
# Revocations kept: an entry goes once its token has expired (the expiry
# constraint refuses the token from then on anyway). When the list is full of
# unexpired entries, the one expiring soonest is dropped and counted
# (``revoked_dropped``): the device is the second line, and its gateway, which
# keeps the full list, still refuses every request made with that token.
MAX_REVOKED = 1024
NEVER = 2**62  # the expiry of a revocation pushed without one

STORED, RUNNING, DONE, ACKED = "stored", "running", "done", "acked"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"))


class DeviceState:
    """Load, change, ``save()``. Entries are dicts keyed by request id hex."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.ticket: dict | None = None         # {"id", "secret" (b64), "expires_at_ms"}
        self.last_sequence: int | None = None
        self.entries: dict[str, dict] = {}
        self.revoked: list[list] = []           # [revocation hash hex, expiry s], oldest first
        self.revoked_dropped = 0                # unexpired entries dropped because the list was full
        self.load()

    def load(self) -> None:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return
        if data.get("version") != STATE_VERSION:
            raise ValueError(f"{self.path}: unknown state version")
        self.ticket = data.get("ticket")
        self.last_sequence = data.get("last_sequence")
        self.entries = data.get("entries", {})
        # an older state held raw tag hex: those entries are dropped (the gateway pushes hashes again)
        self.revoked = [e for e in data.get("revoked", []) if isinstance(e, list)]
        self.revoked_dropped = data.get("revoked_dropped", 0)

    def save(self) -> None:
        write_json(self.path, {"version": STATE_VERSION, "ticket": self.ticket,
                               "last_sequence": self.last_sequence, "entries": self.entries,
                               "revoked": self.revoked, "revoked_dropped": self.revoked_dropped}, 0o600)

    # -- ticket --

    def set_ticket(self, ticket_id: bytes, secret: bytes, expires_at_ms: int) -> None:
        self.ticket = {"id": ticket_id.hex(), "secret": b64(secret), "expires_at_ms": expires_at_ms}

    def take_ticket(self, now_ms: int) -> tuple[bytes, bytes] | None:
        """The ticket (single use: forgotten here) if it has not expired."""
        t, self.ticket = self.ticket, None
        if not t or t.get("expires_at_ms", 0) <= now_ms:
            return None
        return bytes.fromhex(t["id"]), unb64(t["secret"])

    # -- revocations --

    def revoke(self, entries: list[bytes], now_s: int | None = None) -> None:
        """Keep pushed revocations: each a 32-byte revocation hash, optionally
        followed by its be64 expiry (Unix s). Expired ones are pruned; beyond
        MAX_REVOKED the soonest-expiring entry goes (see above)."""
        have = {e[0]: e for e in self.revoked}
        for raw in entries:
            if len(raw) < 32:
                continue
            h = raw[:32].hex()
            expiry = int.from_bytes(raw[32:40], "big") if len(raw) >= 40 else NEVER
            if h in have:
                have[h][1] = max(have[h][1], expiry)
            else:
                have[h] = [h, expiry]
                self.revoked.append(have[h])
        if now_s is not None:
            self.revoked = [e for e in self.revoked if e[1] > now_s]
        while len(self.revoked) > MAX_REVOKED:
            self.revoked.remove(min(self.revoked, key=lambda e: e[1]))
            self.revoked_dropped += 1

    def revoked_set(self) -> set[bytes]:
        """The revocation hashes in force (what Context.revoked takes)."""
        return {bytes.fromhex(e[0]) for e in self.revoked}

    # -- the request/response store --

    def open_count(self) -> int:
        return sum(1 for e in self.entries.values() if e["state"] != ACKED)

    def store(self, item: dict, sequence: int, now_ms: int) -> None:
        self.entries[item["request_id"].hex()] = {
            "state": STORED, "service": item["service"], "method": item["method"],
            "args": b64(item["args"]), "token": b64(item["request_token"]),
            "expires_at_ms": item["expires_at_ms"], "sequence": sequence, "t": now_ms}

    def finish(self, rid: str, status: int, payload: bytes = b"", error: str = "") -> None:
        e = self.entries[rid]
        e.update(state=DONE, status=status, payload=b64(payload), error=error)
        for k in ("args", "token"):
            e.pop(k, None)

    def acked(self, ids: list[bytes]) -> None:
        for rid in ids:
            e = self.entries.get(rid.hex())
            if e is not None and e["state"] == DONE:
                e["state"] = ACKED
        old = sorted((k for k, e in self.entries.items() if e["state"] == ACKED),
                     key=lambda k: self.entries[k]["t"])
        for k in old[:max(len(old) - MAX_ACKED, 0)]:
            del self.entries[k]

    def response(self, rid: str) -> dict:
        e = self.entries[rid]
        return {"request_id": bytes.fromhex(rid), "status": e["status"],
                "payload": unb64(e["payload"]), "error": e["error"]}

    def request(self, rid: str) -> dict:
        e = self.entries[rid]
        return {"request_id": bytes.fromhex(rid), "service": e["service"], "method": e["method"],
                "args": unb64(e["args"]), "request_token": unb64(e["token"]),
                "expires_at_ms": e["expires_at_ms"]}

    def with_state(self, *states: str) -> list[str]:
        """Request ids in these states, in sequence order."""
        return sorted((k for k, e in self.entries.items() if e["state"] in states),
                      key=lambda k: (self.entries[k]["sequence"], self.entries[k]["t"]))
