"""Entry codes, capabilities and the subset relation (MicroPython-compatible core).

An *entry* is ``code:u8 | len:varint | payload``. Codes below 0x80 are
capabilities (this module), codes from 0x80 constraints (``cap_cons``). Each
entry keeps the exact bytes it was read from (``raw``): equality, hashing and
the "constraints reappear verbatim" rule all work on those bytes, never on a
re-encoding.

Every entry has two equivalent forms: an immutable object (the API) and a
plain *value tuple* ``(code, raw, field, ...)``, which is what the verifier
works on (no object per entry on the hot path). ``scan_cap`` validates a
capability's payload and returns its value tuple; the classes are built from
the same tuples, so there is one parser and one subset relation.

Subset relation (``within(child, parent)`` on value tuples, or
``child.within(parent)`` on objects; undefined pairs are not subsets):

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
    from .cap_wire import put_varint, put_bytes, put_str, get_varint, get_str
    from . import cap_h3
except ImportError:
    from cap_errors import MalformedToken
    from cap_wire import put_varint, put_bytes, put_str, get_varint, get_str
    import cap_h3

# capability codes
ROOT = 0x01
SERVICE = 0x02
RESOURCE = 0x03
REGION = 0x04
IDENTITY = 0x05
REQUEST = 0x06
ENCRYPTION = 0x07
# constraint codes (the classes are in cap_cons)
EXPIRES_AT = 0x81
NOT_BEFORE = 0x82
ENDPOINT = 0x83
GATEWAY = 0x84
REQUIRE_IDENTITY = 0x85
BOUND_TO = 0x86
SEQUENCE_WINDOW = 0x87
AUTHORISED_BY = 0x88  # revocation hashes of the client token's chain (request tokens a gateway mints)

CONSTRAINT_BIT = 0x80
WILDCARD = "*"
DIGEST_SIZE = 32
NONCE_MIN, NONCE_MAX = 16, 32

# resource rights bitmap
READ, WRITE, INVOKE, ADMIN = 1, 2, 4, 8
RIGHT_LETTERS = (("r", READ), ("w", WRITE), ("x", INVOKE), ("a", ADMIN))


def entry_bytes(code, payload):
    """An entry's bytes from its code and payload."""
    out = bytearray()
    out.append(code)
    put_bytes(out, payload)
    return bytes(out)


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


def check_methods(service_type, methods, error):
    """Raise ``error`` unless the method set is non-empty, sorted and distinct
    ("*" standing alone)."""
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


# ---- the subset relation, on value tuples -------------------------------------

def within(c, p):
    """True when capability value ``c`` is a subset of capability value ``p``."""
    pc = p[0]
    if pc == ROOT:
        return True
    cc = c[0]
    if cc == SERVICE:
        if pc != SERVICE or p[2] != c[2]:
            return False
        pm = p[3]
        if pm[0] == WILDCARD:
            return True
        cm = c[3]
        if cm[0] == WILDCARD:
            return False
        for m in cm:
            if m not in pm:
                return False
        return True
    if cc == REQUEST:
        if pc != SERVICE or p[2] != c[2]:
            return False
        pm = p[3]
        return pm[0] == WILDCARD or c[3] in pm
    if cc == RESOURCE:
        if pc != RESOURCE or c[3] & ~p[3]:
            return False
        return prefix_within(c[2], p[2])
    if cc == REGION:
        return pc == REGION and cap_h3.is_within(c[2], p[2])
    if cc == IDENTITY:
        return pc == IDENTITY and p[2] == c[2]
    if cc == ENCRYPTION:
        return pc != REQUEST and pc != ENCRYPTION
    return False


# ---- decoding: capability payloads -> value tuples -------------------------------
# Each scanner gets the frame bytes ``buf``, the payload span ``p:stop`` and the
# entry's bytes ``raw``; it must consume the payload exactly.

def _trailing(p, stop, name):
    if p != stop:
        raise MalformedToken("trailing bytes in %s entry" % name)


def _s_root(buf, p, stop, raw):
    _trailing(p, stop, "root")
    return (ROOT, raw)


