"""Exceptions and error codes of the device link (MicroPython-compatible core).

Two branches, as in h11: :class:`RemoteProtocolError` when the peer sent
something the protocol forbids (bad frame, MAC, sequence, proof...), and
:class:`LocalProtocolError` when our own side misused the session (sent a frame
its state does not allow). Either moves the session to its ERROR state; after
a RemoteProtocolError the session has an ERROR frame for the peer in
``data_to_send()``. ``reason`` is a short stable word for logs and metrics
(the rejection counters are keyed by it); ``code`` is what goes on the wire.
"""

# Error.code on the wire
E_PROTOCOL = 1      # malformed, unexpected or oversized frame
E_INTEGRITY = 2     # bad MAC, replayed or reordered frame
E_AUTH = 3          # unknown link, bad identity token, bad proof (one code: no oracle)
E_TICKET = 4        # unknown, used or expired ticket: do a full handshake
E_TIMEOUT = 5       # handshake or idle timeout
E_INTERNAL = 6      # the gateway failed; try again later
E_SHUTDOWN = 7      # the gateway is going down; try again later

# reason word -> wire code
REASONS = {
    "malformed": E_PROTOCOL, "unexpected": E_PROTOCOL, "oversized": E_PROTOCOL,
    "version": E_PROTOCOL, "bad_key": E_PROTOCOL, "downgrade": E_PROTOCOL,
    "bad_mac": E_INTEGRITY, "replayed": E_INTEGRITY, "reordered": E_INTEGRITY,
    "unknown_link": E_AUTH, "bad_identity": E_AUTH, "bad_proof": E_AUTH,
    "bad_challenge": E_AUTH, "bad_accept": E_AUTH,
    "bad_ticket": E_TICKET, "timeout": E_TIMEOUT, "internal": E_INTERNAL,
    "shutdown": E_SHUTDOWN,
}

# what the peer is told (authentication failures all read the same)
PUBLIC = {E_PROTOCOL: "protocol error", E_INTEGRITY: "integrity check failed",
          E_AUTH: "authentication failed", E_TICKET: "ticket not valid; do a full handshake",
          E_TIMEOUT: "timed out", E_INTERNAL: "internal error", E_SHUTDOWN: "shutting down"}


class LinkError(Exception):
    """Base of every device-link failure."""

    def __init__(self, reason, detail=""):
        super().__init__("%s: %s" % (reason, detail) if detail else reason)
        self.reason = reason
        self.detail = detail
        self.code = REASONS.get(reason, E_PROTOCOL)


class RemoteProtocolError(LinkError):
    """The peer broke the protocol (or failed authentication)."""


class LocalProtocolError(LinkError):
    """Our side tried something its session state does not allow."""


class DecodeError(RemoteProtocolError):
    """Bytes that are not a well-formed message."""

    def __init__(self, detail=""):
        super().__init__("malformed", detail)


class FrameTooLarge(RemoteProtocolError):
    """A frame longer than MAX_LINK_FRAME."""

    def __init__(self, detail=""):
        super().__init__("oversized", detail)
