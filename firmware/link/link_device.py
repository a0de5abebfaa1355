"""The device side of the link, and request-token checks (MicroPython-compatible core).

Theory of operation
-------------------
::

    IDLE --initiate(): HELLO--> AWAIT_CHALLENGE --CHALLENGE / PROOF--> AWAIT_ACCEPT
       \\                                                                  |
        `--initiate(): RESUME--> AWAIT_RESUMED --RESUMED--> OPEN <--ACCEPT-'
    OPEN: receive REQUESTS, ACK; send RESPONSES, ACK; send BYE -> CLOSED
    any live state: receive ERROR -> CLOSED; protocol failure -> ERROR

The device proves it holds the secret of the root token the gateway was
given at pairing: CHALLENGE carries the body of a fresh encryption token that
must be exactly *our* root frame plus one encryption frame; its tag ``T`` is
recomputed from our secret (``cap_verify.encryption_tag``) and answers the
transcript (``PROOF``). ACCEPT proves the gateway knew ``T`` too (it derived
the token), and its MAC also covers the ticket and the ``encrypt`` flag, so an
attacker can neither fake a gateway nor strip encryption. The gateway sends
ACCEPT in the same flight as CHALLENGE, often followed by REQUESTS (0.5-RTT
data, docs/LINK_PROTOCOL.md): fed that flight at once, the session yields
Established then Requests, and ``data_to_send()`` holds PROOF, to be written
before (best: together with) the ACK and RESPONSES. With a ticket from an
earlier session the device sends RESUME instead (one round trip).

``check_request`` is what the device runs on every delivered request before
executing it: the request token must verify against our own secret (origin),
be a request leaf for exactly this service, method and argument digest, carry
a sequence above the last one accepted, and derive from no revoked tag.
"""

from . import link_wire as wire
from . import link_crypto as lc
from .link_errors import RemoteProtocolError, LocalProtocolError
from .link_session import Session, Established, OPEN, CLOSED_STATE, ERROR_STATE
from ..caplets import cap_verify, cap_codec, cap_caps
from ..caplets.cap_errors import TokenError, NotPermitted

VERSION = 1
NONCE_SIZE = 16
LINK_ID_SIZE = 16
TICKET_ID_SIZE = 16

DEVICE_LABEL = b"edgistry/link/device"
GATEWAY_LABEL = b"edgistry/link/gateway"
RESUME_LABEL = b"edgistry/link/resume"
RESUMED_LABEL = b"edgistry/link/resumed"

# device response status (docs/LINK_PROTOCOL.md)
OK = 0
UNKNOWN_METHOD = 1
TOKEN_REFUSED = 2
BAD_ARGUMENTS = 3
SERVICE_ERROR = 4
EXPIRED = 5
REVOKED = 6  # refused: a tag of its authorising chain is revoked (device, or the gateway at delivery)
INTERRUPTED = 7  # a mutating, non-idempotent method a device crash interrupted: never run twice

IDLE = "IDLE"
AWAIT_CHALLENGE = "AWAIT_CHALLENGE"
AWAIT_ACCEPT = "AWAIT_ACCEPT"
AWAIT_RESUMED = "AWAIT_RESUMED"


def accept_mac(key, label, transcript, ticket_id, ttl, encrypt):
    """MAC of ACCEPT / RESUMED: the transcript plus the ticket and flags they carry."""
    return lc.hmac_sha256(key, label + transcript + ticket_id + lc.u32be(ttl)
                          + bytes([1 if encrypt else 0]))


def resume_mac(secret, link_id, ticket_id, nonce_d):
    return lc.hmac_sha256(secret, RESUME_LABEL + link_id + ticket_id + nonce_d)


