"""Authorising client calls with CAPLets tokens, and minting the gateway's tokens.

A client token has one of two origins:

* the device. The gateway holds the device's *root token* ``(frame_0, tag_0)``
  but not its secret. Because ``tag_1 = HMAC(tag_0, frame_1)``, a token
  derived from that root is verified by checking that its first frame is the
  root's frame and running the rest of the chain keyed by ``tag_0``: the
  root tag acts as the secret of the sub-chain. (Every root frame is the same
  single ROOT entry; what ties a token to one device is the HMAC chain.)
* the gateway itself (its HMAC secret, keys/gateway.secret): application
  tokens it issues for regional access (discovery) and the devices' identity
  tokens (which grant no service and so never authorise a call).

Then: revocation of every chain tag (registry + local set: both hold the
tags' one-way hashes, cap_crypto.revocation_hash), the leaf's
constraints (expiry, gateway), and ``permits(service, method)``. Leaf tokens
(request, encryption) are never client credentials.

A client presents the same token on every call, so a token that passed is
remembered (keyed by its exact bytes and the keys it was checked with) with
its chain tags: a later call skips decoding and the HMAC chain but re-checks
revocation, the leaf's constraints (expiry, gateway) and the rights (a
token's rights never change, so each (service, method) it was found to allow
is remembered with it). Any failure there re-runs the full check, so errors
read the same either way.
"""

from __future__ import annotations

import functools
import hashlib
import time
from dataclasses import dataclass
from typing import NamedTuple

from ...firmware.caplets import api as cl
from ...firmware.caplets import cap_caps, cap_codec, cap_crypto, cap_wire
from ...firmware.caplets.cap_entries import put_str
from ...firmware.caplets.cap_token import check_derivation
from ...firmware.link.link_gateway import identity_name
from ..errors import Unauthorized

PSEUDONYM_DOMAIN = b"edgistry/pseudonym/v1"


@dataclass(frozen=True)
class Authorised:
    origin: str  # "device" | "gateway"
    token: cl.Token
    # revocation hashes of every tag of the token's chain from its origin's key
    # (a device's: the root tag's and each derived tag's): what a request made
    # with it keeps, so a revocation of any of them stops the request
    chain: tuple[bytes, ...] = ()

    @functools.cached_property  # a remembered token's answer is shared by its calls (immutable otherwise)
    def issuer(self) -> bytes:
        """Whom rate limits count this call against: :func:`issuer_key` of the chain's first hash."""
        return issuer_key(self.chain[0] if self.chain else b"")


ISSUER_DOMAIN = b"edgistry/issuer/v1"


def issuer_key(first_hash: bytes) -> bytes:
    """A client's rate-limit key: a digest of the revocation hash of the first tag of
    its token's chain, which only the token's origin can make (the gateway's tag over
    the identity frame it issued, or the device's root tag); a holder can derive new
    tokens offline, never a new first tag."""
    return hashlib.sha256(ISSUER_DOMAIN + first_hash).digest()[:16]


def token_digest(token: bytes) -> bytes:
    """What a request remembers of the token that made it (GetResult needs the same one)."""
    return hashlib.sha256(b"edgistry/token/v1\0" + token).digest()


def pseudonym_for(root_token: bytes) -> bytes:
    """A device's chain pseudonym: keyed by its root tag, which only the device
    and its gateway know, so nobody else can link it to anything; and the same
    for any gateway given the root token, which is how a second gateway learns
    that the device is already paired elsewhere."""
    return cl.compute_tag(cl.load(root_token).tag, [PSEUDONYM_DOMAIN])[:16]


