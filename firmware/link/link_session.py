"""Events and the shared session machinery (MicroPython-compatible core).

Theory of operation
-------------------
A session is sans-I/O (after h11/h2): the caller feeds received bytes with
``receive_data(data)``, pulls events with ``next_event()`` (an event,
``NEED_DATA`` or ``CLOSED``), turns its own events into bytes with
``send(event)``, and writes whatever the protocol itself must answer (the
handshake replies, an ERROR frame after a failure) from ``data_to_send()``.

Each side's lifecycle is a transition table in one place: ``RECV`` maps
``(state, frame type)`` to ``(handler, next state)``, ``SEND`` maps
``(state, frame type)`` to the next state. A frame not in ``RECV`` is a
:class:`RemoteProtocolError` ("unexpected"); an event not in ``SEND`` is a
:class:`LocalProtocolError`. Either moves the session to ``ERROR`` (terminal);
a remote error also queues an ERROR frame for the peer. Receiving ERROR or
sending/receiving BYE moves it to ``CLOSED`` (terminal).

Handshake frames have ``seq`` 0 and no MAC. Once keys are installed for a
direction every frame in that direction must carry its next sequence number
(1, 2, 3, ...) and ``mac = HMAC(k_mac_dir, u8(type) || u64be(seq) || body)[:16]``;
the MAC is checked first (tampered -> "bad_mac"), then the sequence (lower:
"replayed", higher: "reordered"), then the body is decrypted when the session
encrypts. Data frames are checked before the table is consulted, so nothing
unauthenticated is ever acted on after the handshake.

The two directions are keyed separately: the device keys both at ACCEPT or
RESUMED; the gateway keys its sending direction when it sends ACCEPT (in the
same flight as CHALLENGE, so it can send 0.5-RTT REQUESTS) and its receiving
direction only once PROOF verifies (``established`` is then True).
"""

from . import link_wire as wire
from . import link_crypto as lc
from .link_errors import LinkError, RemoteProtocolError, LocalProtocolError, PUBLIC


class _Sentinel:
    def __init__(self, name):
        self.name = name

    def __repr__(self):
        return self.name


NEED_DATA = _Sentinel("NEED_DATA")  # next_event(): feed more bytes
CLOSED = _Sentinel("CLOSED")        # next_event(): the session has ended

# states shared by both sides
OPEN = "OPEN"
CLOSED_STATE = "CLOSED"
ERROR_STATE = "ERROR"
TERMINAL = (CLOSED_STATE, ERROR_STATE)


# ---- events ----------------------------------------------------------------------

class Established:
    """The handshake completed (full or resumed). The device persists the
    ticket (``ticket_id``, ``ticket_secret``) to resume next time."""

    def __init__(self, link_id, resumed, encrypt, forward_secret=False, ticket_id=b"",
                 ticket_secret=b"", ticket_ttl_s=0):
        self.link_id = link_id
        self.resumed = resumed
        self.encrypt = encrypt
        self.forward_secret = forward_secret
        self.ticket_id = ticket_id
        self.ticket_secret = ticket_secret
        self.ticket_ttl_s = ticket_ttl_s

    def __repr__(self):
        return "Established(resumed=%r, encrypt=%r, forward_secret=%r)" % (
            self.resumed, self.encrypt, self.forward_secret)


class Requests:
    """Gateway -> device: queued work. ``items`` are DeviceRequest dicts
    (request_id, service, method, args, request_token, expires_at_ms);
    ``twin`` TwinChange dicts (key, value, version): desired changes not
    applied yet, in version order."""

    ftype = wire.REQUESTS
    body = "Requests"

    def __init__(self, items=(), more=False, revoked=(), gateway_now_ms=0, twin=()):
        self.items = list(items)
        self.more = more
        self.revoked = list(revoked)
        self.gateway_now_ms = gateway_now_ms
        self.twin = list(twin)

    def to_msg(self):
        return {"items": self.items, "more": self.more, "revoked": self.revoked,
                "gateway_now_ms": self.gateway_now_ms, "twin": self.twin}

    @staticmethod
    def from_msg(m):
        return Requests(m["items"], m["more"], m["revoked"], m["gateway_now_ms"], m["twin"])

    def __repr__(self):
        return "Requests(%d items, more=%r, %d revoked)" % (
            len(self.items), self.more, len(self.revoked))


