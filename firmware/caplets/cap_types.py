"""Capabilities, constraints and the subset relation (MicroPython-compatible core).

An *entry* is ``code:u8 | len:varint | payload``. Codes below 0x80 are
capabilities, codes from 0x80 constraints. Each entry keeps the exact bytes it
was read from (``raw``): equality, hashing and the "constraints reappear
verbatim" rule all work on those bytes, never on a re-encoding.

Subset relation (``child.within(parent)``; undefined pairs are not subsets):

=============  ==========================================================
child          within parent when
=============  ==========================================================
any            parent is ROOT
SERVICE        same service type; parent methods "*" or a superset
RESOURCE       prefix extends the parent's at a "/" boundary; rights a
               subset of the parent's rights bitmap
REGION         the H3 cell equals or lies inside the parent cell
IDENTITY       the same identity
REQUEST        SERVICE of the same type whose methods include the method
ENCRYPTION     any capability except REQUEST and ENCRYPTION
=============  ==========================================================

Nothing is within a REQUEST or an ENCRYPTION capability: those are leaves.
Entries are values: treat them as read-only (fields are exposed as properties).
"""

try:
    from .cap_errors import MalformedToken
    from .cap_wire import put_varint, put_bytes, put_str, get_varint, get_bytes, get_str
    from . import cap_h3
except ImportError:
    from cap_errors import MalformedToken
    from cap_wire import put_varint, put_bytes, put_str, get_varint, get_bytes, get_str
    import cap_h3

# capability codes
ROOT = 0x01
SERVICE = 0x02
RESOURCE = 0x03
REGION = 0x04
IDENTITY = 0x05
REQUEST = 0x06
ENCRYPTION = 0x07
# constraint codes
EXPIRES_AT = 0x81
NOT_BEFORE = 0x82
ENDPOINT = 0x83
GATEWAY = 0x84
REQUIRE_IDENTITY = 0x85
BOUND_TO = 0x86
SEQUENCE_WINDOW = 0x87

CONSTRAINT_BIT = 0x80
WILDCARD = "*"
DIGEST_SIZE = 32
NONCE_MIN, NONCE_MAX = 16, 32

# resource rights bitmap
READ, WRITE, INVOKE, ADMIN = 1, 2, 4, 8
RIGHT_LETTERS = (("r", READ), ("w", WRITE), ("x", INVOKE), ("a", ADMIN))


def _entry_bytes(code, payload):
    out = bytearray()
    out.append(code)
    put_bytes(out, payload)
    return bytes(out)


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

    def within(self, parent):
        """True when this capability is a subset of ``parent``."""
        return parent.code == ROOT


class Root(Entry):
    """All rights of the origin."""

    __slots__ = ()
    code = ROOT
    name = "root"

    def __init__(self, raw=None):
        self._raw = raw if raw is not None else _entry_bytes(ROOT, b"")


class Service(Entry):
    """Invoke the listed methods (or "*": all) of one service type."""

    __slots__ = ("_type", "_methods")
    code = SERVICE
    name = "service"

    def __init__(self, service_type, methods, raw=None):
        if raw is None:
            methods = tuple(sorted(set(methods)))
            _check_methods(service_type, methods, ValueError)
            out = bytearray()
            put_str(out, service_type)
            put_varint(out, len(methods))
            for m in methods:
                put_str(out, m)
            raw = _entry_bytes(SERVICE, out)
        self._type = service_type
        self._methods = methods
        self._raw = raw

    service_type = property(lambda self: self._type)
    methods = property(lambda self: self._methods)

    def fields(self):
        return {"service": self._type, "methods": list(self._methods)}

    def within(self, parent):
        code = parent.code
        if code == ROOT:
            return True
        if code != SERVICE or parent._type != self._type:
            return False
        pm = parent._methods
        if pm[0] == WILDCARD:
            return True
        if self._methods[0] == WILDCARD:
            return False
        for m in self._methods:
            if m not in pm:
                return False
        return True