def verify_from_root(token: cl.Token, root: cl.Token, ctx: cl.Context) -> cl.Token:
    """Verify ``token`` as derived from ``root`` using only the root's tag."""
    if token.frames[0].raw != root.frames[0].raw:
        raise cl.BadTag("not derived from this device's root token")
    if len(token) == 1:
        if not cap_crypto.equal(token.tag, root.tag):
            raise cl.BadTag("not this device's root token")
    else:
        check_derivation(token.frames[0], token.frames[1], 1)
        # the sub-chain frames[1:] keyed by tag_0 is a token whose "secret" is tag_0
        sub = cl.Token(token.frames[1:], token.tag)
        cl.verify(sub, root.tag, ctx)
    if ctx.revoked is not None and cap_crypto.revocation_hash(root.tag) in ctx.revoked:
        raise cl.Revoked("the device's root token is revoked", cap_crypto.revocation_hash(root.tag))
    return token


class _Verified(NamedTuple):
    origin: str
    token: cl.Token
    chain: tuple[bytes, ...]  # revocation hashes of every tag of the chain from the origin's key
    answer: Authorised  # what a call it passes gets (immutable, so one object serves every call)
    # (service, method, mutating) the token's rights were found to allow: a pure function of
    # the token, so asked once each (bounded by RIGHTS_REMEMBERED)
    rights: set[tuple[str, str, bool]]


VERIFIED_CACHE_SIZE = 4096  # distinct client tokens remembered (bounded: cleared when full)
# Longer tokens are verified in full on every call, never remembered: a parsed token costs
# several times its bytes, and anyone holding one can derive long children offline, so
# remembering any size would let one client pin ~70 MB (4096 of 2.3 KB). Tokens as gateways
# and owners mint them are a few hundred bytes.
REMEMBER_MAX_BYTES = 1024
RIGHTS_REMEMBERED = 64  # per token: (service, method) answers kept (cleared when full)
_verified: dict[tuple[bytes, bytes, bytes], _Verified] = {}
_issuers: dict[bytes, bytes] = {}  # token bytes that passed here -> issuer_key (same bound)


def known_issuer(raw: bytes) -> bytes | None:
    """The issuer of a token that passed :func:`authorise` before (None: not seen).
    A hint for refusing early a client known to be over its rate, before any
    verification; never a credential: nothing is charged or granted on it."""
    return _issuers.get(raw)


def authorise(raw: bytes, service: str, method: str, root_token: bytes | None, gateway_secret: bytes,
              gateway_id: str, revoked: cl.RevocationSet | None, now: int | None = None,
              check_permits: bool = True, mutating: bool = True) -> Authorised:
    """Check a client token for ``service:method`` on a device; raise Unauthorized.

    ``check_permits=False`` checks only that the token is valid for the device
    (used before telling a caller that a method does not exist)."""
    if len(raw) > MAX_TOKEN_INPUT:  # before hashing it as a cache key, or anything else
        raise Unauthorized(f"malformed token: longer than {MAX_TOKEN_INPUT} bytes")
    now = int(time.time()) if now is None else now
    key = (bytes(raw), root_token or b"", gateway_secret)
    hit = _verified.get(key)
    if hit is not None and _still_valid(hit, service, method, gateway_id, revoked, now, check_permits, mutating):
        return hit.answer
    result = _authorise(raw, service, method, root_token, gateway_secret, gateway_id, revoked, now,
                        check_permits, mutating)
    chain = hit.chain if hit is not None else chain_hashes(result, root_token, gateway_secret)
    answer = Authorised(result.origin, result.token, chain)
    if hit is None and len(raw) <= REMEMBER_MAX_BYTES:
        if len(_verified) >= VERIFIED_CACHE_SIZE:
            _verified.clear()
        _verified[key] = _Verified(result.origin, result.token, chain, answer, set())
        remember_issuer(raw, answer.issuer)
    return answer


def remember_issuer(raw: bytes, issuer: bytes) -> None:
    """Note the issuer of a token that was just verified (for :func:`known_issuer`)."""
    if len(_issuers) >= VERIFIED_CACHE_SIZE:
        _issuers.clear()
    _issuers[bytes(raw)] = issuer


