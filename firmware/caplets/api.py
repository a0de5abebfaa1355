"""CAPLets capability tokens (chained HMAC-SHA256).

Two layers:

* the verification core, pure and MicroPython-compatible, on value tuples
  and frame records (no object per entry): ``cap_codec`` (binary format,
  theory of operation), ``cap_caps`` (entry codes, subset relation),
  ``cap_cons`` (constraints), ``cap_verify`` (verification), ``cap_crypto``,
  ``cap_h3``, ``cap_wire``, ``cap_errors``. A board ships these alone
  (``edgistry device export``), in the package tree.
* the CPython API: ``cap_entries`` (entries as objects), ``cap_token``
  (tokens and frames as objects), ``cap_fast`` (the C scanner's loader),
  ``mint`` (root, derive, request and encryption tokens, flatten, text form),
  ``revocation``, ``replay`` and the ``edgistry token`` CLI.

Typical use::

    secret = new_secret()
    root_tok = root(secret)
    app = derive(root_tok, [Service("thermo", ["read"])], [ExpiresAt(t)])
    req = request_token(app, "thermo", "read", args=b"...")
    verify(req, secret, endpoint=..., last_sequence=...)   # raises or returns
"""

from . import (cap_caps, cap_codec, cap_cons, cap_crypto, cap_entries, cap_errors, cap_h3,  # submodules too
               cap_token, cap_verify, cap_wire, replay, revocation)
from .cap_codec import MAX_ENTRIES, MAX_FRAME_SIZE, MAX_FRAMES, MAX_TOKEN_SIZE
from .cap_token import (
    Frame, Token, authenticate, check_chain, check_constraints, check_derivation, decode, decode_body,
    encode_body, make_frame, permits,
)
from .cap_errors import (
    BadTag, ConstraintFailed, InvalidDerivation, MalformedToken, NotPermitted,
    Replayed, Revoked, TokenError,
)
from .cap_caps import ADMIN, INVOKE, READ, WRITE
from .cap_entries import (
    Encryption, Identity, Region, Request, Resource, Root, Service,
    AuthorisedBy, BoundTo, Endpoint, ExpiresAt, Gateway, NotBefore, RequireIdentity, SequenceWindow,
    UnknownConstraint,
)
from .cap_verify import Context, chain_tags, check_revoked, compute_tag, encryption_tag
from .cap_crypto import revocation_hash
from .mint import (
    MAX_TOKEN_TEXT, derive, encryption_token, flatten, from_text, load, mint, new_secret, parse_time,
    request_digest, request_token, root, sequence_now, to_text, verify,
)
from .replay import ClockDrift, SequenceVerifier
from .revocation import RevocationSet, RevocationSource

__all__ = [
    "cap_caps", "cap_codec", "cap_cons", "cap_crypto", "cap_entries", "cap_errors", "cap_h3", "cap_token",
    "cap_verify", "cap_wire",
    "replay", "revocation",
    "ADMIN", "INVOKE", "READ", "WRITE", "MAX_ENTRIES", "MAX_FRAME_SIZE", "MAX_FRAMES",
    "MAX_TOKEN_SIZE", "MAX_TOKEN_TEXT", "AuthorisedBy", "BadTag", "BoundTo", "ClockDrift", "ConstraintFailed", "Context",
    "Encryption", "Endpoint", "ExpiresAt", "Frame", "Gateway", "Identity",
    "InvalidDerivation", "MalformedToken", "NotBefore", "NotPermitted", "Region",
    "Replayed", "Request", "RequireIdentity", "Resource", "RevocationSet",
    "RevocationSource", "Revoked", "Root", "SequenceVerifier", "SequenceWindow", "Service",
    "Token", "TokenError", "UnknownConstraint", "authenticate", "chain_tags", "check_chain", "check_constraints", "check_derivation",
    "check_revoked",
    "compute_tag", "decode", "decode_body", "derive", "encode_body", "encryption_tag",
    "encryption_token", "flatten", "from_text", "load", "make_frame", "mint",
    "new_secret", "parse_time", "permits", "request_digest", "request_token", "revocation_hash", "root",
    "sequence_now", "to_text", "verify",
]
