"""The device side of the link core runs unchanged under MicroPython and agrees with CPython.

A CPython gateway (GatewaySession) and a CPython device hold real conversations
with deterministic randomness; the gateway's bytes are recorded. The same
device logic (STEP, below) then replays each conversation under the MicroPython
WebAssembly port and under CPython, both on the device package as ``edgistry
device export`` ships it to a board; every line (events, request-token verdicts, errors, and the exact
bytes the device sends back) must match. Scenarios: full handshake in two
round trips (the gateway's CHALLENGE + ACCEPT + encrypted 0.5-RTT REQUESTS in
one flight, answered by PROOF + ACK + RESPONSES) with request tokens verified
on the device, resumption with the ticket (RESUMED + REQUESTS in one flight),
and tampered, replayed and reordered frames.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from board_helpers import board_lib
from link_helpers import Dev, DetRand, Keys, gateway

from edgistry.firmware.caplets import api as cl
from edgistry.firmware.link import api as link
from edgistry.firmware.link.link_session import Requests
from edgistry.firmware.link import link_crypto as lc, link_device, link_session

NOW = 1_700_000_000

# The device application logic of the test: MicroPython dialect, no imports of
# its own (the prelude provides the names).
STEP = r'''
def hx(b):
    return binascii.hexlify(b).decode()


def step(s, data, st):
    lines = []
    out = b""
    s.receive_data(data)
    while True:
        try:
            ev = s.next_event()
        except LinkError as e:
            lines.append("ERR %s %s %d" % (type(e).__name__, e.reason, e.code))
            out += s.data_to_send()
            break
        out += s.data_to_send()
        if ev is NEED_DATA or ev is CLOSED:
            break
        name = type(ev).__name__
        if name == "Established":
            lines.append("EST resumed=%d enc=%d ticket=%s" % (ev.resumed, ev.encrypt, hx(ev.ticket_id)))
            st["ticket"] = (ev.ticket_id, ev.ticket_secret)
        elif name == "Requests":
            lines.append("REQ n=%d more=%d revoked=%d now=%d" % (
                len(ev.items), ev.more, len(ev.revoked), ev.gateway_now_ms))
            for entry in ev.revoked:  # a revocation hash, then its be64 expiry
                st["revoked"].add(entry[:32])
            out += s.send(Ack([it["request_id"] for it in ev.items]))
            resp = []
            for it in ev.items:
                try:
                    seq = check_request(it, SECRET, now_s=NOW, last_sequence=st["last"],
                                        revoked=st["revoked"])
                    st["last"] = seq
                    verdict, status = "ok", 0
                except TokenError as e:
                    verdict, status = type(e).__name__, 2
                lines.append("CHECK %s %s %s" % (hx(it["request_id"]), it["args"].decode(), verdict))
                resp.append({"request_id": it["request_id"], "status": status,
                             "payload": it["args"], "error": verdict})
            out += s.send(Responses(resp))
            if not ev.more:
                out += s.send(Bye(5))
        elif name == "Ack":
            lines.append("ACK n=%d" % len(ev.ids))
        elif name == "Error":
            lines.append("PEERERR %d %s" % (ev.code, ev.reason))
    lines.append("OUT " + hx(out) + " state=" + s.state)
    return lines
'''

PRELUDE = r'''
import binascii
import hashlib
from edgistry.firmware.link.link_device import DeviceSession, check_request
from edgistry.firmware.link.link_session import NEED_DATA, CLOSED, Ack, Responses, Bye
from edgistry.firmware.link.link_errors import LinkError
from edgistry.firmware.caplets.cap_errors import TokenError


class DetRand:
    def __init__(self, seed):
        self.seed = seed
        self.n = 0

    def __call__(self, k):
        out = b""
        while len(out) < k:
            self.n += 1
            out += hashlib.sha256(self.seed + bytes([0, 0, self.n >> 8, self.n & 255])).digest()
        return out[:k]
'''

DRIVER = r'''
h = binascii.unhexlify
for sc in SCENARIOS:
    name, seed, ticket, chunks = sc
    st = {"last": None, "revoked": set(), "ticket": None}
    if ticket:
        ticket = (h(ticket[0]), h(ticket[1]))
    s = DeviceSession(SECRET, ROOT, LINK_ID, IDENTITY, DetRand(seed.encode()), ticket=ticket)
    print("SC", name)
    print("OUT", hx(s.initiate()))
    for c in chunks:
        for line in step(s, h(c), st):
            print(line)
'''


def _step_ns() -> dict:
    """STEP bound to the package classes (for recording the conversations)."""
    from edgistry.firmware.caplets.cap_errors import TokenError
    from edgistry.firmware.link.link_errors import LinkError
    import binascii
    ns = {"binascii": binascii, "NEED_DATA": link_session.NEED_DATA, "CLOSED": link_session.CLOSED,
          "Ack": link_session.Ack, "Responses": link_session.Responses, "Bye": link_session.Bye,
          "LinkError": LinkError, "TokenError": TokenError, "check_request": link_device.check_request,
          "NOW": NOW}
    exec(STEP, ns)
    return ns


class MpRand(DetRand):
    """DetRand with the counter encoding the MicroPython prelude uses."""

    def __call__(self, k: int) -> bytes:
        import hashlib
        out = b""
        while len(out) < k:
            self.n += 1
            out += hashlib.sha256(self.seed + bytes([0, 0, self.n >> 8, self.n & 255])).digest()
        return out[:k]


def record(dev: Dev) -> tuple[list, dict]:
    """Hold the conversations in CPython; return the scenarios (gateway chunks) and the ticket."""
    ns = _step_ns()
    ns["SECRET"] = dev.secret
    keys = Keys()
    keys.add(dev, encrypt=True)
    clock = lambda: NOW * 1000  # noqa: E731
    app = cl.derive(dev.root, [cl.Service("sensor", ["read"])])
    revoked_app = cl.derive(dev.root, [cl.Service("sensor", ["read"])], [cl.ExpiresAt(NOW + 999)])

    def item(rid: int, args: bytes, seq: int, token_from=app, token_args=None, secret=None):
        src = cl.derive(cl.root(secret), [cl.Service("sensor", ["read"])]) if secret else token_from
        tok = cl.request_token(src, "sensor", "read", args if token_args is None else token_args, seq)
        return {"request_id": bytes([rid]) * 16, "service": "sensor", "method": "read", "args": args,
                "request_token": tok.to_bytes(), "expires_at_ms": 0}

    # -- full handshake in two round trips: the gateway's first flight is CHALLENGE +
    # ACCEPT + the first REQUESTS (0.5-RTT, encrypted); the device answers PROOF + ACK +
    # RESPONSES in one flight --
    st = {"last": None, "revoked": set(), "ticket": None}
    d = dev.session(rand=MpRand(b"full"))
    g = gateway(keys, rand=DetRand(b"gw-full"), now_ms=clock)
    g.receive_data(d.initiate())
    assert isinstance(g.next_event(), link.Challenged)
    g1 = g.data_to_send()  # CHALLENGE + ACCEPT
    g3 = g.send(Requests([item(1, b'"ok"', 10), item(2, b'"tampered-args"', 11, token_args=b"x"),
                          item(3, b'"wrong-secret"', 12, secret=bytes(32))], True, [], NOW * 1000))
    r1 = _out(ns["step"](d, g1 + g3, st))
    g.receive_data(r1)
    assert [type(e).__name__ for e in link_helpers_events(g)] == ["Established", "Ack", "Responses"]
    g4 = g.send(Requests([item(4, b'"revoked"', 13, token_from=revoked_app),
                          item(5, b'"replayed"', 10), item(6, b'"ok2"', 14)],
                         False, [cl.revocation_hash(revoked_app.tag) + (NOW + 999).to_bytes(8, "big")],
                         NOW * 1000))
    g.receive_data(_out(ns["step"](d, g4, st)))
    seen = link_helpers_events(g)
    assert [type(e).__name__ for e in seen] == ["Ack", "Responses", "Bye"]
    ticket = st["ticket"]
    # -- resumption --
    d2 = dev.session(rand=MpRand(b"resume"), ticket=ticket)
    g5 = gateway(keys, rand=DetRand(b"gw-resume"), now_ms=clock)
    g5.receive_data(d2.initiate())
    assert isinstance(g5.next_event(), link.Established)
    r1 = g5.data_to_send()  # RESUMED and the REQUESTS go out in one write
    r2 = g5.send(Requests([item(7, b'"after-resume"', 15)], False, [], NOW * 1000))

    fr = link.FrameReader()
    fr.feed(g1)
    ch = link.decode("Challenge", fr.next_frame()["body"])
    ch["enc_token_body"] = cl.derive(dev.root, [cl.Service("x", ["*"])]).body  # not an encryption leaf
    bad_g1 = link.encode_frame(2, 0, link.encode("Challenge", ch))
    flip = bytearray(g3)
    flip[len(flip) // 2] ^= 0x01
    hx = lambda b: b.hex()  # noqa: E731
    scenarios = [
        ("full", "full", None, [hx(g1 + g3), hx(g4)]),
        ("resume", "resume", [ticket[0].hex(), ticket[1].hex()], [hx(r1 + r2)]),
        ("tampered", "full", None, [hx(g1 + bytes(flip))]),
        ("replayed", "full", None, [hx(g1 + g3), hx(g3)]),
        ("reordered", "full", None, [hx(g1 + g4), hx(g3)]),
        ("bad_challenge", "full", None, [hx(bad_g1)]),
    ]
    return scenarios, ticket


def _out(lines: list[str]) -> bytes:
    """The bytes of STEP's last line, ``OUT <hex> state=S``."""
    return bytes.fromhex(lines[-1][4:].rsplit(" state=", 1)[0])


