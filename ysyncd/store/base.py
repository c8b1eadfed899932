"""The contract every update store keeps.

A store holds, per room, an optional snapshot and an append-only log of Yjs
updates. Rooms are addressed by a string key. The guarantees:

* :meth:`UpdateStore.append` is one transaction: when it returns, every update in
  the batch is durable; when it raises, none is.
* :meth:`UpdateStore.load` sees a consistent state, never half of a compaction.
* :meth:`UpdateStore.compact` replaces the log by one snapshot in one
  transaction, after checking that the snapshot holds the same document.

Callers serialise writes (one writer, see :mod:`ysyncd.commits`); loads may run
concurrently with writes. Compaction builds the snapshot with the ``build``
it is given: the server passes one that runs in its worker process.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from ysyncd.store.snapshot import Snapshot, build_snapshot

__all__ = [
    "Build",
    "Compaction",
    "RoomSummary",
    "StoredRoom",
    "UpdateStore",
    "build_here",
    "compacted",
    "kept_rows",
]

log = logging.getLogger("ysyncd.store")

#: Builds a verified snapshot of a room's updates (see snapshot.py).
Build = Callable[[Sequence[bytes]], Awaitable[Snapshot]]


async def build_here(updates: Sequence[bytes]) -> Snapshot:
    """Build the snapshot in this process (tests, small stores)."""
    return build_snapshot(updates)


@dataclass(frozen=True, slots=True)
class StoredRoom:
    """What :meth:`UpdateStore.load` returns."""

    #: The snapshot first (if any), then the log in commit order.
    updates: list[bytes]
    #: How many log rows follow the snapshot.
    log_rows: int
    #: Size of the snapshot (0 without one).
    snapshot_bytes: int = 0
    #: When each of :attr:`updates` was committed (Unix seconds), or None:
    #: the snapshot's, and rows older than the stores' keeping it.
    times: list[float | None] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class RoomSummary:
    """One stored room, as :meth:`UpdateStore.rooms` lists it."""

    name: str
    #: Log rows (after the snapshot, if any).
    rows: int
    #: Bytes of the snapshot and the rows.
    bytes: int
    #: When its newest row was committed (Unix seconds), if known.
    last_change: float | None


@dataclass(frozen=True, slots=True)
class Compaction:
    """What one compaction did."""

    rows_before: int
    rows_after: int
    bytes_before: int
    bytes_after: int


def kept_rows(
    log_rows: Sequence[tuple[int, bytes]], head: int, snap: Snapshot
) -> set[int]:
    """Ids of the log rows a compaction must keep beside its snapshot (those
    not fully in it); ``head`` is 1 when the updates began with a snapshot."""
    return {log_rows[i - head][0] for i in snap.pending if i >= head}


def compacted(
    room: str,
    log_rows: Sequence[tuple[int, bytes]],
    kept: set[int],
    updates: Sequence[bytes],
    snapshot: bytes,
    started: float,
) -> Compaction:
    """What a compaction did, logged: ``log_rows`` read, ``kept`` of them."""
    result = Compaction(
        rows_before=len(log_rows),
        rows_after=len(kept),
        bytes_before=sum(map(len, updates)),
        bytes_after=len(snapshot) + sum(len(d) for i, d in log_rows if i in kept),
    )
    log.info(
        "compacted room %r: %d rows (%d B) -> snapshot %d B + %d rows in %.1f ms",
        room,
        result.rows_before,
        result.bytes_before,
        len(snapshot),
        result.rows_after,
        (time.perf_counter() - started) * 1000,
    )
    return result


class UpdateStore(Protocol):
    """Durable, append-only storage of Yjs updates per room."""

    @property
    def epoch(self) -> str:
        """An id created with the store; it changes only if the history is lost."""
        ...

    async def load(self, room: str) -> StoredRoom:
        """Everything stored for ``room`` (empty for a new room)."""
        ...

    async def rooms(self) -> list[RoomSummary]:
        """Every stored room, by name."""
        ...

    async def delete(self, room: str) -> bool:
        """Remove ``room``'s snapshot and log, atomically; whether it existed."""
        ...

    async def append(self, batch: Sequence[tuple[str, bytes]]) -> None:
        """Durably append ``(room, update)`` pairs, in order, in one transaction."""
        ...

    async def compact(self, room: str, build: Build = build_here) -> Compaction:
        """Replace ``room``'s log by one verified snapshot, atomically."""
        ...

    async def ping(self) -> None:
        """Raise :class:`~ysyncd.errors.StoreError` unless the store answers now."""
        ...

    async def aclose(self) -> None:
        """Release the store; pending writes must have been awaited already."""
        ...
