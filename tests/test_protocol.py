"""The y-websocket codec: golden frames both ways, and fuzzing."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.vectors import VECTORS, Vector
from ysyncd import protocol
from ysyncd.errors import DecodeError, ProtocolError, UnknownMessageType
from ysyncd.protocol import (
    Awareness,
    PermissionDenied,
    QueryAwareness,
    SyncStep1,
    SyncStep2,
    Update,
)

_SYNC = {0: SyncStep1, 1: SyncStep2, 2: Update}


def expected_messages(vector: Vector) -> list[protocol.Message]:
    out: list[protocol.Message] = []
    for m in vector.messages:
        if m.type == 0:
            assert m.subtype is not None
            out.append(_SYNC[m.subtype](m.payload))
        elif m.type == 1:
            out.append(Awareness(m.payload))
        elif m.type == 2:
            assert m.reason is not None
            out.append(PermissionDenied(m.reason))
        else:
            out.append(QueryAwareness())
    return out


@pytest.mark.parametrize("vector", VECTORS, ids=[v.name for v in VECTORS])
def test_golden_frames_both_ways(vector: Vector) -> None:
    """decode(frame) gives the captured messages, and encoding them gives the frame."""
    messages = protocol.decode(vector.frame)
    assert messages == expected_messages(vector)
    assert b"".join(protocol.encode(m) for m in messages) == vector.frame


def test_vectors_cover_every_message_type() -> None:
    """The golden set exercises each type, non-ASCII text and multi-message frames."""
    kinds = {type(m) for v in VECTORS for m in expected_messages(v)}
    assert kinds == {
        SyncStep1,
        SyncStep2,
        Update,
        Awareness,
        QueryAwareness,
        PermissionDenied,
    }
    assert any(len(v.messages) > 1 for v in VECTORS)
    assert any(
        any(ord(c) > 127 for e in (m.awareness or ()) for c in e.state_json)
        for v in VECTORS
        for m in v.messages
    )


def test_permission_denied_counts_utf8_bytes() -> None:
    """varString lengths count UTF-8 bytes, not characters."""
    frame = protocol.encode(PermissionDenied("nein: Zoë 日本"))
    assert frame[2] == len("nein: Zoë 日本".encode())
    assert protocol.decode(frame) == [PermissionDenied("nein: Zoë 日本")]


@pytest.mark.parametrize(
    ("frame", "error"),
    [
        (b"", DecodeError),
        (b"\x00", DecodeError),  # sync without a subtype
        (b"\x00\x02", DecodeError),  # update without a length
        (b"\x00\x02\x05ab", DecodeError),  # length prefix past the end
        (b"\x00\x02\x80\x80\x80\x80\x80\x80\x80\x80\x10", DecodeError),  # 2**56 length
        (b"\x00\x02\xff\xff\xff\xff\xff\xff\xff\x7f", DecodeError),  # > 2**53
        (b"\x01\x80", DecodeError),  # truncated varUint
        (b"\x02\x00\x02\xff\xfe", DecodeError),  # reason not UTF-8
        (b"\x07", UnknownMessageType),
        (b"\x00\x03\x00", UnknownMessageType),
        (b"\x02\x01\x00", UnknownMessageType),
        (b"\x03" * (protocol.MAX_MESSAGES_PER_FRAME + 1), DecodeError),
    ],
)
def test_malformed_frames_raise_only_codec_errors(
    frame: bytes, error: type[Exception]
) -> None:
    """Every malformed frame raises the codec's own, specific error."""
    with pytest.raises(error):
        protocol.decode(frame)


def test_length_prefix_of_2_to_the_40_is_refused_without_allocating() -> None:
    """A huge declared length is checked against the bytes actually present."""
    two_to_the_40 = bytes([0x80] * 5 + [0x20])
    frame = b"\x00\x02" + two_to_the_40 + b"x"
    with pytest.raises(DecodeError, match="length prefix"):
        protocol.decode(frame)


@settings(max_examples=3000, deadline=None)
@given(st.binary(max_size=256))
def test_random_bytes_raise_nothing_but_protocol_errors(data: bytes) -> None:
    """Decoding arbitrary bytes either works or raises a ProtocolError."""
    try:
        messages = protocol.decode(data)
    except ProtocolError:
        return
    assert b"".join(protocol.encode(m) for m in messages) == data


@settings(max_examples=1000, deadline=None)
@given(
    st.sampled_from(VECTORS),
    st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=4),
    st.integers(0, 64),
)
def test_mutated_golden_frames_raise_nothing_but_protocol_errors(
    vector: Vector, flips: list[tuple[int, int]], cut: int
) -> None:
    """Golden frames with flipped bytes or cut short still fail cleanly."""
    data = bytearray(vector.frame)
    for position, value in flips:
        data[position % len(data)] = value
    del data[len(data) - min(cut, len(data)) :]
    try:
        protocol.decode(bytes(data))
    except ProtocolError:
        return