def chain_hashes(result: Authorised, root_token: bytes | None, gateway_secret: bytes) -> tuple[bytes, ...]:
    """The revocation hashes a revocation of any of which stops an authorised token: every
    tag of its chain, and those its leaf names in ``authorised_by`` (as the full check,
    cap_verify.check_revoked, reads them; constraints carry over to the leaf)."""
    if result.origin == "device":
        root = cl.load(root_token)
        tags = [root.tag, *cl.chain_tags(root.tag, result.token.frames[1:])]
    else:
        tags = cl.chain_tags(gateway_secret, result.token.frames)
    named = [h for c in result.token.frames[-1].constraints if isinstance(c, cl.AuthorisedBy) for h in c.hashes]
    return tuple(cap_crypto.revocation_hash(t) for t in tags) + tuple(named)


def _still_valid(hit: _Verified, service: str, method: str, gateway_id: str, revoked: cl.RevocationSet | None,
                 now: int, check_permits: bool, mutating: bool) -> bool:
    """The per-call checks of a remembered token: not revoked, constraints hold now, rights."""
    if revoked is not None and len(revoked) and any(h in revoked for h in hit.chain):
        return False
    try:
        cl.check_constraints(hit.token, cl.Context(now=now, gateway=gateway_id, revoked=revoked))
        if check_permits and (service, method, mutating) not in hit.rights:
            if not (not mutating and _resource_read(hit.token, service, method)):
                cl.permits(hit.token, service, method)
            if len(hit.rights) >= RIGHTS_REMEMBERED:
                hit.rights.clear()
            hit.rights.add((service, method, mutating))
    except cl.TokenError:
        return False
    return True


# The most a client's token can take as sent, binary or text (MAX_TOKEN_TEXT): anything
# longer is refused before it is decoded.
MAX_TOKEN_INPUT = cl.MAX_TOKEN_TEXT


def _authorise(raw: bytes, service: str, method: str, root_token: bytes | None, gateway_secret: bytes,
               gateway_id: str, revoked: cl.RevocationSet | None, now: int,
               check_permits: bool, mutating: bool) -> Authorised:
    """The full check (decode, HMAC chain, derivations, revocation, constraints, rights)."""
    if not raw:
        raise Unauthorized("no token: pass the application token printed by `edgistry pair` (--token FILE)")
    if len(raw) > MAX_TOKEN_INPUT:
        raise Unauthorized(f"malformed token: longer than {MAX_TOKEN_INPUT} bytes")
    try:
        token = cl.load(raw)
    except cl.TokenError as exc:
        try:  # the text form, as token files hold it
            token = cl.from_text(raw.decode("ascii").strip())
        except (UnicodeDecodeError, cl.TokenError):
            raise Unauthorized(f"malformed token: {exc}") from exc
    if token.leaf.is_leaf:
        raise Unauthorized("a request or encryption token is not a client credential")
    ctx = cl.Context(now=now, gateway=gateway_id, revoked=revoked)
    errors = []
    for origin, check in (("device", lambda: verify_from_root(token, cl.load(root_token), ctx) if root_token else None),
                          ("gateway", lambda: cl.verify(token, gateway_secret, ctx))):
        try:
            if check() is None:
                continue
        except cl.BadTag:
            continue
        except cl.TokenError as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
            break
        try:
            if check_permits and not (not mutating and _resource_read(token, service, method)):
                cl.permits(token, service, method)
        except cl.NotPermitted as exc:
            raise Unauthorized(f"token does not permit {service}:{method} "
                               "(application tokens are read-only unless the owner derived more)") from exc
        return Authorised(origin, token)
    if errors:
        raise Unauthorized(f"token refused: {errors[0]}")
    raise Unauthorized("token was not issued for this device nor by this gateway (wrong origin or forged)")


def own_chain(raw: bytes, gateway_secret: bytes) -> tuple[bytes, ...]:
    """The revocation hashes of a token's chain when this gateway is its origin
    (its tags recompute from the gateway secret); () otherwise."""
    try:
        token = _parse(raw)
        tags = cl.chain_tags(gateway_secret, token.frames)
    except (cl.TokenError, ValueError):
        return ()
    if not cap_crypto.equal(tags[-1], token.tag):
        return ()
    return tuple(cap_crypto.revocation_hash(t) for t in tags)


