"""An in-memory store: the test double of the store contract, and ``--db memory://``.

Nothing survives the process, so it is for tests and throw-away servers only.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence

from ysyncd.store.base import Build, Compaction, RoomSummary, StoredRoom, build_here

__all__ = ["MemoryStore"]


class MemoryStore:
    """Keeps every room's snapshot and log in dicts."""

    def __init__(self) -> None:
        self._epoch = uuid.uuid4().hex
        self._snapshots: dict[str, bytes] = {}
        self._logs: dict[str, list[bytes]] = {}
        self._times: dict[str, list[float | None]] = {}

    @property
    def epoch(self) -> str:
        return self._epoch

    async def load(self, room: str) -> StoredRoom:
        log = list(self._logs.get(room, ()))
        snapshot = self._snapshots.get(room)
        head = [snapshot] if snapshot else []
        times: list[float | None] = [None] * len(head)
        times += self._times.get(room, [])
        return StoredRoom(head + log, len(log), len(snapshot or b""), times)

    async def rooms(self) -> list[RoomSummary]:
        names = sorted(set(self._logs) | set(self._snapshots))
        return [
            RoomSummary(
                name,
                len(self._logs.get(name, ())),
                len(self._snapshots.get(name, b""))
                + sum(map(len, self._logs.get(name, ()))),
                max(
                    (t for t in self._times.get(name, ()) if t is not None),
                    default=None,
                ),
            )
            for name in names
        ]

    async def delete(self, room: str) -> bool:
        found = room in self._logs or room in self._snapshots
        self._logs.pop(room, None)
        self._times.pop(room, None)
        self._snapshots.pop(room, None)
        return found

    async def append(self, batch: Sequence[tuple[str, bytes]]) -> None:
        now = time.time()
        for room, update in batch:
            self._logs.setdefault(room, []).append(update)
            self._times.setdefault(room, []).append(now)

    async def compact(self, room: str, build: Build = build_here) -> Compaction:
        stored = await self.load(room)
        before = sum(map(len, stored.updates))
        snap = await build(stored.updates)
        offset = len(stored.updates) - stored.log_rows
        kept = [stored.updates[i] for i in snap.pending if i >= offset]
        self._snapshots[room] = snap.update
        self._logs[room] = kept
        self._times[room] = [stored.times[i] for i in snap.pending if i >= offset]
        return Compaction(
            rows_before=stored.log_rows,
            rows_after=len(kept),
            bytes_before=before,
            bytes_after=len(snap.update) + sum(map(len, kept)),
        )

    async def ping(self) -> None:
        return None

    async def aclose(self) -> None:
        self._logs.clear()
        self._times.clear()
        self._snapshots.clear()
