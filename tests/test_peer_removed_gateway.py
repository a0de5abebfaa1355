"""A gateway removed from the registry is refused as a peer at once: the gateway's reaction
to a change in the registry's gateways (Gateway._gateways_changed) makes the peer
handler read every gateway's record afresh, rather than trust a cached one for its TTL.

The real ForwardChecker, Directory and signed forwards; the registry is a stand-in
answering ``/gateway`` queries (what the checker reads of the chain)."""

from __future__ import annotations

import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgistry.abci_app.txs import gateway_id_for
from edgistry.chain import QueryResult
from edgistry.gateway.api.peer import Directory, ForwardChecker, sign_forward
from edgistry.gateway.app import Gateway
from edgistry.gateway.errors import Unauthorized
from edgistry.gateway.tls import ensure_identity
from edgistry.proto import gateway_pb2 as gw
from edgistry.proto import registry_pb2 as pb


class Registry:
    def __init__(self) -> None:
        self.gateways: dict[str, pb.GatewayRecord] = {}

    async def query(self, path: str, data: bytes = b"", height: int = 0) -> QueryResult:
        assert path == "/gateway"
        rec = self.gateways.get(data.decode())
        return QueryResult(0, "", rec.SerializeToString(), 1) if rec else QueryResult(1, "not found", b"", 1)


class _Roots:
    certs: tuple = ()

    def update(self, records) -> bool:
        return False


async def test_a_removed_gateways_forwards_are_refused_once_the_registry_change_is_seen(tmp_path):
    key = Ed25519PrivateKey.generate()
    gid = gateway_id_for(key.public_key().public_bytes_raw())
    ident = ensure_identity(tmp_path / "k", tmp_path / "c", key)
    registry = Registry()
    registry.gateways[gid] = pb.GatewayRecord(id=gid, pubkey=key.public_key().public_bytes_raw(),
                                              tls_cert=ident.cert_der, tls_cert_signature=ident.signature)
    directory = Directory(registry)
    checker = ForwardChecker(directory)
    req = gw.ResultRequest(request_id="00" * 16, token=b"t")
    now = int(time.time() * 1000)
    await checker.check(sign_forward(key, gid, "result", result=req, now_ms=now), peer_cert=ident.cert_der)
    del registry.gateways[gid]  # RemoveGateway committed
    app = object.__new__(Gateway)  # only what the reaction touches
    app.directory, app.peer_roots = directory, _Roots()
    Gateway._gateways_changed(app, list(registry.gateways.values()))
    with pytest.raises(Unauthorized, match="not in the registry"):
        await checker.check(sign_forward(key, gid, "result", result=req, now_ms=now + 1), peer_cert=ident.cert_der)
