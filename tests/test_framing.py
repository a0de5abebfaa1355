"""ABCI framing: uvarint length prefixes, chunking, malformed and oversized frames."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgistry.abci_app.framing import (
    FrameDecoder, FramingError, decode_uvarint, encode_frame, encode_uvarint,
)


@given(st.integers(min_value=0, max_value=2**64 - 1))
def test_uvarint_round_trip(n):
    """Every 64-bit value survives encode/decode and uses Go's PutUvarint bytes."""
    data = encode_uvarint(n)
    assert decode_uvarint(data) == (n, len(data))
    assert len(data) == max(1, (n.bit_length() + 6) // 7)


def test_uvarint_matches_go_examples():
    """Known encodings (binary.PutUvarint): unsigned, not zigzag."""
    assert encode_uvarint(0) == b"\x00"
    assert encode_uvarint(1) == b"\x01"  # zigzag would be 0x02
    assert encode_uvarint(300) == b"\xac\x02"


@settings(max_examples=200)
@given(frames=st.lists(st.binary(max_size=300), max_size=12), cuts=st.lists(st.integers(1, 50), max_size=40))
def test_frames_survive_arbitrary_chunking(frames, cuts):
    """Frames split at arbitrary byte boundaries come out whole and in order."""
    stream = b"".join(encode_frame(f) for f in frames)
    dec, out, pos = FrameDecoder(), [], 0
    for cut in cuts + [len(stream)]:
        dec.receive_data(stream[pos:pos + cut])
        pos += cut
        while (frame := dec.next_frame()) is not None:
            out.append(frame)
    dec.receive_data(stream[pos:])
    while (frame := dec.next_frame()) is not None:
        out.append(frame)
    assert out == frames
    assert dec.buffered == 0


def test_oversized_frame_is_refused_before_its_body_arrives():
    """A length above the limit fails as soon as the prefix is readable."""
    dec = FrameDecoder(max_frame_size=1000)
    dec.receive_data(encode_uvarint(1001))
    with pytest.raises(FramingError, match="exceeds"):
        dec.next_frame()


@pytest.mark.parametrize("prefix", [b"\xff" * 10 + b"\x01", b"\xff" * 9 + b"\x02"])
def test_malformed_varint_is_refused(prefix):
    """Varints longer than 10 bytes or above 64 bits are framing errors."""
    dec = FrameDecoder()
    dec.receive_data(prefix)
    with pytest.raises(FramingError):
        dec.next_frame()


def test_incomplete_frame_waits_for_more():
    """A partial body is buffered, not returned."""
    dec = FrameDecoder()
    dec.receive_data(encode_frame(b"hello")[:4])
    assert dec.next_frame() is None
    dec.receive_data(b"lo")
    assert dec.next_frame() == b"hello"
