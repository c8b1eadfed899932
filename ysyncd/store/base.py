"""The contract every update store keeps.

A store holds, per room, an optional snapshot and an append-only log of Yjs
updates; and, for point-in-time reads and restores, its history: the rows
compactions folded, with checkpoints (see :meth:`UpdateStore.compact`).
Rooms are addressed by a string key. The guarantees:

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
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from ysyncd.store.snapshot import Snapshot, build_snapshot

__all__ = [
    "CHECKPOINTS_PER_RETENTION",
    "DEFAULT_RETENTION",
    "Build",
    "Compaction",
    "History",
    "Judge",
    "RoomSummary",
    "StoredRoom",
    "UpdateStore",
    "build_here",
    "checkpoint_due",
    "compacted",
    "earliest",
    "kept_rows",
]

log = logging.getLogger("ysyncd.store")

#: Builds a verified snapshot of a room's updates (see snapshot.py).
Build = Callable[[Sequence[bytes]], Awaitable[Snapshot]]
#: What is wrong with a stored row, or None when it is good (see quarantine).
Judge = Callable[[bytes], "str | None"]


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
    #: Who wrote each of :attr:`updates` (the grant's user), or None: the
    #: snapshot's, the server's own edits, and rows from before authors.
    authors: list[str | None] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class History:
    """What :meth:`UpdateStore.history` returns: a base (a checkpoint, or
    nothing) and every row committed after it, in commit order, which
    together make the document as it is now; any moment since :attr:`since`
    is the base and the rows committed by then."""

    #: The base first (if any: its time is None), then the rows.
    updates: list[bytes]
    #: Each update's commit time (None: the base, and rows from before times).
    times: list[float | None]
    #: Each update's author (None: the base, the server, rows from before).
    authors: list[str | None]
    #: The oldest moment that can be rebuilt (Unix seconds); None: any.
    since: float | None
    #: Whether :attr:`updates` begins with a base.
    based: bool = False


#: How many checkpoints a retention period holds (one a day for 7 days).
CHECKPOINTS_PER_RETENTION = 7
#: The history kept by default (``--history-retention``): 7 days.
DEFAULT_RETENTION = 7 * 86400.0


def checkpoint_due(latest: float | None, now: float, retention: float) -> bool:
    """Whether a compaction at ``now`` should keep its snapshot as a
    checkpoint, the latest one being from ``latest``."""
    interval = retention / CHECKPOINTS_PER_RETENTION
    return latest is None or now - latest >= interval


def earliest(at: float | None, since: float | None) -> float:
    """The moment a history read for ``at`` starts from: ``at``; without it,
    the oldest kept (``since``), or before everything when nothing was ever
    thinned away."""
    if at is not None:
        return at
    return since if since is not None else -math.inf


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

    async def append(
        self,
        batch: Sequence[tuple[str, bytes]],
        authors: Sequence[str | None] | None = None,
    ) -> None:
        """Durably append ``(room, update)`` pairs, in order, in one
        transaction; ``authors``, one per pair, are who wrote them."""
        ...

    def append_inline(
        self,
        batch: Sequence[tuple[str, bytes]],
        authors: Sequence[str | None],
    ) -> bool:
        """:meth:`append`, done on the calling thread before returning, when
        the store can do that cheaply now; False (nothing written) when the
        caller must use :meth:`append` instead.

        Raises:
            StoreError: the append failed; nothing was written.
        """
        ...

    async def quarantine(self, room: str, bad: Judge) -> list[str]:
        """Move ``room``'s rows (its snapshot included) that ``bad`` finds a
        fault in aside, into the store's quarantine, in one transaction; they
        are never deleted. Names each row moved, with its fault."""
        ...

    async def compact(self, room: str, build: Build = build_here) -> Compaction:
        """Replace ``room``'s log by one verified snapshot, atomically.

        With a history retention, the rows folded into the snapshot move to
        the room's history, and the snapshot is kept as a checkpoint when
        the latest is a seventh of the retention old; history older than
        the retention is thinned to the one checkpoint at its edge.
        """
        ...

    async def history(self, room: str, at: float | None = None) -> History:
        """``room``'s history from the checkpoint at or before ``at`` (from
        the oldest moment kept, without ``at``): see :class:`History`."""
        ...

    async def ping(self) -> None:
        """Raise :class:`~ysyncd.errors.StoreError` unless the store answers now."""
        ...

    async def aclose(self) -> None:
        """Release the store; pending writes must have been awaited already."""
        ...
