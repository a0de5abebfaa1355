"""Entries as objects: the CPython API over the verification core's value tuples.

The core (``cap_caps`` for capabilities, ``cap_cons`` for constraints) parses
every entry into a value tuple ``(code, raw, field, ...)`` and decides the
subset relation on those; a board ships only the core. Here each entry code
has an immutable object form for minting, deriving and showing tokens:
``Service("thermo", ["read"])`` encodes its payload, ``.raw`` is the entry's
exact bytes (equality and hashing use them, never a re-encoding),
``.fields()`` a dict for inspection and JSON, ``.within(parent)`` the core's
relation on the two value tuples. ``cap_from_value`` / ``con_from_value``
build the object of a value tuple the core scanned.

Entries are values: treat them as read-only (fields are exposed as properties).
"""

from .cap_caps import (
    ADMIN, DIGEST_SIZE, ENCRYPTION, IDENTITY, INVOKE, NONCE_MAX, NONCE_MIN, READ, REGION,
    REQUEST, RESOURCE, ROOT, SERVICE, WILDCARD, WRITE, check_methods, entry_bytes, within,
)
from .cap_caps import (
    AUTHORISED_BY, BOUND_TO, CONSTRAINT_BIT, ENDPOINT, EXPIRES_AT, GATEWAY, NOT_BEFORE,
    REQUIRE_IDENTITY, SEQUENCE_WINDOW,
)
from .cap_cons import MAX_AUTHORISED_BY
from .cap_wire import put_bytes, put_varint
from . import cap_h3

RIGHT_LETTERS = (("r", READ), ("w", WRITE), ("x", INVOKE), ("a", ADMIN))


def put_str(out, text):
    """Append a length-prefixed UTF-8 string (the core reads it: ``cap_wire.get_str``)."""
    put_bytes(out, text.encode("utf-8"))


def hexstr(data):
    return "".join(["%02x" % b for b in data])


class Entry:
    """Base of capabilities and constraints: a typed, immutable frame entry."""

    __slots__ = ("_raw",)
    code = 0
    name = "entry"
    is_constraint = False
    is_leaf = False  # a frame holding it cannot be derived further

    @property
    def raw(self):
        """The entry's exact bytes (code, length, payload)."""
        return self._raw

    def __eq__(self, other):
        return isinstance(other, Entry) and self._raw == other._raw

    def __ne__(self, other):
        return not self.__eq__(other)

    def __hash__(self):
        return hash(self._raw)

    def __repr__(self):
        return "%s(%r)" % (type(self).__name__, self.fields())

    def fields(self):
        """The entry's fields as a dict (for inspection and JSON)."""
        return {}

    def value_tuple(self):
        """The entry's value tuple ``(code, raw, field, ...)``."""
        return (self.code, self._raw)

    def within(self, parent):
        """True when this capability is a subset of ``parent``."""
        return within(self.value_tuple(), parent.value_tuple())


class Root(Entry):
    """All rights of the origin."""

    __slots__ = ()
    code = ROOT
    name = "root"

    def __init__(self, raw=None):
        self._raw = raw if raw is not None else entry_bytes(ROOT, b"")


class Service(Entry):
    """Invoke the listed methods (or "*": all) of one service type."""

    __slots__ = ("_type", "_methods")
    code = SERVICE
    name = "service"

    def __init__(self, service_type, methods, raw=None):
        if raw is None:
            methods = tuple(sorted(set(methods)))
            check_methods(service_type, methods, ValueError)
            out = bytearray()
            put_str(out, service_type)
            put_varint(out, len(methods))
            for m in methods:
                put_str(out, m)
            raw = entry_bytes(SERVICE, out)
        self._type = service_type
        self._methods = methods
        self._raw = raw

    service_type = property(lambda self: self._type)
    methods = property(lambda self: self._methods)

    def fields(self):
        return {"service": self._type, "methods": list(self._methods)}

    def value_tuple(self):
        return (SERVICE, self._raw, self._type, self._methods)


class Resource(Entry):
    """Rights (bitmap: READ, WRITE, INVOKE, ADMIN) on a path prefix."""

    __slots__ = ("_prefix", "_rights")
    code = RESOURCE
    name = "resource"

    def __init__(self, prefix, rights, raw=None):
        if raw is None:
            out = bytearray()
            put_str(out, prefix)
            put_varint(out, rights)
            raw = entry_bytes(RESOURCE, out)
        self._prefix = prefix
        self._rights = rights
        self._raw = raw

    prefix = property(lambda self: self._prefix)
    rights = property(lambda self: self._rights)

    def fields(self):
        return {"prefix": self._prefix, "rights": rights_text(self._rights)}

    def value_tuple(self):
        return (RESOURCE, self._raw, self._prefix, self._rights)