class DeviceSession(Session):
    """One connection of a device to its gateway.

    ``secret``: the device secret; ``root_token``: its root token (bytes);
    ``identity_token``: the token the gateway issued at pairing; ``rand(n)``:
    n random bytes; ``ticket``: ``(ticket_id, ticket_secret)`` to resume, or
    None; ``x25519``: a provider (x25519.x25519(), CPython) or None;
    ``require_encrypt`` / ``require_forward_secrecy``: refuse a gateway that
    does not agree to them.
    """

    SIDE = "device"
    RECV = {
        (AWAIT_CHALLENGE, wire.CHALLENGE): ("_on_challenge", AWAIT_ACCEPT),
        (AWAIT_CHALLENGE, wire.ERROR): ("_on_error", CLOSED_STATE),
        (AWAIT_ACCEPT, wire.ACCEPT): ("_on_accept", OPEN),
        (AWAIT_ACCEPT, wire.ERROR): ("_on_error", CLOSED_STATE),
        (AWAIT_RESUMED, wire.RESUMED): ("_on_resumed", OPEN),
        (AWAIT_RESUMED, wire.ERROR): ("_on_error", CLOSED_STATE),
        (OPEN, wire.REQUESTS): ("_on_requests", OPEN),
        (OPEN, wire.ACK): ("_on_ack", OPEN),
        (OPEN, wire.ERROR): ("_on_error", CLOSED_STATE),
    }
    SEND = {
        (OPEN, wire.RESPONSES): OPEN,
        (OPEN, wire.ACK): OPEN,
        (OPEN, wire.BYE): CLOSED_STATE,
        (OPEN, wire.ERROR): CLOSED_STATE,
    }

    def __init__(self, secret, root_token, link_id, identity_token, rand, ticket=None,
                 x25519=None, require_encrypt=False, require_forward_secrecy=False):
        Session.__init__(self, IDLE)
        self._secret = secret
        self._root_frame = cap_codec.decode(root_token)._slices[0]
        self.link_id = link_id
        self._identity = identity_token
        self._rand = rand
        self._ticket = ticket
        self._x = x25519
        self._require_encrypt = require_encrypt
        self._require_fs = require_forward_secrecy
        self.resumed = False
        self.forward_secret = False

    def initiate(self):
        """The first frame: RESUME when we hold a ticket, else HELLO."""
        if self.state != IDLE:
            self.state = ERROR_STATE
            raise LocalProtocolError("unexpected", "initiate() twice")
        self._nonce_d = self._rand(NONCE_SIZE)
        if self._ticket is not None:
            ticket_id, secret = self._ticket
            self._ticket_id = ticket_id
            self._queue(wire.RESUME, "Resume", {
                "link_id": self.link_id, "ticket_id": ticket_id, "nonce": self._nonce_d,
                "mac": resume_mac(secret, self.link_id, ticket_id, self._nonce_d)})
            self.state = AWAIT_RESUMED
        else:
            msg = {"version": VERSION, "link_id": self.link_id,
                   "identity_token": self._identity, "nonce": self._nonce_d}
            self._xpriv = None
            if self._x is not None:
                self._xpriv, msg["x25519"] = self._x.keypair()
            self._hello = self._queue(wire.HELLO, "Hello", msg)
            self.state = AWAIT_CHALLENGE
        return self.data_to_send()

    # -- handshake handlers --

    def _on_challenge(self, msg, body):
        enc = msg["enc_token_body"]
        try:
            slices = cap_codec.split_body(enc)[0]
            if len(slices) != 2 or slices[0] != self._root_frame:
                raise NotPermitted("not root + one encryption frame of this device")
            tag = cap_verify.encryption_tag(self._secret, enc)
        except TokenError as exc:
            raise RemoteProtocolError("bad_challenge", str(exc))
        if len(msg["nonce"]) != NONCE_SIZE:
            raise RemoteProtocolError("malformed", "challenge nonce")
        ikm = tag
        if msg["x25519"]:
            if self._xpriv is None:
                raise RemoteProtocolError("malformed", "x25519 key we did not ask for")
            try:
                ikm = tag + self._x.shared(self._xpriv, msg["x25519"])
            except ValueError as exc:
                raise RemoteProtocolError("bad_key", str(exc))
            self.forward_secret = True
        elif self._xpriv is not None and self._require_fs:
            raise RemoteProtocolError("downgrade", "gateway declined forward secrecy")
        self._xpriv = None
        self._tag = tag
        self._ikm = ikm
        self._salt = self._nonce_d + msg["nonce"]
        self._transcript = lc.sha256(self._hello + body)
        self._queue(wire.PROOF, "Proof",
                    {"mac": lc.hmac_sha256(tag, DEVICE_LABEL + self._transcript)})
        return None

    def _on_accept(self, msg, body):
        want = accept_mac(self._tag, GATEWAY_LABEL, self._transcript, msg["ticket_id"],
                          msg["ticket_ttl_s"], msg["encrypt"])
        if not lc.equal(msg["mac"], want):
            raise RemoteProtocolError("bad_accept", "gateway failed to prove the key")
        return self._establish(self._ikm, msg, False)

    def _on_resumed(self, msg, body):
        ticket_id, secret = self._ticket
        want = accept_mac(secret, RESUMED_LABEL, ticket_id + self._nonce_d + msg["nonce"],
                          msg["ticket_id"], msg["ticket_ttl_s"], msg["encrypt"])
        if len(msg["nonce"]) != NONCE_SIZE or not lc.equal(msg["mac"], want):
            raise RemoteProtocolError("bad_accept", "gateway failed to prove the ticket")
        self._salt = self._nonce_d + msg["nonce"]
        return self._establish(secret, msg, True)

    def _establish(self, ikm, msg, resumed):
        if self._require_encrypt and not msg["encrypt"]:
            raise RemoteProtocolError("downgrade", "gateway declined encryption")
        if len(msg["ticket_id"]) not in (0, TICKET_ID_SIZE):
            raise RemoteProtocolError("malformed", "ticket id")
        k = lc.session_keys(ikm, self._salt)
        # device receives on g2d, sends on d2g
        self._install((k[1], k[0], k[3], k[2]), msg["encrypt"])
        self.resumed = resumed
        self._ticket = None
        return Established(self.link_id, resumed, msg["encrypt"], self.forward_secret,
                           msg["ticket_id"], lc.resumption_secret(ikm, self._salt),
                           msg["ticket_ttl_s"])


# ---- request tokens ----------------------------------------------------------------

def check_request(item, secret, now_s=None, last_sequence=None, revoked=None):
    """Verify a DeviceRequest dict's token for this device; return its sequence.

    Raises a caplets TokenError (BadTag, Replayed, Revoked, ConstraintFailed,
    NotPermitted, ...) when the device must refuse it.
    """
    ctx = cap_verify.Context(now=now_s, last_sequence=last_sequence, revoked=revoked)
    token = cap_verify.verify(item["request_token"], secret, ctx)
    cap = token._recs[-1][0][0]
    if cap[0] != cap_caps.REQUEST:
        raise NotPermitted("not a request token")
    if cap[2] != item["service"] or cap[3] != item["method"]:
        raise NotPermitted("token is for %s:%s" % (cap[2], cap[3]))
    if not lc.equal(cap[4], lc.sha256(item["args"])):
        raise NotPermitted("arguments do not match the token's digest")
    return cap[5]


def request_sequence(item):
    """The sequence a request's token claims (0 when it does not decode);
    devices run a batch in sequence order."""
    try:
        cap = cap_codec.decode(item["request_token"])._recs[-1][0][0]
    except TokenError:
        return 0
    return cap[5] if cap[0] == cap_caps.REQUEST else 0
