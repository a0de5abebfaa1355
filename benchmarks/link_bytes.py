"""The datagram link's wake beside EDHOC + OSCORE: bytes and round trips, one run.

Side by side, interleaved rep by rep, on loopback (real UDP sockets both):

* **ours, full wake** (the device's WAKE, the gateway's WELCOME with the queued
  request encrypted under the new context, the device's ACK), with X25519
  forward secrecy on and off: a real DgramServer (MemoryBackend) and the CPython
  device client (the same sans-I/O core the MicroPython firmware runs).
* **ours, saved-context wake** (DATA wake, REPLY with the request, ACK).
* **theirs**: benchmarks/edhoc_peer.py (lakers-python + aiocoap): EDHOC method 3
  with kid references, then the combined request (message_3 + OSCORE request
  carrying the same DeviceRequest) and its protected response; and one OSCORE
  request/response on the saved context.

Same layers: application bytes above UDP on both sides (CoAP datagrams for
them, our datagrams for us); the wire estimate adds IPv4 + UDP (28 B) a
datagram. Counting stops once the device has acknowledged the request (our
ACK; their OSCORE response). A round trip is a datagram the sender must wait
an answer to. Not fair in their favour: the CoAP exchange starts at the
gateway, so it omits whatever tells the gateway a sleeping device is awake;
ours includes the device's wake datagram. Revocations: none in the compared
rows; one extra row pushes 3 revocations and reports their bytes apart.

Usage: python benchmarks/link_bytes.py [--runs 3] [--reps 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

try:
    import edhoc_peer  # noqa: E402
except ImportError as exc:  # the bench extra: lakers-python, aiocoap
    sys.exit(f"EDHOC + OSCORE peer unavailable: {exc} (pip install 'edgistry[bench]')")
from bench_util import result_line, table  # noqa: E402
from wake import queue_read  # noqa: E402

from edgistry.firmware.caplets import api as cl  # noqa: E402
from edgistry.firmware.link import link_wire as wire  # noqa: E402
from edgistry.firmware.link.dgram_client import DgramClient  # noqa: E402
from edgistry.firmware.link.x25519 import x25519  # noqa: E402
from edgistry.gateway.link.backend import DeviceAnswer, MemoryBackend, PairedDevice  # noqa: E402
from edgistry.gateway.link.dgram_server import DgramServer  # noqa: E402
from edgistry.gateway.link import frame_sizes  # noqa: E402
from edgistry.gateway.link.server import LinkServerThread  # noqa: E402

ROWS = ("ours_full_fs", "ours_full_nofs", "ours_saved", "edhoc_oscore_full", "oscore_saved")


class Device:
    def __init__(self, backend: MemoryBackend, addr) -> None:
        self.secret = cl.new_secret()
        self.root = cl.root(self.secret).to_bytes()
        self.link_id = os.urandom(16)
        backend.devices[self.link_id] = PairedDevice(self.link_id, os.urandom(16), self.root)
        self.backend, self.addr = backend, addr
        self.seq = int(time.time() * 1000)
        self.state: dict = {"ctr": 0}

    def queue(self) -> dict:
        self.seq += 1
        return queue_read(self.backend, self.root, self.link_id, self.seq)

    def wake(self, full: bool, fs: bool) -> dict:
        c = DgramClient(self.root, self.link_id, self.addr, self.state, x25519() if fs else None, timeout=2.0)
        try:
            log = c.wake(lambda m: [], full=full)
        finally:
            c.close()
        assert log.full == full and len(log.delivered) == 1 and log.retries == 0
        assert log.forward_secret == (fs and full)
        upto = log.flights[:log.first_ack + 1]
        sent = sum(n for d, n in upto if d == "->")
        received = sum(n for d, n in upto if d == "<-")
        revocation_bytes = sum(frame_sizes.tag_size(t) for t in log.revoked)
        # answered out of band (not counted), so the next wake does not carry it again
        for it in log.delivered:
            self.backend.answers[it["request_id"]] = DeviceAnswer(it["request_id"], 0, b"{}")
        return {"sent": sent, "received": received, "payload_bytes": sent + received - revocation_bytes,
                "revocation_bytes": revocation_bytes, "rtts": log.rtts, "datagrams": len(upto),
                "flights": " ".join(f"{d}{n}" for d, n in upto),
                "wire_bytes_est": sent + received - revocation_bytes + 28 * len(upto)}


def mmm(values: list[float]) -> dict:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--reps", type=int, default=3, help="wakes per row per run")
    a = ap.parse_args()
    t0 = time.monotonic()
    load = os.getloadavg()
    workdir = Path(tempfile.mkdtemp(prefix="edgistry-linkbytes-"))
    backend = MemoryBackend(os.urandom(32))
    thread = LinkServerThread(DgramServer(backend, "127.0.0.1", 0, rate=10_000, burst=10_000))
    srv = thread.start()
    runs: list[dict[str, list[dict]]] = []
    payload = None
    rev_rows: list[dict] = []
    try:
        for _ in range(a.runs):
            rows: dict[str, list[dict]] = {k: [] for k in ROWS}
            for _ in range(a.reps):  # interleaved: ours, theirs, ours, ...
                d = Device(backend, srv.address)
                item = d.queue()
                rows["ours_full_fs"].append(d.wake(True, True))
                efull, esaved = edhoc_peer.run(1, wire.encode("DeviceRequest", item), workdir)
                d.queue()
                rows["ours_saved"].append(d.wake(False, True))
                d2 = Device(backend, srv.address)
                d2.queue()
                rows["ours_full_nofs"].append(d2.wake(True, False))
                rows["edhoc_oscore_full"] += efull
                rows["oscore_saved"] += esaved
                payload = wire.encode("DeviceRequest", item)
            runs.append(rows)
        d = Device(backend, srv.address)  # revocations pushed in the wake reply, counted apart
        backend.revoked[d.link_id] = [os.urandom(32) + (2**40).to_bytes(8, "big") for _ in range(3)]
        d.queue()
        rev_rows.append(d.wake(True, True))
        for _ in range(200):  # the ACK needs no reply: the gateway records it after the device is done
            if not backend.revoked[d.link_id]:
                break
            time.sleep(0.01)
        assert not backend.revoked[d.link_id], "revocation cursor not advanced"
    finally:
        thread.stop()
    # per run: the median of its reps; across runs: min/median/max of those
    per_run = {k: [{f: statistics.median(r[f] for r in run[k]) for f in ("payload_bytes", "wire_bytes_est", "rtts",
                                                                          "sent", "received")}
                   for run in runs] for k in ROWS}
    figures = {k: {f: mmm([r[f] for r in per_run[k]]) for f in ("payload_bytes", "wire_bytes_est", "rtts", "sent",
                                                                 "received")} for k in ROWS}
    steady = all(len({r["payload_bytes"] for run in runs for r in run[k]}) == 1 for k in ROWS)
    pairs = [("ours_full_fs", "edhoc_oscore_full"), ("ours_full_nofs", "edhoc_oscore_full"),
             ("ours_saved", "oscore_saved")]
    goals, ratios, out = {}, {}, []
    for ours, theirs in pairs:
        o, t = figures[ours], figures[theirs]
        r = o["payload_bytes"]["median"] / t["payload_bytes"]["median"]
        worst = o["payload_bytes"]["max"] / t["payload_bytes"]["min"]
        ratios[ours] = round(r, 3)
        goals[ours] = {"bytes_le_1x": worst <= 1.0, "rtts_le_theirs": o["rtts"]["max"] <= t["rtts"]["min"]}
        out.append([f"{ours} vs {theirs}", "%g/%g/%g" % tuple(o["payload_bytes"].values()),
                    "%g/%g/%g" % tuple(t["payload_bytes"].values()), f"{r:.3f}",
                    f"{o['wire_bytes_est']['median']:g} / {t['wire_bytes_est']['median']:g}",
                    f"{o['rtts']['median']:g} vs {t['rtts']['median']:g}",
                    "yes" if goals[ours]["bytes_le_1x"] else "NO", "yes" if goals[ours]["rtts_le_theirs"] else "NO"])
    print(f"wake -> first acknowledged request; {a.runs} runs x {a.reps} wakes a row, interleaved; "
          f"request: DeviceRequest of {len(payload)} B; load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print("flights (one wake each): " + "; ".join(f"{k}: {runs[0][k][0]['flights']}" for k in ROWS))
    print()
    print(table(["ours vs theirs", "ours B min/med/max", "theirs B min/med/max", "ratio (median)",
                 "wire B est", "RTT", "bytes <= 1x", "RTT <= theirs"], out))
    print(f"revocations: 3 pushed in a full wake's reply take {rev_rows[0]['revocation_bytes']} B, counted apart "
          f"(the row's other bytes: {rev_rows[0]['payload_bytes']} B)")
    print(f"\n({time.monotonic() - t0:.1f} s)")
    print(result_line({"bench": "link_bytes", "runs": a.runs, "reps": a.reps, "request_bytes": len(payload),
                       "load": [round(x, 2) for x in load], "figures": figures, "ratios_median": ratios,
                       "goals": goals, "bytes_identical_across_wakes": steady,
                       "revocation_bytes_3": rev_rows[0]["revocation_bytes"]}))


if __name__ == "__main__":
    main()