class Responses:
    """Device -> gateway: results, DeviceResponse dicts (request_id, status,
    payload, error), and optionally ``twin``, a TwinReport dict (applied,
    reported, replace)."""

    ftype = wire.RESPONSES
    body = "Responses"

    def __init__(self, items=(), twin=None):
        self.items = list(items)
        self.twin = twin

    def to_msg(self):
        return {"items": self.items, "twin": self.twin}

    @staticmethod
    def from_msg(m):
        return Responses(m["items"], m["twin"])

    def __repr__(self):
        return "Responses(%d items)" % len(self.items)


class Ack:
    """Either way: these ids were received and stored."""

    ftype = wire.ACK
    body = "Ack"

    def __init__(self, ids=()):
        self.ids = list(ids)

    def to_msg(self):
        return {"ids": self.ids}

    @staticmethod
    def from_msg(m):
        return Ack(m["ids"])

    def __repr__(self):
        return "Ack(%d ids)" % len(self.ids)


class Bye:
    """Device -> gateway: going back to sleep for ``sleep_s`` seconds."""

    ftype = wire.BYE
    body = "Bye"

    def __init__(self, sleep_s=0):
        self.sleep_s = sleep_s

    def to_msg(self):
        return {"sleep_s": self.sleep_s}

    @staticmethod
    def from_msg(m):
        return Bye(m["sleep_s"])

    def __repr__(self):
        return "Bye(%d)" % self.sleep_s


class Error:
    """Either way, then close: the peer's (or our) ERROR frame."""

    ftype = wire.ERROR
    body = "Error"

    def __init__(self, code=0, reason=""):
        self.code = code
        self.reason = reason

    def to_msg(self):
        return {"code": self.code, "reason": self.reason}

    @staticmethod
    def from_msg(m):
        return Error(m["code"], m["reason"])

    def __repr__(self):
        return "Error(%d, %r)" % (self.code, self.reason)


DATA_EVENTS = {wire.REQUESTS: Requests, wire.RESPONSES: Responses, wire.ACK: Ack,
               wire.BYE: Bye, wire.ERROR: Error}


# ---- the shared machinery --------------------------------------------------------

