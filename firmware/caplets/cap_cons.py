"""Constraints (MicroPython-compatible core).

Constraints are entries with codes from 0x80 (the codes are defined in
``cap_caps`` with the capability codes). They are never compared by subset:
every constraint of a frame must reappear *verbatim* (the same entry bytes) in
the next frame, and the leaf's constraints are checked against a context by
``cap_verify``. Unknown constraint codes are kept (so they can be carried and
shown) and always fail when checked: they fail closed.

As for capabilities, the scanners here validate a payload into the value tuple
``(code, raw, field, ...)`` the verifier uses; the object forms are the CPython
API (``cap_entries``), built from those tuples.
"""

from .cap_errors import MalformedToken
from .cap_wire import get_varint, get_str
from .cap_caps import (
    DIGEST_SIZE, EXPIRES_AT, NOT_BEFORE, ENDPOINT, GATEWAY, REQUIRE_IDENTITY, BOUND_TO,
    SEQUENCE_WINDOW, AUTHORISED_BY,
)


MAX_AUTHORISED_BY = 16


# ---- decoding: constraint payloads -> value tuples --------------------------------
# Same contract as the capability scanners of cap_caps.

def _trailing(p, stop, name):
    if p != stop:
        raise MalformedToken("trailing bytes in %s entry" % name)


def _s_int(name):
    def scan(buf, p, stop, raw):
        value, p = get_varint(buf, p, stop)
        if p != stop:
            raise MalformedToken("trailing bytes in %s entry" % name)
        return (raw[0], raw, value)
    return scan


def _s_str(name):
    def scan(buf, p, stop, raw):
        value, p = get_str(buf, p, stop)
        if not value:
            raise MalformedToken("empty %s" % name)
        if p != stop:
            raise MalformedToken("trailing bytes in %s entry" % name)
        return (raw[0], raw, value)
    return scan


def _s_bound(buf, p, stop, raw):
    if stop - p != DIGEST_SIZE:
        raise MalformedToken("bound tag must be 32 bytes")
    return (BOUND_TO, raw, bytes(buf[p:stop]))


def _s_window(buf, p, stop, raw):
    low, p = get_varint(buf, p, stop)
    high, p = get_varint(buf, p, stop)
    if high <= low:
        raise MalformedToken("empty sequence window")
    _trailing(p, stop, "sequence_window")
    return (SEQUENCE_WINDOW, raw, low, high)


def _s_authorised(buf, p, stop, raw):
    # any length in range, as the C scanner's ("r", lo, hi) layout; the
    # verifier refuses a payload that is not whole hashes (fails closed)
    if not DIGEST_SIZE <= stop - p <= DIGEST_SIZE * MAX_AUTHORISED_BY:
        raise MalformedToken("authorised_by holds 1..%d hashes" % MAX_AUTHORISED_BY)
    return (AUTHORISED_BY, raw, bytes(buf[p:stop]))


SCANNERS = {
    AUTHORISED_BY: _s_authorised,
    EXPIRES_AT: _s_int("expires_at"),
    NOT_BEFORE: _s_int("not_before"),
    ENDPOINT: _s_str("endpoint"),
    GATEWAY: _s_str("gateway"),
    REQUIRE_IDENTITY: _s_str("require_identity"),
    BOUND_TO: _s_bound,
    SEQUENCE_WINDOW: _s_window,
}


def scan_unknown(buf, p, stop, raw):
    """An unknown constraint code: kept with its payload (fails closed)."""
    return (raw[0], raw, bytes(buf[p:stop]))
