"""Exceptions of the CAPLets token library (MicroPython-compatible core).

Every failure of decoding or verification raises one subclass of
:class:`TokenError`; verification never signals failure by a return value.
The class name is the verdict (tests compare it between CPython and
MicroPython), the message says why.
"""


class TokenError(Exception):
    """Base of all token failures."""


class MalformedToken(TokenError):
    """The bytes (or text) are not a well-formed token: truncated, trailing
    garbage, a limit exceeded, an unknown capability type, bad field."""


class BadTag(TokenError):
    """The HMAC chain recomputed from the secret does not give the token's tag."""


class InvalidDerivation(TokenError):
    """A frame widens the rights of the frame before it, drops one of its
    constraints, or follows a leaf (request or encryption) frame."""

    def __init__(self, message, index=None):
        super().__init__(message)
        # index of the offending (newer) frame
        self.index = index


class ConstraintFailed(TokenError):
    """A constraint of the leaf frame is not satisfied by the context."""

    def __init__(self, message, constraint=None):
        super().__init__(message)
        # the constraint's name, e.g. "expires_at", or "unknown:0x9f"
        self.constraint = constraint


class Revoked(TokenError):
    """The token, or a token it was derived from, is on the revocation list."""

    def __init__(self, message, tag=None):
        super().__init__(message)
        self.tag = tag


class Replayed(TokenError):
    """The request's sequence number is not above the last one accepted."""

    def __init__(self, message, sequence=None, last_sequence=None):
        super().__init__(message)
        self.sequence = sequence
        self.last_sequence = last_sequence


class NotPermitted(TokenError):
    """The token is authentic and valid but does not grant the asked operation."""
