"""Minting, deriving, flattening and the text form (CPython).

Everything here returns new immutable :class:`Token` values; nothing mutates
a token. Derivation is checked at once with the same rule the verifier uses,
so an invalid derivation fails where it is made, not only where it is used.
"""

from __future__ import annotations

import base64
import binascii
import datetime as _dt
import os
import re
import time
from collections.abc import Iterable

from . import cap_codec
from .cap_codec import MAX_FRAMES, MAX_TOKEN_SIZE
from .cap_token import Token, authenticate, check_derivation, decode, make_frame
from .cap_crypto import hmac_sha256, sha256
from .cap_errors import InvalidDerivation, MalformedToken
from .cap_entries import Encryption, Entry, Request, Root
from .cap_verify import Context
from .cap_verify import verify as _core_verify

MIN_SECRET_SIZE = 16  # 128 bits: below that a secret can be searched for
SECRET_SIZE = 32
NONCE_SIZE = 16

TokenLike = Token | bytes | str


def new_secret() -> bytes:
    """A fresh random origin secret."""
    return os.urandom(SECRET_SIZE)


def _check_secret(secret: bytes) -> None:
    if not isinstance(secret, bytes) or len(secret) < MIN_SECRET_SIZE:
        raise ValueError(f"a secret is at least {MIN_SECRET_SIZE} bytes")


def mint(secret: bytes, entries: Iterable[Entry]) -> Token:
    """A single-frame token issued by the origin holding ``secret``."""
    _check_secret(secret)
    frame = make_frame(list(entries))
    return Token((frame,), hmac_sha256(secret, frame.raw))


def root(secret: bytes) -> Token:
    """The root token of an origin: one frame holding the root capability."""
    return mint(secret, [Root()])


def derive(token: TokenLike, capabilities: Iterable[Entry] | None = None,
           constraints: Iterable[Entry] = ()) -> Token:
    """A new token one frame longer, holding ``capabilities`` (default: the
    leaf's own) plus the leaf's constraints and the new ``constraints``.

    Raises InvalidDerivation when the new frame would widen rights or the
    token's leaf cannot be derived (request and encryption tokens).
    """
    token = load(token)
    leaf = token.leaf
    if leaf.is_leaf:
        raise InvalidDerivation(f"a {leaf.capabilities[0].name} token cannot be derived",
                                len(token.frames))
    if len(token.frames) >= MAX_FRAMES:
        raise InvalidDerivation(f"chain already has {MAX_FRAMES} frames; flatten it first",
                                len(token.frames))
    caps = list(leaf.capabilities if capabilities is None else capabilities)
    carried = list(leaf.constraints)
    added = [c for c in constraints if c not in carried]
    frame = make_frame(caps + carried + added)
    check_derivation(leaf, frame, len(token.frames))
    return Token(token.frames + (frame,), hmac_sha256(token.tag, frame.raw))


def sequence_now(clock=time.time) -> int:
    """The current sequence number: Unix time in milliseconds (as in CAPLets,
    the clock is the sequence)."""
    return int(clock() * 1000)


def request_digest(args: bytes) -> bytes:
    """The digest a request token carries for its argument bytes."""
    return sha256(args)


def request_token(token: TokenLike, service: str, method: str, args: bytes = b"",
                  sequence: int | None = None, constraints: Iterable[Entry] = ()) -> Token:
    """A request token: ``token`` derived to exactly one operation (a leaf
    frame that cannot be derived further and is safe to send in clear)."""
    seq = sequence_now() if sequence is None else sequence
    return derive(token, [Request(service, method, request_digest(args), seq)], constraints)


def encryption_token(token: TokenLike, nonce: bytes | None = None) -> Token:
    """A fresh encryption token for the link key exchange. Send its ``body``
    (never the tag); the origin recomputes the tag with ``encryption_tag``."""
    return derive(token, [Encryption(nonce if nonce is not None else os.urandom(NONCE_SIZE))])


def flatten(token: TokenLike, secret: bytes) -> Token:
    """Re-issue a (genuine, well-derived) chain as an equivalent single-frame
    token holding the same leaf. Only the origin can do this. The flat token
    no longer carries the history, so revoking an intermediate tag of the
    long chain does not revoke it: revoke the flat token's tag too."""
    _check_secret(secret)
    token = authenticate(load(token), secret)
    leaf = token.leaf
    return Token((leaf,), hmac_sha256(secret, leaf.raw))


def verify(token: TokenLike, secret: bytes, context: Context | None = None,
           **fields) -> Token:
    """Verify with a context built from keyword fields (see Context); ``now``
    defaults to the current time. Returns the Token or raises a TokenError."""
    if context is None:
        fields.setdefault("now", int(time.time()))
        context = Context(**fields)
    elif fields:
        raise TypeError("give a Context or keyword fields, not both")
    return _core_verify(load(token), secret, context)


# ---- text form -------------------------------------------------------------

_B64URL = re.compile(r"[A-Za-z0-9_-]+")


def to_text(token: Token | bytes) -> str:
    """The text form: unpadded base64url of the binary encoding."""
    raw = token.to_bytes() if isinstance(token, cap_codec.Token) else token
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


# The longest text form of a token: base64url of MAX_TOKEN_SIZE bytes, and a little
# whitespace around it. Longer text is refused before any decoding (a client's 4 MB of
# text cost ~80 ms of the gateway's loop per call to decode).
MAX_TOKEN_TEXT = 4 * ((MAX_TOKEN_SIZE + 2) // 3) + 16


def from_text(text: str) -> Token:
    """Decode the text form strictly (one spelling per token)."""
    if len(text) > MAX_TOKEN_TEXT:
        raise MalformedToken("token text longer than %d characters" % MAX_TOKEN_TEXT)
    text = text.strip()
    if not _B64URL.fullmatch(text) or len(text) % 4 == 1:
        raise MalformedToken("not base64url text")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise MalformedToken("not base64url text") from exc
    if to_text(raw) != text:
        raise MalformedToken("non-canonical base64url")
    return decode(raw)


def load(value: TokenLike) -> Token:
    """A Token from a Token, its bytes or its text form."""
    if isinstance(value, Token):
        return value
    if isinstance(value, cap_codec.Token):  # the core's (cap_verify.verify of bytes): add the object views
        return Token(None, value._tag, value._raw, value._slices, value._recs)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return decode(bytes(value))
    if isinstance(value, str):
        return from_text(value)
    raise MalformedToken(f"cannot read a token from {type(value).__name__}")


# ---- times -------------------------------------------------------------------

_DURATION = re.compile(r"\+(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")


def parse_time(text: str, now: float | None = None) -> int:
    """Unix seconds from ISO 8601 (naive means UTC) or ``+DURATION`` such as
    ``+90s``, ``+15m``, ``+2h``, ``+7d``, ``+1d12h``. Raises ValueError."""
    text = text.strip()
    if text.startswith("+"):
        m = _DURATION.fullmatch(text)
        if not m or not any(m.groups()):
            raise ValueError(f"bad duration {text!r} (e.g. +30m, +2h, +7d)")
        d, h, mi, s = (int(g or 0) for g in m.groups())
        base = time.time() if now is None else now
        return int(base) + ((d * 24 + h) * 60 + mi) * 60 + s
    try:
        when = _dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ValueError(f"bad time {text!r} (ISO 8601 or +DURATION)") from exc
    if when.tzinfo is None:
        when = when.replace(tzinfo=_dt.timezone.utc)
    return int(when.timestamp())
