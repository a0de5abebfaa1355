"""Token verification (MicroPython-compatible core).

``verify(token, secret, ctx)`` runs, in this order, and raises the first
failure as its own exception class (it never returns a verdict flag):

1. decoding                    -> MalformedToken
2. the HMAC chain from secret  -> BadTag
3. every adjacent frame pair   -> InvalidDerivation
   (each new capability within one of the previous frame; every previous
   constraint present verbatim; nothing after a request/encryption frame)
4. revocation of any chain tag -> Revoked (revoking a tag revokes every
   token derived from it)
5. the leaf's constraints      -> ConstraintFailed (unknown types fail closed)
6. the request's sequence      -> Replayed (not above ``ctx.last_sequence``)

It is stateless and reentrant: all state (clock, endpoint, revocations, the
last accepted sequence) comes in through the :class:`Context`.
"""

try:
    from . import cap_crypto
    from .cap_errors import (TokenError, BadTag, InvalidDerivation, ConstraintFailed,
                             Revoked, Replayed, NotPermitted)
    from .cap_codec import Token, decode, decode_body
    from .cap_types import (ROOT, SERVICE, IDENTITY, REQUEST, ENCRYPTION, EXPIRES_AT,
                            NOT_BEFORE, ENDPOINT, GATEWAY, REQUIRE_IDENTITY, BOUND_TO,
                            SEQUENCE_WINDOW, WILDCARD)
except ImportError:
    import cap_crypto
    from cap_errors import (TokenError, BadTag, InvalidDerivation, ConstraintFailed,
                            Revoked, Replayed, NotPermitted)
    from cap_codec import Token, decode, decode_body
    from cap_types import (ROOT, SERVICE, IDENTITY, REQUEST, ENCRYPTION, EXPIRES_AT,
                           NOT_BEFORE, ENDPOINT, GATEWAY, REQUIRE_IDENTITY, BOUND_TO,
                           SEQUENCE_WINDOW, WILDCARD)


