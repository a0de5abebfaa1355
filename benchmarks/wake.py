"""Bytes on the wire and round trips from a device's wake to its first delivered request.

Side by side, in one run, on loopback:

* **edgistry link, full handshake**: a real LinkServer (MemoryBackend) and a real
  DeviceSession over TCP; a request (real gateway-derived request token) is queued
  before the wake; the device connects and sends HELLO; the gateway answers CHALLENGE +
  ACCEPT + REQUESTS in one flight. With payload encryption that REQUESTS carries the
  request (0.5-RTT data) and the device answers PROOF + ACK in one flight: two round
  trips. Without encryption (the runtime's default) the early REQUESTS only says work
  waits, the work follows PROOF: three. X25519 forward secrecy on (a row without it too).
* **edgistry link, resumed**: the next wake with the ticket from the previous one
  (RESUME / RESUMED, REQUESTS, ACK).
* **MQTT 3.1.1 over TLS 1.3, full TLS handshake**: a local mosquitto (persistence on,
  password file), ECDSA P-256 server certificate signed by a throwaway CA (the client
  verifies it). The subscriber has a persistent session (clean_session=0, QoS 1
  subscription); the request is published (QoS 1) while it is offline. Wake = TCP
  connect, TLS handshake, CONNECT(clean_session=0) / CONNACK(session present),
  receive the queued PUBLISH, send PUBACK.
* **MQTT 3.1.1 over TLS 1.3, resumed TLS session** (the same with a TLS 1.3 session
  ticket from the previous connection: PSK resumption, ``session_reused`` checked).
* **EDHOC + OSCORE over CoAP/UDP** (benchmarks/edhoc_peer.py: lakers-python, aiocoap): the
  device is the CoAP server and EDHOC responder, the gateway the client and initiator;
  EDHOC method 3 with compact kid references (RFC 9529 trace 2's sizes), then the
  combined request (RFC 9668: message_3 + the first OSCORE request carrying the same
  DeviceRequest) and its protected response: two round trips. The later wake: one
  OSCORE request/response on the context both sides saved. EDHOC always has forward
  secrecy (ephemeral ECDH); our rows with and without X25519 stand beside it. Bytes
  are the CoAP datagrams' payloads (above UDP), as ours are above TCP; TCP's connect
  counts as our round trip, and UDP has none.

The MQTT payload is the very DeviceRequest the link carries (same request id, service,
method, args and request token), so both carry the same application bytes; the
topic is ``d/<16 hex>/rq``, the client id 16 hex characters.

Counting stops when the device has sent its acknowledgement of the first request
(link ACK frame; MQTT PUBACK). Payload bytes are counted exactly by the client's own
I/O loop (both directions; TLS records included for MQTT); segments come from Linux
TCP_INFO of the client socket at that moment (SYN, pure ACKs and all), and the wire
estimate adds IPv4 + TCP headers with timestamps (52 bytes a segment, SYNs +8).
Loopback's MSS is 64 KiB, so on a real link (MSS 1460) large flights (the
certificate flight) would take a few more segments than shown. A round trip is
defined in bench_util.Counter (TCP connect = 1; then each client flight that must
wait for the server's reply = 1).

Revocations in force travel in a wake's first REQUESTS (40 B each): none are in force here,
and the revocation-list bytes are reported apart (0 in these rows).

Usage: python benchmarks/wake.py [--reps N] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import mqtt_min as mq  # noqa: E402
try:  # the standards peer needs lakers-python and aiocoap (the bench extra)
    import edhoc_peer  # noqa: E402
except ImportError as exc:
    edhoc_peer, NO_EDHOC = None, f"EDHOC + OSCORE not measured: {exc} (pip install 'edgistry[bench]')"
from bench_util import Counter, Mosquitto, result_line, table  # noqa: E402

from edgistry.firmware.caplets import api as cl  # noqa: E402
from edgistry.firmware.link.link_session import CLOSED, NEED_DATA, Ack, Bye, Established, Requests
from edgistry.firmware.link.link_device import DeviceSession
from edgistry.firmware.link.x25519 import x25519
from edgistry.firmware.link import link_wire as wire
from edgistry.gateway.tokens import auth
from edgistry.gateway.link.backend import DeviceAnswer, MemoryBackend, PairedDevice, QueuedRequest
from edgistry.gateway.link.server import LinkServer, LinkServerThread
from edgistry.gateway.tokens.auth import identity_token

GATEWAY_SECRET = os.urandom(32)
ARGS = b'{"unit":"C"}'


# ---- our link ----------------------------------------------------------------------

def queue_read(backend, root: bytes, link_id: bytes, seq: int) -> dict:
    """Queue one sensor.read with a real request token in a MemoryBackend, as the
    gateway does; return the request as the link carries it."""
    rid = os.urandom(16)
    tok = auth.request_token(root, "sensor", "read", ARGS, seq)
    req = QueuedRequest(rid, "sensor", "read", ARGS, tok, int(time.time() * 1000) + 600_000)
    backend.queues.setdefault(link_id, []).append(req)
    return {"request_id": rid, "service": req.service, "method": req.method, "args": req.args,
            "request_token": req.request_token, "expires_at_ms": req.expires_at_ms}


class LinkDevice:
    def __init__(self, backend: MemoryBackend, encrypt: bool = False) -> None:
        self.secret = cl.new_secret()
        self.root = cl.root(self.secret).to_bytes()
        self.link_id = os.urandom(16)
        self.identity = identity_token(GATEWAY_SECRET, self.link_id).to_bytes()
        backend.devices[self.link_id] = PairedDevice(self.link_id, os.urandom(16), self.root, encrypt)
        self.backend = backend
        self.ticket: tuple[bytes, bytes] | None = None
        self.seq = int(time.time() * 1000)

    def queue(self) -> dict:
        """Queue one request with a real request token, as the gateway does; return its wire item."""
        self.seq += 1
        return queue_read(self.backend, self.root, self.link_id, self.seq)

    def wake(self, addr: tuple[str, int], resume: bool, fs: bool) -> dict:
        s = DeviceSession(self.secret, self.root, self.link_id, self.identity, os.urandom,
                          ticket=self.ticket if resume else None, x25519=x25519() if fs else None)
        c = Counter()
        sock = socket.create_connection(addr, timeout=10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        c.connected()

        def send(data: bytes) -> None:
            if data:
                sock.sendall(data)
                c.wrote(len(data))

        snap = None
        revoked = 0
        try:
            send(s.initiate())
            while snap is None:
                data = sock.recv(65536)
                if not data:
                    raise RuntimeError("gateway closed the connection")
                c.read(len(data))
                s.receive_data(data)
                out = b""  # the device answers a flight in one write (as the runtime does)
                while snap is None:
                    ev = s.next_event()
                    out += s.data_to_send()
                    if ev is NEED_DATA:
                        break
                    if ev is CLOSED:
                        raise RuntimeError("session closed")
                    if isinstance(ev, Established):
                        assert ev.resumed == resume, "expected a %s handshake" % ("resumed" if resume else "full")
                        self.ticket = (ev.ticket_id, ev.ticket_secret)
                    elif isinstance(ev, Requests):
                        revoked += len(ev.revoked)
                        if not ev.items:
                            if ev.more:
                                continue  # in clear: "work waits", it follows PROOF
                            raise RuntimeError("no request delivered")
                        send(out + s.send(Ack([i["request_id"] for i in ev.items])))
                        out = b""
                        snap = c.close(sock)
                        snap["revocation_bytes"] = 40 * revoked  # gateway/link/delivery.py TAG_SIZE
                        # handled (not counted): answered, so the next wake does not redeliver it
                        asyncio.run(self.backend.answered(self.link_id, [DeviceAnswer(i["request_id"], 0, b"{}")
                                                                         for i in ev.items]))
                send(out)
            sock.sendall(s.send(Bye(60)))  # not counted: the job is done
        finally:
            sock.close()
        return snap


# ---- MQTT over TLS -----------------------------------------------------------------

class TlsMqtt:
    """One MQTT connection over TLS with all I/O on a raw socket we count (ssl.SSLObject + BIOs)."""

    def __init__(self, port: int, ctx: ssl.SSLContext, session: ssl.SSLSession | None = None) -> None:
        self.c = Counter()
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.c.connected()
        self.inb, self.outb = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = ctx.wrap_bio(self.inb, self.outb, server_hostname="localhost", session=session)
        self.reader = mq.PacketReader()

    def _flush(self) -> None:
        data = self.outb.read()
        if data:
            self.sock.sendall(data)
            self.c.wrote(len(data))

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise RuntimeError("broker closed the connection")
        self.c.read(len(data))
        self.inb.write(data)

    def handshake(self) -> None:
        while True:
            try:
                self.tls.do_handshake()
                self._flush()
                return
            except ssl.SSLWantReadError:
                self._flush()
                self._fill()

    def send(self, data: bytes) -> None:
        self.tls.write(data)
        self._flush()

    def packet(self) -> tuple[int, int, bytes]:
        while True:
            p = self.reader.next()
            if p is not None:
                return p
            try:
                self.reader.feed(self.tls.read(65536))
            except ssl.SSLWantReadError:
                self._flush()
                self._fill()
            self._flush()  # key updates, alerts

    def expect(self, ptype: int) -> tuple[int, bytes]:
        t, flags, body = self.packet()
        if t != ptype:
            raise RuntimeError(f"expected {mq.NAMES.get(ptype)}, got {mq.NAMES.get(t, t)}")
        return flags, body

    def connect(self, client_id: str, clean: bool) -> bool:
        self.handshake()
        self.send(mq.connect(client_id, clean, 60, Mosquitto.USER, Mosquitto.PASSWORD))
        present, rc = mq.connack(self.expect(mq.CONNACK)[1])
        if rc:
            raise RuntimeError(f"CONNACK return code {rc}")
        return present

    def close(self) -> None:
        try:
            self.send(mq.disconnect())
        finally:
            self.sock.close()


def mqtt_rows(reps: int, payload: bytes, workdir: Path) -> tuple[list[dict], list[dict], str, int]:
    broker = Mosquitto(workdir / "mosquitto", tls=True).start()
    try:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.load_verify_locations(str(broker.certs["ca"]))
        client_id = os.urandom(8).hex()
        topic = f"d/{client_id}/rq"
        # setup (not counted): persistent session with a QoS 1 subscription, then offline
        m = TlsMqtt(broker.port, ctx)
        m.connect(client_id, clean=False)
        m.send(mq.subscribe(1, [(topic, 1)]))
        m.expect(mq.SUBACK)
        session = m.tls.session
        m.close()
        full, resumed = [], []
        for i in range(reps):
            for kind in ("full", "resumed"):
                pub = TlsMqtt(broker.port, ctx)  # the application publishes while the device sleeps
                pub.connect(os.urandom(8).hex(), clean=True)
                pub.send(mq.publish(topic, payload, qos=1, pid=1))
                pub.expect(mq.PUBACK)
                pub.close()
                m = TlsMqtt(broker.port, ctx, session if kind == "resumed" else None)
                present = m.connect(client_id, clean=False)
                assert present, "mosquitto lost the persistent session"
                flags, body = m.expect(mq.PUBLISH)
                _, pid, got, qos = mq.parse_publish(flags, body)
                assert got == payload and qos == 1
                m.send(mq.puback(pid))
                snap = m.c.close(m.sock)
                assert m.tls.session_reused == (kind == "resumed"), "TLS session resumption did not happen"
                snap["tls"] = f"{m.tls.version()} {m.tls.cipher()[0]}"
                session = m.tls.session or session
                m.close()
                (full if kind == "full" else resumed).append(snap)
        return full, resumed, broker.version(), len(topic)
    finally:
        broker.stop()


# ---- main ----------------------------------------------------------------------------

def median_row(snaps: list[dict]) -> dict:
    out = {}
    for k in ("payload_bytes", "sent", "received", "rtts", "segments", "wire_bytes_est", "ms", "writes", "reads",
              "tcp_info_bytes"):
        out[k] = statistics.median(s[k] for s in snaps)
    out["flights"] = snaps[0]["flights"]
    out["rtts_all_equal"] = len({s["rtts"] for s in snaps}) == 1
    out["bytes_all_equal"] = len({s["payload_bytes"] for s in snaps}) == 1
    return out


def edhoc_section(med: dict, efull: list[dict], esaved: list[dict]) -> dict:
    """Print our wakes beside EDHOC + OSCORE; return the figures, ratios and goals for RESULT."""
    for name, snaps in (("EDHOC + OSCORE", efull), ("OSCORE on saved context", esaved)):
        if len({(x["payload_bytes"], x["rtts"]) for x in snaps}) != 1:
            print(f"note: {name}: bytes or RTT varied between wakes (medians shown)")
    theirs = {"edhoc_oscore_full": {k: statistics.median(x[k] for x in efull)
                                    for k in ("sent", "received", "payload_bytes", "wire_bytes_est", "rtts")},
              "oscore_saved": {k: statistics.median(x[k] for x in esaved)
                               for k in ("sent", "received", "payload_bytes", "wire_bytes_est", "rtts")}}
    pairs = [("link_full_enc", "edhoc_oscore_full", "full, encrypted, X25519 FS"),
             ("link_full_enc_nofs", "edhoc_oscore_full", "full, encrypted, no FS"),
             ("link_full", "edhoc_oscore_full", "full, in clear, X25519 FS"),
             ("link_full_nofs", "edhoc_oscore_full", "full, in clear, no FS"),
             ("link_resumed_enc", "oscore_saved", "resumed, encrypted"),
             ("link_resumed", "oscore_saved", "resumed, in clear")]
    out, ratios, goals = [], {}, {}
    for ours, peer, label in pairs:
        o, t = med[ours], theirs[peer]
        r = o["payload_bytes"] / t["payload_bytes"]
        ratios[ours] = round(r, 3)
        goals[ours] = {"bytes_le_1x": r <= 1.0, "rtts_le_theirs": o["rtts"] <= t["rtts"]}
        out.append([f"{label} vs {'EDHOC+OSCORE' if peer.startswith('edhoc') else 'OSCORE saved ctx'}",
                    int(o["payload_bytes"]), int(t["payload_bytes"]), f"{r:.3f}",
                    f"{int(o['wire_bytes_est'])} / {int(t['wire_bytes_est'])}", f"{int(o['rtts'])} vs {int(t['rtts'])}",
                    "yes" if goals[ours]["bytes_le_1x"] else "NO", "yes" if goals[ours]["rtts_le_theirs"] else "NO"])
    e = efull[0]
    print()
    print(f"EDHOC + OSCORE over CoAP/UDP (lakers-python, aiocoap; method 3, suite 2, kid references): EDHOC "
          f"message_1/2/3 {e['edhoc_messages']['message_1']}/{e['edhoc_messages']['message_2']}/"
          f"{e['edhoc_messages']['message_3']} B; datagrams full {e['flights']}, saved context {esaved[0]['flights']}")
    print(table(["ours vs theirs (same request)", "ours B", "theirs B", "ratio", "wire B est (ours/theirs)", "RTT",
                 "bytes <= 1x", "RTT <= theirs"], out))
    print("(bytes above TCP for us, above UDP for CoAP; wire est adds IPv4+TCP 52 B a segment for us, IPv4+UDP 28 B a "
          "datagram for CoAP; our RTT counts TCP's connect; theirs omits the sleeping server's own wake-up signal)")
    return {"rows": theirs, "edhoc_message_bytes": e["edhoc_messages"], "ratios_payload": ratios, "goals": goals}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=5, help="wakes per row (medians are reported)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (mosquitto config, certs, log)")
    a = ap.parse_args()
    t0 = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="edgistry-wake-"))

    backend = MemoryBackend(GATEWAY_SECRET)
    thread = LinkServerThread(LinkServer(backend, "127.0.0.1", 0))
    server = thread.start()
    try:
        rows: dict[str, list[dict]] = {"link_full_enc": [], "link_full_enc_nofs": [], "link_full": [],
                                       "link_full_nofs": [], "link_resumed": [], "link_resumed_enc": []}
        item = None
        for _ in range(a.reps):
            dev = LinkDevice(backend)
            item = dev.queue()
            rows["link_full"].append(dev.wake(server.address, resume=False, fs=True))
            dev.queue()
            rows["link_resumed"].append(dev.wake(server.address, resume=True, fs=True))
            dev2 = LinkDevice(backend)
            dev2.queue()
            rows["link_full_nofs"].append(dev2.wake(server.address, resume=False, fs=False))
            dev3 = LinkDevice(backend, encrypt=True)
            dev3.queue()
            rows["link_full_enc"].append(dev3.wake(server.address, resume=False, fs=True))
            dev3.queue()
            rows["link_resumed_enc"].append(dev3.wake(server.address, resume=True, fs=True))
            dev4 = LinkDevice(backend, encrypt=True)
            dev4.queue()
            rows["link_full_enc_nofs"].append(dev4.wake(server.address, resume=False, fs=False))
    finally:
        thread.stop()
    payload = wire.encode("DeviceRequest", item)  # the same application bytes over MQTT
    mfull, mres, version, topic_len = mqtt_rows(a.reps, payload, workdir)
    rows["mqtt_tls_full"], rows["mqtt_tls_resumed"] = mfull, mres
    tls = mfull[0]["tls"]
    efull, esaved = edhoc_peer.run(a.reps, payload, workdir) if edhoc_peer else ([], [])

    med = {k: median_row(v) for k, v in rows.items()}
    labels = {"link_full_enc": "edgistry link, full, encrypted (X25519 FS, 0.5-RTT)",
              "link_full_enc_nofs": "edgistry link, full, encrypted (no X25519, 0.5-RTT)",
              "link_full": "edgistry link, full, in clear (X25519 FS)",
              "link_full_nofs": "edgistry link, full, in clear (no X25519)",
              "link_resumed": "edgistry link, resumed (ticket), in clear",
              "link_resumed_enc": "edgistry link, resumed (ticket), encrypted",
              "mqtt_tls_full": "MQTT 3.1.1 + TLS 1.3, full TLS handshake",
              "mqtt_tls_resumed": "MQTT 3.1.1 + TLS 1.3, TLS resumption (PSK)"}
    out = []
    for k in ("link_full_enc", "link_full_enc_nofs", "link_full", "link_full_nofs", "link_resumed", "link_resumed_enc",
              "mqtt_tls_full", "mqtt_tls_resumed"):
        r = med[k]
        out.append([labels[k], int(r["sent"]), int(r["received"]), int(r["payload_bytes"]), int(r["segments"]),
                    int(r["wire_bytes_est"]), int(r["rtts"]), r["ms"], r["flights"]])
    print(f"wake -> first delivered request (median of {a.reps} wakes each; loopback; {version}; {tls})")
    print(f"request: DeviceRequest of {len(payload)} bytes (service sensor, method read, args {len(ARGS)} B, "
          f"request token {len(item['request_token'])} B); MQTT topic {topic_len} B, "
          f"client id 16 B, user/password {len(Mosquitto.USER)}+{len(Mosquitto.PASSWORD)} B")
    print()
    print(table(["row", "dev->gw B", "gw->dev B", "payload B", "segments", "wire B est", "RTT", "ms", "flights"],
                out))
    print()
    print("RTT: TCP connect = 1, then each client flight that waits for the server's reply = 1; the final ACK/PUBACK")
    print("needs no reply. Counting ends when the device has sent its ACK (link) / PUBACK (MQTT). payload B = TCP")
    print("payload both ways (TLS records included); segments = TCP_INFO segs_in + segs_out of the device socket")
    print("(SYN, pure ACKs included); wire B est = payload + 52 B IPv4/TCP(+timestamps) header a segment (+8 per SYN).")
    print()
    ratios = {
        "full_enc_vs_full_payload": med["link_full_enc"]["payload_bytes"] / med["mqtt_tls_full"]["payload_bytes"],
        "full_vs_full_payload": med["link_full"]["payload_bytes"] / med["mqtt_tls_full"]["payload_bytes"],
        "full_vs_full_wire": med["link_full"]["wire_bytes_est"] / med["mqtt_tls_full"]["wire_bytes_est"],
        "resumed_vs_resumed_payload": med["link_resumed"]["payload_bytes"] / med["mqtt_tls_resumed"]["payload_bytes"],
        "resumed_vs_resumed_wire": med["link_resumed"]["wire_bytes_est"] / med["mqtt_tls_resumed"]["wire_bytes_est"],
        "full_nofs_vs_full_payload": med["link_full_nofs"]["payload_bytes"] / med["mqtt_tls_full"]["payload_bytes"],
    }
    ratios = {k: round(v, 3) for k, v in ratios.items()}
    checks = {
        "bytes_full_le_third": ratios["full_vs_full_payload"] <= 1 / 3,
        "bytes_full_enc_le_third": ratios["full_enc_vs_full_payload"] <= 1 / 3,
        "bytes_resumed_le_third": ratios["resumed_vs_resumed_payload"] <= 1 / 3,
        "rtt_full_enc_fewer": med["link_full_enc"]["rtts"] < med["mqtt_tls_full"]["rtts"],
        "rtt_full_clear_fewer": med["link_full"]["rtts"] < med["mqtt_tls_full"]["rtts"],
        "rtt_resumed_fewer": med["link_resumed"]["rtts"] < med["mqtt_tls_resumed"]["rtts"],
    }
    summary = [
        ["full (encrypted) vs full", f"{ratios['full_enc_vs_full_payload']:.3f}",
         f"{med['link_full_enc']['wire_bytes_est'] / med['mqtt_tls_full']['wire_bytes_est']:.3f}",
         f"{int(med['link_full_enc']['rtts'])} vs {int(med['mqtt_tls_full']['rtts'])}",
         "yes" if checks["bytes_full_enc_le_third"] else "NO", "yes" if checks["rtt_full_enc_fewer"] else "NO"],
        ["full (in clear) vs full", f"{ratios['full_vs_full_payload']:.3f}", f"{ratios['full_vs_full_wire']:.3f}",
         f"{int(med['link_full']['rtts'])} vs {int(med['mqtt_tls_full']['rtts'])}",
         "yes" if checks["bytes_full_le_third"] else "NO", "yes" if checks["rtt_full_clear_fewer"] else "NO"],
        ["resumed vs resumed", f"{ratios['resumed_vs_resumed_payload']:.3f}",
         f"{ratios['resumed_vs_resumed_wire']:.3f}",
         f"{int(med['link_resumed']['rtts'])} vs {int(med['mqtt_tls_resumed']['rtts'])}",
         "yes" if checks["bytes_resumed_le_third"] else "NO", "yes" if checks["rtt_resumed_fewer"] else "NO"],
    ]
    print(table(["link / MQTT+TLS", "payload ratio", "wire ratio est", "RTT", "bytes <= 1/3", "fewer RTT"], summary))
    edhoc = edhoc_section(med, efull, esaved) if efull else None
    if not efull:
        print(NO_EDHOC)
    figures = {k: {"sent": int(v["sent"]), "received": int(v["received"]), "payload_bytes": int(v["payload_bytes"]),
                   "segments": int(v["segments"]), "wire_bytes_est": int(v["wire_bytes_est"]), "rtts": int(v["rtts"]),
                   "ms": v["ms"]} for k, v in med.items()}
    for k, v in med.items():
        if not (v["rtts_all_equal"] and v["bytes_all_equal"]):
            print(f"note: {k}: bytes or RTT varied between wakes (medians shown)")
    print(f"\n({time.monotonic() - t0:.1f} s)")
    print(result_line({"bench": "wake", "reps": a.reps, "tls": tls, "broker": version,
                       "request_bytes": len(payload), "rows": figures, "ratios": ratios, "targets_met": checks,
                       "revocation_bytes": {k: max(s.get("revocation_bytes", 0) for s in v) for k, v in rows.items()
                                            if k.startswith("link")},
                       "edhoc_oscore": edhoc}))
    if not a.keep:
        import shutil
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"kept {workdir}", file=sys.stderr)


if __name__ == "__main__":
    main()
