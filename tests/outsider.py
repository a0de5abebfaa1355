"""An outsider of the registry: reads everything a node's RPC and snapshots show, then looks for secrets.

The outsider holds no key. It reads every block (``block``), every block's
results and events (``block_results``), every committed tx (``tx_search``),
the genesis, and every ABCI query path at every height (devices, each device,
each gateway's devices, gateways, revocations, the seal state, and the
by-cell path, which must refuse), plus the snapshot chunks a state-syncing
peer would be served. Every JSON string it gets is kept as text and, where it
decodes, as base64 and hex bytes (txs, query values, events), so protobuf
bytes are searched raw.

What it looks for, per device: each service type; the device's cell and every
parent cell (resolution 0 up to the cell's) as hex text (either case),
decimal text, big- and little-endian 8 bytes and protobuf varint; and the
coordinates as decimal text (several precisions) and IEEE doubles of both
byte orders. Pick coordinates whose text cannot be part of a timestamp
(an integer part above 59 or negative), and service types of 8+ characters.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h3

from edgistry.proto import registry_pb2 as pb

B64_RE = re.compile(r"^[A-Za-z0-9+/]{8,}={0,2}$")
HEX_RE = re.compile(r"^(0x)?[0-9a-fA-F]{8,}$")
Rpc = Callable[..., Any]  # rpc(method, **params) -> result; raises on a JSON-RPC error


@dataclass(frozen=True)
class KnownDevice:
    """What the test knows and the outsider must not learn."""

    types: tuple[str, ...]
    cell: int  # the coarse cell the gateway registers
    lat: float
    lon: float


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def cell_encodings(cell: int) -> dict[str, bytes]:
    text = h3.int_to_str(cell)
    return {"hex": text.encode(), "HEX": text.upper().encode(), "0xhex": f"0x{cell:x}".encode(),
            "decimal": str(cell).encode(), "be64": struct.pack(">Q", cell), "le64": struct.pack("<Q", cell),
            "varint": varint(cell)}


def needles(device: KnownDevice) -> dict[str, bytes]:
    """label -> bytes that must appear nowhere an outsider can read."""
    out = {f"type {t}": t.encode() for t in device.types}
    text = h3.int_to_str(device.cell)
    for res in range(h3.get_resolution(text) + 1):
        parent = h3.str_to_int(h3.cell_to_parent(text, res))
        out.update({f"cell res {res} {name}": enc for name, enc in cell_encodings(parent).items()})
    for axis, value in (("lat", device.lat), ("lon", device.lon)):
        for digits in (3, 4, 5, 6):
            out[f"{axis} {digits}dp"] = f"{value:.{digits}f}".encode()
        out[f"{axis} repr"] = repr(value).encode()
        for fmt in ("<d", ">d"):  # (4-byte floats would match random ciphertext by chance)
            out[f"{axis} {fmt}"] = struct.pack(fmt, value)
    return out


@dataclass
class Corpus:
    """Everything read, as byte strings, with where each came from."""

    items: list[tuple[str, bytes]] = field(default_factory=list)
    reads: dict[str, int] = field(default_factory=dict)  # source kind -> count

    def add(self, where: str, blob: bytes) -> None:
        self.items.append((where, blob))

    def add_json(self, kind: str, where: str, value: Any) -> None:
        """A JSON answer: its text, and every string in it decoded as base64 and hex where it decodes."""
        self.reads[kind] = self.reads.get(kind, 0) + 1
        self.add(where, json.dumps(value).encode())
        for s in _strings(value):
            self.add(where, s.encode())
            if B64_RE.match(s):
                try:
                    self.add(where, base64.b64decode(s, validate=True))
                except binascii.Error:
                    pass
            if HEX_RE.match(s):
                try:
                    self.add(where, bytes.fromhex(s.removeprefix("0x")))
                except ValueError:
                    pass

    def find(self, secrets: dict[str, bytes]) -> list[tuple[str, str]]:
        """(secret label, where) for every secret found anywhere."""
        return [(label, where) for label, needle in secrets.items() for where, blob in self.items if needle in blob]


def _strings(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


DEVICE_OPS = ("register_device", "update_device")


def device_ops(body: pb.TxBody) -> int:
    """How many device registrations or updates a tx carries: itself, or the operations of a
    batch (gateways send theirs in batches: the outsider reads every one)."""
    if body.WhichOneof("msg") == "batch":
        return sum(op.WhichOneof("op") in DEVICE_OPS for op in body.batch.ops)
    return int(body.WhichOneof("msg") in DEVICE_OPS)


def _query(rpc: Rpc, corpus: Corpus, path: str, data: bytes, height: int) -> dict:
    res = rpc("abci_query", path=path, data=data.hex(), height=str(height), prove=False)["response"]
    corpus.add_json("abci_query", f"abci_query {path} @{height}", res)
    return res


def _value(res: dict) -> bytes:
    return base64.b64decode(res.get("value") or "")


def _all_devices(rpc: Rpc, corpus: Corpus, path: str, q: pb.DeviceQuery, height: int) -> list[pb.DeviceRecord]:
    out = []
    while True:
        res = _query(rpc, corpus, path, q.SerializeToString(), height)
        if int(res.get("code", 0)):
            return out
        page = pb.DeviceList.FromString(_value(res))
        out.extend(page.devices)
        if not page.next:
            return out
        q.start_after = page.next


def read_everything(rpc: Rpc, corpus: Corpus, probe: Iterable[tuple[str, int]] = (),
                    has: Callable[[str], bool] = lambda method: True) -> dict[str, int]:
    """Read every block, result, tx and query path up to the latest height; return counts.

    ``probe``: (service type, cell) pairs to ask the by-cell path about (it must refuse).
    ``has(method)``: whether the node serves an RPC method (the embedded node serves fewer)."""
    latest = int(rpc("abci_info")["response"]["last_block_height"])
    status = rpc("status")
    corpus.add_json("status", "status", status)
    earliest = max(1, int(status["sync_info"].get("earliest_block_height") or 1))  # a state-synced node starts later
    if has("genesis"):
        corpus.add_json("genesis", "genesis", rpc("genesis"))
    counts = {"heights": latest - earliest + 1, "txs": 0, "register_device_txs": 0, "device_records": 0, "by_cell_refused": 0,
              "tx_search_txs": 0}
    for h in range(earliest, latest + 1):
        if has("block"):
            block = rpc("block", height=str(h))
            corpus.add_json("block", f"block {h}", block)
            for raw in block["block"]["data"].get("txs") or []:
                counts["txs"] += 1
                body = pb.TxBody.FromString(pb.SignedTx.FromString(base64.b64decode(raw)).body)
                counts["register_device_txs"] += device_ops(body)
        corpus.add_json("block_results", f"block_results {h}", rpc("block_results", height=str(h)))
        for rec in _all_devices(rpc, corpus, "/devices", pb.DeviceQuery(limit=1000), h):
            _query(rpc, corpus, "/device", pb.DeviceQuery(pseudonym=rec.pseudonym).SerializeToString(), h)
            counts["device_records"] += h == latest
    if has("tx_search"):  # height by height: the one query form CometBFT and the embedded node both take
        for h in range(earliest, latest + 1):
            page = 1
            while True:
                found = rpc("tx_search", query=f"tx.height={h}", prove=False, page=str(page), per_page="100")
                corpus.add_json("tx_search", f"tx_search {h} page {page}", found)
                counts["tx_search_txs"] += len(found.get("txs") or [])
                if page * 100 >= int(found["total_count"]):
                    break
                page += 1
    for path in ("/summary", "/gateways", "/revocations", "/seal", "/admins", "/validators"):
        _query(rpc, corpus, path, b"", 0)
    gateways = pb.GatewayList.FromString(_value(_query(rpc, corpus, "/gateways", b"", 0))).gateways
    for g in gateways:
        _query(rpc, corpus, "/gateway", g.id.encode(), 0)
        _all_devices(rpc, corpus, "/devices/by_gateway", pb.DeviceQuery(gateway_id=g.id), 0)
        _query(rpc, corpus, "/nonce", g.pubkey, 0)
    for stype, cell in probe:
        res = _query(rpc, corpus, "/devices/by_cell", pb.DeviceQuery(service_type=stype, cell=cell).SerializeToString(), 0)
        counts["by_cell_refused"] += int(res.get("code", 0)) != 0 and not res.get("value")
    return counts


def read_snapshots(homes: Iterable[Path], corpus: Corpus) -> int:
    """Add every snapshot chunk under the node homes (what a state-syncing peer is served)."""
    count = 0
    for home in homes:
        for chunk in sorted(Path(home).glob("**/snapshots/*/chunk-*")):
            corpus.add(f"snapshot {chunk}", chunk.read_bytes())
            count += 1
    corpus.reads["snapshot_chunks"] = count
    return count


def leaks(corpus: Corpus, devices: Iterable[KnownDevice]) -> list[tuple[str, str]]:
    found = []
    for device in devices:
        found += corpus.find(needles(device))
    return found


def read_block_store(path: Path, corpus: Corpus) -> dict[str, int]:
    """Every block the embedded node stored (txs and results): what a ``block`` RPC serves.
    For a node that does not serve ``block`` itself; read after the node stopped."""
    from edgistry.abci_app.embedded import BlockStore

    store = BlockStore(path)
    counts = {"stored_blocks": 0, "txs": 0, "register_device_txs": 0}
    try:
        for h in range(store.earliest(), store.height() + 1):
            block = store.load(h)
            if block is None:
                continue
            counts["stored_blocks"] += 1
            for raw in block.txs:
                corpus.add(f"stored block {h}", raw)
                counts["txs"] += 1
                body = pb.TxBody.FromString(pb.SignedTx.FromString(raw).body)
                counts["register_device_txs"] += device_ops(body)
            if block.results is not None:
                corpus.add(f"stored results {h}", block.results.SerializeToString())
    finally:
        store.close()
    corpus.reads["stored_blocks"] = counts["stored_blocks"]
    return counts
