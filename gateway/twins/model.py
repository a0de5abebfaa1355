"""Device twins: the rules (pure: no I/O, no clock of its own; docs/TWINS.md).

Theory of operation
-------------------
A twin is a :class:`~edgistry.gateway.store.records.Twin` record at the
device's gateway. Every desired change gets a *version* from one rising
sequence per twin (``max(now_ms, last + 1)``, so versions keep rising even
if a twin is dropped and made again, e.g. across an unpair and re-pair), and
the device keeps one number, ``applied``: it has applied every desired change
up to that version. The delta a waking device gets is therefore exactly the
current entries above the ``applied`` it last reported, in version order;
a prefix of that list is again a valid delta, so it may be split over frames.
Nothing is pushed and forgotten: a device that sleeps through any number of
changes, or a gateway restart, gets the latest value of every key it has not
applied, once, at its next wake (AWS and Azure notify deltas as messages, and
a device offline at the time must re-read the whole document to notice).

Writers compare and set per key: a change may name the version it expects
(``if_version``; 0: the key must not exist) and the whole set is refused when
any key moved on (VersionConflict). A change keeps the revocation hashes of the
token chain that made it (``chain``): until the device has applied it, a
revocation of any of them *withdraws* it (:func:`withdraw`), and the key goes back
to the newest entry that still stands, under a new version, so a device that
raced the revocation is put back too. That is why a key keeps its undelivered
entries (at most ``MAX_PENDING``) and the last applied one; everything older
is pruned when the device reports.

Sizes are bounded so a device can hold its twin in a small heap: at most
``MAX_KEYS`` keys of at most ``MAX_KEY_BYTES``, and ``MAX_STATE_BYTES`` of keys
and JSON values, for the desired and for the reported state alike. Deletions the
device has not applied yet are bounded the same way, apart (they wait in the
record and travel in the next delta); deleting a key the desired state does not
hold writes nothing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Container, Iterable
from dataclasses import dataclass

import msgspec

from ..errors import BadRequest, VersionConflict

MAX_KEYS = 32
MAX_KEY_BYTES = 64
MAX_STATE_BYTES = 2048  # keys + compact JSON values, of the desired and of the reported state
MAX_PENDING = 4  # undelivered entries kept per key: what a revocation can fall back to
KEY_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
DELETED = b""  # an entry's value when the change deletes the key

RECORD_FORMAT = b"\x01"  # as the store's other records: a format byte and a MessagePack array of the fields


class Twin(msgspec.Struct, array_like=True):
    """A device's twin as the store keeps it (``w/<link16>``).

    ``desired``: key -> entries ``[value, version, chain, set_ms]``, oldest
    first, the last one current (value b"" marks a deletion); earlier entries
    are kept only while a revocation could still withdraw the later ones.
    ``reported``: key -> ``[value, version, at_ms]``. ``applied``: the device's
    word that every desired change up to that version is applied;
    ``applied_max`` the highest it ever said. Fields are only ever appended."""

    version: int = 0  # the last version issued (desired changes and reports share the sequence)
    applied: int = 0
    applied_max: int = 0
    applied_ms: int = 0
    desired: dict = msgspec.field(default_factory=dict)
    reported: dict = msgspec.field(default_factory=dict)
    reported_ms: int = 0
    report_error: str = ""

    def dump(self) -> bytes:
        return RECORD_FORMAT + _PACK(self)

    @classmethod
    def load(cls, raw: bytes) -> Twin:
        if raw[:1] != RECORD_FORMAT:
            raise ValueError("not a twin record")
        try:
            return _UNPACK(raw[1:])
        except msgspec.DecodeError as exc:
            raise ValueError(f"corrupt twin record: {exc}") from exc


_PACK = msgspec.msgpack.Encoder().encode
_UNPACK = msgspec.msgpack.Decoder(Twin).decode
_JSON_IN = msgspec.json.Decoder()
_JSON_OUT = msgspec.json.Encoder()

# entry fields (a stored entry is a list: records are MessagePack arrays)
VALUE, VERSION, CHAIN, AT = 0, 1, 2, 3


@dataclass(frozen=True)
class Change:
    """One desired change: ``value`` compact JSON (None: delete the key);
    ``if_version``: the version the writer expects (0: absent; None: any)."""

    key: str
    value: bytes | None
    if_version: int | None = None


def check_key(key: str) -> str:
    if not isinstance(key, str) or not KEY_RE.fullmatch(key):
        raise BadRequest(f"twin key {str(key)[:80]!r}: 1..{MAX_KEY_BYTES} of letters, digits, '_', '.', '-' "
                         "(not starting with '.' or '-')")
    return key


def canonical_value(raw: bytes | str) -> bytes | None:
    """A value as compact JSON; JSON ``null`` means "delete" (None). BadRequest unless JSON."""
    if isinstance(raw, str):
        raw = raw.encode()
    try:
        value = _JSON_IN.decode(raw)
    except (msgspec.DecodeError, RecursionError):
        try:  # msgspec refuses a little valid JSON (huge numbers): json's verdict then
            value = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise BadRequest(f"a twin value is JSON: {exc}") from exc
        return None if value is None else json.dumps(value, separators=(",", ":")).encode()
    return None if value is None else _JSON_OUT.encode(value)


def next_version(twin: Twin, now_ms: int) -> int:
    """The next version of this twin's one rising sequence."""
    twin.version = max(now_ms, twin.version + 1)
    return twin.version