def expiry_ms(raw: bytes) -> int:
    """When a token expires (its leaf carries every constraint of its chain), in ms; 0: never,
    or no token. Read, not verified: use it only to shorten what the token may do."""
    try:
        ends = [c.value for c in _parse(raw).frames[-1].constraints if isinstance(c, cl.ExpiresAt)]
    except (cl.TokenError, ValueError):
        return 0
    return min(ends) * 1000 if ends else 0


def leaf_hash(raw: bytes) -> tuple[bytes, ...]:
    """The revocation hash of a token's own tag (all a gateway that is not its
    origin can compute of its chain); () for bytes that are no token."""
    try:
        return (cap_crypto.revocation_hash(_parse(raw).tag),)
    except (cl.TokenError, ValueError):
        return ()


def _parse(raw: bytes) -> cl.Token:
    """A token from its binary or text form (as clients send either)."""
    if len(raw) > MAX_TOKEN_INPUT:
        raise cl.MalformedToken(f"longer than {MAX_TOKEN_INPUT} bytes")
    try:
        return cl.load(raw)
    except cl.TokenError:
        return cl.from_text(raw.decode("ascii", "replace").strip())


SERVICE_PATH = "/svc"  # application tokens grant reads as Resource("/svc[/<type>[/<method>]]", READ)


def _resource_read(token: cl.Token, service: str, method: str) -> bool:
    """A read-only method is allowed by a READ right on a prefix of /svc/<type>/<method>."""
    path = f"{SERVICE_PATH}/{service}/{method}"
    for cap in token.capabilities:
        if isinstance(cap, cl.Resource) and cap.rights & cl.READ and path.startswith(cap.prefix) \
                and (len(path) == len(cap.prefix) or cap.prefix.endswith("/") or path[len(cap.prefix)] == "/"):
            return True
    return False


def app_token(root_token: bytes, services: dict[str, list[str]]) -> cl.Token:
    """The least-privilege application token made at pairing: the listed
    (read-only) methods of each service, derived from the device's root."""
    caps = [cl.Service(t, methods) for t, methods in sorted(services.items()) if methods]
    if not caps:
        raise ValueError("the device offers no read-only method")
    return cl.derive(cl.load(root_token), caps)


def identity_token(gateway_secret: bytes, link_id: bytes) -> cl.Token:
    """The gateway-issued token a device presents in HELLO (origin: this gateway;
    identity ``link:<hex link id>``, as firmware/link/link_gateway.py checks it)."""
    return cl.mint(gateway_secret, [cl.Identity(identity_name(link_id))])


def request_token(root_token: bytes, service: str, method: str, args: bytes, sequence: int,
                  chain: tuple[bytes, ...] = ()) -> bytes:
    """The leaf the device verifies on its own: service, method, args digest,
    sequence, and (``authorised_by``) the revocation hashes of the client
    token's chain, so the device refuses it once any of them is revoked.

    Minted on every enqueue, so for the usual parent (a device's plain root
    token) the bytes are put together directly: the root's part of the
    encoding and the chain's ``authorised_by`` entry are remembered, and only
    the request entry and one HMAC are new. The result is byte for byte what
    :func:`request_token_reference` (the CAPLets library's derivation) gives;
    anything else takes that path."""
    head = _root_head(root_token) if type(root_token) is bytes else None  # (tests also pass a Token)
    if head is None:
        return request_token_reference(root_token, service, method, args, sequence, chain)
    prefix, inner, outer = head
    # the Request entry (code, length, payload) as cap_caps builds it, then authorised_by
    payload = _request_names(service, method) + cl.request_digest(args) + _varint(sequence)
    frame = _REQUEST_CODE + _varint(len(payload)) + payload + _authorised_by(chain)
    if len(frame) > cap_codec.MAX_FRAME_SIZE or not 0 <= sequence < 1 << 64:  # the library refuses it: let it say why
        return request_token_reference(root_token, service, method, args, sequence, chain)
    mac = inner.copy()  # HMAC-SHA256(root tag, frame) from the key's padded states (RFC 2104)
    mac.update(frame)
    tag = outer.copy()
    tag.update(mac.digest())
    return b"".join((prefix, _varint(len(frame)), frame, tag.digest()))