def link_helpers_events(g) -> list:
    from link_helpers import events
    return events(g)


def script_for(dev: Dev, scenarios: list) -> str:
    consts = (f"SECRET = binascii.unhexlify({dev.secret.hex()!r})\n"
              f"ROOT = binascii.unhexlify({dev.root.to_bytes().hex()!r})\n"
              f"LINK_ID = binascii.unhexlify({dev.link_id.hex()!r})\n"
              f"IDENTITY = binascii.unhexlify({dev.identity.hex()!r})\n"
              f"NOW = {NOW}\nSCENARIOS = {scenarios!r}\n")
    return PRELUDE + consts + STEP + DRIVER


def run_cpython_board(script: str, tmp: Path, lib: Path) -> str:
    """The same script under CPython on the board's package (``lib``), not this checkout's."""
    (tmp / "script.py").write_text(script)
    proc = subprocess.run([sys.executable, str(tmp / "script.py")], check=False, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(lib)}, timeout=60, cwd=tmp)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_device_link_core_under_micropython(micropython, tmp_path: Path) -> None:
    """Handshake, resumption, request checks and rejections give identical results on
    MicroPython, on CPython over the board's package, and in the package itself."""
    dev = Dev.make(11)
    scenarios, _ = record(dev)
    script = script_for(dev, scenarios)
    lib = board_lib(tmp_path)
    expected = run_cpython_board(script, tmp_path, lib)
    got = micropython.run(script, [lib / "edgistry"], timeout=180)
    assert got.splitlines() == expected.splitlines()
    by = {}
    cur = None
    for line in expected.splitlines():
        if line.startswith("SC "):
            cur = line.split()[1]
            by[cur] = []
        else:
            by[cur].append(line)
    # the outcomes themselves
    full = by["full"]
    assert any(x.startswith("EST resumed=0 enc=1") for x in full)
    verdicts = [x.split()[2:] for x in full if x.startswith("CHECK")]
    assert verdicts == [['"ok"', "ok"], ['"tampered-args"', "NotPermitted"],
                        ['"wrong-secret"', "BadTag"], ['"revoked"', "Revoked"],
                        ['"replayed"', "Replayed"], ['"ok2"', "ok"]]
    assert full[-1].endswith("state=CLOSED")  # said BYE
    assert any(x.startswith("EST resumed=1 enc=1") for x in by["resume"])
    assert [x.split()[3] for x in by["resume"] if x.startswith("CHECK")] == ["ok"]
    for name, reason in [("tampered", "bad_mac"), ("replayed", "replayed"),
                         ("reordered", "reordered"), ("bad_challenge", "bad_challenge")]:
        errs = [x for x in by[name] if x.startswith("ERR")]
        assert errs and errs[0].split()[2] == reason, (name, by[name])
        assert by[name][-1].endswith("state=ERROR")
    # the package (in-process) device agrees with the board's copy
    ns = _step_ns()
    ns["SECRET"] = dev.secret
    lines = []
    for name, seed, ticket, chunks in scenarios:
        st = {"last": None, "revoked": set(), "ticket": None}
        t = (bytes.fromhex(ticket[0]), bytes.fromhex(ticket[1])) if ticket else None
        s = dev.session(rand=MpRand(seed.encode()), ticket=t)
        lines += ["SC " + name, "OUT " + s.initiate().hex()]
        for c in chunks:
            lines += ns["step"](s, bytes.fromhex(c), st)
    assert lines == expected.splitlines()


CRYPT_SCRIPT = r'''
import binascii
from edgistry.firmware.link import link_crypto as lc
print("fast", lc.FAST_XOR is not None)
key = bytes(range(32))
for n in (0, 1, 31, 32, 33, 100):
    data = bytes([(7 * i + n) & 255 for i in range(n)])
    a = lc.xor_pure(data, lc._keystream(key, 2**63 + 5, n)) if n else b""  # the byte loop alone
    b = lc.crypt(key, 2**63 + 5, data)
    print(n, binascii.hexlify(a).decode(), a == b)
'''


def test_keystream_cipher_paths_under_micropython(micropython, tmp_path: Path) -> None:
    """Both XOR paths of the keystream cipher run on MicroPython and give CPython's bytes."""
    got = micropython.run(CRYPT_SCRIPT, [board_lib(tmp_path) / "edgistry"], timeout=120).splitlines()
    assert got[0] in ("fast True", "fast False")  # True where ints are arbitrary precision
    key = bytes(range(32))
    want = [f"{n} {lc.crypt(key, 2**63 + 5, bytes((7 * i + n) & 255 for i in range(n))).hex()} True"
            for n in (0, 1, 31, 32, 33, 100)]
    assert got[1:] == want
