"""The device's durable state, portable (MicroPython and CPython).

What it holds: the resumption ticket (TCP link), the datagram context (UDP link), the last request sequence accepted, the
revocations pushed by the gateway (revocation hashes of tags with their
expiries), the twin (the highest desired version applied, the values, whether
the gateway still has to hear of it) and the request/response store that makes
delivery at-least-once with dedupe. Each request id moves through::

    stored   received and stored; ACKed to the gateway (it may redeliver anyway)
    running  token verified, last_sequence advanced, the service function started
    done     response computed; sent on this or a later wake until the gateway ACKs
    acked    the gateway stored the response; kept (bounded) to answer redeliveries

A crash leaves ``running`` entries behind; the next wake re-runs them when the
method is read-only or idempotent and answers INTERRUPTED otherwise (dev_core).

Persistence is a store object with ``load() -> dict | None`` and ``save(dict)``:
a JSON file replaced atomically on CPython (firmware/runtime/state.py), two
alternating MAC'd slots on a board's flash (dev_store.py). Bytes are kept as
base64 text so the dict is plain JSON on both.
"""

import binascii

STATE_VERSION = 1
MAX_ENTRIES = 256       # stored + running + done; beyond, requests are not ACKed (redelivered later)
MAX_ACKED = 64          # answered-and-acknowledged entries kept to answer redeliveries
# Revocations kept: an entry goes once its token has expired (the expiry
# constraint refuses the token from then on anyway). When the list is full of
# unexpired entries, the one expiring soonest is dropped and counted: the
# device is the second line; its gateway keeps the full list.
MAX_REVOKED = 1024
NEVER = 2**62  # the expiry of a revocation pushed without one (needs long ints: dev_boot)

STORED, RUNNING, DONE, ACKED = "stored", "running", "done", "acked"


def b64(data):
    return binascii.b2a_base64(data).decode().strip()


def unb64(text):
    return binascii.a2b_base64(text)


def hexs(data):
    return binascii.hexlify(data).decode()


def unhex(text):
    return binascii.unhexlify(text)


def _seq_key(item):
    return (item[1]["sequence"], item[1]["t"])


