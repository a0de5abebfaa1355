"""The datagram device link: frames, keys and the device core (MicroPython-compatible).

docs/LINK_PROTOCOL.md ("Datagram link") is the specification; this module is
the one codec both sides use, and the device's sans-I/O state machine.

Why a second link: over TCP a wake costs the connect round trip and a
challenge before the gateway may speak. Here the device's first datagram
already proves who it is (a MAC under the link key, fresh by a counter the
gateway keeps), so the gateway answers it at once with the queued work,
encrypted under the new session's keys: one round trip, then the device's ACK.

Frames (``uv`` = unsigned varint, ``mac`` = HMAC-SHA256 truncated to 8 bytes)::

    WAKE    01|02  link_id(16) uv(ctr) [x25519_d(32) when 02]          mac(K_link)
    DATA    03     uv(kid) uv(seq)             enc(Responses)          mac(k_mac_d2g)
    DATA    04     uv(kid) uv(seq)             ... acks the reply to seq-1
    DATA    05     uv(kid) uv(seq) uv(back)    ... acks the reply to seq-back
    REPLY   81     enc(Requests)                                      mac(k_mac_g2d)
    WELCOME 82|83  [x25519_g(32) when 83] enc(uv(kid) || Requests)    mac(k_mac_g2d)
    RESYNC  84     uv(ctr_high)                                        mac(K_link)

No MicroPython-unfriendly constructs (typing, dataclasses, __future__): a UDP
board ships this module (``edgistry device export``) beside link_crypto,
link_wire and the caplets core.
"""

from . import link_crypto as lc
from . import link_wire as wire
from .link_errors import LinkError

WAKE = 0x01
WAKE_FS = 0x02
DATA = 0x03
DATA_ACK = 0x04
DATA_ACKN = 0x05
REPLY = 0x81
WELCOME = 0x82
WELCOME_FS = 0x83
RESYNC = 0x84

TAG = 8              # truncated HMAC-SHA256: 64 bits, as OSCORE's AES-CCM-16-64-128 tag
LINK_ID_SIZE = 16
X25519_SIZE = 32
MAX_DATAGRAM = 1200  # fits the IPv6 minimum MTU (1280) less IPv6 and UDP headers
# The link key is the tag of a fixed encryption token under the device's root
# token: the gateway derives it (it holds the root token), the device too.
DGRAM_KEY_NONCE = b"edgistry/dgram1"  # 15 bytes, padded to the encryption nonce size below
WAKE_LABEL = b"edgistry/dgram/v1 wake"
RESYNC_LABEL = b"edgistry/dgram/v1 resync"
CTX_INFO = b"edgistry/dgram/v1 context"
KEYS_INFO = b"edgistry/dgram/v1 keys"


class DgramError(Exception):
    """A datagram that must be dropped (``reason``: a short word for logs and metrics)."""

    def __init__(self, reason, detail=""):
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail


# ---- varints, MACs, keys ----------------------------------------------------------