def _check_methods(service_type, methods, error):
    if not service_type or not methods:
        raise error("service needs a type and at least one method")
    if WILDCARD in methods and len(methods) != 1:
        raise error("'*' stands alone in a method set")
    prev = None
    for m in methods:
        if not m or (prev is not None and m <= prev):
            raise error("methods must be non-empty, sorted and distinct")
        prev = m


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
            raw = _entry_bytes(RESOURCE, out)
        self._prefix = prefix
        self._rights = rights
        self._raw = raw

    prefix = property(lambda self: self._prefix)
    rights = property(lambda self: self._rights)

    def fields(self):
        return {"prefix": self._prefix, "rights": rights_text(self._rights)}

    def within(self, parent):
        code = parent.code
        if code == ROOT:
            return True
        if code != RESOURCE or self._rights & ~parent._rights:
            return False
        return prefix_within(self._prefix, parent._prefix)


def prefix_within(path, prefix):
    """True when ``path`` equals ``prefix`` or extends it at a "/" boundary
    (so "/home/alice2" is not within "/home/alice")."""
    if not path.startswith(prefix):
        return False
    n = len(prefix)
    return n == len(path) or n == 0 or prefix[n - 1] == "/" or path[n] == "/"


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
            raw = _entry_bytes(REGION, out)
        self._cell = cell
        self._raw = raw

    cell = property(lambda self: self._cell)

    def fields(self):
        return {"cell": "%x" % self._cell}

    def within(self, parent):
        code = parent.code
        if code == ROOT:
            return True
        return code == REGION and cap_h3.is_within(self._cell, parent._cell)


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
            raw = _entry_bytes(IDENTITY, out)
        self._identity = identity
        self._raw = raw

    identity = property(lambda self: self._identity)

    def fields(self):
        return {"identity": self._identity}

    def within(self, parent):
        code = parent.code
        if code == ROOT:
            return True
        return code == IDENTITY and parent._identity == self._identity


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
            raw = _entry_bytes(REQUEST, out)
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
                "digest": _hex(self._digest), "sequence": self._sequence}

    def within(self, parent):
        code = parent.code
        if code == ROOT:
            return True
        if code != SERVICE or parent._type != self._service:
            return False
        pm = parent._methods
        return pm[0] == WILDCARD or self._method in pm


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
            raw = _entry_bytes(ENCRYPTION, nonce)
        self._nonce = nonce
        self._raw = raw

    nonce = property(lambda self: self._nonce)

    def fields(self):
        return {"nonce": _hex(self._nonce)}

    def within(self, parent):
        return not parent.is_leaf


class Constraint(Entry):
    """Base of constraints: compared only verbatim, never by subset."""

    __slots__ = ()
    is_constraint = True

    def within(self, parent):
        return False


class _IntConstraint(Constraint):
    __slots__ = ("_value",)
    key = "value"

    def __init__(self, value, raw=None):
        if raw is None:
            out = bytearray()
            put_varint(out, value)
            raw = _entry_bytes(self.code, out)
        self._value = value
        self._raw = raw

    value = property(lambda self: self._value)

    def fields(self):
        return {self.key: self._value}


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


class _StrConstraint(Constraint):
    __slots__ = ("_value",)
    key = "value"

    def __init__(self, value, raw=None):
        if raw is None:
            if not value:
                raise ValueError("empty %s" % self.name)
            out = bytearray()
            put_str(out, value)
            raw = _entry_bytes(self.code, out)
        self._value = value
        self._raw = raw

    value = property(lambda self: self._value)

    def fields(self):
        return {self.key: self._value}


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
            raw = _entry_bytes(BOUND_TO, tag)
        self._tag = tag
        self._raw = raw

    tag = property(lambda self: self._tag)

    def fields(self):
        return {"tag": _hex(self._tag)}


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
            raw = _entry_bytes(SEQUENCE_WINDOW, out)
        self._low = low
        self._high = high
        self._raw = raw

    low = property(lambda self: self._low)
    high = property(lambda self: self._high)

    def fields(self):
        return {"low": self._low, "high": self._high}


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
        self._raw = raw if raw is not None else _entry_bytes(code, payload)

    code = property(lambda self: self._code)
    payload = property(lambda self: self._payload)

    def fields(self):
        return {"code": "0x%02x" % self._code, "payload": _hex(self._payload)}


def _hex(data):
    return "".join(["%02x" % b for b in data])


# ---- decoding: one parser per code; each must consume its payload exactly --

