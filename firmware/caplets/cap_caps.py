"""Entry codes, capabilities and the subset relation (MicroPython-compatible core).

An *entry* is ``code:u8 | len:varint | payload``. Codes below 0x80 are
capabilities (this module), codes from 0x80 constraints (``cap_cons``). Each
entry keeps the exact bytes it was read from (``raw``): equality, hashing and
the "constraints reappear verbatim" rule all work on those bytes, never on a
re-encoding.

The verifier works on plain *value tuples* ``(code, raw, field, ...)``, one
per entry, never on objects: the scanners here validate a capability's
payload and return its value tuple. The object forms (``Service(...)``,
``.raw``, ``.fields()``) are the CPython API, ``cap_entries``, built from the
same tuples, so there is one parser and one subset relation; a board ships
only this module.

Subset relation (``within(child, parent)`` on value tuples; undefined pairs are
not subsets):

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
"""

from .cap_errors import MalformedToken
from .cap_wire import put_bytes, get_varint, get_str
from . import cap_h3

# capability codes
ROOT = 0x01
SERVICE = 0x02
RESOURCE = 0x03
REGION = 0x04
IDENTITY = 0x05
REQUEST = 0x06
ENCRYPTION = 0x07
# constraint codes (their scanners are in cap_cons)
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


def entry_bytes(code, payload):
    """An entry's bytes from its code and payload."""
    out = bytearray()
    out.append(code)
    put_bytes(out, payload)
    return bytes(out)


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


def prefix_within(path, prefix):
    """True when ``path`` equals ``prefix`` or extends it at a "/" boundary
    (so "/home/alice2" is not within "/home/alice")."""
    if not path.startswith(prefix):
        return False
    n = len(prefix)
    return n == len(path) or n == 0 or prefix[n - 1] == "/" or path[n] == "/"


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

CAP_NAMES = {ROOT: "root", SERVICE: "service", RESOURCE: "resource", REGION: "region",
             IDENTITY: "identity", REQUEST: "request", ENCRYPTION: "encryption"}
