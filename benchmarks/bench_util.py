"""Shared pieces of the link benchmarks: a throwaway mosquitto, TCP accounting, tables.

* :class:`Mosquitto` writes a config (optionally TLS 1.3 with a fresh ECDSA
  P-256 CA and server certificate made with ``cryptography``, a password file,
  persistence on) into a temp dir, starts the Debian ``mosquitto`` binary on a
  free loopback port in its own process group and stops it by pid.
* :func:`tcp_info` reads Linux ``TCP_INFO`` (segments in/out, bytes) so wire
  bytes can be estimated with TCP/IP headers.
* :class:`Counter` counts payload bytes, reads/writes and round trips of one
  client connection (definition in :class:`Counter`).
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from contextlib import suppress
from pathlib import Path

# the tests' process helpers (free ports, bounded waits) serve the benchmarks too
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from proc_helpers import free_port, wait_for_port  # noqa: E402

# IPv4 (20) + TCP with the timestamp option Linux uses by default (20 + 12); SYN / SYN-ACK
# carry more options (MSS, SACK-permitted, window scale: +8) which the estimate adds.
HEADER_BYTES = 52
SYN_EXTRA = 8


def stop_pid(proc: subprocess.Popen, timeout: float = 5.0) -> None:
    """SIGTERM the process group we created (by its pid), SIGKILL after ``timeout``."""
    if proc.poll() is None:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout)


# ---- TCP accounting ----------------------------------------------------------------

def tcp_info(sock: socket.socket) -> dict:
    """Linux struct tcp_info: bytes_acked (includes the SYN's 1), bytes_received, segs_out, segs_in."""
    raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    acked, received = struct.unpack_from("QQ", raw, 120)
    segs_out, segs_in = struct.unpack_from("II", raw, 136)
    return {"bytes_acked": acked, "bytes_received": received, "segs_out": segs_out, "segs_in": segs_in}


class Counter:
    """Accounting for one client connection, fed by the client's own I/O loop.

    Round trip (RTT): one client flight followed by a wait for the server's
    reply before the client can proceed. Counted as: the TCP connect (SYN ->
    SYN-ACK) is 1; afterwards, every read that returns data after the client
    has written something since its previous read adds 1 (several reads of
    the same server flight count once; the client's final write, which needs
    no reply, adds none).
    """

    def __init__(self) -> None:
        self.sent = self.received = 0
        self.writes = self.reads = 0
        self.rtts = 0
        self._wrote = False
        self.flights: list[str] = []  # "->123" / "<-456", for the table
        self.t0 = time.perf_counter()

    def connected(self) -> None:
        self.rtts += 1
        self.flights.append("SYN/SYN-ACK")

    def wrote(self, n: int) -> None:
        if not n:
            return
        self.sent += n
        self.writes += 1
        if self.flights and self.flights[-1].startswith("->"):
            self.flights[-1] = "->%d" % (int(self.flights[-1][2:]) + n)
        else:
            self.flights.append("->%d" % n)
        self._wrote = True

    def read(self, n: int) -> None:
        if not n:
            return
        self.received += n
        self.reads += 1
        if self._wrote:
            self.rtts += 1
            self._wrote = False
        if self.flights and self.flights[-1].startswith("<-"):
            self.flights[-1] = "<-%d" % (int(self.flights[-1][2:]) + n)
        else:
            self.flights.append("<-%d" % n)

    def close(self, sock: socket.socket) -> dict:
        """Snapshot (call at the moment the job is done, before closing)."""
        info = tcp_info(sock)
        segs = info["segs_out"] + info["segs_in"]
        wire = self.sent + self.received + segs * HEADER_BYTES + 2 * SYN_EXTRA
        return {"payload_bytes": self.sent + self.received, "sent": self.sent, "received": self.received,
                "rtts": self.rtts, "writes": self.writes, "reads": self.reads, "segments": segs,
                "segs_out": info["segs_out"], "segs_in": info["segs_in"], "wire_bytes_est": wire,
                "ms": round((time.perf_counter() - self.t0) * 1000, 2), "flights": " ".join(self.flights),
                "tcp_info_bytes": info["bytes_acked"] - 1 + info["bytes_received"]}


# ---- mosquitto -----------------------------------------------------------------------

def make_certs(d: Path) -> dict[str, Path]:
    """A throwaway CA and a server certificate for localhost/127.0.0.1 (ECDSA P-256: the
    smallest common choice, which favours MQTT+TLS in a byte count)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edgistry bench CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = {"ca": d / "ca.pem", "cert": d / "server.pem", "key": d / "server.key"}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths["key"].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    return paths


class Mosquitto:
    """A local mosquitto on a free loopback port (TLS 1.3 or plain TCP), persistence on."""

    USER, PASSWORD = "dev", "bench-password-1"

    def __init__(self, workdir: Path, tls: bool, password: bool = True, extra: str = "") -> None:
        self.binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not os.path.exists(self.binary):
            sys.exit("mosquitto not found: apt-get update && apt-get install -y mosquitto")
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.tls, self.password = tls, password
        self.port = free_port()
        self.certs = make_certs(self.dir) if tls else {}
        lines = [f"listener {self.port} 127.0.0.1", "persistence true", f"persistence_location {self.dir}/",
                 "autosave_interval 1800", "set_tcp_nodelay true", "max_queued_messages 100000", f"log_dest file {self.dir}/mosquitto.log",
                 "user root" if os.geteuid() == 0 else ""]
        if tls:
            lines += ["tls_version tlsv1.3", f"cafile {self.certs['ca']}", f"certfile {self.certs['cert']}",
                      f"keyfile {self.certs['key']}"]
        if password:
            pw = self.dir / "passwd"
            pw.write_text("")
            subprocess.run([shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd", "-b", str(pw),
                            self.USER, self.PASSWORD], check=True, capture_output=True)
            lines += ["allow_anonymous false", f"password_file {pw}"]
        else:
            lines += ["allow_anonymous true"]
        self.conf = self.dir / "mosquitto.conf"
        self.conf.write_text("\n".join(lines + [extra]) + "\n")
        self.proc: subprocess.Popen | None = None

    def start(self) -> Mosquitto:
        out = open(self.dir / "stdout.log", "ab")
        self.proc = subprocess.Popen([self.binary, "-c", str(self.conf)], stdout=out, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        wait_for_port(self.port, proc=self.proc)
        return self

    def version(self) -> str:
        out = subprocess.run([self.binary, "-h"], capture_output=True, text=True).stdout
        return out.splitlines()[0] if out else "mosquitto"

    def stop(self) -> None:
        if self.proc is not None:
            stop_pid(self.proc)


# ---- output ------------------------------------------------------------------------

def table(headers: list[str], rows: list[list], title: str = "") -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    fmt = lambda r: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    out = ([title] if title else []) + [fmt(cells[0]), "  ".join("-" * w for w in widths)] + [fmt(r) for r in cells[1:]]
    return "\n".join(out)


def result_line(obj: dict) -> str:
    return "RESULT " + json.dumps(obj, separators=(",", ":"), sort_keys=True)


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = min(len(s) - 1, max(0, int(round(p / 100 * (len(s) - 1)))))
    return s[k]


# ---- the sealed registry: device txs carry their fields sealed (docs/REGISTRY_PRIVACY.md) ----

BENCH_DATA_KEY = bytes(range(32, 64))  # epoch 1's data key in benchmark chains


def bench_seal_state():
    """Genesis seal state: epoch 1 of BENCH_DATA_KEY, wrapped to nobody (no gateway runs)."""
    from edgistry.gateway.discovery import sealbox
    from edgistry.proto import registry_pb2 as pb

    return pb.SealState(current_epoch=1, epochs=[pb.DataKeyEpoch(epoch=1, key_check=sealbox.key_check(BENCH_DATA_KEY))])


def sealed_device(cls, pseudonym: bytes, fields, slot: int | None = 0):
    """A RegisterDevice/UpdateDevice with ``fields`` (DeviceFields) sealed under BENCH_DATA_KEY, epoch 1
    (the nonce derived from the pseudonym: a benchmark's txs are the same bytes every run). With
    ``slot`` (the default, the form of chains with manifests by reference) the services are
    replaced by that catalog slot; None keeps them inline."""
    import hashlib

    from edgistry.gateway.discovery import sealbox
    from edgistry.proto import registry_pb2 as pb

    if slot is not None and fields.services:
        ref = pb.DeviceFields(cell=fields.cell, duty_cycle_s=fields.duty_cycle_s, manifest=slot + 1)
        ref.policy.CopyFrom(fields.policy)
        fields = ref
    nonce = hashlib.sha256(pseudonym).digest()[:12]
    return cls(pseudonym=pseudonym, sealed=sealbox.seal_fields(BENCH_DATA_KEY, 1, pseudonym, fields, nonce=nonce))


def sealed_manifest(gateway_id: str, slot: int, services, salt: bytes = b""):
    """A PutManifest of ``services`` (none: a free slot, as a cover write) for ``gateway_id``'s
    catalog, sealed under BENCH_DATA_KEY, epoch 1 (nonce derived from the arguments)."""
    import hashlib

    from edgistry.gateway.discovery import sealbox
    from edgistry.proto import registry_pb2 as pb

    nonce = hashlib.sha256(gateway_id.encode() + bytes([slot]) + salt).digest()[:12]
    manifest = pb.Manifest(services=list(services))
    return pb.PutManifest(slot=slot, sealed=sealbox.seal_manifest(BENCH_DATA_KEY, 1, gateway_id, slot, manifest,
                                                                  nonce=nonce))


def open_bench_epoch(url: str, admin) -> None:
    """Open epoch 1 of BENCH_DATA_KEY on a live chain with no sealing gateway (admin PutDataKey)."""
    import asyncio

    from edgistry.chain import ChainClient
    from edgistry.gateway.discovery import sealbox
    from edgistry.proto import registry_pb2 as pb

    async def go() -> None:
        async with ChainClient(url) as chain:
            await chain.submit(admin, pb.PutDataKey(epoch=1, key_check=sealbox.key_check(BENCH_DATA_KEY)))

    asyncio.run(go())
