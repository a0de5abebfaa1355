"""Where a client gets the one certificate it trusts for a gateway (its *pin*).

* a file: the gateway's ``keys/tls.crt``, the ``gateway.pem`` that ``edgistry pair``
  writes into the device home, or a copy of either (:func:`pin_from_file`);
* the registry (:func:`pin_from_registry`): the gateway's record, read from one or
  more nodes' RPC. One node means trusting that node. With several, every one
  must hold the same record (read again at a common height if they disagree):
  a lying node is caught unless all of them lie. The record's key must be its
  id's and must have signed the certificate, so a node cannot pass another
  gateway's certificate off as this one's.

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
from .transport import TLS, Target, parse_target

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


def _record(rpc: str, gateway_id: str | None, endpoint: Target | None, height: int,
            timeout: float) -> tuple[pb.GatewayRecord, int]:
    """The gateway's record at ``rpc`` (by id, else the one advertising ``endpoint``) and its height."""
    if gateway_id:
        code, value, at, log = _query(rpc, "/gateway", gateway_id.encode(), height, timeout)
        if code:
            raise PinMismatch(f"the registry at {rpc} holds no gateway {gateway_id} ({log})")
        return pb.GatewayRecord.FromString(value), at
    code, value, at, log = _query(rpc, "/gateways", b"", height, timeout)
    if code:
        raise PinMismatch(f"cannot list gateways at {rpc}: {log}")
    found = [g for g in pb.GatewayList.FromString(value).gateways if _same(g.endpoint, endpoint)]
    if len(found) != 1:
        what = "no gateway" if not found else f"{len(found)} gateways"
        raise PinMismatch(f"{what} in the registry at {rpc} advertise{'s' if not found else ''} {endpoint}: "
                          "name the gateway by its id (gateway_id= / --gateway-id)")
    return found[0], at


def _same(endpoint: str, target: Target | None) -> bool:
    try:
        return target is not None and parse_target(endpoint) == target
    except ConfigError:
        return False


def _key(rec: pb.GatewayRecord) -> tuple[str, bytes, bytes, bytes]:
    return rec.id, rec.pubkey, rec.tls_cert, rec.tls_cert_signature


def pin_from_registry(rpcs: str | Sequence[str], *, gateway_id: str | None = None,
                      endpoint: str | Target | None = None, timeout: float = REGISTRY_TIMEOUT_S) -> Pin:
    """The pin of a gateway from the registry at every node of ``rpcs`` (all must agree).

    The gateway is named by ``gateway_id``, else found as the one record whose
    endpoint is ``endpoint``. Raises :class:`PinMismatch` when a node cannot be
    read, holds no such gateway or disagrees with another, and :class:`ConfigError`
    when the record's certificate is not bound to its key."""
    urls = [rpcs] if isinstance(rpcs, str) else list(rpcs)
    if not urls:
        raise ConfigError("give at least one registry RPC URL")
    if not gateway_id and endpoint is None:
        raise ConfigError("name the gateway: gateway_id= or its endpoint")
    target = parse_target(endpoint) if isinstance(endpoint, str) else endpoint
    answers = [_record(url, gateway_id, target, 0, timeout) for url in urls]
    if len({_key(rec) for rec, _ in answers}) > 1:  # a record may have changed between reads: ask at one height
        ids = sorted({rec.id for rec, _ in answers})
        common = min(at for _, at in answers)
        if len(ids) == 1:
            try:
                answers = [_record(url, ids[0], None, common, timeout) for url in urls]
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
          "gateway.pem `edgistry pair` writes; or tls_from_registry='http://NODE:26657'), or give tls=TLS(...); "
          "insecure=True speaks plaintext to a gateway run with --insecure (tokens to loopback only)")


def choose_tls(target: Target, *, tls: TLS | None = None, pin: str | os.PathLike | Pin | None = None,
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
        return TLS.pinned(pin_from_registry(tls_from_registry, gateway_id=gateway_id, endpoint=target))
    if tls is None and not insecure:
        raise ConfigError(NO_TLS)
    return tls
