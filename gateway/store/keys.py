"""Store keys of the gateway's LMDB store: every prefix, in one place.

Keys are ordered byte strings, so a device's queue, the expiry index and the
revocation log are plain prefix scans. ``be64`` is an unsigned big-endian
64-bit integer (sorts numerically); ids are 16 bytes, tags 32.

Primary records::

    d/<link16>                        Device (record)                paired devices
    r/<rid16>                         RequestRecord (record)         request state and response slot
    c/<link16><sha256(svc,m,args)>    CacheEntry (record)            cacheable responses
    t/<ticket id>                     ticket (record)                resumption tickets (single use)
    l/<link16>                        Contact (record)               last contact, announced sleep, liveness sent
    v/<be64 n>                        hash32 + be64 expiry (s)       revocation log, in arrival order
    m/<name>                          bytes                          metadata (m/revlog: last log position)
    k/<token digest32>                hash32 * n                     a client token's chain: the revocation
                                                                     hashes of its tags (one per distinct token)
    w/<link16>                        Twin (record)                  the device's twin: desired, reported

Per-device counters::

    n/<link16>                        be64                           queue depth (active requests)
    ni/<link16><hash32>               be64                           of those, the ones of one client: its
                                                                     token chain's first hash (its issuer)
    s/<link16>                        be64                           last request sequence (only rises)
    vc/<link16>                       be64                           last log position the device was told

Indexes (written with their records, in the same transaction)::

    p/<pseudonym16>                   link16                         device by pseudonym
    q/<link16><be64 seq>              rid16                          active queue (QUEUED, DELIVERED), in order
    x/<be64 expires_ms><rid16>        b""                            active requests by expiry (sweeper)
    g/<be64 purge_ms><rid16>          b""                            finished requests by purge time
    vt/<hash32>                       b""                            hashes already in the log
    kh/<hash32><token digest32>       b""                            client tokens by chain hash (revocation)
    kr/<token digest32><rid16>        b""                            a token's active requests and forwarding
                                                                     stubs; a token's k/ and kh/ go with its last
    wh/<hash32><link16>               b""                            twins with an undelivered desired change
                                                                     made under a token whose chain holds it

No prefix is a prefix of another's keys (``v/`` scans never see ``vt/`` or
``vc/``), so every scan below reads exactly one kind of key.
"""

from __future__ import annotations

import hashlib
import struct

DEVICE = b"d/"
PSEUDONYM = b"p/"
QUEUE = b"q/"
DEPTH = b"n/"
CLIENT_DEPTH = b"ni/"
LAST_SEQ = b"s/"
REQUEST = b"r/"
EXPIRY = b"x/"
PURGE = b"g/"
CACHE = b"c/"
TICKET = b"t/"
CONTACT = b"l/"
REVLOG = b"v/"
REVTAG = b"vt/"
REVCURSOR = b"vc/"
META = b"m/"
TOKEN = b"k/"
TOKEN_BY_HASH = b"kh/"
TOKEN_REQUEST = b"kr/"
TWIN = b"w/"
TWIN_BY_HASH = b"wh/"
REVLOG_LAST = META + b"revlog"

# what an unpaired device leaves behind: every per-device prefix but its requests
# (they stay readable as CANCELLED until purged)
PER_DEVICE = (CACHE, DEPTH, CLIENT_DEPTH, LAST_SEQ, CONTACT, REVCURSOR)

_BE64 = struct.Struct(">Q")


def be64(n: int) -> bytes:
    return _BE64.pack(n)


def int_of(raw: bytes | None) -> int:
    """A be64 counter's value (0 when absent)."""
    return _BE64.unpack(raw)[0] if raw else 0


def time_of(key: bytes) -> int:
    """The be64 time of an ``x/`` or ``g/`` index key."""
    return _BE64.unpack_from(key, 2)[0]


def rid_of(key: bytes) -> bytes:
    """The request id of an ``x/`` or ``g/`` index key."""
    return key[10:]


def device(link_id: bytes) -> bytes:
    return DEVICE + link_id


def pseudonym(ps: bytes) -> bytes:
    return PSEUDONYM + ps


def queue(link_id: bytes, seq: int | None = None) -> bytes:
    """A queue entry, or (``seq`` None) the device's queue prefix."""
    return QUEUE + link_id + (be64(seq) if seq is not None else b"")


def depth(link_id: bytes) -> bytes:
    return DEPTH + link_id


def client_depth(link_id: bytes, issuer: bytes) -> bytes:
    return CLIENT_DEPTH + link_id + issuer


def last_seq(link_id: bytes) -> bytes:
    return LAST_SEQ + link_id


def request(rid: bytes) -> bytes:
    return REQUEST + rid


def expiry(expires_ms: int, rid: bytes) -> bytes:
    return EXPIRY + be64(expires_ms) + rid


def purge(purge_ms: int, rid: bytes) -> bytes:
    return PURGE + be64(purge_ms) + rid


def cache(link_id: bytes, service: str, method: str, args: bytes) -> bytes:
    digest = hashlib.sha256(b"\0".join([service.encode(), method.encode(), hashlib.sha256(args).digest()])).digest()
    return CACHE + link_id + digest


def ticket(ticket_id: bytes) -> bytes:
    return TICKET + ticket_id


def contact(link_id: bytes) -> bytes:
    return CONTACT + link_id


def revlog(n: int) -> bytes:
    return REVLOG + be64(n)


def revlog_position(key: bytes) -> int:
    return _BE64.unpack_from(key, 2)[0]


def revtag(tag: bytes) -> bytes:
    return REVTAG + tag


def revcursor(link_id: bytes) -> bytes:
    return REVCURSOR + link_id


def token(digest: bytes) -> bytes:
    return TOKEN + digest


def token_by_hash(h: bytes, digest: bytes = b"") -> bytes:
    return TOKEN_BY_HASH + h + digest


def token_request(digest: bytes, rid: bytes = b"") -> bytes:
    return TOKEN_REQUEST + digest + rid
def twin(link_id: bytes) -> bytes:
    return TWIN + link_id


def twin_by_hash(h: bytes, link_id: bytes = b"") -> bytes:
    """An index entry, or (``link_id`` empty) the prefix of a revocation hash's entries."""
    return TWIN_BY_HASH + h + link_id


def meta(name: str) -> bytes:
    return META + name.encode()