def uv(n):
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def get_uv(buf, pos, end):
    """(value, next position); at most 9 bytes (63 bits) so values stay small ints."""
    n = 0
    shift = 0
    while True:
        if pos >= end or shift > 56:
            raise DgramError("malformed", "varint")
        b = buf[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        if b < 0x80:
            return n, pos
        shift += 7


def mac8(key, data):
    return lc.hmac_sha256(key, data)[:TAG]


def link_key(root_token):
    """K_link: the tag of root + Encryption(DGRAM_KEY_NONCE) (what either side can derive).

    The token codec is imported here, not at the top: a device computes K_link
    once (at pairing, or its first wake) and keeps it in its state, so its wakes
    never load the codec (about 40 KB of heap on a 64-bit port)."""
    from ..caplets import cap_codec
    root = cap_codec.decode(root_token)
    nonce = (DGRAM_KEY_NONCE + bytes(16))[:16]
    return lc.hmac_sha256(root.tag, cap_codec.encryption_frame(root, nonce))


def context_master(link_k, shared, wake_dgram, x_g):
    """The new context's master secret: K_link (|| X25519 secret) keyed over the
    transcript (the whole WAKE datagram and the gateway's key)."""
    return lc.hkdf(link_k + (shared or b""), lc.sha256(wake_dgram + (x_g or b"")), CTX_INFO, 32)


def context_keys(master):
    """(mac_d2g, mac_g2d, enc_d2g, enc_g2d)."""
    k = lc.hkdf(master, b"", KEYS_INFO, 128)
    return k[0:32], k[32:64], k[64:96], k[96:128]


# ---- frames -----------------------------------------------------------------------

def seal_wake(link_k, link_id, ctr, x_d=None):
    head = bytes([WAKE_FS if x_d else WAKE]) + link_id + uv(ctr) + (x_d or b"")
    return head + mac8(link_k, WAKE_LABEL + head)


def open_wake(dg):
    """Parse (no MAC check: the caller looks the link key up): (link_id, ctr, x_d or None, head, mac)."""
    end = len(dg) - TAG
    if end < 2 + LINK_ID_SIZE:
        raise DgramError("malformed", "short wake")
    link_id = bytes(dg[1:1 + LINK_ID_SIZE])
    ctr, pos = get_uv(dg, 1 + LINK_ID_SIZE, end)
    x_d = None
    if dg[0] == WAKE_FS:
        x_d = bytes(dg[pos:pos + X25519_SIZE])
        pos += X25519_SIZE
    if pos != end:
        raise DgramError("malformed", "wake length")
    return link_id, ctr, x_d, bytes(dg[:end]), bytes(dg[end:])


def check_wake_mac(link_k, head, mac):
    return lc.equal(mac, mac8(link_k, WAKE_LABEL + head))


def seal_data(keys, kid, seq, payload, back=0):
    if back == 0:
        t, extra = DATA, b""
    elif back == 1:
        t, extra = DATA_ACK, b""
    else:
        t, extra = DATA_ACKN, uv(back)
    head = bytes([t]) + uv(kid) + uv(seq) + extra
    ct = lc.crypt(keys[2], seq, payload)
    return head + ct + mac8(keys[0], head + ct)


def peek_data(dg):
    """(kid, seq, back, ct start) of a DATA datagram, before its MAC is checked."""
    end = len(dg) - TAG
    if end < 3:
        raise DgramError("malformed", "short data")
    kid, pos = get_uv(dg, 1, end)
    seq, pos = get_uv(dg, pos, end)
    back = 0
    if dg[0] == DATA_ACK:
        back = 1
    elif dg[0] == DATA_ACKN:
        back, pos = get_uv(dg, pos, end)
        if back == 0 or back > seq:
            raise DgramError("malformed", "ack reference")
    if seq == 0:
        raise DgramError("malformed", "seq 0")
    return kid, seq, back, pos


def open_data(keys, dg, seq, pos):
    """The payload of a DATA datagram, after its MAC (under k_mac_d2g) checks out."""
    end = len(dg) - TAG
    if not lc.equal(bytes(dg[end:]), mac8(keys[0], bytes(dg[:end]))):
        raise DgramError("bad_mac", "data")
    return lc.crypt(keys[2], seq, bytes(dg[pos:end]))


def seal_reply(keys, answered_seq, payload, head=None):
    """REPLY (or WELCOME, ``head`` = type [|| x25519_g]) to the device's datagram ``answered_seq``."""
    head = head if head is not None else bytes([REPLY])
    ct = lc.crypt(keys[3], answered_seq, payload)
    return head + ct + mac8(keys[1], lc.u64be(answered_seq) + head + ct)


def open_reply(keys, answered_seq, dg, hlen):
    end = len(dg) - TAG
    if end < hlen or not lc.equal(bytes(dg[end:]), mac8(keys[1], lc.u64be(answered_seq) + bytes(dg[:end]))):
        raise DgramError("bad_mac", "reply")
    return lc.crypt(keys[3], answered_seq, bytes(dg[hlen:end]))


def seal_resync(link_k, wake_mac, ctr_high):
    body = uv(ctr_high)
    return bytes([RESYNC]) + body + mac8(link_k, RESYNC_LABEL + wake_mac + body)


# ---- the device ---------------------------------------------------------------------

def _requests(pt, pos):
    try:
        return wire.decode("Requests", pt, pos)
    except LinkError as exc:  # authenticated yet malformed: a gateway bug, still dropped
        raise DgramError("malformed", str(exc))


class DgramDevice:
    """The device's side (sans-I/O): build datagrams, take replies.

    ``state`` is the dict to keep durably across sleeps (the caller persists it
    after each datagram is built and *before* sending it): ``lk`` (K_link,
    computed from ``root_token`` once when missing), ``ctr`` (full wakes),
    and the context ``kid``, ``master``, ``seq`` after a full wake. ``rand(n)``:
    random bytes; ``x25519``: a provider (x25519.x25519(), CPython) or None;
    ``require_fs``: refuse a WELCOME without the gateway's X25519 key.

    ``wake(full)`` gives the wake datagram; ``receive(dg)`` returns the decoded
    Requests dict of a reply (or None for a RESYNC, after which wake(True)
    again); ``ack(responses)`` acknowledges the last reply (optionally with a
    Responses dict) and ``send(responses)`` sends answers without an ack.
    """

    def __init__(self, root_token, link_id, state=None, rand=None, x25519=None, require_fs=False):
        self.link_id = link_id
        self._require_fs = require_fs
        self._root = root_token
        self._lk = None
        self._rand = rand
        self._x = x25519
        self.state = state if state is not None else {"ctr": 0}
        self._keys = None
        self._wake = None        # (datagram, mac, x private) of the outstanding full wake
        self._await = []         # context seqs whose reply we would take, newest last
        self.last_reply = -1     # the seq whose reply we took last (what ack() acknowledges)
        self.more = False        # the last reply said more work waits: ack() gets it
        self.forward_secret = False

    def has_context(self):
        return self.state.get("master") is not None

    def _link_key(self):
        if self._lk is None:
            lk = self.state.get("lk")
            if lk is None:
                lk = self.state["lk"] = link_key(self._root)
            self._lk = lk
        return self._lk

    def _ctx_keys(self):
        if self._keys is None:
            self._keys = context_keys(self.state["master"])
        return self._keys

    def wake(self, full=False):
        """The wake datagram: on the saved context (an empty DATA) unless ``full``
        or there is none; a full wake carries an X25519 key when we have a provider."""
        if not full and self.has_context():
            return self._data(b"", 0, True)
        self.state["ctr"] = self.state.get("ctr", 0) + 1
        priv, pub = None, None
        if self._x is not None:
            priv, pub = self._x.keypair()
        dg = seal_wake(self._link_key(), self.link_id, self.state["ctr"], pub)
        self._wake = (dg, dg[-TAG:], priv, pub)
        return dg

    def ack(self, responses=None):
        """DATA acknowledging the last reply taken (and carrying ``responses``)."""
        back = self.state["seq"] + 1 - self.last_reply if self.last_reply >= 0 else 0
        payload = wire.encode("Responses", responses) if responses else b""
        return self._data(payload, back, bool(responses) or self.more)

    def send(self, responses):
        """DATA with answers only (e.g. ones computed on an earlier wake)."""
        return self._data(wire.encode("Responses", responses), 0, True)

    def _data(self, payload, back, wants_reply):
        self.state["seq"] = self.state["seq"] + 1
        seq = self.state["seq"]
        if wants_reply:
            self._await = (self._await + [seq])[-4:]
        return seal_data(self._ctx_keys(), self.state["kid"], seq, payload, back)

    def expects_reply(self):
        return bool(self._await) or self._wake is not None

    def receive(self, dg):
        """A datagram from the gateway: the Requests dict it carries (its
        ``more``: ack() will get the next batch), or None after a RESYNC.
        Raises DgramError for anything that does not authenticate."""
        if len(dg) < 1 + TAG:
            raise DgramError("malformed", "short")
        t = dg[0]
        if t == RESYNC:
            return self._resync(dg)
        if t in (WELCOME, WELCOME_FS):
            return self._welcome(dg, t)
        if t != REPLY:
            raise DgramError("malformed", "type")
        if not self.has_context():
            raise DgramError("unexpected", "reply without a context")
        keys = self._ctx_keys()
        for seq in reversed(self._await):
            try:
                pt = open_reply(keys, seq, dg, 1)
            except DgramError:
                continue
            self._await = [s for s in self._await if s > seq]
            self.last_reply = seq
            msg = _requests(pt, 0)
            self.more = msg["more"]
            return msg
        raise DgramError("bad_mac", "reply to nothing we sent")

    def _welcome(self, dg, t):
        if self._wake is None:
            raise DgramError("unexpected", "welcome without a wake")
        wake_dg, _, priv, pub = self._wake
        hlen = 1
        x_g = None
        shared = None
        if t == WELCOME and priv is not None and self._require_fs:
            raise DgramError("downgrade", "gateway declined forward secrecy")
        if t == WELCOME_FS:
            if priv is None:
                raise DgramError("malformed", "x25519 key we did not ask for")
            x_g = bytes(dg[1:1 + X25519_SIZE])
            hlen += X25519_SIZE
            try:
                shared = self._x.shared(priv, x_g)
            except ValueError:
                raise DgramError("bad_key", "x25519")
        master = context_master(self._link_key(), shared, wake_dg, x_g)
        keys = context_keys(master)
        pt = open_reply(keys, 0, dg, hlen)
        kid, pos = get_uv(pt, 0, len(pt))
        msg = _requests(pt, pos)
        self._wake = None
        self.forward_secret = shared is not None
        self.state["kid"] = kid
        self.state["master"] = master
        self.state["seq"] = 0
        self._keys = keys
        self._await = []
        self.last_reply = 0
        self.more = msg["more"]
        return msg

    def _resync(self, dg):
        if self._wake is None:
            raise DgramError("unexpected", "resync without a wake")
        end = len(dg) - TAG
        high, pos = get_uv(dg, 1, end)
        if pos != end or not lc.equal(bytes(dg[end:]),
                                      mac8(self._link_key(), RESYNC_LABEL + self._wake[1] + bytes(dg[1:end]))):
            raise DgramError("bad_mac", "resync")
        if high >= self.state["ctr"]:
            self.state["ctr"] = high  # the next wake(True) uses high + 1
        self._wake = None
        return None
