"""Token verification (MicroPython-compatible core).

``verify(token, secret, ctx)`` runs, in this order, and raises the first
failure as its own exception class (it never returns a verdict flag):

1. decoding                    -> MalformedToken
2. the HMAC chain from secret  -> BadTag
3. every adjacent frame pair   -> InvalidDerivation
   (each new capability within one of the previous frame; every previous
   constraint present verbatim; nothing after a request/encryption frame)
4. revocation of any chain tag -> Revoked (revoking a tag revokes every
   token derived from it). Revocation lists hold one-way hashes of tags
   (``cap_crypto.revocation_hash``), never tags; the hashes a gateway bound
   into a request token (``authorised_by``: its client token's chain) are
   checked the same way
5. the leaf's constraints      -> ConstraintFailed (unknown types fail closed)
6. the request's sequence      -> Replayed (not above ``ctx.last_sequence``)

It is stateless and reentrant: all state (clock, endpoint, revocations, the
last accepted sequence) comes in through the :class:`Context`.
"""

from . import cap_crypto
from .cap_errors import (
    TokenError, BadTag, InvalidDerivation, ConstraintFailed, Revoked, Replayed, NotPermitted,
)
from .cap_codec import Token, decode, split_body
from .cap_caps import (
    IDENTITY, REQUEST, ENCRYPTION, EXPIRES_AT, NOT_BEFORE, ENDPOINT, GATEWAY,
    REQUIRE_IDENTITY, BOUND_TO, SEQUENCE_WINDOW, AUTHORISED_BY, CAP_NAMES, within,
)


class Context:
    """What the leaf constraints are checked against.

    now: Unix seconds (None: no clock, so time constraints fail closed);
    endpoint, gateway: where the token is presented; aux: auxiliary tokens
    (e.g. identity tokens) presented alongside; last_sequence: the verifier's
    last accepted sequence for this client (None: no replay check); revoked:
    a container of revocation hashes of revoked tags
    (``cap_crypto.revocation_hash``; anything supporting ``in``); bound_tag and
    sequence: set when checking an auxiliary token, to the presented token's
    tag and request sequence.
    """

    __slots__ = ("now", "endpoint", "gateway", "aux", "last_sequence", "revoked",
                 "bound_tag", "sequence")

    def __init__(self, now=None, endpoint=None, gateway=None, aux=(), last_sequence=None,
                 revoked=None, bound_tag=None, sequence=None):
        self.now = now
        self.endpoint = endpoint
        self.gateway = gateway
        self.aux = aux
        self.last_sequence = last_sequence
        self.revoked = revoked
        self.bound_tag = bound_tag
        self.sequence = sequence


_EMPTY = Context()


def chain_tags(secret, frames):
    """All chain tags: ``[tag_0, ..., tag_n]`` for frames (bytes, or objects with ``raw``)."""
    tags = []
    tag = secret
    for f in frames:
        tag = cap_crypto.hmac_sha256(tag, f if isinstance(f, bytes) else f.raw)
        tags.append(tag)
    return tags


def compute_tag(secret, frames):
    """The tag of a token with these frames under ``secret`` (the "recompute
    the tag" step of the key exchange and of minting)."""
    return chain_tags(secret, frames)[-1]


def check_pair(prev, new, index):
    """Raise InvalidDerivation unless the frame with record ``new`` (at
    ``index``) may follow the frame with record ``prev`` (records: cap_codec)."""
    if prev[3]:
        raise InvalidDerivation(
            "frame %d follows a leaf (%s) frame, which cannot be derived"
            % (index, CAP_NAMES[prev[0][0][0]]), index)
    pcons = prev[1]
    if pcons:
        # Every constraint of prev must be an entry of new, byte for byte. The
        # usual layout has new's constraint run start with prev's run: both
        # start at an entry boundary, so the same bytes are the same entries.
        prun = prev[2]
        nrun = new[2]
        if prun is None or nrun is None or not nrun.startswith(prun):
            have = set([c[1] for c in new[1]])
            for c in pcons:
                if c[1] not in have:
                    raise InvalidDerivation(
                        "frame %d drops a constraint of frame %d" % (index, index - 1), index)
    pcaps = prev[0]
    for cap in new[0]:
        craw = cap[1]
        for parent in pcaps:
            # identical bytes: within (the relation is reflexive on non-leaves)
            if parent[1] == craw or within(cap, parent):
                break
        else:
            raise InvalidDerivation(
                "frame %d: %s is not within any capability of frame %d"
                % (index, CAP_NAMES[cap[0]], index - 1), index)


def _fail(constraint, why):
    raise ConstraintFailed("%s: %s" % (constraint, why), constraint)


