"""The awareness CRDT of one room, as pure data: no timers, no I/O.

An awareness update is ``varUint(n)`` followed by ``n`` entries of
``varUint(clientID) varUint(clock) varString(stateJSON)``; the JSON text
``null`` removes a client. An entry wins when its clock is newer, or when it is a
removal at the same clock (y-protocols ``awareness.js`` rules).

The server keeps each state as the JSON text it received, so relaying and
snapshotting never re-serialise anything. Time is passed in, so expiry is
testable without sleeping.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from pycrdt import write_message, write_var_uint

from ysyncd.errors import DecodeError
from ysyncd.protocol import Reader

__all__ = ["AwarenessChange", "AwarenessStates", "decode_update"]

_NULL = "null"
#: Cap on entries per update; a real client sends one (its own state).
MAX_ENTRIES_PER_UPDATE = 1024


@dataclass(slots=True)
class _Entry:
    clock: int
    state: str | None  # JSON text; None once removed
    last_seen: float


@dataclass(slots=True)
class AwarenessChange:
    """Client IDs whose state appeared, changed or disappeared."""

    added: list[int] = field(default_factory=list)
    updated: list[int] = field(default_factory=list)
    removed: list[int] = field(default_factory=list)


def decode_update(update: bytes) -> list[tuple[int, int, str]]:
    """Decode an awareness update into ``(client_id, clock, state_json)`` triples.

    Raises:
        DecodeError: the update is malformed or has too many entries.
    """
    reader = Reader(update)
    count = reader.var_uint()
    if count > MAX_ENTRIES_PER_UPDATE:
        raise DecodeError(f"awareness update with {count} entries")
    entries = [
        (reader.var_uint(), reader.var_uint(), reader.var_string())
        for _ in range(count)
    ]
    if reader.remaining:
        raise DecodeError("trailing bytes after the awareness entries")
    return entries


def _encode(entries: Iterable[tuple[int, int, str]]) -> bytes:
    items = list(entries)
    parts = [write_var_uint(len(items))]
    for client_id, clock, state in items:
        parts += (write_var_uint(client_id), write_var_uint(clock))
        parts.append(write_message(state.encode("utf-8")))
    return b"".join(parts)


class AwarenessStates:
    """Every client's awareness state in one room."""

    __slots__ = ("_entries",)

    def __init__(self) -> None:
        self._entries: dict[int, _Entry] = {}

    def __len__(self) -> int:
        return sum(1 for e in self._entries.values() if e.state is not None)

    def states(self) -> dict[int, str]:
        """The live states as ``{client_id: json_text}``."""
        entries = self._entries.items()
        return {cid: e.state for cid, e in entries if e.state is not None}

    def apply(self, update: bytes, now: float) -> AwarenessChange:
        """Merge a received update.

        Raises:
            DecodeError: the update is malformed; nothing was changed.
        """
        change = AwarenessChange()
        for client_id, clock, state_json in decode_update(update):
            state = None if state_json == _NULL else state_json
            prev = self._entries.get(client_id)
            prev_clock = prev.clock if prev else 0
            prev_state = prev.state if prev else None
            removal_at_same_clock = (
                clock == prev_clock and state is None and prev_state is not None
            )
            if not (prev_clock < clock or removal_at_same_clock):
                continue
            self._entries[client_id] = _Entry(clock, state, now)
            if state is None:
                if prev_state is not None:
                    change.removed.append(client_id)
            elif prev_state is None:
                change.added.append(client_id)
            elif state != prev_state:
                change.updated.append(client_id)
        return change

    def remove(self, client_ids: Iterable[int], now: float) -> bytes | None:
        """Remove live states; return the update announcing it, if any was live."""
        removed: list[tuple[int, int, str]] = []
        for client_id in client_ids:
            entry = self._entries.get(client_id)
            if entry is None or entry.state is None:
                continue
            entry.clock += 1
            entry.state = None
            entry.last_seen = now
            removed.append((client_id, entry.clock, _NULL))
        return _encode(removed) if removed else None

    def expired(self, now: float, timeout: float) -> list[int]:
        """Client IDs whose live state was not renewed within ``timeout`` seconds."""
        return [
            cid
            for cid, e in self._entries.items()
            if e.state is not None and now - e.last_seen >= timeout
        ]

    def encode(self, client_ids: Iterable[int] | None = None) -> bytes | None:
        """Live states (all, or those of ``client_ids``) as one update, or None."""
        entries = self._entries
        ids = entries.keys() if client_ids is None else client_ids
        live = [
            (cid, e.clock, e.state)
            for cid in ids
            if (e := entries.get(cid)) is not None and e.state is not None
        ]
        return _encode(live) if live else None
