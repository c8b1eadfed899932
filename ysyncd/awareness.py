"""The awareness CRDT of one room, as pure data: no timers, no I/O.

An awareness update is ``varUint(n)`` followed by ``n`` entries of
``varUint(clientID) varUint(clock) varString(stateJSON)``; the JSON ``null``
removes a client. An entry is accepted when its clock is newer, or when it is a
removal at the same clock (y-protocols ``awareness.js`` rules). A removal made
by the server keeps the clock, as y-protocols does for remote clients.

The server keeps each state as the JSON text it received, so relaying and
snapshotting never re-serialise anything; the text is parsed once, to refuse
what a client's ``JSON.parse`` would choke on. Time is passed in, so expiry is
testable without sleeping.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field

from pycrdt import write_message, write_var_uint

from ysyncd.errors import DecodeError, InvalidUpdate, TooLarge
from ysyncd.protocol import Reader

__all__ = ["AwarenessChange", "AwarenessStates", "decode_update", "encode_entries"]

_NULL = "null"
#: Cap on entries per update; a real client sends its own and those it relays.
MAX_ENTRIES_PER_UPDATE = 1024

Entry = tuple[int, int, str]


@dataclass(slots=True)
class _Entry:
    clock: int
    state: str | None  # JSON text; None once removed
    last_seen: float


@dataclass(slots=True)
class AwarenessChange:
    """What :meth:`AwarenessStates.apply` accepted."""

    #: How many entries the update held.
    entries: int = 0
    #: Entries that won by the clock rules, as received; only these are relayed.
    accepted: list[Entry] = field(default_factory=list)
    added: list[int] = field(default_factory=list)
    removed: list[int] = field(default_factory=list)


def decode_update(update: bytes) -> list[Entry]:
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


def encode_entries(entries: Iterable[Entry]) -> bytes:
    """Encode ``(client_id, clock, state_json)`` triples as an awareness update."""
    items = list(entries)
    parts = [write_var_uint(len(items))]
    for client_id, clock, state in items:
        parts += (write_var_uint(client_id), write_var_uint(clock))
        parts.append(write_message(state.encode("utf-8")))
    return b"".join(parts)


def _is_removal(state_json: str) -> bool:
    if state_json == _NULL:
        return True
    try:
        return json.loads(state_json) is None
    except (ValueError, RecursionError) as exc:
        raise InvalidUpdate("an awareness state is not valid JSON") from exc


class AwarenessStates:
    """Every client's awareness state in one room."""

    __slots__ = ("_all", "_entries")

    def __init__(self) -> None:
        self._entries: dict[int, _Entry] = {}
        # encode() of every live state, kept until a state changes.
        self._all: bytes | None = None

    def __len__(self) -> int:
        return sum(1 for e in self._entries.values() if e.state is not None)

    def __bool__(self) -> bool:
        """True while any client is known, live or recently removed."""
        return bool(self._entries)

    def states(self) -> dict[int, str]:
        """The live states as ``{client_id: json_text}``."""
        entries = self._entries.items()
        return {cid: e.state for cid, e in entries if e.state is not None}

    def apply(
        self, update: bytes, now: float, *, max_state_bytes: int | None = None
    ) -> AwarenessChange:
        """Merge a received update.

        Raises:
            DecodeError: the update is malformed; nothing was changed.
            InvalidUpdate: a state is not JSON; nothing was changed.
            TooLarge: a state is over ``max_state_bytes``; nothing was changed.
        """
        entries = decode_update(update)
        if max_state_bytes is not None:
            for _, _, state in entries:
                # A character is at most 4 UTF-8 bytes: encode only when it matters.
                if len(state) * 4 > max_state_bytes and (
                    len(state.encode()) > max_state_bytes
                ):
                    raise TooLarge(f"awareness state over {max_state_bytes} bytes")
        removals = [_is_removal(state) for _, _, state in entries]
        change = AwarenessChange(entries=len(entries))
        for (client_id, clock, state_json), removal in zip(
            entries, removals, strict=True
        ):
            prev = self._entries.get(client_id)
            prev_clock = prev.clock if prev else 0
            was_live = prev is not None and prev.state is not None
            if not (
                prev_clock < clock or (clock == prev_clock and removal and was_live)
            ):
                continue
            change.accepted.append((client_id, clock, state_json))
            self._all = None
            self._entries[client_id] = _Entry(
                clock, None if removal else state_json, now
            )
            if removal and was_live:
                change.removed.append(client_id)
            elif not removal and not was_live:
                change.added.append(client_id)
        return change

    def remove(self, client_ids: Iterable[int], now: float) -> bytes | None:
        """Remove live states; return the update announcing it, if any was live."""
        removed: list[Entry] = []
        for client_id in client_ids:
            entry = self._entries.get(client_id)
            if entry is None or entry.state is None:
                continue
            entry.state = None
            entry.last_seen = now
            self._all = None
            removed.append((client_id, entry.clock, _NULL))
        return encode_entries(removed) if removed else None

    def expired(self, now: float, timeout: float) -> list[int]:
        """Client IDs whose live state was not renewed within ``timeout`` seconds."""
        return [
            cid
            for cid, e in self._entries.items()
            if e.state is not None and now - e.last_seen >= timeout
        ]

    def prune(self, now: float, age: float) -> None:
        """Forget removed clients (their clocks) after ``age`` seconds."""
        stale = [
            cid
            for cid, e in self._entries.items()
            if e.state is None and now - e.last_seen >= age
        ]
        for cid in stale:
            del self._entries[cid]

    def encode_all(self) -> bytes | None:
        """Every live state as one update (or None), encoded once per change:
        what a joiner and a query-awareness get."""
        if self._all is None:
            self._all = self.encode()
        return self._all

    def encode(
        self, client_ids: Iterable[int] | None = None, *, removed: bool = False
    ) -> bytes | None:
        """Live states (all, or those of ``client_ids``) as one update, or None.

        With ``removed``, removed clients among ``client_ids`` are included as
        ``null`` at their clock, so a merged-away removal still reaches peers.
        """
        entries = self._entries
        ids = entries.keys() if client_ids is None else client_ids
        out = [
            (cid, e.clock, _NULL if e.state is None else e.state)
            for cid in ids
            if (e := entries.get(cid)) is not None and (removed or e.state is not None)
        ]
        return encode_entries(out) if out else None
