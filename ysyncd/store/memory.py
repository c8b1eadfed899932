"""An in-memory store: the test double of the store contract, and ``--db memory://``.

Nothing survives the process, so it is for tests and throw-away servers only.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from ysyncd.store.base import Build, Compaction, StoredRoom, build_here

__all__ = ["MemoryStore"]


class MemoryStore:
    """Keeps every room's snapshot and log in dicts."""

    def __init__(self) -> None:
        self._epoch = uuid.uuid4().hex
        self._snapshots: dict[str, bytes] = {}
        self._logs: dict[str, list[bytes]] = {}

    @property
    def epoch(self) -> str:
        return self._epoch

    async def load(self, room: str) -> StoredRoom:
        log = list(self._logs.get(room, ()))
        snapshot = self._snapshots.get(room)
        head = [snapshot] if snapshot else []
        return StoredRoom(head + log, len(log), len(snapshot or b""))

    async def append(self, batch: Sequence[tuple[str, bytes]]) -> None:
        for room, update in batch:
            self._logs.setdefault(room, []).append(update)

    async def compact(self, room: str, build: Build = build_here) -> Compaction:
        stored = await self.load(room)
        before = sum(map(len, stored.updates))
        snap = await build(stored.updates)
        offset = len(stored.updates) - stored.log_rows
        kept = [stored.updates[i] for i in snap.pending if i >= offset]
        self._snapshots[room] = snap.update
        self._logs[room] = kept
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
        self._snapshots.clear()