def _check_constraints(token, ctx, secret):
    leaf = token._recs[-1]
    cap = leaf[0][0]
    seq = cap[5] if cap[0] == REQUEST else ctx.sequence
    for c in leaf[1]:
        code = c[0]
        if code == EXPIRES_AT:
            if ctx.now is None:
                _fail("expires_at", "no clock to check against")
            if ctx.now >= c[2]:
                _fail("expires_at", "expired")
        elif code == NOT_BEFORE:
            if ctx.now is None:
                _fail("not_before", "no clock to check against")
            if ctx.now < c[2]:
                _fail("not_before", "not yet valid")
        elif code == ENDPOINT:
            if ctx.endpoint != c[2]:
                _fail("endpoint", "presented from another endpoint")
        elif code == GATEWAY:
            if ctx.gateway != c[2]:
                _fail("gateway", "presented at another gateway")
        elif code == BOUND_TO:
            if ctx.bound_tag is None or not cap_crypto.equal(ctx.bound_tag, c[2]):
                _fail("bound_to", "not presented beside the token it names")
        elif code == AUTHORISED_BY:
            if len(c[2]) % 32:  # its hashes are checked with revocation (step 4)
                _fail("authorised_by", "not a list of 32-byte hashes")
        elif code == SEQUENCE_WINDOW:
            if seq is None:
                _fail("sequence_window", "no request sequence")
            if not c[2] <= seq < c[3]:
                _fail("sequence_window", "sequence outside the window")
        elif code == REQUIRE_IDENTITY:
            if not _identity_presented(c[2], token, ctx, secret, seq):
                _fail("require_identity", "no bound identity token for %s" % c[2])
        else:
            _fail("unknown:0x%02x" % code, "unknown constraint type")


def _identity_presented(identity, token, ctx, secret, seq):
    """True when an auxiliary token of the same origin, bound to ``token``,
    proves ``identity``. Auxiliary tokens are checked without auxiliaries of
    their own, which bounds the recursion to one level."""
    if not ctx.aux:
        return False
    sub = Context(now=ctx.now, endpoint=ctx.endpoint, gateway=ctx.gateway,
                  revoked=ctx.revoked, bound_tag=token._tag, sequence=seq)
    for aux in ctx.aux:
        try:
            verified = verify(aux, secret, sub)
        except TokenError:
            continue
        leaf = verified._recs[-1]
        bound = False
        for c in leaf[1]:
            if c[0] == BOUND_TO:
                bound = True
        if not bound:
            continue
        for cap in leaf[0]:
            if cap[0] == IDENTITY and cap[2] == identity:
                return True
    return False


def verify(token, secret, ctx=None):
    """Verify ``token`` (bytes or Token) for the origin holding ``secret``.

    Returns the decoded Token; raises a TokenError subclass on any failure.
    """
    if not isinstance(token, Token):
        token = decode(token)  # validates every frame; builds no entry objects
    revoked = ctx.revoked if ctx is not None else None
    tag = secret
    fast = cap_crypto.FAST_DIGEST
    if revoked:
        tags = []
        for raw in token._slices:
            tag = cap_crypto.hmac_sha256(tag, raw)
            tags.append(tag)
    elif fast is not None:
        for raw in token._slices:
            tag = fast(tag, raw, "sha256")
    else:
        pure = cap_crypto.hmac_sha256_pure
        for raw in token._slices:
            tag = pure(tag, raw)
    if not cap_crypto.equal(tag, token._tag):
        raise BadTag("tag does not match the chain from this origin's secret")
    recs = token._recs
    leaf = recs[0]
    i = 0
    for rec in recs:
        if i:
            check_pair(leaf, rec, i)
        leaf = rec
        i += 1
    if ctx is None:
        ctx = _EMPTY
    if revoked:
        check_revoked(tags, leaf, revoked)
    if leaf[1]:
        _check_constraints(token, ctx, secret)
    last = ctx.last_sequence
    if last is not None:
        cap = leaf[0][0]
        if cap[0] == REQUEST and cap[5] <= last:
            raise Replayed("sequence %d is not above %d" % (cap[5], last), cap[5], last)
    return token


def check_revoked(tags, leaf, revoked):
    """Step 4 alone: raise Revoked when the hash of a chain tag in ``tags``, or
    a hash the leaf record's ``authorised_by`` names, is in ``revoked``."""
    rh = cap_crypto.revocation_hash
    for t in tags:
        h = rh(t)
        if h in revoked:
            raise Revoked("token derives from a revoked tag", h)
    for c in leaf[1]:
        if c[0] == AUTHORISED_BY:
            hs = c[2]
            for i in range(0, len(hs) - 31, 32):
                h = hs[i:i + 32]
                if h in revoked:
                    raise Revoked("the token that authorised this request is revoked", h)


def encryption_tag(secret, body, ctx=None):
    """The key-exchange step on the origin: from a token *body* (no tag) whose
    leaf is an encryption capability, check its derivations (and, with a
    context, revocation and constraints) and recompute its tag, the shared
    secret of the exchange. Raises a TokenError subclass otherwise."""
    slices, recs = split_body(body)
    for i in range(1, len(recs)):
        check_pair(recs[i - 1], recs[i], i)
    if recs[-1][0][0][0] != ENCRYPTION:
        raise NotPermitted("not an encryption token")
    tags = chain_tags(secret, slices)
    if ctx is not None:
        body = bytes(body)
        verify(Token(tags[-1], body + tags[-1], slices, recs), secret, ctx)
    return tags[-1]