_REQUEST_CODE = bytes((cap_caps.REQUEST,))
_SMALL_VARINTS = [bytes((i,)) for i in range(0x80)]


def _varint(value: int) -> bytes:
    """cap_wire.put_varint's bytes for 0 <= value (the caller checks the upper bound)."""
    if value < 0x80:
        return _SMALL_VARINTS[value]
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def request_token_reference(root_token: bytes, service: str, method: str, args: bytes, sequence: int,
                            chain: tuple[bytes, ...] = ()) -> bytes:
    """:func:`request_token` by the CAPLets library's derivation (the reference)."""
    constraints = [cl.AuthorisedBy(chain[:cl.cap_cons.MAX_AUTHORISED_BY])] if chain else []
    return cl.request_token(cl.load(root_token), service, method, args, sequence, constraints).to_bytes()


MINT_CACHE_SIZE = 4096  # device roots / client chains remembered for minting (cleared when full)
_root_heads: dict[bytes, tuple[bytes, "hashlib._Hash", "hashlib._Hash"] | None] = {}
_authorised_by_raw: dict[tuple[bytes, ...], bytes] = {}
_request_names_raw: dict[tuple[str, str], bytes] = {}


def _root_head(root_token: bytes) -> tuple[bytes, "hashlib._Hash", "hashlib._Hash"] | None:
    """(the encoding of a two-frame token up to its second frame, and HMAC's
    inner and outer SHA-256 states keyed by the root tag)
    for a plain root token (one frame: the ROOT capability alone), whose
    derivation to a request needs no check; None for anything else."""
    try:
        return _root_heads[root_token]
    except KeyError:
        pass
    head = None
    try:
        root = cl.load(root_token)
        frame = root.frames[0]
        plain = (len(root) == 1 and not frame.constraints and len(frame.capabilities) == 1
                 and isinstance(frame.capabilities[0], cl.Root))
    except (cl.TokenError, ValueError):
        plain = False
    if plain:
        out = bytearray((cap_codec.VERSION,))
        cap_wire.put_varint(out, 2)
        cap_wire.put_varint(out, len(frame.raw))
        out += frame.raw
        key = root.tag.ljust(64, b"\0")  # a 32-byte tag: within SHA-256's block, used as is
        head = (bytes(out), hashlib.sha256(bytes(b ^ 0x36 for b in key)), hashlib.sha256(bytes(b ^ 0x5C for b in key)))
    if len(_root_heads) >= MINT_CACHE_SIZE:
        _root_heads.clear()
    _root_heads[bytes(root_token)] = head
    return head


def _request_names(service: str, method: str) -> bytes:
    """The start of a Request entry's payload (service type and method); the
    library's constructor checks the names once, with its own errors."""
    key = (service, method)
    raw = _request_names_raw.get(key)
    if raw is None:
        cl.Request(service, method, bytes(cap_caps.DIGEST_SIZE), 0)  # raises ValueError for names it refuses
        out = bytearray()
        put_str(out, service)
        put_str(out, method)
        raw = bytes(out)
        if len(_request_names_raw) >= MINT_CACHE_SIZE:
            _request_names_raw.clear()
        _request_names_raw[key] = raw
    return raw


def _authorised_by(chain: tuple[bytes, ...]) -> bytes:
    """The ``authorised_by`` entry's bytes for a chain (b"" for none); a client
    sends the same token on every call, so its chain repeats."""
    if not chain:
        return b""
    raw = _authorised_by_raw.get(chain)
    if raw is None:
        raw = cl.AuthorisedBy(chain[:cl.cap_cons.MAX_AUTHORISED_BY]).raw
        if len(_authorised_by_raw) >= MINT_CACHE_SIZE:
            _authorised_by_raw.clear()
        _authorised_by_raw[chain] = raw
    return raw
