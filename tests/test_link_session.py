"""The sans-I/O link core: handshakes, resumption, data phase, and every rejection."""

from __future__ import annotations

import os

import pytest
from link_helpers import Dev, DetRand, Keys, events, gateway, handshake

from edgistry.firmware.caplets import api as cl
from edgistry.firmware.link.link_session import Ack, Bye, Error, Established, Requests, Responses
from edgistry.firmware.link.link_gateway import Challenged, GatewaySession
from edgistry.firmware.link.link_errors import LocalProtocolError, RemoteProtocolError
from edgistry.firmware.link.link_device import check_request
from edgistry.firmware.link import link_crypto as lc
from edgistry.firmware.link import link_wire as wire
from edgistry.firmware.link.link_errors import E_AUTH, E_INTEGRITY, E_TICKET


def established(fs=False, encrypt=False, ticket=None, dev=None, keys=None):
    dev = dev or Dev.make()
    keys = keys or Keys()
    keys.add(dev, encrypt)
    d, g = dev.session(ticket=ticket, fs=fs), gateway(keys, fs=fs)
    dev_ev, gw_ev, _ = handshake(d, g)
    return dev, keys, d, g, dev_ev, gw_ev


@pytest.mark.parametrize("fs", [False, True])
@pytest.mark.parametrize("encrypt", [False, True])
def test_full_handshake_then_resume(fs: bool, encrypt: bool) -> None:
    """Both sides establish; the ticket resumes once in one round trip with fresh keys."""
    dev, keys, d, g, dev_ev, gw_ev = established(fs, encrypt)
    (de,), (gc, ge) = dev_ev, gw_ev
    assert isinstance(gc, Challenged) and (gc.encrypt, gc.forward_secret) == (encrypt, fs)
    assert isinstance(de, Established) and isinstance(ge, Established)
    assert (de.resumed, de.encrypt, de.forward_secret) == (False, encrypt, fs)
    assert ge.link_id == dev.link_id and len(keys.tickets) == 1
    # data both ways
    g2 = g.send(Requests([dev.request("s", "m", b"{}", 5)], False, [b"t" * 32], 99))
    d.receive_data(g2)
    (req,) = events(d)
    assert req.items[0]["service"] == "s" and req.revoked == [b"t" * 32] and req.gateway_now_ms == 99
    assert check_request(req.items[0], dev.secret) == 5
    g.receive_data(d.send(Responses([{"request_id": b"r" * 16, "status": 0, "payload": b"1",
                                      "error": ""}])) + d.send(Bye(30)))
    resp, bye = events(g)
    assert resp.items[0]["payload"] == b"1" and bye.sleep_s == 30 and g.state == "CLOSED"
    # resume
    d2, g2s = dev.session(ticket=(de.ticket_id, de.ticket_secret)), gateway(keys)
    dev_ev, gw_ev, chunks = handshake(d2, g2s)
    assert len(chunks) == 1  # one round trip
    assert dev_ev[0].resumed and gw_ev[0].resumed and dev_ev[0].encrypt == encrypt
    assert len(keys.tickets) == 1 and de.ticket_id not in keys.tickets
    g2s.receive_data(d2.send(Ack([b"a"])))
    assert events(g2s)[0].ids == [b"a"]


def test_encrypted_bodies_are_not_in_clear() -> None:
    """With encryption the request's args never appear on the wire."""
    dev, keys, d, g, _, _ = established(encrypt=True)
    data = g.send(Requests([dev.request("s", "m", b"SECRET-ARGUMENT", 5)]))
    assert b"SECRET-ARGUMENT" not in data
    d.receive_data(data)
    assert events(d)[0].items[0]["args"] == b"SECRET-ARGUMENT"


def _data_frames(g, dev, n=3):
    return [g.send(Requests([dev.request("s", "m", b"%d" % i, i + 1)])) for i in range(n)]


