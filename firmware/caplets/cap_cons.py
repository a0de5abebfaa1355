"""Constraints (MicroPython-compatible core).

Constraints are entries with codes from 0x80 (the codes are defined in
``cap_caps`` with the capability codes). They are never compared by subset:
every constraint of a frame must reappear *verbatim* (the same entry bytes) in
the next frame, and the leaf's constraints are checked against a context by
``cap_verify``. Unknown constraint codes are kept (so they can be carried and
shown) and always fail when checked: they fail closed.

As for capabilities, each constraint has an object form (the API) and a value
tuple ``(code, raw, field, ...)``; ``scan_con`` validates a payload into the
value tuple the verifier uses, and the classes are built from those tuples.
"""

try:
    from .cap_errors import MalformedToken
    from .cap_wire import put_varint, put_str, get_varint, get_str
    from .cap_caps import (
        Entry, entry_bytes, hexstr, CONSTRAINT_BIT, DIGEST_SIZE, EXPIRES_AT, NOT_BEFORE, ENDPOINT,
        GATEWAY, REQUIRE_IDENTITY, BOUND_TO, SEQUENCE_WINDOW, AUTHORISED_BY,
    )
except ImportError:
    from cap_errors import MalformedToken
    from cap_wire import put_varint, put_str, get_varint, get_str
    from cap_caps import (Entry, entry_bytes, hexstr, CONSTRAINT_BIT, DIGEST_SIZE,
                          EXPIRES_AT, NOT_BEFORE, ENDPOINT, GATEWAY, REQUIRE_IDENTITY,
                          BOUND_TO, SEQUENCE_WINDOW, AUTHORISED_BY)


class Constraint(Entry):
    """Base of constraints: compared only verbatim, never by subset."""

    __slots__ = ()
    is_constraint = True

    def within(self, parent):
        return False


class _ValueConstraint(Constraint):
    """A constraint holding one value, encoded by the subclass's ``_put``."""

    __slots__ = ("_value",)
    key = "value"

    def __init__(self, value, raw=None):
        if raw is None:
            out = bytearray()
            self._put(out, value)
            raw = entry_bytes(self.code, out)
        self._value = value
        self._raw = raw

    value = property(lambda self: self._value)

    def fields(self):
        return {self.key: self._value}

    def value_tuple(self):
        return (self.code, self._raw, self._value)


class _IntConstraint(_ValueConstraint):
    __slots__ = ()

    def _put(self, out, value):
        put_varint(out, value)


class ExpiresAt(_IntConstraint):
    """Valid only before this time (Unix seconds)."""

    __slots__ = ()
    code = EXPIRES_AT
    name = "expires_at"


class NotBefore(_IntConstraint):
    """Valid only from this time on (Unix seconds)."""

    __slots__ = ()
    code = NOT_BEFORE
    name = "not_before"


class _StrConstraint(_ValueConstraint):
    __slots__ = ()

    def _put(self, out, value):
        if not value:
            raise ValueError("empty %s" % self.name)
        put_str(out, value)


class Endpoint(_StrConstraint):
    """Valid only when presented from this network endpoint."""

    __slots__ = ()
    code = ENDPOINT
    name = "endpoint"
    key = "endpoint"


class Gateway(_StrConstraint):
    """Valid only at this gateway."""

    __slots__ = ()
    code = GATEWAY
    name = "gateway"
    key = "gateway"


class RequireIdentity(_StrConstraint):
    """Valid only beside an identity token of the same origin for this
    identity (itself bound to the presented token)."""

    __slots__ = ()
    code = REQUIRE_IDENTITY
    name = "require_identity"
    key = "identity"


class BoundTo(Constraint):
    """Signature binding of an auxiliary token: valid only beside the token
    whose tag it names."""

    __slots__ = ("_tag",)
    code = BOUND_TO
    name = "bound_to"

    def __init__(self, tag, raw=None):
        if raw is None:
            if len(tag) != DIGEST_SIZE:
                raise ValueError("bound tag must be 32 bytes")
            raw = entry_bytes(BOUND_TO, tag)
        self._tag = tag
        self._raw = raw

    tag = property(lambda self: self._tag)

    def fields(self):
        return {"tag": hexstr(self._tag)}

    def value_tuple(self):
        return (BOUND_TO, self._raw, self._tag)


