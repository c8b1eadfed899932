"""The pure part of the backplane: its wire format and its gap tracker."""

from __future__ import annotations

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ysyncd import cluster
from ysyncd.backplane.messages import (
    Awareness,
    Deleted,
    Heartbeat,
    Message,
    Sequences,
    Updates,
    Verdict,
    decode,
    encode,
)
from ysyncd.errors import DecodeError

ORIGIN = b"\x01" * 16
OTHER = b"\x02" * 16

origins = st.binary(min_size=16, max_size=16)
names = st.text(min_size=1, max_size=20)
messages = st.one_of(
    st.builds(
        Updates,
        origins,
        st.integers(1, 2**40),
        st.integers(0, 2**45),
        st.lists(st.binary(max_size=40), max_size=5),
    ),
    st.builds(Awareness, origins, st.binary(max_size=40)),
    st.builds(Deleted, origins),
    st.builds(
        Heartbeat,
        origins,
        st.dictionaries(names, st.integers(1, 2**40), max_size=5),
        st.lists(names, max_size=3),
    ),
)


@given(messages)
def test_every_message_reads_back_as_it_was_written(message: Message) -> None:
    assert decode(encode(message)) == message


@given(st.binary(max_size=80))
def test_garbage_is_refused_with_decode_error_only(data: bytes) -> None:
    """Whatever Redis hands over, decoding raises DecodeError or succeeds."""
    try:
        message = decode(data)
    except DecodeError:
        return  # refused cleanly: what the reader logs and drops
    # (varUints may come in longer forms than the encoder writes.)
    assert decode(encode(message)) == message


def test_truncated_and_trailing_bytes_are_refused() -> None:
    data = encode(Updates(ORIGIN, 3, 5, [b"abc", b"de"]))
    with pytest.raises(DecodeError):
        decode(data[:-1])
    with pytest.raises(DecodeError):
        decode(data + b"\x00")


def test_sequences_tell_next_seen_and_gap_per_origin() -> None:
    seqs = Sequences()
    # The first number from an origin sets where it starts.
    assert seqs.receive(ORIGIN, 7) is Verdict.NEXT
    assert seqs.receive(ORIGIN, 8) is Verdict.NEXT
    assert seqs.receive(ORIGIN, 8) is Verdict.SEEN
    assert seqs.receive(ORIGIN, 10) is Verdict.GAP
    assert seqs.receive(ORIGIN, 9) is Verdict.SEEN  # late: the repair had it
    assert seqs.receive(OTHER, 1) is Verdict.NEXT
    # A heartbeat naming a number not seen calls for a repair, once.
    assert seqs.behind(ORIGIN, 12)
    assert not seqs.behind(ORIGIN, 12)
    assert not seqs.behind(b"\x03" * 16, 5)  # never heard: nothing to compare
    seqs.forget(ORIGIN)
    assert seqs.receive(ORIGIN, 40) is Verdict.NEXT
    seqs.reset()
    assert seqs.receive(OTHER, 9) is Verdict.NEXT


class _Recorder:
    """A backplane that keeps what it is asked to publish."""

    node = b"\x00" * 16
    healthy = subscriber_up = True
    published = received = dropped = 0

    def __init__(self) -> None:
        self.updates: list[tuple[str, list[bytes]]] = []

    def publish_updates(self, room: str, updates: list[bytes]) -> None:
        self.updates.append((room, updates))


async def test_a_commit_is_one_message_per_room_cut_by_size(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Updates keep their order; a room's message is cut where it would pass
    MESSAGE_BYTES (Redis refuses a bulk string over 512 MB)."""
    monkeypatch.setattr(cluster, "MESSAGE_BYTES", 10)
    recorder = _Recorder()
    async with anyio.create_task_group() as tg:
        node = cluster.Cluster(tg)
        node.backplane = recorder  # type: ignore[assignment]
        node.committed(
            [("a", b"1234"), ("b", b"x"), ("a", b"5678"), ("a", b"90"), ("a", b"z")]
        )
    assert recorder.updates == [
        ("a", [b"1234", b"5678", b"90"]),
        ("a", [b"z"]),
        ("b", [b"x"]),
    ]
