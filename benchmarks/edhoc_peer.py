"""EDHOC + OSCORE over CoAP/UDP as the standards peer of a device wake (benchmarks/wake.py).

The roles follow our model: the **device is the CoAP server** (EDHOC responder), the
**gateway the CoAP client** (EDHOC initiator). Real parts, on loopback:

* EDHOC (RFC 9528) by lakers-python: method 3 (static DH both sides), cipher suite 2
  (AES-CCM-16-64-128, SHA-256, P-256), credentials CCS (KCCS) known to both sides,
  sent by reference as compact one-byte kids (ID_CRED = {4: h'xx'} encoded as one CBOR
  int), connection identifiers of one byte, no EAD: the smallest setting of RFC 9528
  (RFC 9529's trace 2: message_1 37 B, message_2 45 B, message_3 19 B).
* CoAP (RFC 7252) and OSCORE (RFC 8613) messages by aiocoap (``aiocoap.Message`` encoding,
  ``aiocoap.oscore`` protection, ``aiocoap.edhoc``'s EDHOC-derived OSCORE contexts),
  sent as real UDP datagrams between two sockets we own: every byte above UDP is
  counted exactly, per datagram.
* Transport of EDHOC over CoAP (RFC 9528 appendix A.2): message_1 in a CON POST to
  /.well-known/edhoc with the CBOR ``true`` prefix, message_2 in the piggybacked 2.04;
  then the EDHOC + OSCORE combined request (RFC 9668): message_3 and the first
  OSCORE-protected request in one CON POST with the EDHOC option, its protected
  response piggybacked on the ACK. Two round trips.
* Later wake: an OSCORE request/response on the saved context (no handshake; one round
  trip). Both sides save what OSCORE needs to go on (keys, their ids, the sender
  sequence number, the replay window) to a file and load it again, as a device that
  sleeps between wakes does.

Choices that favour CoAP, stated in the report: one-byte tokens, no Uri-Path inside the
protected request (the payload is the very DeviceRequest our link carries, which names
service and method), no retransmission, and the device's own "I am awake" signal (a
sleeping CoAP server must tell the client somehow, e.g. a registration or an empty
message) is not counted.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path

import cbor2
import lakers
from aiocoap import ACK, CHANGED, CON, POST, UNAUTHORIZED, Message, oscore
from aiocoap.edhoc import CoseKeyForEdhoc, EdhocInitiatorContext, EdhocResponderContext, OwnCredStyle

LOG = logging.getLogger("edgistry.bench.edhoc")
EDHOC_PATH = (".well-known", "edhoc")
CBOR_TRUE = b"\xf5"  # message_1 prefix on CoAP (RFC 9528 A.2): "no connection identifier yet"
C_I, C_R = b"\x37", b"\x27"  # one-byte connection identifiers (CBOR ints -24, -8), as in RFC 9529
KID_I, KID_R = b"\x2b", b"\x32"  # compact kids of the credentials (RFC 9529 trace 2)
MAX_DATAGRAM = 1280  # IPv6 minimum MTU: every message here fits one datagram (no block-wise)


@dataclass
class Credentials:
    """Both parties' static P-256 keys and KCCS credentials (provisioned out of band)."""

    key_i: CoseKeyForEdhoc
    key_r: CoseKeyForEdhoc
    cred_i: bytes  # CBOR KCCS of the gateway (initiator)
    cred_r: bytes  # CBOR KCCS of the device (responder)

    @classmethod
    def generate(cls) -> Credentials:
        ki, kr = CoseKeyForEdhoc.generate(), CoseKeyForEdhoc.generate()
        return cls(ki, kr, cbor2.dumps(ki.as_ccs(KID_I, "gw")[14], canonical=True),
                   cbor2.dumps(kr.as_ccs(KID_R, "dev")[14], canonical=True))


class SavedContext(oscore.CanProtect, oscore.CanUnprotect, oscore.SecurityContextUtils):
    """An OSCORE context restored from what a sleeping party keeps between wakes."""

    def __init__(self, state: dict) -> None:
        self.alg_aead = oscore.algorithms["AES-CCM-16-64-128"]
        self.hashfun = oscore.hashfunctions["sha256"]
        self.id_context = None
        self.sender_id = bytes.fromhex(state["sender_id"])
        self.recipient_id = bytes.fromhex(state["recipient_id"])
        self.sender_key = bytes.fromhex(state["sender_key"])
        self.recipient_key = bytes.fromhex(state["recipient_key"])
        self.common_iv = bytes.fromhex(state["common_iv"])
        self.sender_sequence_number = state["seqno"]
        self.recipient_replay_window = oscore.ReplayWindow(32, lambda: None)
        self.recipient_replay_window.initialize_from_persisted(state["replay"])
        self.echo_recovery = None

    def post_seqnoincrease(self) -> None:
        pass  # saved explicitly at the end of the wake (save_context)