@pytest.mark.parametrize("attack,reason", [
    ("tamper_body", "bad_mac"),
    ("tamper_mac", "bad_mac"),
    ("tamper_type", "bad_mac"),
    ("replay", "replayed"),
    ("reorder", "reordered"),
    ("drop", "reordered"),
])
def test_data_phase_attacks_rejected(attack: str, reason: str) -> None:
    """Tampered, replayed, reordered or missing frames end the session with ERROR."""
    dev, keys, d, g, _, _ = established(encrypt=True)
    f1, f2, f3 = _data_frames(g, dev)
    fr = wire.FrameReader()
    fr.feed(f1)
    frame = fr.next_frame()
    if attack == "tamper_body":
        stream = [wire.encode_frame(frame["type"], frame["seq"], bytes([frame["body"][0] ^ 1]) + frame["body"][1:], frame["mac"])]
    elif attack == "tamper_mac":
        stream = [wire.encode_frame(frame["type"], frame["seq"], frame["body"], bytes(16))]
    elif attack == "tamper_type":
        stream = [wire.encode_frame(wire.ACK, frame["seq"], frame["body"], frame["mac"])]
    elif attack == "replay":
        stream = [f1, f1]
    elif attack == "reorder":
        stream = [f2, f1]
    else:
        stream = [f1, f3]
    d.receive_data(b"".join(stream))
    evs = events(d)
    err = evs[-1]
    assert isinstance(err, RemoteProtocolError) and err.reason == reason
    assert d.state == "ERROR"
    # the device tells the gateway (authenticated) and the gateway sees the ERROR
    g.receive_data(d.data_to_send())
    (e,) = events(g)
    assert isinstance(e, Error) and e.code == E_INTEGRITY and g.state == "CLOSED"


def test_wrong_secret_fails_at_proof() -> None:
    """A device with the right link id and identity token but the wrong secret cannot prove."""
    dev = Dev.make(1)
    keys = Keys()
    keys.add(dev)
    impostor = Dev(Dev.make(2).secret, dev.link_id, dev.root, dev.identity)  # knows all but the secret
    d, g = impostor.session(), gateway(keys)
    dev_ev, gw_ev, _ = handshake(d, g)
    # the impostor answers the challenge with a key from its own secret: refused (and
    # the gateway's ACCEPT, sent with CHALLENGE, does not verify under that key either)
    assert gw_ev[-1].reason == "bad_proof" and g.state == "ERROR" and not keys.tickets
    assert isinstance(dev_ev[-1], RemoteProtocolError) and dev_ev[-1].reason == "bad_accept"
    # a cheating impostor that forges some PROOF directly is refused the same way
    g = gateway(keys)
    d = dev.session()
    g.receive_data(d.initiate())
    events(g)
    d.receive_data(g.data_to_send())
    events(d)
    proof = d.data_to_send()
    fr = wire.FrameReader()
    fr.feed(proof)
    f = fr.next_frame()
    forged = wire.encode_frame(wire.PROOF, 0, wire.encode("Proof", {"mac": lc.hmac_sha256(impostor.secret, f["body"])}))
    g.receive_data(forged)
    err = events(g)[-1]
    assert isinstance(err, RemoteProtocolError) and err.reason == "bad_proof" and err.code == E_AUTH
    assert g.data_to_send()  # ERROR frame for the peer


@pytest.mark.parametrize("case,reason", [
    ("unknown_link", "unknown_link"),
    ("identity_of_other", "bad_identity"),
    ("forged_identity", "bad_identity"),
    ("bad_version", "version"),
])
def test_hello_rejections(case: str, reason: str) -> None:
    """Unknown links and identity tokens naming another link are refused at HELLO."""
    a, b = Dev.make(1), Dev.make(2)
    keys = Keys()
    keys.add(a)
    keys.add(b)
    if case == "unknown_link":
        d = Dev.make(3).session()
    elif case == "identity_of_other":  # valid identity token of A presented with link id B
        d = Dev(b.secret, b.link_id, b.root, a.identity).session()
    elif case == "forged_identity":
        forged = cl.mint(bytes(32), [cl.Identity("link:" + b.link_id.hex())]).to_bytes()
        d = Dev(b.secret, b.link_id, b.root, forged).session()
    else:
        d = a.session()
    g = gateway(keys)
    hello = d.initiate()
    if case == "bad_version":
        fr = wire.FrameReader()
        fr.feed(hello)
        m = wire.decode("Hello", fr.next_frame()["body"])
        m["version"] = 2
        hello = wire.encode_frame(wire.HELLO, 0, wire.encode("Hello", m))
    g.receive_data(hello)
    err = events(g)[-1]
    assert isinstance(err, RemoteProtocolError) and err.reason == reason
    d.receive_data(g.data_to_send())
    (e,) = events(d)
    assert isinstance(e, Error) and d.state == "CLOSED"


