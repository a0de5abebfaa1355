"""The device link's own protobuf codec agrees byte for byte with the generated code."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgistry.firmware.link import link_wire as wire
from edgistry.firmware.link.link_errors import DecodeError, FrameTooLarge
from edgistry.firmware.link.link_crypto import MAC_SIZE
from edgistry.gateway.link import frame_sizes as fs
from edgistry.proto import link_pb2 as pb

U32 = st.integers(0, 2**32 - 1)
U64 = st.integers(0, 2**64 - 1)
I64 = st.integers(-(2**63), 2**63 - 1)
B = st.binary(max_size=40)
S = st.text(max_size=20)

KIND = {wire.UINT: None, wire.INT64: I64, wire.BOOL: st.booleans(), wire.BYTES: B,
        wire.STRING: S}


def strategy(name: str) -> st.SearchStrategy[dict]:
    """Random dicts for message ``name``, every field (defaults included)."""
    fields = {}
    for _, field, kind, repeated in wire.SCHEMAS[name]:
        if kind == wire.UINT:
            s = U64 if (name, field) in wire._UINT64_FIELDS else U32
        elif kind in KIND:
            s = KIND[kind]
        else:
            s = strategy(kind)
        fields[field] = st.lists(s, max_size=3) if repeated else s
    return st.fixed_dictionaries(fields)


def to_pb(name: str, msg: dict):
    cls = getattr(pb, name)
    kwargs = {}
    for _, field, kind, repeated in wire.SCHEMAS[name]:
        v = msg[field]
        if kind in wire.SCHEMAS:
            v = [to_pb(kind, x) for x in v] if repeated else to_pb(kind, v)
        kwargs[field] = v
    return cls(**kwargs)


def from_pb(name: str, m) -> dict:
    out = {}
    for _, field, kind, repeated in wire.SCHEMAS[name]:
        v = getattr(m, field)
        if kind in wire.SCHEMAS:
            v = [from_pb(kind, x) for x in v] if repeated else from_pb(kind, v)
        elif repeated:
            v = list(v)
        out[field] = v
    return out


@pytest.mark.parametrize("name", sorted(wire.SCHEMAS))
def test_schema_matches_proto(name: str) -> None:
    """Every field of link.proto is in the codec's table with the same number."""
    desc = getattr(pb, name).DESCRIPTOR
    ours = {f: n for n, f, _, _ in wire.SCHEMAS[name]}
    assert ours == {f.name: f.number for f in desc.fields}


@pytest.mark.parametrize("name", sorted(wire.SCHEMAS))
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_bytes_match_generated_code(name: str, data) -> None:
    """encode() gives exactly SerializeToString(); decode() reads it back."""
    msg = data.draw(strategy(name))
    ref = to_pb(name, msg).SerializeToString(deterministic=True)
    assert wire.encode(name, msg) == ref
    assert wire.decode(name, ref) == from_pb(name, getattr(pb, name).FromString(ref))
    assert wire.decode(name, ref) == msg


def test_unknown_fields_skipped_and_truncation_rejected() -> None:
    """Unknown fields of every wire type are skipped; truncated input is an error."""
    body = wire.encode("Bye", {"sleep_s": 7})
    extra = bytes([0x10 | 0, 5, 0x1A, 2, 1, 2, 0x25, 1, 2, 3, 4, 0x29]) + bytes(8)  # 2:varint 3:len 4:fixed32 5:fixed64
    assert wire.decode("Bye", body + extra) == {"sleep_s": 7}
    hello = wire.encode("Hello", {"link_id": b"x" * 16, "nonce": b"n" * 16})
    for cut in range(1, len(hello)):
        try:
            wire.decode("Hello", hello[:cut])
        except DecodeError:
            continue
    with pytest.raises(DecodeError):
        wire.decode("Hello", hello[:-1])
    with pytest.raises(DecodeError):
        wire.decode("Bye", bytes([0x0A, 1, 0]))  # sleep_s with the wrong wire type


def test_frame_reader_partial_and_oversized() -> None:
    """Frames arrive in pieces; an oversized length is refused before its body arrives."""
    frames = [wire.encode_frame(wire.BYE, i, b"x" * i, b"m" * 16) for i in (1, 300, 5000)]
    data = b"".join(frames)
    r = wire.FrameReader()
    got = []
    for i in range(0, len(data), 7):
        r.feed(data[i:i + 7])
        while (f := r.next_frame()) is not None:
            got.append(f)
    assert [f["seq"] for f in got] == [1, 300, 5000] and not r._buf
    big = bytearray()
    wire.put_uvarint(big, wire.MAX_LINK_FRAME + 1)
    r = wire.FrameReader()
    r.feed(bytes(big))
    with pytest.raises(FrameTooLarge):
        r.next_frame()
    r = wire.FrameReader()
    r.feed(b"\xff\xff\xff\xff")
    with pytest.raises(FrameTooLarge):
        r.next_frame()
    with pytest.raises(FrameTooLarge):
        wire.encode_frame(wire.REQUESTS, 1, bytes(wire.MAX_LINK_FRAME))


@settings(max_examples=200, deadline=None)
@given(items=st.lists(strategy("DeviceRequest"), max_size=4), tags=st.lists(st.binary(max_size=300), max_size=4),
       now_ms=I64, big=st.integers(0, 20000))
def test_requests_frame_size_is_the_frame_at_its_widest(items, tags, now_ms, big) -> None:
    """requests_frame_size (from item_size and tag_size) is exactly the LinkFrame of a REQUESTS
    with ``more`` set at the widest sequence number, and never below the frame at any other."""
    if items:
        items[0]["args"] = bytes(big)  # push the body length across varint boundaries
    parts = sum(map(fs.item_size, items)) + sum(map(fs.tag_size, tags))
    body = wire.encode("Requests", {"items": items, "more": True, "revoked": tags, "gateway_now_ms": now_ms})
    for seq, exact in ((2**64 - 1, True), (1, False)):
        framed = wire.encode_frame(wire.REQUESTS, seq, body, bytes(MAC_SIZE))
        length, start = wire.get_uvarint(framed, 0, len(framed))
        assert length == len(framed) - start
        predicted = fs.requests_frame_size(parts, now_ms)
        assert predicted == length if exact else predicted >= length


@pytest.mark.parametrize("n", [0, 1, 127, 128, 16383, 16384, 2**63, 2**64 - 1])
def test_uvarint_size_matches_the_writer(n: int) -> None:
    """uvarint_size counts exactly the bytes put_uvarint writes, at every width boundary."""
    out = bytearray()
    wire.put_uvarint(out, n)
    assert wire.uvarint_size(n) == len(out)
