"""An in-memory store: the test double of the store contract, and ``--db memory://``.

Nothing survives the process, so it is for tests and throw-away servers only.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from ysyncd.store.base import (
    DEFAULT_RETENTION,
    Build,
    Compaction,
    History,
    Judge,
    RoomSummary,
    StoredRoom,
    build_here,
    checkpoint_due,
    earliest,
)

__all__ = ["MemoryStore"]


class _Row(NamedTuple):
    id: int
    data: bytes
    time: float | None
    author: str | None
    moved_in: int = 0  # the compaction that moved it to the history


@dataclass
class _Room:
    snapshot: bytes | None = None
    log: list[_Row] = field(default_factory=list)
    history: list[_Row] = field(default_factory=list)
    #: (generation, time, data), oldest first.
    checkpoints: list[tuple[int, float, bytes]] = field(default_factory=list)
    generation: int = 0
    kept_since: float | None = None


class MemoryStore:
    """Keeps every room in a dict."""

    def __init__(
        self,
        *,
        history_retention: float = DEFAULT_RETENTION,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._epoch = uuid.uuid4().hex
        self._rooms: dict[str, _Room] = {}
        self._ids = itertools.count(1)
        self._retention = history_retention
        self._clock = clock
        #: Rows moved aside: (room, data, reason).
        self.quarantined: list[tuple[str, bytes, str]] = []

    @property
    def epoch(self) -> str:
        return self._epoch

    async def load(self, room: str) -> StoredRoom:
        found = self._rooms.get(room)
        if found is None:
            return StoredRoom([], 0)
        head = [found.snapshot] if found.snapshot else []
        rows = found.log
        times: list[float | None] = [None] * len(head)
        authors: list[str | None] = [None] * len(head)
        return StoredRoom(
            head + [r.data for r in rows],
            len(rows),
            len(found.snapshot or b""),
            times + [r.time for r in rows],
            authors + [r.author for r in rows],
        )

    async def rooms(self) -> list[RoomSummary]:
        return [
            RoomSummary(
                name,
                len(found.log),
                len(found.snapshot or b"") + sum(len(r.data) for r in found.log),
                max((r.time for r in found.log if r.time is not None), default=None),
            )
            for name, found in sorted(self._rooms.items())
        ]

    async def delete(self, room: str) -> bool:
        return self._rooms.pop(room, None) is not None

    def append_inline(
        self,
        batch: Sequence[tuple[str, bytes]],
        authors: Sequence[str | None],
    ) -> bool:
        self._append(batch, authors)
        return True

    async def append(
        self,
        batch: Sequence[tuple[str, bytes]],
        authors: Sequence[str | None] | None = None,
    ) -> None:
        self._append(batch, authors)

    def _append(
        self,
        batch: Sequence[tuple[str, bytes]],
        authors: Sequence[str | None] | None,
    ) -> None:
        now = self._clock()
        who = authors if authors is not None else [None] * len(batch)
        rows = [
            (room, _Row(next(self._ids), update, now, author))
            for (room, update), author in zip(batch, who, strict=True)
        ]
        for room, row in rows:
            self._rooms.setdefault(room, _Room()).log.append(row)

    async def quarantine(self, room: str, bad: Judge) -> list[str]:
        found = self._rooms.get(room)
        if found is None:
            return []
        moved = []
        if found.snapshot is not None and (reason := bad(found.snapshot)) is not None:
            self.quarantined.append((room, found.snapshot, reason))
            found.snapshot = None
            moved.append(f"snapshot: {reason}")
        good = []
        for row in found.log:
            if (reason := bad(row.data)) is None:
                good.append(row)
            else:
                self.quarantined.append((room, row.data, reason))
                moved.append(f"row {row.id}: {reason}")
        found.log = good
        return moved

    async def compact(self, room: str, build: Build = build_here) -> Compaction:
        found = self._rooms.get(room)
        if found is None or not found.log:
            return Compaction(0, 0, 0, 0)
        stored = await self.load(room)
        before = sum(map(len, stored.updates))
        snap = await build(stored.updates)
        offset = len(stored.updates) - stored.log_rows
        kept_at = {i - offset for i in snap.pending if i >= offset}
        kept = [r for i, r in enumerate(found.log) if i in kept_at]
        folded = [r for i, r in enumerate(found.log) if i not in kept_at]
        found.snapshot = snap.update
        found.log = kept
        found.generation += 1
        self._keep_history(found, folded, snap.update)
        return Compaction(
            rows_before=stored.log_rows,
            rows_after=len(kept),
            bytes_before=before,
            bytes_after=len(snap.update) + sum(len(r.data) for r in kept),
        )

    def _keep_history(self, found: _Room, folded: list[_Row], snapshot: bytes) -> None:
        now, retention = self._clock(), self._retention
        if retention <= 0:
            found.history, found.checkpoints, found.kept_since = [], [], now
            return
        found.history += [r._replace(moved_in=found.generation) for r in folded]
        latest = found.checkpoints[-1][1] if found.checkpoints else None
        if checkpoint_due(latest, now, retention):
            found.checkpoints.append((found.generation, now, snapshot))
        edge = [c for c in found.checkpoints if c[1] <= now - retention]
        if edge:
            generation, since, _ = edge[-1]
            found.history = [r for r in found.history if r.moved_in > generation]
            found.checkpoints = [c for c in found.checkpoints if c[1] >= since]
            found.kept_since = since

    async def history(self, room: str, at: float | None = None) -> History:
        found = self._rooms.get(room)
        if found is None:
            return History([], [], [], None)
        moment = earliest(at, found.kept_since)
        usable = [c for c in found.checkpoints if c[1] <= moment]
        base: list[bytes] = []
        generation = found.generation
        if usable:
            generation, _, data = usable[-1]
            base = [data]
        elif found.kept_since is None:
            generation = 0
        elif found.snapshot is not None:
            base = [found.snapshot]
        rows = sorted([r for r in found.history if r.moved_in > generation] + found.log)
        times: list[float | None] = [None] * len(base)
        authors: list[str | None] = [None] * len(base)
        return History(
            base + [r.data for r in rows],
            times + [r.time for r in rows],
            authors + [r.author for r in rows],
            found.kept_since,
            bool(base),
        )

    async def ping(self) -> None:
        return None

    async def aclose(self) -> None:
        self._rooms.clear()
