"""Helpers for the transport tests: a TCP relay that records every byte, extra gateways
written into a home's genesis (keys, TLS identities), and pinned gRPC channels."""

from __future__ import annotations

import json
import socket
import threading
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgistry.abci_app.txs import gateway_id_for
from edgistry.config import NodeConfig
from edgistry.gateway.tls import Pin, TlsIdentity, channel_credentials, channel_options, ensure_identity


class Recorder:
    """A loopback TCP relay to ``target`` that keeps what crosses it, each direction apart.

    What a passive attacker on the path sees: the test asserts on ``upstream``
    (client to server) and ``downstream`` bytes."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.upstream = bytearray()
        self.downstream = bytearray()
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._closed = False
        self._threads: list[threading.Thread] = []
        self._socks: list[socket.socket] = []
        self._spawn(self._accept)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _spawn(self, fn, *args) -> None:
        t = threading.Thread(target=fn, args=args, daemon=True)
        t.start()
        self._threads.append(t)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.target, timeout=10)
            self._socks += [client, server]
            self._spawn(self._pump, client, server, self.upstream)
            self._spawn(self._pump, server, client, self.downstream)

    def _pump(self, src: socket.socket, dst: socket.socket, log: bytearray) -> None:
        try:
            while data := src.recv(65536):
                with self._lock:
                    log.extend(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        for s in self._socks:
            s.close()
        for t in self._threads:
            t.join(5)


@dataclass
class FakePeer:
    """Another gateway as the registry knows it: an Ed25519 key and a TLS identity."""

    key: Ed25519PrivateKey
    tls: TlsIdentity

    @property
    def gateway_id(self) -> str:
        return gateway_id_for(self.key.public_key().public_bytes_raw())

    @classmethod
    def make(cls, directory: Path, name: str) -> FakePeer:
        directory.mkdir(parents=True, exist_ok=True)
        key = Ed25519PrivateKey.generate()
        return cls(key, ensure_identity(directory / f"{name}.key", directory / f"{name}.crt", key))

    def genesis_entry(self, peer_endpoint: str = "127.0.0.1:9") -> dict:
        return {"pubkey": self.key.public_key().public_bytes_raw().hex(), "endpoint": "127.0.0.1:9",
                "operator": "test", "tls_cert": self.tls.cert_der.hex(),
                "tls_cert_signature": self.tls.signature.hex(), "peer_endpoint": peer_endpoint}


def add_to_genesis(cfg: NodeConfig, *peers: FakePeer) -> None:
    """Register ``peers`` (with their certificates) in the genesis of a home that never ran."""
    doc = json.loads(cfg.genesis_path.read_text())
    doc["app_state"]["gateways"].extend(p.genesis_entry() for p in peers)
    cfg.genesis_path.write_text(json.dumps(doc, indent=2))


def pinned_channel(address: str, pin: Pin, identity: TlsIdentity | None = None) -> grpc.Channel:
    """A blocking channel that trusts only ``pin`` (presenting ``identity`` when given)."""
    return grpc.secure_channel(address, channel_credentials(pin, identity), options=channel_options(pin))