class Session:
    """Framing, the transition table walk, and data-phase MAC/sequence/cipher.
    Subclasses define ``RECV``, ``SEND``, the initial state and the handlers."""

    RECV = {}
    SEND = {}
    SIDE = "?"

    def __init__(self, state):
        self.state = state
        self.error = None          # the LinkError that ended the session, if any
        self.encrypt = False
        self.frames_in = 0
        self.frames_out = 0
        self._reader = wire.FrameReader()
        self._out = []
        self._events = []
        self._keys = None          # (mac_in, mac_out, enc_in, enc_out) once keyed
        self._keyed_in = False     # incoming frames carry seq + MAC
        self._keyed_out = False    # outgoing frames carry seq + MAC
        self.established = False
        self._seq_in = 0
        self._seq_out = 0

    # -- the sans-I/O interface --

    def receive_data(self, data):
        """Buffer bytes received from the peer (ignored once terminal)."""
        if self.state not in TERMINAL:
            self._reader.feed(data)

    def data_to_send(self):
        """Bytes the protocol itself must send now (handshake replies, ERROR)."""
        out = b"".join(self._out)
        self._out = []
        return out

    def next_event(self):
        """The next event, NEED_DATA, or CLOSED. Raises RemoteProtocolError
        (the session is then in ERROR with an ERROR frame in data_to_send())."""
        while not self._events:
            if self.state in TERMINAL:
                return CLOSED
            try:
                frame = self._reader.next_frame()
                if frame is None:
                    return NEED_DATA
                self.frames_in += 1
                self._process(frame)
            except RemoteProtocolError as exc:
                self._fail(exc)
                raise
        return self._events.pop(0)

    def send(self, event):
        """The bytes of a data-phase event (Requests, Responses, Ack, Bye, Error)."""
        nxt = self.SEND.get((self.state, event.ftype))
        if nxt is None:
            exc = LocalProtocolError("unexpected", "%s cannot send %s in state %s" % (
                self.SIDE, wire.FRAME_NAMES.get(event.ftype, event.ftype), self.state))
            self.state = ERROR_STATE
            self.error = exc
            raise exc
        data = self._frame(event.ftype, wire.encode(event.body, event.to_msg()))
        self.state = nxt
        return data

    # -- internals --

    def _fail(self, exc):
        was = self.state
        self.state = ERROR_STATE
        if self.error is None:
            self.error = exc
        if was in TERMINAL:
            return
        try:
            self._out.append(self._frame(wire.ERROR, wire.encode(
                "Error", {"code": exc.code, "reason": PUBLIC.get(exc.code, exc.reason)})))
        except LinkError:
            pass

    def _frame(self, ftype, body):
        """Frame (and protect, once keyed) one outgoing body."""
        if not self._keyed_out:
            data = wire.encode_frame(ftype, 0, body)
        else:
            seq = self._seq_out + 1
            if self.encrypt:
                body = lc.crypt(self._keys[3], seq, body)
            try:
                data = wire.encode_frame(ftype, seq, body, lc.frame_mac(self._keys[1], ftype, seq, body))
            except RemoteProtocolError as exc:
                raise LocalProtocolError("oversized", exc.detail)
            self._seq_out = seq
        self.frames_out += 1
        return data

    def _queue(self, ftype, name, msg):
        """Queue a handshake frame; returns its body bytes (for the transcript)."""
        body = wire.encode(name, msg)
        self._out.append(self._frame(ftype, body))
        return body

    def _install(self, keys, encrypt):
        """Key both directions (the session is established)."""
        self._install_out(keys, encrypt)
        self._install_in()

    def _install_out(self, keys, encrypt):
        """Key the sending direction only (the gateway's 0.5-RTT flight)."""
        self._keys = keys
        self.encrypt = encrypt
        self._keyed_out = True
        self._seq_out = 0

    def _install_in(self):
        """Key the receiving direction too: the session is established."""
        self._keyed_in = True
        self._seq_in = 0
        self.established = True

    def _process(self, frame):
        ftype = frame["type"]
        seq = frame["seq"]
        body = frame["body"]
        if not self._keyed_in:
            if seq != 0 or frame["mac"]:
                raise RemoteProtocolError("malformed", "handshake frames carry no seq or mac")
        else:
            if not lc.equal(frame["mac"], lc.frame_mac(self._keys[0], ftype, seq, body)):
                raise RemoteProtocolError("bad_mac", "frame %d fails its MAC" % seq)
            if seq <= self._seq_in:
                raise RemoteProtocolError("replayed", "seq %d, expected %d" % (seq, self._seq_in + 1))
            if seq != self._seq_in + 1:
                raise RemoteProtocolError("reordered", "seq %d, expected %d" % (seq, self._seq_in + 1))
            self._seq_in = seq
            if self.encrypt:
                body = lc.crypt(self._keys[2], seq, body)
        entry = self.RECV.get((self.state, ftype))
        if entry is None:
            raise RemoteProtocolError("unexpected", "%s in state %s" % (
                wire.FRAME_NAMES.get(ftype, "type %d" % ftype), self.state))
        handler, nxt = entry
        msg = wire.decode(wire.BODY[ftype], body)
        event = getattr(self, handler)(msg, body)
        if self.state not in TERMINAL:
            self.state = nxt
        if event is not None:
            self._events.append(event)

    # -- data-phase handlers shared by both sides --

    def _on_requests(self, msg, body):
        return Requests.from_msg(msg)

    def _on_ack(self, msg, body):
        return Ack.from_msg(msg)

    def _on_error(self, msg, body):
        return Error.from_msg(msg)
