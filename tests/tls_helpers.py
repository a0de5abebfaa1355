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


class TlsMitm:
    """An active attacker between a client and a gateway: it ends the client's TLS with a
    certificate of its own, opens its own TLS to the gateway, and relays the bytes."""

    def __init__(self, target: tuple[str, int], identity: TlsIdentity, workdir: Path) -> None:
        import asyncio
        import ssl

        cert, key = workdir / "mitm.crt", workdir / "mitm.key"
        cert.write_bytes(identity.cert_pem)
        key.write_bytes(identity.key_pem)
        self._server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._server_ctx.load_cert_chain(cert, key)
        self._server_ctx.set_alpn_protocols(["h2"])
        self._client_ctx = ssl.create_default_context()
        self._client_ctx.check_hostname = False
        self._client_ctx.verify_mode = ssl.CERT_NONE
        self._client_ctx.set_alpn_protocols(["h2"])
        self.target = target
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self._thread.start()
        assert ready.wait(10)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _run(self, ready: threading.Event) -> None:
        import asyncio

        asyncio.set_event_loop(self.loop)

        async def pipe(reader, writer) -> None:
            try:
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                writer.close()

        async def handle(reader, writer) -> None:
            try:
                up_reader, up_writer = await asyncio.open_connection(*self.target, ssl=self._client_ctx,
                                                                     server_hostname="gateway")
            except OSError:
                writer.close()
                return
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

        async def start() -> None:
            self._server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=self._server_ctx)
            self.port = self._server.sockets[0].getsockname()[1]
            ready.set()

        self.loop.run_until_complete(start())
        self.loop.run_forever()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self._server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


class LyingRegistry:
    """A node RPC that answers ``abci_query`` for /gateway and /gateways with the records it is
    given (what a compromised or stale node would serve); nothing else."""

    def __init__(self, records: list, height: int = 1) -> None:
        import base64
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        from edgistry.proto import registry_pb2 as pb

        def answer(path: str, data: bytes) -> dict:
            if path == "/gateways":
                value = pb.GatewayList(gateways=records).SerializeToString()
            else:
                found = [r for r in records if r.id.encode() == data]
                if not found:
                    return {"code": 43, "log": "no gateway", "height": str(height)}
                value = found[0].SerializeToString()
            return {"code": 0, "value": base64.b64encode(value).decode(), "height": str(height)}

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                params = body.get("params", {})
                result = {"response": answer(params.get("path", ""), bytes.fromhex(params.get("data", "")))}
                out = json.dumps({"jsonrpc": "2.0", "id": body.get("id"), "result": result}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
