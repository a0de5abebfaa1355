"""The gateway side of the link (sans-I/O; runs on CPython, written in the core's dialect).

Theory of operation
-------------------
::

    AWAIT_HELLO --HELLO / CHALLENGE + ACCEPT [+ early REQUESTS]--> AWAIT_PROOF --PROOF--> OPEN
         `--------RESUME / RESUMED-------------------------------------------------> OPEN
    AWAIT_PROOF: send REQUESTS (0.5-RTT; with encryption only may they carry work)
    OPEN: receive RESPONSES, ACK; receive BYE -> CLOSED; send REQUESTS, ACK
    any live state: receive ERROR -> CLOSED; protocol failure -> ERROR

HELLO names a link id and carries the identity token this gateway issued at
pairing (origin: the gateway's identity secret, leaf capability
``Identity("link:<hex link id>")``): an unknown link id or a token naming
another link ends the handshake before any work. CHALLENGE is the body of a
fresh encryption token derived from the device's root token (root frame +
one encryption frame); only the holder of the device secret can compute its
tag ``T`` and so answer PROOF. The gateway knows ``T`` already, so it proves
itself (ACCEPT) in the same flight as CHALLENGE and keys its sending direction
at once (event :class:`Challenged`); it keys its receiving direction, and
stores the ticket it announced, only once PROOF verifies (:class:`Established`).
A RESUME spends a single-use ticket (taken
from the store whether or not it then verifies, so a replayed RESUME always
fails) and proves the resumption secret.

The session reaches its stores through ``keys``, any object with::

    identity_secret() -> bytes
    device(link_id) -> (root_token: bytes, encrypt: bool) or None
    store_ticket(ticket_id, link_id, secret, expires_at_ms) -> None
    take_ticket(ticket_id) -> (link_id, secret, expires_at_ms) or None

so it stays pure; gateway/link/server.py adapts a LinkBackend to it.
"""

from . import link_wire as wire
from . import link_crypto as lc
from .link_errors import RemoteProtocolError
from .link_errors import LocalProtocolError
from .link_session import (Session, Established, Responses, Bye, OPEN, CLOSED_STATE, ERROR_STATE,
                           TERMINAL)
from .link_device import (
    VERSION, NONCE_SIZE, LINK_ID_SIZE, TICKET_ID_SIZE, DEVICE_LABEL, GATEWAY_LABEL,
    RESUMED_LABEL, accept_mac, resume_mac,
)
from ..caplets import cap_verify, cap_codec, cap_caps, cap_token
from ..caplets.cap_errors import TokenError

AWAIT_HELLO = "AWAIT_HELLO"
AWAIT_PROOF = "AWAIT_PROOF"
DEFAULT_TICKET_TTL_S = 7 * 24 * 3600  # a week: covers long duty cycles


def identity_name(link_id):
    """The identity an identity token names for ``link_id``."""
    return "link:" + "".join(["%02x" % b for b in link_id])


def encryption_body(root_token, nonce):
    """(body, T) of a fresh encryption token: the root's frame + Encryption(nonce)."""
    root = cap_codec.decode(root_token)
    if len(root._slices) != 1:
        raise ValueError("a device root token has one frame")
    frame = cap_codec.encryption_frame(root, nonce)
    body = cap_token.encode_body([root._slices[0], frame])
    return body, lc.hmac_sha256(root.tag, frame)


class Challenged:
    """The gateway's event: HELLO verified, CHALLENGE and ACCEPT are queued, and the
    session may send REQUESTS before the device has proved anything (0.5-RTT
    data, docs/LINK_PROTOCOL.md). With ``encrypt`` they may carry work (only
    the device can decrypt them); without, only an empty REQUESTS whose
    ``more`` says whether work waits (GatewaySession.send enforces it). The
    device is NOT authenticated yet: nothing sent now counts as delivered, and
    nothing is received before :class:`Established` (PROOF verified)."""

    def __init__(self, link_id, encrypt, forward_secret=False):
        self.link_id = link_id
        self.encrypt = encrypt
        self.forward_secret = forward_secret

    def __repr__(self):
        return "Challenged(encrypt=%r, forward_secret=%r)" % (self.encrypt, self.forward_secret)