class LyingGateway(GatewaySession):
    """A fake gateway: it does not hold the device's root token and skips the PROOF check."""

    def _on_proof(self, msg, body):
        msg["mac"] = lc.hmac_sha256(self._tag, b"edgistry/link/device" + self._transcript)
        return super()._on_proof(msg, body)


def test_fake_gateway_fails_at_accept() -> None:
    """A gateway that does not know the root token cannot prove the key: ACCEPT is refused."""
    dev = Dev.make()
    fake_keys = Keys()
    fake_keys.devices[dev.link_id] = (cl.root(bytes(32)).to_bytes(), False)  # a guess at the root
    d, g = dev.session(), LyingGateway(fake_keys, os.urandom, lambda: 10**12)
    dev_ev, _, _ = handshake(d, g)
    assert isinstance(dev_ev[-1], RemoteProtocolError) and dev_ev[-1].reason == "bad_accept"
    assert d.state == "ERROR"


def test_encrypt_flag_cannot_be_stripped() -> None:
    """Flipping ACCEPT.encrypt in transit breaks the ACCEPT MAC."""
    dev = Dev.make()
    keys = Keys()
    keys.add(dev, encrypt=True)
    d, g = dev.session(), gateway(keys)
    g.receive_data(d.initiate())
    events(g)
    fr = wire.FrameReader()
    fr.feed(g.data_to_send())  # CHALLENGE + ACCEPT, one flight
    challenge, accept = fr.next_frame(), fr.next_frame()
    m = wire.decode("Accept", accept["body"])
    m["encrypt"] = False
    d.receive_data(wire.encode_frame(wire.CHALLENGE, 0, challenge["body"])
                   + wire.encode_frame(wire.ACCEPT, 0, wire.encode("Accept", m)))
    err = events(d)[-1]
    assert isinstance(err, RemoteProtocolError) and err.reason == "bad_accept"


def test_require_encrypt_refuses_plain_gateway() -> None:
    """A device that requires encryption refuses a session without it."""
    dev = Dev.make()
    keys = Keys()
    keys.add(dev, encrypt=False)
    d, g = dev.session(require_encrypt=True), gateway(keys)
    dev_ev, _, _ = handshake(d, g)
    assert dev_ev[-1].reason == "downgrade"


@pytest.mark.parametrize("case", ["replayed_resume", "unknown_ticket", "expired", "wrong_secret",
                                  "other_link"])
def test_resume_rejections(case: str) -> None:
    """A ticket is single use, bound to its link, expires, and needs its secret."""
    dev, keys, d, g, dev_ev, _ = established()
    t = (dev_ev[0].ticket_id, dev_ev[0].ticket_secret)
    now = None
    if case == "replayed_resume":
        d1 = dev.session(ticket=t)
        first = d1.initiate()
        g1 = gateway(keys)
        g1.receive_data(first)
        assert isinstance(events(g1)[0], Established)
        g2 = gateway(keys)
        g2.receive_data(first)  # the same RESUME again
        err = events(g2)[-1]
        assert err.reason == "bad_ticket" and err.code == E_TICKET
        return
    if case == "unknown_ticket":
        t = (b"x" * 16, t[1])
    elif case == "expired":
        now = lambda: 2**62  # noqa: E731
    elif case == "wrong_secret":
        t = (t[0], bytes(32))
    elif case == "other_link":
        other = Dev.make(5)
        keys.add(other)
        dev = other
    d2, g2 = dev.session(ticket=t), gateway(keys, now_ms=now)
    g2.receive_data(d2.initiate())
    err = events(g2)[-1]
    assert isinstance(err, RemoteProtocolError)
    assert err.reason == ("bad_proof" if case == "wrong_secret" else "bad_ticket")
    assert not keys.tickets or case == "unknown_ticket"  # spent either way
    d2.receive_data(g2.data_to_send())
    assert isinstance(events(d2)[0], Error)