def current(twin: Twin, key: str) -> list | None:
    """The key's current entry (possibly a deletion), or None."""
    entries = twin.desired.get(key)
    return entries[-1] if entries else None


def visible_version(twin: Twin, key: str) -> int:
    """The version a reader sees for ``key`` (0 when absent or deleted): what ``if_version`` compares."""
    e = current(twin, key)
    return e[VERSION] if e is not None and e[VALUE] != DELETED else 0


def state_size(props: Iterable[tuple[str, bytes]]) -> tuple[int, int]:
    """(keys, bytes) of a state given as (key, value) pairs; deletions do not count."""
    n = size = 0
    for key, value in props:
        if value != DELETED:
            n += 1
            size += len(key.encode()) + len(value)
    return n, size


def _check_size(what: str, props: dict[str, bytes]) -> None:
    n, size = state_size(props.items())
    if n > MAX_KEYS:
        raise BadRequest(f"the {what} state would hold {n} keys, at most {MAX_KEYS}")
    if size > MAX_STATE_BYTES:
        raise BadRequest(f"the {what} state would be {size} bytes of keys and JSON values, at most "
                         f"{MAX_STATE_BYTES} (a device holds its twin in a small heap)")


def set_desired(twin: Twin, changes: list[Change], chain: Iterable[bytes], now_ms: int) -> list[tuple[str, int]]:
    """Apply ``changes`` all or none (checks first); returns (key, version) of each.
    ``chain``: the revocation hashes of the token chain that made them."""
    if not changes:
        raise BadRequest("no change given")
    keys = [check_key(c.key) for c in changes]
    if len(set(keys)) != len(keys):
        raise BadRequest("a key appears twice in one change set")
    stale = [(c.key, c.if_version, visible_version(twin, c.key)) for c in changes
             if c.if_version is not None and c.if_version != visible_version(twin, c.key)]
    if stale:
        key, want, have = stale[0]
        raise VersionConflict(f"twin key {key!r} is at version {have}, not {want}: read the twin again and retry")
    # deleting what the desired state does not hold (absent, or deleted already) writes nothing
    noop = {c.key for c in changes if c.value is None and visible_version(twin, c.key) == 0}
    after = {k: e[-1][VALUE] for k, e in twin.desired.items() if e}
    after.update({c.key: DELETED if c.value is None else c.value for c in changes if c.key not in noop})
    _check_size("desired", after)
    # deletions wait in the record until the device applies them: bounded apart (a
    # report's deletions take effect at once and never wait, so only the desired side)
    gone = [k for k, v in after.items() if v == DELETED]
    if len(gone) > MAX_KEYS or sum(len(k.encode()) for k in gone) > MAX_STATE_BYTES:
        raise BadRequest(f"the desired state would hold {len(gone)} deletions the device has not applied yet, "
                         f"at most {MAX_KEYS} keys ({MAX_STATE_BYTES} bytes): they go when it wakes")
    chain = list(chain)
    out = []
    for c in changes:
        if c.key in noop:
            out.append((c.key, 0))
            continue
        entries = twin.desired.setdefault(c.key, [])
        v = next_version(twin, now_ms)
        entries.append([DELETED if c.value is None else c.value, v, chain, now_ms])
        _trim(entries, twin.applied_max)
        out.append((c.key, v))
    return out


def _trim(entries: list[list], applied_max: int) -> None:
    """Drop undelivered entries that no revocation could ever fall back to: one
    whose chain holds every hash of a later one's (if the later one is withdrawn,
    so is it), and, beyond ``MAX_PENDING``, the oldest."""
    pending = [e for e in entries if e[VERSION] > applied_max]
    keep: list[list] = []
    for i, e in enumerate(pending):
        later = pending[i + 1:]
        if any(set(map(bytes, x[CHAIN])) <= set(map(bytes, e[CHAIN])) for x in later):
            continue
        keep.append(e)
    keep = keep[-MAX_PENDING:]
    base = [e for e in entries if e[VERSION] <= applied_max][-1:]
    entries[:] = base + keep