def _s_service(buf, p, stop, raw):
    # Fast path: a pure-ASCII payload (then every length byte is a one-byte
    # varint and the decoded text indexes like the bytes) is decoded once and
    # sliced. Anything else takes the general parser.
    pl = buf[p:stop]
    try:
        text = pl.decode("utf-8")
    except UnicodeError:
        return _s_service_slow(buf, p, stop, raw)
    e = len(pl)
    if not e or len(text) != e:
        return _s_service_slow(buf, p, stop, raw)
    q = pl[0] + 1
    if q >= e:
        raise MalformedToken("truncated field")
    stype = text[1:q]
    n = pl[q]
    q += 1
    if n > e - q:
        raise MalformedToken("method count exceeds entry")
    methods = []
    prev = ""
    for _ in range(n):
        if q >= e:
            raise MalformedToken("truncated field")
        a = q + 1
        q = a + pl[q]
        m = text[a:q]
        if m <= prev:  # empty, unsorted or repeated
            raise MalformedToken("methods must be non-empty, sorted and distinct")
        methods.append(m)
        prev = m
    if q != e:
        raise MalformedToken("truncated field" if q > e else "trailing bytes in service entry")
    if not stype or not n:
        raise MalformedToken("service needs a type and at least one method")
    if n > 1 and WILDCARD in methods:
        raise MalformedToken("'*' stands alone in a method set")
    return (SERVICE, raw, stype, tuple(methods))


def _s_service_slow(buf, p, stop, raw):
    stype, p = get_str(buf, p, stop)
    n, p = get_varint(buf, p, stop)
    if n > stop - p:
        raise MalformedToken("method count exceeds entry")
    methods = []
    for _ in range(n):
        m, p = get_str(buf, p, stop)
        methods.append(m)
    methods = tuple(methods)
    check_methods(stype, methods, MalformedToken)
    _trailing(p, stop, "service")
    return (SERVICE, raw, stype, methods)


def _s_resource(buf, p, stop, raw):
    prefix, p = get_str(buf, p, stop)
    rights, p = get_varint(buf, p, stop)
    _trailing(p, stop, "resource")
    return (RESOURCE, raw, prefix, rights)


def _s_region(buf, p, stop, raw):
    cell, p = get_varint(buf, p, stop)
    if not cap_h3.is_valid_cell(cell):
        raise MalformedToken("invalid H3 cell")
    _trailing(p, stop, "region")
    return (REGION, raw, cell)


def _s_identity(buf, p, stop, raw):
    ident, p = get_str(buf, p, stop)
    if not ident:
        raise MalformedToken("empty identity")
    _trailing(p, stop, "identity")
    return (IDENTITY, raw, ident)


def _s_request(buf, p, stop, raw):
    service, p = get_str(buf, p, stop)
    method, p = get_str(buf, p, stop)
    if not service or not method or method == WILDCARD:
        raise MalformedToken("request needs one service type and one method")
    if p + DIGEST_SIZE > stop:
        raise MalformedToken("truncated request digest")
    digest = bytes(buf[p:p + DIGEST_SIZE])
    seq, p = get_varint(buf, p + DIGEST_SIZE, stop)
    _trailing(p, stop, "request")
    return (REQUEST, raw, service, method, digest, seq)


def _s_encryption(buf, p, stop, raw):
    if not NONCE_MIN <= stop - p <= NONCE_MAX:
        raise MalformedToken("bad encryption nonce length")
    return (ENCRYPTION, raw, bytes(buf[p:stop]))


SCANNERS = {
    ROOT: _s_root,
    SERVICE: _s_service,
    RESOURCE: _s_resource,
    REGION: _s_region,
    IDENTITY: _s_identity,
    REQUEST: _s_request,
    ENCRYPTION: _s_encryption,
}

_CLASSES = {
    ROOT: lambda t: Root(t[1]),
    SERVICE: lambda t: Service(t[2], t[3], t[1]),
    RESOURCE: lambda t: Resource(t[2], t[3], t[1]),
    REGION: lambda t: Region(t[2], t[1]),
    IDENTITY: lambda t: Identity(t[2], t[1]),
    REQUEST: lambda t: Request(t[2], t[3], t[4], t[5], t[1]),
    ENCRYPTION: lambda t: Encryption(t[2], t[1]),
}


CAP_NAMES = {ROOT: "root", SERVICE: "service", RESOURCE: "resource", REGION: "region",
             IDENTITY: "identity", REQUEST: "request", ENCRYPTION: "encryption"}


def cap_from_value(t):
    """The capability object of a value tuple."""
    return _CLASSES[t[0]](t)