def save_context(ctx, path: Path) -> None:
    """What OSCORE needs after a wake (RFC 8613 7.5 would also let a device save the
    sequence number ahead, in steps, to write flash less often)."""
    path.write_text(json.dumps({
        "sender_id": ctx.sender_id.hex(), "recipient_id": ctx.recipient_id.hex(),
        "sender_key": ctx.sender_key.hex(), "recipient_key": ctx.recipient_key.hex(),
        "common_iv": ctx.common_iv.hex(), "seqno": ctx.sender_sequence_number,
        "replay": ctx.recipient_replay_window.persist()}))


def load_context(path: Path) -> SavedContext:
    return SavedContext(json.loads(path.read_text()))


class _ServerCredentials:
    """The device's lookup of the initiator's credential by ID_CRED_I (aiocoap's interface)."""

    def __init__(self, creds: Credentials) -> None:
        self.creds = creds

    def find_edhoc_by_id_cred_peer(self, id_cred_i: bytes):
        if id_cred_i not in (cbor2.dumps({4: KID_I}), KID_I):
            raise KeyError(id_cred_i)
        return self.creds.cred_i, []


@dataclass
class Wire:
    """Datagrams one exchange put on the wire, from the gateway's side."""

    sent: list[int] = field(default_factory=list)
    received: list[int] = field(default_factory=list)
    rtts: int = 0
    messages: dict[str, int] = field(default_factory=dict)  # EDHOC message sizes (without CoAP)

    def row(self) -> dict:
        return {"sent": sum(self.sent), "received": sum(self.received),
                "payload_bytes": sum(self.sent) + sum(self.received), "datagrams": len(self.sent) + len(self.received),
                "rtts": self.rtts, "flights": " ".join([f"->{s} <-{r}" for s, r in zip(self.sent, self.received)]),
                "edhoc_messages": dict(self.messages),
                # IPv4 (20) + UDP (8) a datagram: the wire estimate beside TCP's
                "wire_bytes_est": sum(self.sent) + sum(self.received) + 28 * (len(self.sent) + len(self.received))}


class Device:
    """The CoAP server on a UDP socket (its own thread): EDHOC responder, then OSCORE."""

    def __init__(self, creds: Credentials, state_file: Path) -> None:
        self.creds, self.state_file = creds, state_file
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.addr = self.sock.getsockname()
        self.ctx = None  # the context of this wake (EDHOC-derived, or loaded from the saved state)
        self.delivered: list[bytes] = []  # request payloads the application got
        self.refused: list[str] = []
        self._thread = threading.Thread(target=self._run, daemon=True, name="coap-device")
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                data, peer = self.sock.recvfrom(65536)
            except OSError:
                return  # closed
            if data == b"bye":
                return
            req = Message.decode(data, peer)
            try:
                resp = self._handle(req)
            except Exception as exc:  # noqa: BLE001 - a benchmark server reports and goes on
                LOG.exception("device failed on %r", req)
                self.refused.append(repr(exc))
                continue
            resp.mtype, resp.mid, resp.token = ACK, req.mid, req.token  # piggybacked
            self.sock.sendto(resp.encode(), peer)

    def _handle(self, req: Message) -> Message:
        if req.opt.uri_path == EDHOC_PATH:  # message_1 (message_3 comes in the combined request)
            assert req.payload[:1] == CBOR_TRUE
            responder = lakers.EdhocResponder(self.creds.key_r.d, self.creds.cred_r)
            c_i, ead_1 = responder.process_message_1(req.payload[1:])
            assert not ead_1
            m2 = responder.prepare_message_2(lakers.CredentialTransfer.ByReference, C_R, None)
            self.ctx = EdhocResponderContext(responder, c_i, C_R, _ServerCredentials(self.creds), LOG)
            return Message(code=CHANGED, payload=m2)
        if self.ctx is None:
            self.ctx = load_context(self.state_file)
        try:
            inner, request_id = self.ctx.unprotect(req)
        except oscore.ReplayError as exc:
            self.refused.append(f"replay: {exc}")
            return Message(code=UNAUTHORIZED, max_age=0, payload=b"Replay detected")  # RFC 8613 7.4
        self.delivered.append(inner.payload)
        outer, _ = self.ctx.protect(Message(code=CHANGED), request_id)  # the device's acknowledgement
        save_context(self.ctx, self.state_file)  # before the response leaves: a crash never reuses a nonce
        self.ctx = None  # the device sleeps: the next wake starts from the saved state
        return outer

    def close(self) -> None:
        try:
            self.sock.sendto(b"bye", self.addr)
        finally:
            self._thread.join(5)
            self.sock.close()