class SequenceWindow(Constraint):
    """Valid only for request sequence numbers ``low <= s < high``."""

    __slots__ = ("_low", "_high")
    code = SEQUENCE_WINDOW
    name = "sequence_window"

    def __init__(self, low, high, raw=None):
        if raw is None:
            if high <= low:
                raise ValueError("empty sequence window")
            out = bytearray()
            put_varint(out, low)
            put_varint(out, high)
            raw = entry_bytes(SEQUENCE_WINDOW, out)
        self._low = low
        self._high = high
        self._raw = raw

    low = property(lambda self: self._low)
    high = property(lambda self: self._high)

    def fields(self):
        return {"low": self._low, "high": self._high}

    def value_tuple(self):
        return (SEQUENCE_WINDOW, self._raw, self._low, self._high)


# At most a full chain of the client token (cap_codec.MAX_FRAMES tags).
MAX_AUTHORISED_BY = 16


class AuthorisedBy(Constraint):
    """The revocation hashes (cap_crypto.revocation_hash) of every tag of the
    client token a gateway minted this request token for. Inside the request
    frame it is covered by the tag, so the gateway cannot be made to drop it
    in transit; the verifier refuses the token when any hash is revoked
    (cap_verify, step 4). It holds no condition of its own."""

    __slots__ = ("_hashes",)
    code = AUTHORISED_BY
    name = "authorised_by"

    def __init__(self, hashes, raw=None):
        hashes = tuple(hashes)
        if raw is None:
            if not 0 < len(hashes) <= MAX_AUTHORISED_BY or any(len(h) != DIGEST_SIZE for h in hashes):
                raise ValueError("authorised_by holds 1..%d 32-byte hashes" % MAX_AUTHORISED_BY)
            raw = entry_bytes(AUTHORISED_BY, b"".join(hashes))
        self._hashes = hashes
        self._raw = raw

    hashes = property(lambda self: self._hashes)

    def fields(self):
        return {"hashes": [hexstr(h) for h in self._hashes]}

    def value_tuple(self):
        return (AUTHORISED_BY, self._raw, b"".join(self._hashes))


class UnknownConstraint(Constraint):
    """A constraint type this verifier does not know: kept so it can be
    carried and shown, and always fails when checked (fail closed)."""

    __slots__ = ("_code", "_payload")
    name = "unknown"

    def __init__(self, code, payload, raw=None):
        if code < CONSTRAINT_BIT or code > 0xFF:
            raise ValueError("constraint codes are 0x80-0xff")
        self._code = code
        self._payload = payload
        self._raw = raw if raw is not None else entry_bytes(code, payload)

    code = property(lambda self: self._code)
    payload = property(lambda self: self._payload)

    def fields(self):
        return {"code": "0x%02x" % self._code, "payload": hexstr(self._payload)}

    def value_tuple(self):
        return (self._code, self._raw, self._payload)


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


_CLASSES = {
    EXPIRES_AT: lambda t: ExpiresAt(t[2], t[1]),
    NOT_BEFORE: lambda t: NotBefore(t[2], t[1]),
    ENDPOINT: lambda t: Endpoint(t[2], t[1]),
    GATEWAY: lambda t: Gateway(t[2], t[1]),
    REQUIRE_IDENTITY: lambda t: RequireIdentity(t[2], t[1]),
    BOUND_TO: lambda t: BoundTo(t[2], t[1]),
    SEQUENCE_WINDOW: lambda t: SequenceWindow(t[2], t[3], t[1]),
    AUTHORISED_BY: lambda t: AuthorisedBy(
        [t[2][i:i + DIGEST_SIZE] for i in range(0, len(t[2]), DIGEST_SIZE)], t[1]),
}


def con_from_value(t):
    """The constraint object of a value tuple."""
    make = _CLASSES.get(t[0])
    if make is None:
        return UnknownConstraint(t[0], t[2], t[1])
    return make(t)
