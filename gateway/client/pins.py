"""Where a client gets the one certificate it trusts for a gateway (its *pin*).

* a file: the gateway's ``keys/tls.crt``, the ``gateway.pem`` that ``edgistry pair``
  writes into the device home, or a copy of either (:func:`pin_from_file`);
* the registry (:func:`pin_from_registry`): the record of the gateway named by its
  id, read from one or more nodes' RPC. One node means trusting that node. With
  several, every one must hold the same record (read again at a common height if
  they disagree): a lying node is caught unless all of them lie. The record's key
  must be its id's (the id is a hash of the key) and must have signed the
  certificate, so no one can pass another certificate off as this gateway's.
  Never by endpoint: the node RPC is plain HTTP, and a record found by endpoint can
  be one that a node, or anyone on the way to it, made up (an id of its own, a key
  and certificate of its own, all consistent) for a gateway it then answers for.

There is no public CA: gRPC gets the pinned certificate as its only root and
the gateway's name (``<id>.gateway.edgistry``) as the name to check.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Sequence

from ...chain import ChainError, call
from ...proto import registry_pb2 as pb
from ..tls import Pin, PinError, fingerprint
from .errors import ConfigError
from .transport import TLS

REGISTRY_TIMEOUT_S = 10.0


class PinMismatch(ConfigError):
    """The registry nodes asked do not agree on the gateway's certificate, or none holds it."""


def pin_from_file(path: str | os.PathLike) -> Pin:
    """The pin in a PEM file (a gateway certificate); :class:`ConfigError` when it is not one."""
    try:
        return Pin.from_file(path)
    except PinError as exc:
        raise ConfigError(f"pin {path}: {exc}") from exc


def _query(rpc: str, path: str, data: bytes, height: int, timeout: float) -> tuple[int, bytes, int, str]:
    url = rpc if "://" in rpc else "http://" + rpc
    try:
        res = call(url, "abci_query", timeout, path=path, data=data.hex(), height=str(height), prove=False)["response"]
    except ChainError as exc:
        raise PinMismatch(f"cannot read the registry at {rpc}: {exc}") from exc
    return (int(res.get("code", 0)), base64.b64decode(res.get("value") or ""), int(res.get("height", 0)),
            res.get("log", ""))


def _record(rpc: str, gateway_id: str, height: int, timeout: float) -> tuple[pb.GatewayRecord, int]:
    """The record of gateway ``gateway_id`` at ``rpc``, and its height."""
    code, value, at, log = _query(rpc, "/gateway", gateway_id.encode(), height, timeout)
    if code:
        raise PinMismatch(f"the registry at {rpc} holds no gateway {gateway_id} ({log})")
    rec = pb.GatewayRecord.FromString(value)
    if rec.id != gateway_id:
        raise PinMismatch(f"the registry at {rpc} answered gateway {rec.id[:16]} for {gateway_id}")
    return rec, at


def _key(rec: pb.GatewayRecord) -> tuple[str, bytes, bytes, bytes]:
    return rec.id, rec.pubkey, rec.tls_cert, rec.tls_cert_signature


NEEDS_ID = ("pinning from the registry needs the gateway's id (gateway_id= / --gateway-id; `edgistry gateway "
            "info` and `edgistry pair` print it): a record found by endpoint could be one a node, or anyone on "
            "the way to it, made up for a gateway of its own")


def pin_from_registry(rpcs: str | Sequence[str], *, gateway_id: str | None = None,
                      timeout: float = REGISTRY_TIMEOUT_S) -> Pin:
    """The pin of gateway ``gateway_id`` from the registry at every node of ``rpcs`` (all
    must agree). Raises :class:`PinMismatch` when a node cannot be read, holds no such
    gateway or disagrees with another, and :class:`ConfigError` when no id is given or
    the record's certificate is not bound to its key (or its key to the id)."""
    urls = [rpcs] if isinstance(rpcs, str) else list(rpcs)
    if not urls:
        raise ConfigError("give at least one registry RPC URL")
    if not gateway_id:
        raise ConfigError(NEEDS_ID)
    answers = [_record(url, gateway_id, 0, timeout) for url in urls]
    if len({_key(rec) for rec, _ in answers}) > 1:  # a record may have changed between reads: ask at one height
        ids = sorted({rec.id for rec, _ in answers})
        common = min(at for _, at in answers)
        if len(ids) == 1:
            try:
                answers = [_record(url, ids[0], common, timeout) for url in urls]
            except PinMismatch:
                pass  # not there at that height on some node: still a disagreement
        if len({_key(rec) for rec, _ in answers}) > 1:
            seen = ", ".join(f"{url}: gateway {rec.id} certificate "
                             f"{fingerprint(rec.tls_cert)[:16] if rec.tls_cert else 'none'}"
                             for url, (rec, _) in zip(urls, answers))
            raise PinMismatch(f"the registry nodes disagree about the gateway ({seen}): refusing to trust any "
                              "of them")
    rec = answers[0][0]
    try:
        return Pin.from_record(rec.id, rec.pubkey, rec.tls_cert, rec.tls_cert_signature)
    except PinError as exc:
        raise ConfigError(f"the registry's record of gateway {rec.id}: {exc}") from exc


NO_TLS = ("gateways speak TLS: pin the gateway's certificate (pin='gateway.pem': its keys/tls.crt or the "
          "gateway.pem `edgistry pair` writes; or tls_from_registry='http://NODE:26657' with gateway_id='ID'), "
          "or give tls=TLS(...); "
          "insecure=True speaks plaintext to a gateway run with --insecure (tokens to loopback only)")


def choose_tls(*, tls: TLS | None = None, pin: str | os.PathLike | Pin | None = None,
               tls_from_registry: str | Sequence[str] | None = None, gateway_id: str | None = None,
               insecure: bool = False) -> TLS | None:
    """The TLS setting of a client from its options: at most one source; none only with ``insecure``."""
    given = [name for name, value in (("tls", tls), ("pin", pin), ("tls_from_registry", tls_from_registry))
             if value]
    if len(given) > 1:
        raise ConfigError(f"give one of tls, pin and tls_from_registry, not {' and '.join(given)}")
    if given and insecure:
        raise ConfigError(f"insecure=True is plaintext: it does not go with {given[0]}")
    if pin:
        return TLS.pinned(pin if isinstance(pin, Pin) else pin_from_file(pin))
    if tls_from_registry:
        return TLS.pinned(pin_from_registry(tls_from_registry, gateway_id=gateway_id))
    if tls is None and not insecure:
        raise ConfigError(NO_TLS)
    return tls