class Gateway:
    """The CoAP client: EDHOC initiator, then OSCORE requests; counts every datagram."""

    def __init__(self, creds: Credentials, device_addr: tuple[str, int], state_file: Path) -> None:
        self.creds, self.device_addr, self.state_file = creds, device_addr, state_file
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(10)
        self.mid = int.from_bytes(os.urandom(2), "big")

    def _exchange(self, msg: Message, wire: Wire) -> Message:
        """One CON request and its piggybacked response: one round trip."""
        self.mid = (self.mid + 1) & 0xFFFF
        msg.mtype, msg.mid, msg.token = CON, self.mid, bytes([self.mid & 0xFF])
        raw = msg.encode()
        assert len(raw) <= MAX_DATAGRAM
        self.sock.sendto(raw, self.device_addr)
        wire.sent.append(len(raw))
        data, peer = self.sock.recvfrom(65536)
        wire.received.append(len(data))
        wire.rtts += 1
        resp = Message.decode(data, peer)
        assert resp.mid == msg.mid and resp.token == msg.token
        return resp

    def full_wake(self, payload: bytes) -> tuple[dict, Message]:
        """EDHOC, then the combined request carrying ``payload``; returns the row and the
        protected request as sent (for a replay check)."""
        wire = Wire()
        ini = lakers.EdhocInitiator()
        m1 = ini.prepare_message_1(C_I, [])
        resp = self._exchange(Message(code=POST, uri_path=EDHOC_PATH, payload=CBOR_TRUE + m1), wire)
        assert resp.code == CHANGED, resp
        c_r, id_cred_r, ead_2 = ini.parse_message_2(resp.payload)
        assert id_cred_r in (cbor2.dumps({4: KID_R}), KID_R) and not ead_2
        ini.verify_message_2(self.creds.key_i.d, self.creds.cred_i, self.creds.cred_r)
        ctx = EdhocInitiatorContext(ini, C_I, c_r, OwnCredStyle.ByKeyId, LOG)
        m3 = ctx._message_3  # peeked only to report its size; protect() takes it (RFC 9668)
        ctx.complete_without_message_4()
        wire.messages = {"message_1": len(m1), "message_2": len(resp.payload), "message_3": len(m3)}
        sent = self._protected(ctx, payload, wire)
        return wire.row(), sent

    def resumed_wake(self, payload: bytes) -> tuple[dict, Message]:
        """A later wake: one OSCORE request/response on the saved context."""
        wire = Wire()
        sent = self._protected(load_context(self.state_file), payload, wire)
        return wire.row(), sent

    def _protected(self, ctx, payload: bytes, wire: Wire) -> Message:
        outer, request_id = ctx.protect(Message(code=POST, payload=payload))
        save_context(ctx, self.state_file)  # the sequence number is spent before the request leaves
        resp = self._exchange(outer, wire)
        inner, _ = ctx.unprotect(resp, request_id)
        if inner.code != CHANGED:
            raise RuntimeError(f"device answered {inner.code}")
        save_context(ctx, self.state_file)
        return outer

    def replay(self, outer: Message) -> Message:
        """Send an already-sent protected request again (same mid/token: new datagram)."""
        outer = outer.copy()
        outer.mid = (self.mid + 1) & 0xFFFF
        self.mid = outer.mid
        self.sock.sendto(outer.encode(), self.device_addr)
        data, peer = self.sock.recvfrom(65536)
        return Message.decode(data, peer)

    def close(self) -> None:
        self.sock.close()


def run(reps: int, payload: bytes, workdir: Path) -> tuple[list[dict], list[dict]]:
    """``reps`` full wakes (EDHOC + combined request) and as many later wakes on the saved
    context, alternating; one fresh device/gateway pair a rep. Returns (full, resumed) rows."""
    full, resumed = [], []
    for i in range(reps):
        creds = Credentials.generate()
        dev = Device(creds, workdir / f"device-{i}.json")
        gw = Gateway(creds, dev.addr, workdir / f"gateway-{i}.json")
        try:
            full.append(gw.full_wake(payload)[0])
            resumed.append(gw.resumed_wake(payload)[0])
            assert dev.delivered == [payload, payload] and not dev.refused, dev.refused
        finally:
            gw.close()
            dev.close()
    return full, resumed