def rights_text(rights):
    """Rights bitmap as letters, e.g. 3 -> "rw"."""
    text = ""
    for letter, bit in RIGHT_LETTERS:
        if rights & bit:
            text += letter
    extra = rights & ~(READ | WRITE | INVOKE | ADMIN)
    if extra:
        text += "+0x%x" % extra
    return text


class Region(Entry):
    """Everything within one H3 cell (a child cell is a subset of its parent)."""

    __slots__ = ("_cell",)
    code = REGION
    name = "region"

    def __init__(self, cell, raw=None):
        if raw is None:
            if not cap_h3.is_valid_cell(cell):
                raise ValueError("not a valid H3 cell: %r" % (cell,))
            out = bytearray()
            put_varint(out, cell)
            raw = entry_bytes(REGION, out)
        self._cell = cell
        self._raw = raw

    cell = property(lambda self: self._cell)

    def fields(self):
        return {"cell": "%x" % self._cell}

    def value_tuple(self):
        return (REGION, self._raw, self._cell)


class Identity(Entry):
    """Proof that the holder is the named identity."""

    __slots__ = ("_identity",)
    code = IDENTITY
    name = "identity"

    def __init__(self, identity, raw=None):
        if raw is None:
            if not identity:
                raise ValueError("empty identity")
            out = bytearray()
            put_str(out, identity)
            raw = entry_bytes(IDENTITY, out)
        self._identity = identity
        self._raw = raw

    identity = property(lambda self: self._identity)

    def fields(self):
        return {"identity": self._identity}

    def value_tuple(self):
        return (IDENTITY, self._raw, self._identity)


class Request(Entry):
    """Exactly one operation: service type, method, SHA-256 of the arguments,
    sequence number. A leaf: no capability is within it."""

    __slots__ = ("_service", "_method", "_digest", "_sequence")
    code = REQUEST
    name = "request"
    is_leaf = True

    def __init__(self, service, method, digest, sequence, raw=None):
        if raw is None:
            if not service or not method or method == WILDCARD:
                raise ValueError("a request names one service type and one method")
            if len(digest) != DIGEST_SIZE:
                raise ValueError("argument digest must be 32 bytes")
            out = bytearray()
            put_str(out, service)
            put_str(out, method)
            out.extend(digest)
            put_varint(out, sequence)
            raw = entry_bytes(REQUEST, out)
        self._service = service
        self._method = method
        self._digest = digest
        self._sequence = sequence
        self._raw = raw

    service = property(lambda self: self._service)
    method = property(lambda self: self._method)
    digest = property(lambda self: self._digest)
    sequence = property(lambda self: self._sequence)

    def fields(self):
        return {"service": self._service, "method": self._method,
                "digest": hexstr(self._digest), "sequence": self._sequence}

    def value_tuple(self):
        return (REQUEST, self._raw, self._service, self._method, self._digest, self._sequence)


class Encryption(Entry):
    """Key-exchange capability (carries a fresh nonce). Derivable from any
    capability but never derivable itself."""

    __slots__ = ("_nonce",)
    code = ENCRYPTION
    name = "encryption"
    is_leaf = True

    def __init__(self, nonce, raw=None):
        if raw is None:
            if not NONCE_MIN <= len(nonce) <= NONCE_MAX:
                raise ValueError("nonce must be 16 to 32 bytes")
            raw = entry_bytes(ENCRYPTION, nonce)
        self._nonce = nonce
        self._raw = raw

    nonce = property(lambda self: self._nonce)

    def fields(self):
        return {"nonce": hexstr(self._nonce)}

    def value_tuple(self):
        return (ENCRYPTION, self._raw, self._nonce)



_CAP_CLASSES = {
    ROOT: lambda t: Root(t[1]),
    SERVICE: lambda t: Service(t[2], t[3], t[1]),
    RESOURCE: lambda t: Resource(t[2], t[3], t[1]),
    REGION: lambda t: Region(t[2], t[1]),
    IDENTITY: lambda t: Identity(t[2], t[1]),
    REQUEST: lambda t: Request(t[2], t[3], t[4], t[5], t[1]),
    ENCRYPTION: lambda t: Encryption(t[2], t[1]),
}


def cap_from_value(t):
    """The capability object of a value tuple."""
    return _CAP_CLASSES[t[0]](t)


# ---- constraints: compared only verbatim, never by subset ---------------------------

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


_CON_CLASSES = {
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
    make = _CON_CLASSES.get(t[0])
    if make is None:
        return UnknownConstraint(t[0], t[2], t[1])
    return make(t)
