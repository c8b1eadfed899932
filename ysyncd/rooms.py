"""RoomRegistry: loads rooms on first use and drops them when idle.

Loading is single-flight per room: racing first joins all wait for the one
load, which runs in the registry's own task group so that a joiner giving up
cannot cancel it for the others. A room enters the registry only fully loaded,
so nobody ever sees it empty while its history is still being read.

A room whose last peer left is dropped after ``idle_seconds``, and only once
the committer has flushed everything submitted so far, so a quick reconnect
never rebuilds a room from a store that is missing its last updates. A join
during that wait cancels the eviction and reuses the room as it is.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import anyio
from anyio.abc import TaskGroup
from pycrdt import Doc

from ysyncd.commits import Committer
from ysyncd.errors import StoreError
from ysyncd.room import Room

__all__ = ["RoomRegistry"]

log = logging.getLogger("ysyncd.rooms")


class RoomRegistry:
    """Every room in memory, keyed by name."""

    def __init__(
        self,
        committer: Committer,
        task_group: TaskGroup,
        *,
        idle_seconds: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._committer = committer
        self._tg = task_group
        self._idle_seconds = idle_seconds
        self._clock = clock
        self.rooms: dict[str, Room] = {}
        self._refs: dict[str, int] = {}
        self._loading: dict[str, asyncio.Future[Room]] = {}
        self._evictions: dict[str, anyio.CancelScope] = {}

    async def acquire(self, key: str) -> Room:
        """The loaded room ``key``, counted as in use until :meth:`release`."""
        room = self.rooms.get(key)
        if room is None:
            loading = self._loading.get(key)
            if loading is None:
                loading = asyncio.get_running_loop().create_future()
                self._loading[key] = loading
                self._tg.start_soon(self._load, key, loading)
            room = await asyncio.shield(loading)
        self._refs[key] = self._refs.get(key, 0) + 1
        eviction = self._evictions.pop(key, None)
        if eviction is not None:
            eviction.cancel()
        return room

    def release(self, room: Room) -> None:
        """Stop counting one use; schedule eviction when nobody uses the room."""
        refs = self._refs[room.key] - 1
        self._refs[room.key] = refs
        if refs == 0:
            scope = anyio.CancelScope()
            self._evictions[room.key] = scope
            self._tg.start_soon(self._evict_when_idle, room, scope)

    async def _load(self, key: str, loading: asyncio.Future[Room]) -> None:
        started = time.perf_counter()
        try:
            stored = await self._committer.store.load(key)
            doc: Doc[Any] = Doc()
            for update in stored.updates:
                doc.apply_update(update)
        except (StoreError, OSError, ValueError, RuntimeError) as exc:
            log.exception("loading room %r failed", key)
            loading.set_exception(StoreError(f"cannot load room {key!r}: {exc}"))
            return
        finally:
            del self._loading[key]
        room = Room(key, doc, self._committer, clock=self._clock)
        self.rooms[key] = room
        self._committer.track(key, stored.log_rows)
        loading.set_result(room)
        log.info(
            "room %r loaded: %d stored updates in %.1f ms",
            key,
            len(stored.updates),
            (time.perf_counter() - started) * 1000,
        )

    async def _evict_when_idle(self, room: Room, scope: anyio.CancelScope) -> None:
        with scope:
            await anyio.sleep(self._idle_seconds)
            await self._committer.flush()
        if (
            scope.cancel_called
            or self._refs.get(room.key)
            or self.rooms.get(room.key) is not room
        ):
            return
        del self.rooms[room.key]
        del self._refs[room.key]
        self._committer.forget(room.key)
        self._evictions.pop(room.key, None)
        log.info("room %r evicted after %.0f s idle", room.key, self._idle_seconds)
