"""RoomRegistry: loads rooms on first use, ticks them, and drops them when idle.

Loading is single-flight per room: racing first joins all wait for the one
load, which runs in the registry's own task group so that a joiner giving up
cannot cancel it for the others. A room enters the registry only fully loaded,
so nobody ever sees it empty while its history is still being read. Building
the doc (CPU-bound pycrdt work) runs in a worker thread.

A room whose last peer left is dropped after ``idle_seconds``, and only once
the committer has flushed everything submitted so far, so a quick reconnect
never rebuilds a room from a store that is missing its last updates. A join
during that wait cancels the eviction and reuses the room as it is.

Building a big room's document (a load, or a rebuild) is replayed in the
worker process (:mod:`ysyncd.worker`), and only its result is applied here, a
slice at a time, so other rooms are served meanwhile. Small rooms are built
at once: the hop would cost more.

Once a second every room is ticked (awareness expiry, coalesced relays). A
tainted room (see :mod:`ysyncd.room`) is rebuilt here from the store plus its
updates still waiting for their commit; if that keeps failing, its peers are
closed with 1011 and the room is dropped, so the next join loads it afresh.

All of this runs in the server's task group, so nothing raised while
loading, rebuilding, ticking or evicting one room may escape: it fails that
room (logged), and never the server.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio
from anyio.abc import TaskGroup
from pycrdt import Doc
from websockets.frames import CloseCode

from ysyncd.cluster import Cluster
from ysyncd.commits import Committer
from ysyncd.errors import StoreError, YsyncdError
from ysyncd.integrate import UpdatePolicy, apply_pieces
from ysyncd.presence import AwarenessPolicy
from ysyncd.room import Room
from ysyncd.roomtypes import ROOM_DELETED, FanOut, send_each
from ysyncd.spawn import start_soon
from ysyncd.store import StoredRoom
from ysyncd.store.snapshot import doc_from_updates, prepare
from ysyncd.worker import Worker

__all__ = ["RoomRegistry", "Setup"]

#: Runs once on a freshly loaded room, before anyone joins it.
Setup = Callable[[Room], Awaitable[None]]

log = logging.getLogger("ysyncd.rooms")

_TICK_SECONDS = 1.0
_REBUILD_ATTEMPTS = 5
# Below these, replaying a room's history takes a few milliseconds, less
# than a trip to the worker.
_INLINE_BUILD_BYTES = 256 * 1024
_INLINE_BUILD_ROWS = 2000


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
        fan_out: FanOut = send_each,
        updates: UpdatePolicy = UpdatePolicy(),  # noqa: B008 - frozen
        worker: Worker | None = None,
        cluster: Cluster | None = None,
    ) -> None:
        self._committer = committer
        self._cluster = cluster
        if cluster is not None:
            cluster.read_doc = self.read_doc
            cluster.on_deleted = self._deleted_elsewhere
        self._fan_out = fan_out
        self._updates = updates
        self._worker = worker
        self._tg = task_group
        self._idle_seconds = idle_seconds
        self._policy = policy
        self._clock = clock
        self.rooms: dict[str, Room] = {}
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
            for room in [r for r in self.rooms.values() if r.needs_tick]:
                try:
                    room.tick(now)
                except Exception:  # one room's bug must not stop the others'
                    log.exception("tick of room %r failed", room.key)

    async def acquire(self, key: str, setup: Setup | None = None) -> Room:
        """The loaded room ``key``, counted as in use until :meth:`release`.

        ``setup`` runs once, when the room is loaded and before anyone joins
        it (a Jupyter room reads its file there); if it raises, the load fails.
        """
        while True:
            room = self.rooms.get(key)
            if room is None:
                loading = self._loading.get(key)
                if loading is None:
                    loading = asyncio.get_running_loop().create_future()
                    self._loading[key] = loading
                    self._tg.start_soon(self._load, key, loading, setup)
                room = await asyncio.shield(loading)
            # While we waited, the room may have been loaded, used and evicted.
            if self.rooms.get(key) is room:
                break
        room.refs += 1
        eviction = self._evictions.pop(key, None)
        if eviction is not None:
            eviction.cancel()
        return room

    def remove(self, key: str) -> Room | None:
        """Take ``key`` out of memory now (its room is being deleted); the
        next join loads it afresh. Returns the room, if it was loaded."""
        room = self.rooms.get(key)
        if room is not None:
            self._drop(key)
            if room.document is not None:
                room.document.stop()  # a Jupyter room's file is left alone
            eviction = self._evictions.pop(key, None)
            if eviction is not None:
                eviction.cancel()
        return room

    def deleted(self, key: str) -> None:
        """``key`` was deleted here: tell the other nodes, which drop it."""
        if self._cluster is not None:
            self._cluster.deleted(key)

    def _deleted_elsewhere(self, key: str) -> None:
        room = self.remove(key)
        if room is not None:
            room.fail(ROOM_DELETED, "room deleted")

    def release(self, room: Room) -> None:
        """Stop counting one use; schedule eviction when nobody uses the room."""
        room.refs -= 1
        if room.refs == 0 and self.rooms.get(room.key) is room:
            scope = anyio.CancelScope()
            self._evictions[room.key] = scope
            self._tg.start_soon(self._evict_when_idle, room, scope)

    async def _read(
        self, key: str, extra: Sequence[bytes] = ()
    ) -> tuple[Doc[Any], StoredRoom]:
        stored = await self._committer.store.load(key)
        updates = stored.updates + list(extra)
        if self._worker is None or (
            sum(map(len, updates)) < _INLINE_BUILD_BYTES
            and len(updates) < _INLINE_BUILD_ROWS
        ):
            return doc_from_updates(updates), stored
        # CPU-bound in pycrdt, which holds the GIL: replayed in the worker
        # process, and its result applied here a slice at a time.
        prepared = await self._worker.run(
            prepare,
            updates,
            max_structs=self._updates.piece_structs,
            max_ranges=self._updates.piece_ranges,
        )
        doc: Doc[Any] = Doc()
        await apply_pieces(doc, prepared.pieces + prepared.pending)
        return doc, stored

    async def read_doc(self, key: str) -> Doc[Any]:
        """``key``'s document as the store holds it (a cluster's repair)."""
        doc, _ = await self._read(key)
        return doc

    async def _load(
        self, key: str, loading: asyncio.Future[Room], setup: Setup | None
    ) -> None:
        started = time.perf_counter()
        try:
            if self._cluster is not None:
                # Before the read: what others commit from now on is either
                # in what is read or in a message that follows.
                await self._cluster.attach(key)
            doc, stored = await self._read(key)
        except Exception as exc:  # whatever the store or pycrdt raised
            log.exception("loading room %r failed", key)
            self._fail_load(
                key, loading, StoreError(f"cannot load room {key!r}: {exc}")
            )
            return
        room = Room(
            key,
            doc,
            self._committer,
            policy=self._policy,
            clock=self._clock,
            on_taint=self._rebuild_soon,
            fan_out=self._fan_out,
            updates=self._updates,
        )
        self._committer.track(
            key,
            stored.log_rows,
            stored.snapshot_bytes,
            sum(map(len, stored.updates)) - stored.snapshot_bytes,
        )
        if setup is not None:
            try:
                await setup(room)
            except YsyncdError as exc:
                log.warning("setting up room %r failed: %s", key, exc)
                self._committer.forget(key)
                self._fail_load(key, loading, exc)
                return
            except Exception:  # a bug there must fail this room only
                log.exception("setting up room %r failed", key)
                self._committer.forget(key)
                self._fail_load(key, loading, StoreError(f"cannot set up {key!r}"))
                return
        del self._loading[key]
        self.rooms[key] = room
        if self._cluster is not None:
            try:
                self._cluster.bind(room)
            except Exception:  # a bug there must fail this room's sync only
                log.exception("room %r: following other nodes failed", key)
        loading.set_result(room)
        log.info(
            "room %r loaded: %d stored rows in %.1f ms",
            key,
            stored.log_rows,
            (time.perf_counter() - started) * 1000,
        )

    def _fail_load(
        self, key: str, loading: asyncio.Future[Room], exc: YsyncdError
    ) -> None:
        del self._loading[key]
        if self._cluster is not None:
            self._cluster.detach(key)
        loading.set_exception(exc)
        loading.exception()  # retrieved: joiners that gave up must not warn

    def _rebuild_soon(self, room: Room) -> None:
        start_soon(self._tg, self._rebuild, room)

    async def _rebuild(self, room: Room) -> None:
        try:
            await self._rebuild_with_retries(room)
        except Exception:  # a bug there must fail this room only
            log.exception("rebuilding room %r failed", room.key)
            self._give_up(room)

    async def _rebuild_with_retries(self, room: Room) -> None:
        # Re-applying updates that committed meanwhile is harmless: Yjs
        # integration is idempotent. Peers of this room wait until it is done.
        delay = 0.1
        for attempt in range(1, _REBUILD_ATTEMPTS + 1):
            try:
                doc, _ = await self._read(room.key, room.uncommitted)
            except Exception:  # whatever the store or pycrdt raised
                log.exception(
                    "rebuilding room %r failed (attempt %d)", room.key, attempt
                )
                await anyio.sleep(delay)
                delay *= 2
                continue
            room.replace_doc(doc)
            log.info("room %r rebuilt from the store", room.key)
            return
        log.error("room %r could not be rebuilt; closing its peers", room.key)
        self._give_up(room)

    def _give_up(self, room: Room) -> None:
        """Never serve a doc that may hold half an invalid update: drop the
        room, so the next join loads it afresh."""
        if self.rooms.get(room.key) is room:
            self._drop(room.key)
        room.fail(CloseCode.INTERNAL_ERROR, "room reset; reconnect")

    async def _evict_when_idle(self, room: Room, scope: anyio.CancelScope) -> None:
        try:
            with scope:
                await anyio.sleep(self._idle_seconds)
                if room.document is not None:
                    # The last save; a join meanwhile keeps the room as it is.
                    with anyio.CancelScope(shield=True):
                        await self._last_save(room)
                await self._committer.flush()
        finally:
            if self._evictions.get(room.key) is scope:
                del self._evictions[room.key]
        if scope.cancel_called or room.refs or self.rooms.get(room.key) is not room:
            return
        self._drop(room.key)
        if room.document is not None:
            try:
                room.document.stop()
            except Exception:  # the room is gone either way
                log.exception("room %r: stopping its file binding failed", room.key)
        log.info("room %r evicted after %.0f s idle", room.key, self._idle_seconds)

    def _drop(self, key: str) -> None:
        del self.rooms[key]
        self._committer.forget(key)
        if self._cluster is not None:
            self._cluster.detach(key)

    @staticmethod
    async def _last_save(room: Room) -> None:
        assert room.document is not None
        try:
            await room.document.save_if_changed()
        except Exception:
            # Its updates are in the store all the same: the file waits for
            # the next load, and the room goes.
            log.exception("room %r: the save before eviction failed", room.key)
