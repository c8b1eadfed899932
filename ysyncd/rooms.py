"""RoomRegistry: loads rooms on first use, ticks them, and drops them when idle.

Loading is single-flight per room: racing first joins all wait for the one
load, which runs in the registry's own task group so that a joiner giving up
cannot cancel it for the others. A room enters the registry only fully loaded,
so nobody ever sees it empty while its history is still being read.

A room whose last peer left is dropped after ``idle_seconds``, and only once
the committer has flushed everything submitted so far, so a quick reconnect
never rebuilds a room from a store that is missing its last updates. A join
during that wait cancels the eviction and reuses the room as it is.

Once a second every room is ticked (awareness expiry, coalesced relays). A
tainted room (see :mod:`ysyncd.room`) is rebuilt here from the store plus its
updates still waiting for their commit.
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
from ysyncd.room import AwarenessPolicy, Room

__all__ = ["RoomRegistry"]

log = logging.getLogger("ysyncd.rooms")

_TICK_SECONDS = 1.0
_REBUILD_ATTEMPTS = 10


class RoomRegistry:
    """Every room in memory, keyed by name."""

    def __init__(
        self,
        committer: Committer,
        task_group: TaskGroup,
        *,
        idle_seconds: float = 30.0,
        policy: AwarenessPolicy = AwarenessPolicy(),  # noqa: B008 - frozen
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._committer = committer
        self._tg = task_group
        self._idle_seconds = idle_seconds
        self._policy = policy
        self._clock = clock
        self.rooms: dict[str, Room] = {}
        self._refs: dict[str, int] = {}
        self._loading: dict[str, asyncio.Future[Room]] = {}
        self._evictions: dict[str, anyio.CancelScope] = {}

    @property
    def loading(self) -> int:
        """Rooms whose load is under way."""
        return len(self._loading)

    async def run_ticks(self) -> None:
        """Tick every room once a second, forever (run it in the task group)."""
        while True:
            await anyio.sleep(_TICK_SECONDS)
            now = self._clock()
            for room in list(self.rooms.values()):
                room.tick(now)

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

    async def _build_doc(self, key: str, extra: list[bytes]) -> tuple[Doc[Any], int]:
        stored = await self._committer.store.load(key)
        doc: Doc[Any] = Doc()
        for update in stored.updates + extra:
            doc.apply_update(update)
        return doc, stored.log_rows

    async def _load(self, key: str, loading: asyncio.Future[Room]) -> None:
        started = time.perf_counter()
        try:
            doc, log_rows = await self._build_doc(key, [])
        except (StoreError, OSError, ValueError, RuntimeError) as exc:
            log.exception("loading room %r failed", key)
            del self._loading[key]
            loading.set_exception(StoreError(f"cannot load room {key!r}: {exc}"))
            loading.exception()  # retrieved: joiners that gave up must not warn
            return
        room = Room(
            key,
            doc,
            self._committer,
            policy=self._policy,
            clock=self._clock,
            on_taint=self._rebuild_soon,
        )
        del self._loading[key]
        self.rooms[key] = room
        self._committer.track(key, log_rows)
        loading.set_result(room)
        log.info(
            "room %r loaded: %d stored rows in %.1f ms",
            key,
            log_rows,
            (time.perf_counter() - started) * 1000,
        )

    def _rebuild_soon(self, room: Room) -> None:
        self._tg.start_soon(self._rebuild, room)

    async def _rebuild(self, room: Room) -> None:
        # Re-applying updates that committed meanwhile is harmless: Yjs
        # integration is idempotent. Peers of this room wait until it is done.
        delay = 0.1
        for attempt in range(1, _REBUILD_ATTEMPTS + 1):
            try:
                doc, _ = await self._build_doc(room.key, room.uncommitted)
            except (StoreError, OSError, ValueError, RuntimeError):
                log.exception(
                    "rebuilding room %r failed (attempt %d)", room.key, attempt
                )
                await anyio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            room.replace_doc(doc)
            log.info("room %r rebuilt from the store", room.key)
            return
        log.error("room %r could not be rebuilt; it keeps its current doc", room.key)
        room.replace_doc(room.doc)

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
        log.info("room %r evicted after %.0f s idle", room.key, self._idle_seconds)