def delta(twin: Twin, after: int, barred: Container[bytes] = ()) -> tuple[list[tuple[str, bytes, int]], list[bytes]]:
    """The current entries above version ``after``, ascending: (key, value, version)
    (value b"" deletes the key). It stops before the first entry made under a
    token whose chain holds a ``barred`` hash, and then returns those hashes too (withdraw first);
    a change the device applied once is past revocation (a device that lost its
    state gets it again)."""
    ahead = sorted((e[VERSION], k, e) for k, entries in twin.desired.items() if entries
                   for e in entries[-1:] if e[VERSION] > after)
    out = []
    for version, key, e in ahead:
        hit = [bytes(t) for t in e[CHAIN] if bytes(t) in barred] if barred and version > twin.applied_max else []
        if hit:
            return out, hit
        out.append((key, bytes(e[VALUE]), version))
    return out, []


def withdraw(twin: Twin, revoked: Container[bytes], now_ms: int) -> list[str]:
    """Withdraw every undelivered entry made under a token whose chain holds a revoked hash;
    a key whose current entry went is set back, under a new version, to the
    newest entry left (deleted when none). Returns the keys set back."""
    out = []
    for key in sorted(twin.desired):
        entries = twin.desired[key]
        bad = [e for e in entries if e[VERSION] > twin.applied_max and any(bytes(t) in revoked for t in e[CHAIN])]
        if not bad:
            continue
        was = entries[-1]
        entries[:] = [e for e in entries if not any(e is b for b in bad)]
        if any(was is b for b in bad):
            left = entries[-1] if entries else None
            value = left[VALUE] if left is not None else DELETED
            chain = left[CHAIN] if left is not None and left[VERSION] > twin.applied_max else []
            entries.append([value, next_version(twin, now_ms), chain, now_ms])
            out.append(key)
    return out


def report(twin: Twin, applied: int, props: list[tuple[str, bytes]], replace: bool, now_ms: int) -> bool:
    """A device's report: it has applied every desired change up to ``applied``
    (clamped to what was ever issued; it may go down: a device that lost its
    state says so), and its reported properties (``props``, (key, JSON value),
    b"" or JSON null deleting; ``replace``: they are the whole state). A bad
    property set is kept out (``report_error`` says why); ``applied`` counts
    anyway. Returns whether anything changed."""
    changed = False
    applied = max(0, min(applied, twin.version))
    if applied != twin.applied:
        twin.applied, twin.applied_ms, changed = applied, now_ms, True
    if applied > twin.applied_max:
        twin.applied_max = applied
        prune(twin)
    if not props and not replace:
        return changed
    try:
        patch = {}
        for key, value in props:
            check_key(key)
            patch[key] = DELETED if value in (b"", b"null") else canonical_value(value) or DELETED
        if len(patch) != len(props):
            raise BadRequest("a key appears twice in one report")
        after = {} if replace else {k: bytes(v[VALUE]) for k, v in twin.reported.items()}
        after.update(patch)
        _check_size("reported", after)
    except BadRequest as exc:
        if twin.report_error != str(exc):
            twin.report_error, changed = str(exc), True
        return changed
    after = {k: v for k, v in after.items() if v != DELETED}
    old = {k: bytes(v[VALUE]) for k, v in twin.reported.items()}
    if twin.report_error:
        twin.report_error, changed = "", True
    if after == old:
        return changed
    v = next_version(twin, now_ms)
    twin.reported = {k: (twin.reported[k] if old.get(k) == val else [val, v, now_ms])
                     for k, val in sorted(after.items())}
    twin.reported_ms = now_ms
    return True


def prune(twin: Twin) -> None:
    """Forget what no delta and no revocation needs: per key, entries older than
    the last applied one, and a deletion the device has applied."""
    for key in list(twin.desired):
        entries = twin.desired[key]
        _trim(entries, twin.applied_max)
        if len(entries) == 1 and entries[0][VALUE] == DELETED and entries[0][VERSION] <= twin.applied_max:
            del twin.desired[key]


def pending_hashes(twin: Twin) -> set[bytes]:
    """The revocation hashes of every undelivered entry (what the store indexes for revocation)."""
    return {bytes(t) for entries in twin.desired.values() for e in entries
            if e[VERSION] > twin.applied_max for t in e[CHAIN]}


def view(twin: Twin) -> dict:
    """The twin as its readers see it (deleted keys absent; ``delivered``: applied by the device)."""
    desired = {}
    for key, entries in sorted(twin.desired.items()):
        e = entries[-1] if entries else None
        if e is not None and e[VALUE] != DELETED:
            desired[key] = {"value": bytes(e[VALUE]), "version": e[VERSION], "set_ms": e[AT],
                            "applied": e[VERSION] <= twin.applied}
    reported = {k: {"value": bytes(v[VALUE]), "version": v[1], "at_ms": v[2]} for k, v in sorted(twin.reported.items())}
    waiting = sum(1 for entries in twin.desired.values() if entries and entries[-1][VERSION] > twin.applied)
    return {"version": twin.version, "applied": twin.applied, "applied_ms": twin.applied_ms, "pending": waiting,
            "desired": desired, "reported": reported, "reported_ms": twin.reported_ms,
            "report_error": twin.report_error}
