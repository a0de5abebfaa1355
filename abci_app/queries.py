"""ABCI Query paths of the registry, each answering at a height.

=====================  ==============================  ====================
path                   data                            value
=====================  ==============================  ====================
/summary               -                               NodeSummary
/gateways              -                               GatewayList
/gateway               gateway id (utf-8)              GatewayRecord
/devices               DeviceQuery (paging)            DeviceList
/devices/by_cell       -                               MOVED_TO_GATEWAYS (fields are sealed)
/devices/by_gateway    DeviceQuery(gateway_id)         DeviceList
/device                DeviceQuery(pseudonym)          DeviceRecord
/revocations           DeviceQuery (paging)            RevocationList
/revocation            32-byte tag hash (older: tag)   RevocationRecord
/nonce                 32-byte signer key              be64 last nonce
/admins, /validators   -                               KeyList
/seal                  -                               SealState (epochs, wraps)
/manifests             DeviceQuery (paging; gateway_id  ManifestList (sealed catalog slots)
                       optional: one gateway's)
/manifest              DeviceQuery(gateway_id, slot)   ManifestRecord
=====================  ==============================  ====================

``height`` 0 means the latest committed height; the answer's ``height`` says
which height was read. Lists page with ``DeviceQuery.limit`` and the
``next`` cursor of the previous page. A device's services, cell, policy and
duty cycle are sealed (abci_app/sealing.py): queries by service type or cell
are the gateways' discovery, not the chain's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from google.protobuf.message import DecodeError, Message

from . import keys, sealing
from .codes import CODESPACE, Code, QueryError
from .store import HeightReader, Store, StoreError
from ..proto import abci_pb2 as abci
from ..proto import registry_pb2 as pb

DEFAULT_PAGE = 100
MAX_PAGE = 1000


def _parse(cls: type[Message], data: bytes) -> Message:
    msg = cls()
    try:
        msg.ParseFromString(data)
    except DecodeError as exc:
        raise QueryError(Code.BAD_QUERY, f"query data is not a {cls.__name__}: {exc}") from exc
    return msg


def _page(q: pb.DeviceQuery) -> int:
    return min(q.limit or DEFAULT_PAGE, MAX_PAGE)


def _cursor(prefix: bytes, q: pb.DeviceQuery) -> bytes:
    if q.start_after and not q.start_after.startswith(prefix):
        raise QueryError(Code.BAD_QUERY, "start_after is not a cursor of this query")
    return q.start_after


def _take(items: Iterator[tuple[bytes, bytes]], limit: int) -> tuple[list[tuple[bytes, bytes]], bytes]:
    out = []
    for item in items:
        if len(out) == limit:
            return out, out[-1][0]
        out.append(item)
    return out, b""


def _devices_via_index(r: HeightReader, prefix: bytes, q: pb.DeviceQuery) -> pb.DeviceList:
    page, nxt = _take(r.scan(prefix, _cursor(prefix, q)), _page(q))
    result = pb.DeviceList(next=nxt)
    for key, _ in page:
        raw = r.get(keys.device(key[-keys.PSEUDONYM_LEN :]))
        if raw is not None:
            result.devices.add().ParseFromString(raw)
    return result


def q_devices_by_cell(r: HeightReader, data: bytes) -> Message:
    raise QueryError(Code.MOVED_TO_GATEWAYS, "services and cells are sealed on chain: ask a gateway's discovery "
                                             "(edgistry discover TYPE --near LAT,LON --gateway HOST:PORT)")


def q_manifests(r: HeightReader, data: bytes) -> Message:
    q = _parse(pb.DeviceQuery, data)
    if q.gateway_id and len(q.gateway_id) != keys.GATEWAY_ID_LEN:
        raise QueryError(Code.BAD_QUERY, "gateway_id must be 32 hex characters")
    prefix = keys.manifest(q.gateway_id) if q.gateway_id else keys.MANIFEST
    page, nxt = _take(r.scan(prefix, _cursor(prefix, q)), _page(q))
    return pb.ManifestList(manifests=[pb.ManifestRecord.FromString(v) for _, v in page], next=nxt)


def q_manifest(r: HeightReader, data: bytes) -> Message:
    q = _parse(pb.DeviceQuery, data)
    if len(q.gateway_id) != keys.GATEWAY_ID_LEN:
        raise QueryError(Code.BAD_QUERY, "gateway_id must be 32 hex characters")
    return _record(r, keys.manifest(q.gateway_id, q.slot), pb.ManifestRecord, f"catalog slot {q.slot}")


def q_seal(r: HeightReader, data: bytes) -> Message:
    return sealing.seal_state(r)


def q_devices_by_gateway(r: HeightReader, data: bytes) -> Message:
    q = _parse(pb.DeviceQuery, data)
    if len(q.gateway_id) != keys.GATEWAY_ID_LEN:
        raise QueryError(Code.BAD_QUERY, "gateway_id must be 32 hex characters")
    return _devices_via_index(r, keys.device_by_gateway(q.gateway_id), q)


def q_devices(r: HeightReader, data: bytes) -> Message:
    q = _parse(pb.DeviceQuery, data)
    page, nxt = _take(r.scan(keys.DEVICE, _cursor(keys.DEVICE, q)), _page(q))
    result = pb.DeviceList(next=nxt)
    for _, raw in page:
        result.devices.add().ParseFromString(raw)
    return result


def q_device(r: HeightReader, data: bytes) -> Message:
    q = _parse(pb.DeviceQuery, data)
    return _record(r, keys.device(q.pseudonym), pb.DeviceRecord, f"device {q.pseudonym.hex()}")


def q_gateways(r: HeightReader, data: bytes) -> Message:
    return pb.GatewayList(gateways=[pb.GatewayRecord.FromString(v) for _, v in r.scan(keys.GATEWAY)])


def q_gateway(r: HeightReader, data: bytes) -> Message:
    return _record(r, keys.gateway(data.decode(errors="replace")), pb.GatewayRecord, "gateway")


def q_revocations(r: HeightReader, data: bytes) -> Message:
    q = _parse(pb.DeviceQuery, data)
    page, nxt = _take(r.scan(keys.REVOCATION, _cursor(keys.REVOCATION, q)), _page(q))
    return pb.RevocationList(revocations=[pb.RevocationRecord.FromString(v) for _, v in page], next=nxt)


def q_revocation(r: HeightReader, data: bytes) -> Message:
    return _record(r, keys.revocation(data), pb.RevocationRecord, "revocation")


def _record(r: HeightReader, key: bytes, cls: type[Message], what: str) -> Message:
    raw = r.get(key)
    if raw is None:
        raise QueryError(Code.NOT_FOUND, f"no {what}")
    return cls.FromString(raw)


def q_nonce(r: HeightReader, data: bytes) -> bytes:
    return r.get(keys.nonce(data)) or keys.be64(0)


def q_admins(r: HeightReader, data: bytes) -> Message:
    return pb.KeyList(keys=[k[len(keys.ADMIN) :] for k, _ in r.scan(keys.ADMIN)])


def q_validators(r: HeightReader, data: bytes) -> Message:
    return pb.KeyList(keys=[k[len(keys.VALIDATOR) :] for k, _ in r.scan(keys.VALIDATOR)])


def q_summary(r: HeightReader, data: bytes, store: Store, chain_id: str) -> Message:
    return pb.NodeSummary(
        height=r.height,
        app_hash=store.app_hash_at(r.height) or b"",
        gateways=sum(1 for _ in r.scan(keys.GATEWAY)),
        chain_id=chain_id,
        oldest_height=store.oldest_height,
        manifest_ref_height=sealing.read_manifest_ref_height(r) or 0,
    )


PATHS: dict[str, Callable[[HeightReader, bytes], Message | bytes]] = {
    "/gateways": q_gateways,
    "/gateway": q_gateway,
    "/devices": q_devices,
    "/devices/by_cell": q_devices_by_cell,
    "/devices/by_gateway": q_devices_by_gateway,
    "/device": q_device,
    "/revocations": q_revocations,
    "/revocation": q_revocation,
    "/nonce": q_nonce,
    "/admins": q_admins,
    "/validators": q_validators,
    "/seal": q_seal,
    "/manifests": q_manifests,
    "/manifest": q_manifest,
}


def answer_query(store: Store, chain_id: str, req: abci.RequestQuery) -> abci.ResponseQuery:
    """Answer one ABCI query; failures are codes, never exceptions."""
    try:
        if req.path != "/summary" and req.path not in PATHS:
            raise QueryError(Code.UNKNOWN_QUERY_PATH, f"unknown query path {req.path!r}; known: {', '.join(sorted(PATHS))}, /summary")
        if req.height < 0:
            raise QueryError(Code.HEIGHT_UNAVAILABLE, "height cannot be negative")
        try:
            reader = store.reader(req.height)
        except StoreError as exc:
            raise QueryError(Code.HEIGHT_UNAVAILABLE, str(exc)) from exc
        with reader:
            if req.path == "/summary":
                value = q_summary(reader, req.data, store, chain_id)
            else:
                value = PATHS[req.path](reader, req.data)
            height = reader.height
    except QueryError as err:
        return abci.ResponseQuery(code=int(err.code), log=err.log, codespace=CODESPACE, height=store.height)
    raw = value if isinstance(value, bytes) else value.SerializeToString(deterministic=True)
    return abci.ResponseQuery(code=0, key=req.path.encode(), value=raw, height=height)