class Context:
    """What the leaf constraints are checked against.

    now: Unix seconds (None: no clock, so time constraints fail closed);
    endpoint, gateway: where the token is presented; aux: auxiliary tokens
    (e.g. identity tokens) presented alongside; last_sequence: the verifier's
    last accepted sequence for this client (None: no replay check); revoked:
    a container of revoked tags (anything supporting ``in``); bound_tag and
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
    """All chain tags: ``[tag_0, ..., tag_n]`` for frames (Frame or bytes)."""
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


def check_derivation(prev, new, index):
    """Raise InvalidDerivation unless frame ``new`` (at ``index``) may follow ``prev``."""
    if prev._leaf:
        raise InvalidDerivation(
            "frame %d follows a leaf (%s) frame, which cannot be derived"
            % (index, prev._caps[0].name), index)
    if not prev._cset <= new._cset:
        raise InvalidDerivation(
            "frame %d drops a constraint of frame %d" % (index, index - 1), index)
    pcaps = prev._caps
    for cap in new._caps:
        for parent in pcaps:
            if cap.within(parent):
                break
        else:
            raise InvalidDerivation(
                "frame %d: %s is not within any capability of frame %d"
                % (index, cap.name, index - 1), index)


def check_chain(frames):
    """Check every adjacent pair of frames."""
    for i in range(1, len(frames)):
        check_derivation(frames[i - 1], frames[i], i)


def _fail(constraint, why):
    raise ConstraintFailed("%s: %s" % (constraint, why), constraint)


def _check_constraints(token, ctx, secret):
    leaf = token._frames[-1]
    cap = leaf._caps[0]
    seq = cap._sequence if cap.code == REQUEST else ctx.sequence
    for c in leaf._constraints:
        code = c.code
        if code == EXPIRES_AT:
            if ctx.now is None:
                _fail("expires_at", "no clock to check against")
            if ctx.now >= c._value:
                _fail("expires_at", "expired")
        elif code == NOT_BEFORE:
            if ctx.now is None:
                _fail("not_before", "no clock to check against")
            if ctx.now < c._value:
                _fail("not_before", "not yet valid")
        elif code == ENDPOINT:
            if ctx.endpoint != c._value:
                _fail("endpoint", "presented from another endpoint")
        elif code == GATEWAY:
            if ctx.gateway != c._value:
                _fail("gateway", "presented at another gateway")
        elif code == BOUND_TO:
            if ctx.bound_tag is None or not cap_crypto.equal(ctx.bound_tag, c._tag):
                _fail("bound_to", "not presented beside the token it names")
        elif code == SEQUENCE_WINDOW:
            if seq is None:
                _fail("sequence_window", "no request sequence")
            if not c._low <= seq < c._high:
                _fail("sequence_window", "sequence outside the window")
        elif code == REQUIRE_IDENTITY:
            if not _identity_presented(c._value, token, ctx, secret, seq):
                _fail("require_identity", "no bound identity token for %s" % c._value)
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
        leaf = verified._frames[-1]
        bound = False
        for c in leaf._constraints:
            if c.code == BOUND_TO:
                bound = True
        if not bound:
            continue
        for cap in leaf._caps:
            if cap.code == IDENTITY and cap._identity == identity:
                return True
    return False


def authenticate(token, secret):
    """Steps 1-3 only (decode, tag chain, derivations): the token is genuine
    and well derived. Constraints are not checked. Returns the Token."""
    if not isinstance(token, Token):
        token = decode(token)
    frames = token._frames
    if not cap_crypto.equal(compute_tag(secret, frames), token._tag):
        raise BadTag("tag does not match the chain from this origin's secret")
    check_chain(frames)
    return token


def verify(token, secret, ctx=None):
    """Verify ``token`` (bytes or Token) for the origin holding ``secret``.

    Returns the decoded Token; raises a TokenError subclass on any failure.
    """
    if not isinstance(token, Token):
        token = decode(token)
    frames = token._frames
    fast = cap_crypto.FAST_DIGEST
    tag = secret
    revoked = ctx.revoked if ctx is not None else None
    tags = [] if revoked else None
    if fast is not None:
        for f in frames:
            tag = fast(tag, f._raw, "sha256")
            if tags is not None:
                tags.append(tag)
    else:
        for f in frames:
            tag = cap_crypto.hmac_sha256_pure(tag, f._raw)
            if tags is not None:
                tags.append(tag)
    if not cap_crypto.equal(tag, token._tag):
        raise BadTag("tag does not match the chain from this origin's secret")
    for i in range(1, len(frames)):
        check_derivation(frames[i - 1], frames[i], i)
    if ctx is None:
        ctx = _EMPTY
    if tags:
        for t in tags:
            if t in revoked:
                raise Revoked("token derives from a revoked tag", t)
    if frames[-1]._constraints:
        _check_constraints(token, ctx, secret)
    last = ctx.last_sequence
    if last is not None:
        cap = frames[-1]._caps[0]
        if cap.code == REQUEST and cap._sequence <= last:
            raise Replayed("sequence %d is not above %d" % (cap._sequence, last),
                           cap._sequence, last)
    return token


def permits(token, service, method):
    """Raise NotPermitted unless the leaf of ``token`` (already verified)
    grants calling ``method`` of ``service``."""
    for cap in token._frames[-1]._caps:
        code = cap.code
        if code == ROOT:
            return
        if code == SERVICE and cap._type == service and (
                cap._methods[0] == WILDCARD or method in cap._methods):
            return
        if code == REQUEST and cap._service == service and cap._method == method:
            return
    raise NotPermitted("token does not grant %s:%s" % (service, method))


def encryption_tag(secret, body, ctx=None):
    """The key-exchange step on the origin: from a token *body* (no tag) whose
    leaf is an encryption capability, check its derivations (and, with a
    context, revocation and constraints) and recompute its tag, the shared
    secret of the exchange. Raises a TokenError subclass otherwise."""
    frames = decode_body(body)
    check_chain(frames)
    if frames[-1]._caps[0].code != ENCRYPTION:
        raise NotPermitted("not an encryption token")
    tags = chain_tags(secret, frames)
    if ctx is not None:
        verify(Token(frames, tags[-1]), secret, ctx)
    return tags[-1]
