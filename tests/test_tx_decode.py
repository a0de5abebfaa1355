"""decode_tx's shortcut for the outer SignedTx (txs._split_signed) against the full
protobuf decode it skips: the same verdict, fields and error text for any bytes."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from edgistry.abci_app import txs
from edgistry.abci_app.codes import TxError
from edgistry.proto import registry_pb2 as pb

KEY = Ed25519PrivateKey.from_private_bytes(b"\x07" * 32)


def uvarint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def outcome(raw: bytes) -> tuple:
    try:
        d = txs.decode_tx(raw)
    except TxError as err:
        return ("error", err.code, err.log)
    return ("ok", d.raw_body, d.signer, d.signature, d.chain_id, d.nonce, d.kind, d.msg.SerializeToString())


def both(raw: bytes, monkeypatch: pytest.MonkeyPatch) -> tuple[tuple, tuple]:
    fast = outcome(raw)
    with monkeypatch.context() as m:
        m.setattr(txs, "_split_signed", lambda raw: None)  # the full decode only
        full = outcome(raw)
    return fast, full


def signed(body_len: int) -> bytes:
    """A signed RegisterGateway tx whose body is ``body_len`` bytes (the operator pads it)."""
    for k in range(txs.MAX_OPERATOR + 1):
        raw = txs.sign_tx(KEY, "c", 1, pb.RegisterGateway(pubkey=b"\x01" * 32, endpoint="h:1", operator="x" * k))
        if len(pb.SignedTx.FromString(raw).body) == body_len:
            return raw
    raise AssertionError(f"no body of {body_len} bytes")


@pytest.mark.parametrize("body_len", [46, 126, 127, 128, 129, 160])
def test_a_canonical_tx_takes_the_shortcut_at_every_length_bound(body_len, monkeypatch):
    raw = signed(body_len)
    split = txs._split_signed(raw)
    tx = pb.SignedTx.FromString(raw)
    assert split == (tx.body, tx.signer, tx.signature)
    fast, full = both(raw, monkeypatch)
    assert fast == full


def test_a_sealed_registration_takes_the_shortcut(monkeypatch):
    from registry_helpers import device_msg

    for inline, size in ((True, 1000), (False, 150)):  # services inline (two-byte lengths), or a slot named
        raw = txs.sign_tx(KEY, "c", 9, device_msg(b"D" * 16, inline=inline))
        assert txs._split_signed(raw) is not None and len(raw) > size
        fast, full = both(raw, monkeypatch)
        assert fast == full and fast[0] == "ok"


def variants(raw: bytes) -> list[bytes]:
    """Non-canonical and broken neighbours of a canonical tx: each must fail or succeed alike."""
    tx = pb.SignedTx.FromString(raw)
    field = lambda tag, data: bytes([tag]) + uvarint(len(data)) + data  # noqa: E731
    body, signer, sig = field(0x0A, tx.body), field(0x12, tx.signer), field(0x1A, tx.signature)
    long_len = bytes([0x0A]) + bytes([len(tx.body) & 0x7F | 0x80, len(tx.body) >> 7 | 0x80, 0]) + tx.body
    return [
        signer + body + sig,  # fields out of order
        body + sig + signer,
        body + signer + sig + b"\x22\x00",  # an unknown field
        body + signer + sig + sig,  # a repeated field (the last wins in protobuf)
        long_len + signer + sig,  # a non-minimal length varint
        body + field(0x12, tx.signer[:31]) + sig,  # a short signer
        body + signer + field(0x1A, tx.signature + b"\x00"),  # a long signature
        signer + sig,  # no body
        raw[:-1], raw + b"\x00", raw[1:], b"", b"\x0a",
    ]


def test_non_canonical_neighbours_get_the_full_decodes_verdict(monkeypatch):
    raw = signed(130)
    for v in variants(raw):
        fast, full = both(v, monkeypatch)
        assert fast == full, v.hex()
        assert fast[0] == "error" or v == raw


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_any_bytes_get_the_full_decodes_verdict(data):
    """Random bytes, and canonical txs with random edits."""
    import pytest as _pytest

    raw = data.draw(st.sampled_from([signed(46), signed(127), signed(128), signed(160)]))
    kind = data.draw(st.sampled_from(["flip", "cut", "insert", "random"]))
    if kind == "random":
        raw = data.draw(st.binary(max_size=300))
    elif raw:
        i = data.draw(st.integers(0, len(raw) - 1))
        if kind == "flip":
            raw = raw[:i] + bytes([raw[i] ^ data.draw(st.integers(1, 255))]) + raw[i + 1:]
        elif kind == "cut":
            raw = raw[:i] + raw[i + data.draw(st.integers(1, 4)):]
        else:
            raw = raw[:i] + data.draw(st.binary(min_size=1, max_size=3)) + raw[i:]
    with _pytest.MonkeyPatch.context() as mp:
        fast, full = both(raw, mp)
    assert fast == full


@pytest.mark.parametrize("size", [1, 0x7F, 0x80, 0x3FFF, 0x4000, 0x4001, 60_000])
def test_the_split_reads_every_length_width_and_only_minimal_ones(size, monkeypatch):
    """Bodies whose length takes 1, 2 or 3 varint bytes split as protobuf reads them, and
    the same length padded to a longer varint is left to the full decode (which refuses it)."""
    body, signer, sig = bytes([size % 251]) * size, b"\x05" * 32, b"\x06" * 64
    tail = b"\x12\x20" + signer + b"\x1a\x40" + sig
    raw = b"\x0a" + uvarint(size) + body + tail
    tx = pb.SignedTx.FromString(raw)
    assert txs._split_signed(raw) == (tx.body, tx.signer, tx.signature) == (body, signer, sig)
    padded = bytearray(uvarint(size))
    padded[-1] |= 0x80
    padded.append(0)  # the same number, one byte longer
    for raw in (b"\x0a" + bytes(padded) + body + tail,):
        assert txs._split_signed(raw) is None
        fast, full = both(raw, monkeypatch)
        assert fast == full and fast[0] == "error"