def test_illegal_sends_and_unexpected_frames() -> None:
    """Sending out of turn is a local error; an out-of-state frame is a remote one."""
    dev, keys, d, g, _, _ = established()
    with pytest.raises(LocalProtocolError):
        d.send(Requests([]))  # only the gateway sends REQUESTS
    assert d.state == "ERROR"
    dev2 = Dev.make(7)
    keys.add(dev2)
    g2 = gateway(keys)
    g2.receive_data(wire.encode_frame(wire.PROOF, 0, wire.encode("Proof", {"mac": b"x"})))
    err = events(g2)[-1]
    assert err.reason == "unexpected"
    g3 = gateway(keys)
    g3.receive_data(wire.encode_frame(wire.HELLO, 3, b""))  # handshake frames have seq 0
    assert events(g3)[-1].reason == "malformed"
    g4 = gateway(keys)
    g4.receive_data(b"\x05\xff\xff\xff\xff\xff")
    assert events(g4)[-1].reason == "malformed"


def transcript(args: bytes = b""):
    """An encrypted handshake and one REQUESTS frame with deterministic randomness."""
    dev = Dev.make()
    keys = Keys()
    keys.add(dev, True)
    d, g = dev.session(rand=DetRand(b"d")), gateway(keys, rand=DetRand(b"g"), now_ms=lambda: 10**12)
    _, _, chunks = handshake(d, g)
    return chunks, g.send(Requests([dev.request("s", "m", args, 1)]))


def test_deterministic_given_randomness() -> None:
    """With the same randomness both sides produce the same bytes (transcripts are reproducible)."""
    assert transcript() == transcript()