def _p_service(buf, p, end, raw):
    stype, p = get_str(buf, p, end)
    n, p = get_varint(buf, p, end)
    if n > end - p:
        raise MalformedToken("method count exceeds entry")
    methods = []
    for _ in range(n):
        m, p = get_str(buf, p, end)
        methods.append(m)
    methods = tuple(methods)
    _check_methods(stype, methods, MalformedToken)
    return Service(stype, methods, raw), p


def _p_resource(buf, p, end, raw):
    prefix, p = get_str(buf, p, end)
    rights, p = get_varint(buf, p, end)
    return Resource(prefix, rights, raw), p


def _p_region(buf, p, end, raw):
    cell, p = get_varint(buf, p, end)
    if not cap_h3.is_valid_cell(cell):
        raise MalformedToken("invalid H3 cell")
    return Region(cell, raw), p


def _p_identity(buf, p, end, raw):
    ident, p = get_str(buf, p, end)
    if not ident:
        raise MalformedToken("empty identity")
    return Identity(ident, raw), p


def _p_request(buf, p, end, raw):
    service, p = get_str(buf, p, end)
    method, p = get_str(buf, p, end)
    if not service or not method or method == WILDCARD:
        raise MalformedToken("request needs one service type and one method")
    if p + DIGEST_SIZE > end:
        raise MalformedToken("truncated request digest")
    digest = bytes(buf[p:p + DIGEST_SIZE])
    seq, p = get_varint(buf, p + DIGEST_SIZE, end)
    return Request(service, method, digest, seq, raw), p


def _p_encryption(buf, p, end, raw):
    if not NONCE_MIN <= end - p <= NONCE_MAX:
        raise MalformedToken("bad encryption nonce length")
    return Encryption(bytes(buf[p:end]), raw), end


def _p_int(cls):
    def parse(buf, p, end, raw):
        value, p = get_varint(buf, p, end)
        return cls(value, raw), p
    return parse


def _p_str(cls):
    def parse(buf, p, end, raw):
        value, p = get_str(buf, p, end)
        if not value:
            raise MalformedToken("empty %s" % cls.name)
        return cls(value, raw), p
    return parse


def _p_bound(buf, p, end, raw):
    if end - p != DIGEST_SIZE:
        raise MalformedToken("bound tag must be 32 bytes")
    return BoundTo(bytes(buf[p:end]), raw), end


def _p_window(buf, p, end, raw):
    low, p = get_varint(buf, p, end)
    high, p = get_varint(buf, p, end)
    if high <= low:
        raise MalformedToken("empty sequence window")
    return SequenceWindow(low, high, raw), p


_PARSERS = {
    ROOT: lambda buf, p, end, raw: (Root(raw), p),
    SERVICE: _p_service,
    RESOURCE: _p_resource,
    REGION: _p_region,
    IDENTITY: _p_identity,
    REQUEST: _p_request,
    ENCRYPTION: _p_encryption,
    EXPIRES_AT: _p_int(ExpiresAt),
    NOT_BEFORE: _p_int(NotBefore),
    ENDPOINT: _p_str(Endpoint),
    GATEWAY: _p_str(Gateway),
    REQUIRE_IDENTITY: _p_str(RequireIdentity),
    BOUND_TO: _p_bound,
    SEQUENCE_WINDOW: _p_window,
}


def parse_entry(buf, pos, end):
    """Read one entry at ``pos``; return ``(entry, new_pos)``.

    Unknown capability codes are malformed; unknown constraint codes are kept
    as :class:`UnknownConstraint` and fail closed at verification.
    """
    code = buf[pos]
    p = pos + 1
    if p < end and buf[p] < 0x80:  # one-byte length: the common case
        n = buf[p]
        p += 1
    else:
        n, p = get_varint(buf, p, end)
    stop = p + n
    if stop > end:
        raise MalformedToken("truncated entry")
    raw = buf[pos:stop]  # buf is bytes, so this is already a bytes copy
    parser = _PARSERS.get(code)
    if parser is None:
        if code < CONSTRAINT_BIT:
            raise MalformedToken("unknown capability type 0x%02x" % code)
        return UnknownConstraint(code, bytes(buf[p:stop]), raw), stop
    entry, q = parser(buf, p, stop, raw)
    if q != stop:
        raise MalformedToken("trailing bytes in %s entry" % entry.name)
    return entry, stop