class GatewaySession(Session):
    """One device connection at the gateway. ``now_ms()``: the clock;
    ``rand(n)``: random bytes; ``x25519``: provider or None."""

    SIDE = "gateway"
    RECV = {
        (AWAIT_HELLO, wire.HELLO): ("_on_hello", AWAIT_PROOF),
        (AWAIT_HELLO, wire.RESUME): ("_on_resume", OPEN),
        (AWAIT_HELLO, wire.ERROR): ("_on_error", CLOSED_STATE),
        (AWAIT_PROOF, wire.PROOF): ("_on_proof", OPEN),
        (AWAIT_PROOF, wire.ERROR): ("_on_error", CLOSED_STATE),
        (OPEN, wire.RESPONSES): ("_on_responses", OPEN),
        (OPEN, wire.ACK): ("_on_ack", OPEN),
        (OPEN, wire.BYE): ("_on_bye", CLOSED_STATE),
        (OPEN, wire.ERROR): ("_on_error", CLOSED_STATE),
    }
    SEND = {
        (AWAIT_PROOF, wire.REQUESTS): AWAIT_PROOF,  # 0.5-RTT (see send())
        (OPEN, wire.REQUESTS): OPEN,
        (OPEN, wire.ACK): OPEN,
        (OPEN, wire.ERROR): CLOSED_STATE,
    }

    def __init__(self, keys, rand, now_ms, x25519=None, ticket_ttl_s=DEFAULT_TICKET_TTL_S):
        Session.__init__(self, AWAIT_HELLO)
        self._keys_store = keys
        self._rand = rand
        self._now_ms = now_ms
        self._x = x25519
        self._ttl = ticket_ttl_s
        self.link_id = None        # set once HELLO/RESUME names a known device
        self.resumed = False
        self.forward_secret = False

    def _device(self, link_id):
        found = self._keys_store.device(link_id)
        if found is None:
            raise RemoteProtocolError("unknown_link", "link %s is not paired here"
                                      % identity_name(link_id)[5:21])
        return found

    def _on_hello(self, msg, body):
        if msg["version"] != VERSION:
            raise RemoteProtocolError("version", "version %d" % msg["version"])
        link_id = msg["link_id"]
        if len(link_id) != LINK_ID_SIZE or len(msg["nonce"]) != NONCE_SIZE:
            raise RemoteProtocolError("malformed", "link id or nonce size")
        root_token, encrypt = self._device(link_id)
        self.link_id = link_id
        try:
            token = cap_verify.verify(msg["identity_token"], self._keys_store.identity_secret(),
                                      cap_verify.Context(now=self._now_ms() // 1000))
        except TokenError as exc:
            raise RemoteProtocolError("bad_identity", str(exc))
        want = identity_name(link_id)
        if not any(c[0] == cap_caps.IDENTITY and c[2] == want for c in token._recs[-1][0]):
            raise RemoteProtocolError("bad_identity", "identity token names another link")
        nonce_g = self._rand(NONCE_SIZE)
        enc_body, tag = encryption_body(root_token, self._rand(NONCE_SIZE))
        challenge = {"enc_token_body": enc_body, "nonce": nonce_g}
        ikm = tag
        if msg["x25519"] and self._x is not None:
            priv, challenge["x25519"] = self._x.keypair()
            try:
                ikm = tag + self._x.shared(priv, msg["x25519"])
            except ValueError as exc:
                raise RemoteProtocolError("bad_key", str(exc))
            self.forward_secret = True
        self._encrypt = encrypt
        self._tag = tag
        self._ikm = ikm
        self._salt = msg["nonce"] + nonce_g
        self._transcript = lc.sha256(body + self._queue(wire.CHALLENGE, "Challenge", challenge))
        # ACCEPT in the same flight: it depends on T and the transcript only. The
        # ticket it names is stored once PROOF verifies (never for an impostor).
        self._ticket_id = self._rand(TICKET_ID_SIZE)
        self._queue(wire.ACCEPT, "Accept", {
            "mac": accept_mac(tag, GATEWAY_LABEL, self._transcript, self._ticket_id,
                              self._ttl, encrypt),
            "ticket_id": self._ticket_id, "ticket_ttl_s": self._ttl, "encrypt": encrypt})
        k = lc.session_keys(ikm, self._salt)
        self._install_out((k[0], k[1], k[2], k[3]), encrypt)  # g2d keyed: 0.5-RTT frames
        return Challenged(link_id, encrypt, self.forward_secret)

    def _on_proof(self, msg, body):
        if not lc.equal(msg["mac"], lc.hmac_sha256(self._tag, DEVICE_LABEL + self._transcript)):
            raise RemoteProtocolError("bad_proof", "device failed to prove its secret")
        self._store_ticket(self._ticket_id, self._ikm)
        self._install_in()
        self.resumed = False
        return Established(self.link_id, False, self._encrypt, self.forward_secret)

    def send(self, event):
        """As Session.send; before PROOF (state AWAIT_PROOF) a REQUESTS may carry
        items, revoked tags or twin changes only when the session encrypts:
        otherwise their contents would reach a peer that has not authenticated."""
        if (self.state == AWAIT_PROOF and event.ftype == wire.REQUESTS and not self.encrypt
                and (event.items or event.revoked or event.twin)):
            exc = LocalProtocolError("unexpected", "request contents before PROOF need encryption")
            self.state = ERROR_STATE
            self.error = exc
            raise exc
        return Session.send(self, event)

    def _on_resume(self, msg, body):
        link_id, ticket_id, nonce_d = msg["link_id"], msg["ticket_id"], msg["nonce"]
        if (len(link_id) != LINK_ID_SIZE or len(ticket_id) != TICKET_ID_SIZE
                or len(nonce_d) != NONCE_SIZE):
            raise RemoteProtocolError("malformed", "resume field sizes")
        ticket = self._keys_store.take_ticket(ticket_id)  # single use, whatever follows
        if ticket is None or ticket[0] != link_id or ticket[2] <= self._now_ms():
            raise RemoteProtocolError("bad_ticket", "unknown, used or expired ticket")
        _, secret, _ = ticket
        _, encrypt = self._device(link_id)
        self.link_id = link_id
        if not lc.equal(msg["mac"], resume_mac(secret, link_id, ticket_id, nonce_d)):
            raise RemoteProtocolError("bad_proof", "resume MAC does not verify")
        nonce_g = self._rand(NONCE_SIZE)
        self._salt = nonce_d + nonce_g
        self._encrypt = encrypt
        next_id = self._new_ticket(secret)
        self._queue(wire.RESUMED, "Resumed", {
            "nonce": nonce_g, "ticket_id": next_id, "ticket_ttl_s": self._ttl, "encrypt": encrypt,
            "mac": accept_mac(secret, RESUMED_LABEL, ticket_id + nonce_d + nonce_g, next_id,
                              self._ttl, encrypt)})
        return self._establish(secret, True)

    def _new_ticket(self, ikm):
        ticket_id = self._rand(TICKET_ID_SIZE)
        self._store_ticket(ticket_id, ikm)
        return ticket_id

    def _store_ticket(self, ticket_id, ikm):
        self._keys_store.store_ticket(ticket_id, self.link_id, lc.resumption_secret(ikm, self._salt),
                                      self._now_ms() + self._ttl * 1000)

    def _establish(self, ikm, resumed):
        k = lc.session_keys(ikm, self._salt)
        # gateway receives on d2g, sends on g2d
        self._install((k[0], k[1], k[2], k[3]), self._encrypt)
        self.resumed = resumed
        return Established(self.link_id, resumed, self._encrypt, self.forward_secret)

    def fail(self, reason, detail=""):
        """End the session locally (timeout, shutdown): returns the ERROR frame
        to send (empty when already terminal)."""
        if self.state in TERMINAL:
            return b""
        self._fail(RemoteProtocolError(reason, detail))
        return self.data_to_send()

    def _on_responses(self, msg, body):
        return Responses.from_msg(msg)

    def _on_bye(self, msg, body):
        return Bye.from_msg(msg)