def test_crypt_paths_agree_and_fixed_vectors_hold(monkeypatch) -> None:
    """The big-integer XOR (CPython's path) and the byte loop (any board) give the same
    bytes, pinned by vectors computed from the definition; a whole encrypted session
    run on the byte loop matches the default path byte for byte."""
    key = bytes(range(32))
    for n in (0, 1, 31, 32, 33, 64, 65, 1000):
        data = bytes((7 * i + n) & 255 for i in range(n))
        stream = b"".join(lc.hmac_sha256(key, (2**63 + 5).to_bytes(8, "big") + i.to_bytes(4, "big"))
                          for i in range((n + 31) // 32))[:n]
        want = bytes(a ^ b for a, b in zip(data, stream))
        pure = lc.xor_pure(data, lc._keystream(key, 2**63 + 5, n)) if n else b""  # the byte loop alone
        assert pure == lc.crypt(key, 2**63 + 5, data) == want
        assert lc.crypt(key, 2**63 + 5, want) == data
        assert lc.xor_bigint(data, stream) == lc.xor_pure(data, stream) == want
    assert lc.FAST_XOR is lc.xor_bigint  # chosen on CPython

    fast = transcript(b"x" * 300)
    monkeypatch.setattr(lc, "FAST_XOR", None)
    assert transcript(b"x" * 300) == fast

    def no_memory(data, stream):
        raise MemoryError
    monkeypatch.setattr(lc, "FAST_XOR", no_memory)  # a board whose heap is too small for it
    assert transcript(b"x" * 300) == fast


@pytest.mark.parametrize("mutation,verdict", [
    (None, "ok"),
    ("wrong_secret", "BadTag"),
    ("args", "NotPermitted"),
    ("method", "NotPermitted"),
    ("replay", "Replayed"),
    ("revoked", "Revoked"),
])
def test_check_request(mutation, verdict) -> None:
    """The device accepts only its own, matching, fresh, unrevoked request tokens."""
    dev = Dev.make()
    item = dev.request("sensor", "read", b"{}", 100, secret=bytes(32) if mutation == "wrong_secret" else None)
    kw = {}
    if mutation == "args":
        item["args"] = b'{"x":1}'
    elif mutation == "method":
        item["method"] = "write"
    elif mutation == "replay":
        kw["last_sequence"] = 100
    elif mutation == "revoked":
        kw["revoked"] = {cl.revocation_hash(cl.root(dev.secret).tag)}
    try:
        check_request(item, dev.secret, **kw)
        got = "ok"
    except cl.TokenError as exc:
        got = type(exc).__name__
    assert got == verdict


# ---- the 0.5-RTT flight: CHALLENGE + ACCEPT + REQUESTS ---------------------------------

def _early_flight(encrypt: bool, items=None, fs=False):
    """HELLO in; the gateway's one flight out (CHALLENGE + ACCEPT + first REQUESTS)."""
    dev = Dev.make()
    keys = Keys()
    keys.add(dev, encrypt)
    d, g = dev.session(fs=fs), gateway(keys, fs=fs)
    g.receive_data(d.initiate())
    (ch,) = events(g)
    assert isinstance(ch, Challenged) and g.state == "AWAIT_PROOF" and not g.established
    if items is None:
        items = [dev.request("s", "m", b"EARLY-ARGS", 5)]
    flight = g.data_to_send() + g.send(Requests(items, False, [b"t" * 32] if encrypt else [], 7))
    return dev, keys, d, g, flight


def _frames(data: bytes) -> list[dict]:
    fr = wire.FrameReader()
    fr.feed(data)
    out = []
    while (f := fr.next_frame()) is not None:
        out.append(f)
    return out


@pytest.mark.parametrize("fs", [False, True])
def test_full_handshake_in_two_round_trips_with_encryption(fs: bool) -> None:
    """With encryption the gateway sends its proof and the queued work with CHALLENGE; the
    device answers PROOF + ACK + RESPONSES in one flight; the gateway accepts them after PROOF."""
    dev, keys, d, g, flight = _early_flight(True, fs=fs)
    assert [f["type"] for f in _frames(flight)] == [wire.CHALLENGE, wire.ACCEPT, wire.REQUESTS]
    assert b"EARLY-ARGS" not in flight and b"t" * 32 not in flight  # encrypted
    assert not keys.tickets  # stored only once PROOF verifies
    d.receive_data(flight)
    est, req = events(d)
    assert isinstance(est, Established) and not est.resumed and est.encrypt and est.forward_secret == fs
    assert req.items[0]["args"] == b"EARLY-ARGS" and req.revoked == [b"t" * 32]
    reply = d.data_to_send() + d.send(Ack([req.items[0]["request_id"]])) + d.send(Responses(
        [{"request_id": req.items[0]["request_id"], "status": 0, "payload": b"1", "error": ""}]))
    assert [f["type"] for f in _frames(reply)] == [wire.PROOF, wire.ACK, wire.RESPONSES]
    g.receive_data(reply)
    ge, ack, resp = events(g)
    assert isinstance(ge, Established) and g.established and g.state == "OPEN"
    assert ack.ids == [req.items[0]["request_id"]] and resp.items[0]["payload"] == b"1"
    assert list(keys.tickets) == [est.ticket_id]
    # and the session goes on: the gateway's next frame continues the g2d sequence
    d.receive_data(g.send(Ack([req.items[0]["request_id"]])))
    assert isinstance(events(d)[0], Ack)


def test_without_encryption_no_request_contents_before_proof() -> None:
    """In clear, the early flight may only say whether work waits; contents wait for PROOF."""
    dev = Dev.make()
    keys = Keys()
    keys.add(dev, False)
    d, g = dev.session(), gateway(keys)
    g.receive_data(d.initiate())
    assert isinstance(events(g)[0], Challenged)
    with pytest.raises(LocalProtocolError):
        g.send(Requests([dev.request("s", "m", b"ARGS", 5)]))
    g = gateway(keys)
    d = dev.session()
    g.receive_data(d.initiate())
    events(g)
    with pytest.raises(LocalProtocolError):
        g.send(Requests([], False, [b"t" * 32]))  # revocations wait too
    g = gateway(keys)
    d = dev.session()
    g.receive_data(d.initiate())
    events(g)
    flight = g.data_to_send() + g.send(Requests([], True, [], 7))  # "work waits"
    d.receive_data(flight)
    est, req = events(d)
    assert isinstance(est, Established) and req.items == [] and req.more
    g.receive_data(d.data_to_send())
    assert isinstance(events(g)[0], Established)
    data = g.send(Requests([dev.request("s", "m", b"ARGS", 5)]))  # after PROOF: fine
    d.receive_data(data)
    assert events(d)[0].items[0]["args"] == b"ARGS"


@pytest.mark.parametrize("target,reason", [
    ("requests_body", "bad_mac"),
    ("requests_mac", "bad_mac"),
    ("accept_mac", "bad_accept"),
    ("accept_ticket", "bad_accept"),
    ("challenge_nonce", "bad_accept"),
    ("drop_accept", "malformed"),
])
def test_tampered_early_flight_is_refused(target: str, reason: str) -> None:
    """Any change to CHALLENGE, ACCEPT or the early REQUESTS is caught by the device before it
    acts on a request: the ACCEPT MAC covers the transcript and the ticket, the REQUESTS MAC
    (keys from T) covers the work."""
    dev, keys, d, g, flight = _early_flight(True)
    ch, acc, req = _frames(flight)
    if target == "requests_body":
        req["body"] = bytes([req["body"][0] ^ 1]) + req["body"][1:]
    elif target == "requests_mac":
        req["mac"] = bytes(16)
    elif target == "accept_mac":
        m = wire.decode("Accept", acc["body"])
        m["mac"] = bytes(32)
        acc["body"] = wire.encode("Accept", m)
    elif target == "accept_ticket":
        m = wire.decode("Accept", acc["body"])
        m["ticket_id"] = bytes(16)
        acc["body"] = wire.encode("Accept", m)
    elif target == "challenge_nonce":
        m = wire.decode("Challenge", ch["body"])
        m["nonce"] = bytes(16)
        ch["body"] = wire.encode("Challenge", m)
    frames = [ch, acc, req] if target != "drop_accept" else [ch, req]
    d.receive_data(b"".join(wire.encode_frame(f["type"], f["seq"], f["body"], f["mac"]) for f in frames))
    evs = events(d)
    assert not any(isinstance(e, Requests) for e in evs)
    assert isinstance(evs[-1], RemoteProtocolError) and evs[-1].reason == reason and d.state == "ERROR"


def test_gateway_takes_nothing_but_proof_before_proof() -> None:
    """Before PROOF the gateway refuses data frames (they cannot stand in for PROOF), and a
    PROOF that fails ends the session before the frames behind it (ACK) are looked at."""
    dev, keys, d, g, flight = _early_flight(True)
    d.receive_data(flight)
    _, req = events(d)
    d.data_to_send()  # the PROOF is withheld: only the (validly MACed) ACK arrives
    g.receive_data(d.send(Ack([req.items[0]["request_id"]])))
    err = events(g)[-1]
    assert isinstance(err, RemoteProtocolError) and err.reason == "malformed"
    # a PROOF changed in transit, followed by the genuine ACK: no ACK event
    dev, keys, d, g, flight = _early_flight(True)
    d.receive_data(flight)
    _, req = events(d)
    assert [f["type"] for f in _frames(d.data_to_send())] == [wire.PROOF]
    bad = wire.encode_frame(wire.PROOF, 0, wire.encode("Proof", {"mac": bytes(32)}))
    g.receive_data(bad + d.send(Ack([req.items[0]["request_id"]])))
    evs = events(g)
    assert [type(e).__name__ for e in evs] == ["RemoteProtocolError"] and evs[0].reason == "bad_proof"
    assert not keys.tickets and not g.established
    # the gateway's ERROR is keyed (the device holds the g2d keys since ACCEPT) and verifies
    d.receive_data(g.data_to_send())
    (e,) = events(d)
    assert isinstance(e, Error) and e.code == E_AUTH and d.state == "CLOSED"


def test_replayed_hello_learns_nothing() -> None:
    """Someone replaying a device's HELLO (identity tokens travel in clear) gets an early flight
    it cannot read (encrypted) or one without request contents (clear), and cannot prove."""
    for encrypt in (True, False):
        dev = Dev.make()
        keys = Keys()
        keys.add(dev, encrypt)
        hello = dev.session().initiate()
        g = gateway(keys)
        g.receive_data(hello)
        events(g)
        items = [dev.request("s", "m", b"PRIVATE-ARGS", 5)] if encrypt else []
        flight = g.data_to_send() + g.send(Requests(items, True, [], 7))
        assert b"PRIVATE-ARGS" not in flight
        g.receive_data(wire.encode_frame(wire.PROOF, 0, wire.encode("Proof", {"mac": os.urandom(32)})))
        assert events(g)[-1].reason == "bad_proof" and not keys.tickets
