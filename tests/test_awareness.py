"""The awareness CRDT, pure: no sockets, time passed in."""

from __future__ import annotations

import json

import pytest
from pycrdt import write_message, write_var_uint

from ysyncd.awareness import AwarenessStates, decode_update
from ysyncd.errors import DecodeError, InvalidUpdate


def update(*entries: tuple[int, int, object]) -> bytes:
    out = write_var_uint(len(entries))
    for client_id, clock, state in entries:
        text = json.dumps(state, ensure_ascii=False)
        out += write_var_uint(client_id) + write_var_uint(clock)
        out += write_message(text.encode())
    return out


def test_new_states_are_added_and_encoded_for_joiners() -> None:
    """States received are kept as sent and handed to joiners in one update."""
    aw = AwarenessStates()
    change = aw.apply(update((1, 1, {"user": {"name": "Zoë 日本"}})), now=0)
    assert change.added == [1]
    snapshot = aw.encode()
    assert snapshot is not None
    assert decode_update(snapshot) == [(1, 1, '{"user": {"name": "Zoë 日本"}}')]


def test_older_clock_is_ignored_and_newer_replaces() -> None:
    """Only a newer clock changes a state, as in y-protocols; stale entries are
    not accepted (so a client bouncing back what it received is not relayed)."""
    aw = AwarenessStates()
    aw.apply(update((1, 5, {"a": 1})), now=0)
    assert aw.apply(update((1, 4, {"a": 2})), now=1).accepted == []
    assert aw.apply(update((1, 5, {"a": 1})), now=1).accepted == []
    renewed = aw.apply(update((1, 6, {"a": 3}), (2, 1, {"b": 1})), now=2)
    assert renewed.accepted == [(1, 6, '{"a": 3}'), (2, 1, '{"b": 1}')]
    assert renewed.added == [2]
    assert aw.states() == {1: '{"a": 3}', 2: '{"b": 1}'}


def test_null_removes_even_at_the_same_clock() -> None:
    """A removal at the current clock wins (the client's own goodbye)."""
    aw = AwarenessStates()
    aw.apply(update((7, 3, {"x": 1})), now=0)
    assert aw.apply(update((7, 3, None)), now=1).removed == [7]
    assert aw.encode() is None
    assert len(aw) == 0


def test_remove_keeps_the_clock_like_y_protocols() -> None:
    """The server's removal is a null at the same clock, which clients accept,
    and the client's next renewal (clock + 1) brings the state back."""
    aw = AwarenessStates()
    aw.apply(update((9, 10, {"x": 1}), (8, 1, {"y": 2})), now=0)
    removal = aw.remove([9, 42], now=1)
    assert removal is not None
    assert decode_update(removal) == [(9, 10, "null")]
    assert aw.remove([9], now=2) is None
    assert aw.states() == {8: '{"y": 2}'}
    assert aw.apply(update((9, 11, {"x": 2})), now=3).added == [9]


def test_removed_clients_are_forgotten_after_a_while() -> None:
    """Tombstones are pruned, so churn of client IDs cannot grow memory forever."""
    aw = AwarenessStates()
    aw.apply(update(*((i, 1, {}) for i in range(100))), now=0)
    aw.remove(range(100), now=1)
    aw.prune(now=20, age=30)
    assert aw.encode(range(100), removed=True) is not None
    aw.prune(now=31, age=30)
    assert aw.encode(range(100), removed=True) is None


@pytest.mark.parametrize("state", ["{not json", "[" * 5000 + "]" * 5000])
def test_states_that_are_not_json_are_refused(state: str) -> None:
    """A state a client's JSON.parse would choke on is refused as a whole."""
    body = state.encode()
    raw = b"\x01\x01\x01" + write_var_uint(len(body)) + body
    with pytest.raises(InvalidUpdate):
        AwarenessStates().apply(raw, now=0)


def test_expired_lists_states_not_renewed_in_time() -> None:
    """Expiry is computed from the injected clock."""
    aw = AwarenessStates()
    aw.apply(update((1, 1, {})), now=0)
    aw.apply(update((2, 1, {})), now=20)
    assert aw.expired(now=31, timeout=30) == [1]


@pytest.mark.parametrize(
    "raw",
    [b"", b"\x01", b"\x01\x01\x01\x05ab", update((1, 1, {})) + b"\x00", b"\xff" * 9],
)
def test_malformed_updates_raise_decode_error_and_change_nothing(raw: bytes) -> None:
    """Truncated or trailing bytes are refused as a whole."""
    aw = AwarenessStates()
    aw.apply(update((1, 1, {"keep": True})), now=0)
    with pytest.raises(DecodeError):
        aw.apply(raw, now=1)
    assert aw.states() == {1: '{"keep": true}'}