class DevState:
    """Load, change, ``save()``. Entries are dicts keyed by request id hex."""

    max_entries = MAX_ENTRIES
    max_acked = MAX_ACKED
    max_revoked = MAX_REVOKED

    def __init__(self, store):
        self.backend = store
        self.ticket = None          # {"id" hex, "secret" b64, "expires_at_ms"}
        self.last_sequence = None
        self.entries = {}
        self.revoked = []           # [revocation hash hex, expiry s], oldest first
        self.revoked_dropped = 0    # unexpired entries dropped because the list was full
        # desired: what was applied (key -> JSON text); reported: our own properties changed
        # since the gateway last ACKed a report (key -> JSON text, None: removed); rv counts
        # those changes, so an ACK clears only what the acknowledged report carried
        self.twin = {"applied": 0, "desired": {}, "pending": False, "reported": {}, "rv": 0}
        # the datagram link's saved context (dev_dgram.py): wake counter, K_link, context id,
        # master secret and sequence; bytes as base64. Saved before each datagram leaves.
        self.dgram = {}
        self.load()

    def load(self):
        data = self.backend.load()
        if data is None:
            return
        if data.get("version") != STATE_VERSION:
            raise ValueError("unknown device state version")
        self.ticket = data.get("ticket")
        self.last_sequence = data.get("last_sequence")
        self.entries = data.get("entries") or {}
        # an older state held raw tag hex: those entries are dropped (the gateway pushes hashes again)
        self.revoked = [e for e in data.get("revoked") or [] if isinstance(e, list)]
        self.revoked_dropped = data.get("revoked_dropped", 0)
        self.dgram = data.get("dgram") or {}
        twin = data.get("twin")
        if twin:
            twin.setdefault("reported", {})
            twin.setdefault("rv", 0)
            self.twin = twin

    def to_dict(self):
        return {"version": STATE_VERSION, "ticket": self.ticket,
                "last_sequence": self.last_sequence, "entries": self.entries,
                "revoked": self.revoked, "revoked_dropped": self.revoked_dropped,
                "twin": self.twin, "dgram": self.dgram}

    def save(self):
        self.backend.save(self.to_dict())

    # -- ticket --

    def set_ticket(self, ticket_id, secret, expires_at_ms):
        self.ticket = {"id": hexs(ticket_id), "secret": b64(secret), "expires_at_ms": expires_at_ms}

    def take_ticket(self, now_ms):
        """The ticket (single use: forgotten here) if it has not expired."""
        t = self.ticket
        self.ticket = None
        if not t or t.get("expires_at_ms", 0) <= now_ms:
            return None
        return unhex(t["id"]), unb64(t["secret"])

    # -- revocations --

    def revoke(self, entries, now_s=None):
        """Keep pushed revocations: each a 32-byte revocation hash, optionally
        followed by its be64 expiry (Unix s). Expired ones are pruned; beyond
        ``max_revoked`` the soonest-expiring entry goes (see above)."""
        have = {}
        for e in self.revoked:
            have[e[0]] = e
        for raw in entries:
            if len(raw) < 32:
                continue
            h = hexs(raw[:32])
            expiry = int.from_bytes(raw[32:40], "big") if len(raw) >= 40 else NEVER
            if h in have:
                have[h][1] = max(have[h][1], expiry)
            else:
                have[h] = [h, expiry]
                self.revoked.append(have[h])
        if now_s is not None:
            self.revoked = [e for e in self.revoked if e[1] > now_s]
        while len(self.revoked) > self.max_revoked:
            self.revoked.remove(min(self.revoked, key=lambda e: e[1]))
            self.revoked_dropped += 1

    def revoked_set(self):
        """The revocation hashes in force (what check_request takes)."""
        return set(unhex(e[0]) for e in self.revoked)

    # -- twin --

    def apply_twin(self, changes, on_change=None):
        """Apply desired changes above our version, in version order; a change
        at or below it is a resend after a lost report. True when anything was
        new (the report is then pending until a RESPONSES carrying it is ACKed)."""
        tw = self.twin
        new = False
        for c in sorted(changes, key=lambda c: c["version"]):
            if c["version"] <= tw["applied"]:
                continue
            try:
                value = c["value"].decode() if c["value"] else None
            except UnicodeError:  # not JSON text (a buggy gateway): passed over, never the wake stopped
                tw["applied"] = c["version"]
                continue
            if value is None:
                tw["desired"].pop(c["key"], None)
            else:
                tw["desired"][c["key"]] = value
            tw["applied"] = c["version"]
            new = True
            if on_change is not None:
                on_change(c["key"], value)
        if new:
            tw["pending"] = True
        return new

    def report_twin(self, key, value_json):
        """Change one reported property (``value_json``: compact JSON text, None removes
        it); it goes to the gateway in the next RESPONSES, until a report is ACKed."""
        tw = self.twin
        tw["reported"][key] = value_json
        tw["rv"] += 1
        tw["pending"] = True

    def twin_report(self):
        rep = self.twin["reported"]
        return {"applied": self.twin["applied"], "replace": False,
                "reported": [{"key": k, "value": rep[k].encode() if rep[k] is not None else b"",
                              "version": 0} for k in sorted(rep)]}

    def twin_acked(self, rv):
        """The report sent at change count ``rv`` is stored at the gateway."""
        tw = self.twin
        if tw["rv"] == rv:  # nothing changed since: all of it arrived
            tw["reported"] = {}
            tw["pending"] = False

    # -- the request/response store --

    def open_count(self):
        n = 0
        for e in self.entries.values():
            if e["state"] != ACKED:
                n += 1
        return n

    def store_request(self, item, sequence, now_ms):
        self.entries[hexs(item["request_id"])] = {
            "state": STORED, "service": item["service"], "method": item["method"],
            "args": b64(item["args"]), "token": b64(item["request_token"]),
            "expires_at_ms": item["expires_at_ms"], "sequence": sequence, "t": now_ms}

    def finish(self, rid, status, payload=b"", error=""):
        e = self.entries[rid]
        e["state"] = DONE
        e["status"] = status
        e["payload"] = b64(payload)
        e["error"] = error
        for k in ("args", "token"):
            e.pop(k, None)

    def acked(self, ids):
        for rid in ids:
            e = self.entries.get(hexs(rid))
            if e is not None and e["state"] == DONE:
                e["state"] = ACKED
        old = sorted([(k, e) for k, e in self.entries.items() if e["state"] == ACKED],
                     key=lambda ke: ke[1]["t"])
        for k, _ in old[:max(len(old) - self.max_acked, 0)]:
            del self.entries[k]

    def response(self, rid):
        e = self.entries[rid]
        return {"request_id": unhex(rid), "status": e["status"],
                "payload": unb64(e["payload"]), "error": e["error"]}

    def request(self, rid):
        e = self.entries[rid]
        return {"request_id": unhex(rid), "service": e["service"], "method": e["method"],
                "args": unb64(e["args"]), "request_token": unb64(e["token"]),
                "expires_at_ms": e["expires_at_ms"]}

    def with_state(self, *states):
        """Request ids in these states, in sequence order."""
        return [k for k, _ in sorted([(k, e) for k, e in self.entries.items() if e["state"] in states],
                                     key=_seq_key)]
