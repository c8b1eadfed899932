"""Group commit: the single writer between every room and the store.

Rooms hand over updates with :meth:`Committer.submit`, which never blocks. One
task takes whatever has queued up (at most ``batch_max``) and appends it in one
transaction; updates that arrive while a commit is in flight share the next one.
Only after the commit returns are the rooms told (:meth:`Durable.durable`), and
only then do they echo the updates. So an echo always means "on disk", and the
fsync cost is shared by everything that arrived together.

Compactions run in the same task, between batches, so the store never sees two
writers. A failing commit is retried with backoff and never dropped: the rooms
simply hold their echoes until it succeeds.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import anyio
from anyio.abc import TaskStatus

from ysyncd.errors import StoreError
from ysyncd.store import Compaction, UpdateStore

__all__ = ["Committer", "Durable"]

log = logging.getLogger("ysyncd.commits")

_RETRY_FIRST = 0.05
_RETRY_MAX = 5.0


class Durable(Protocol):
    """Told, in order, how far its submitted updates are on disk."""

    def durable(self, seq: int) -> None: ...


@dataclass(slots=True)
class _Pending:
    room: str
    update: bytes
    owner: Durable
    seq: int


CompactionDone = Callable[[Compaction | None], None]


class Committer:
    """The one writer: batches appends from all rooms into shared transactions."""

    def __init__(
        self, store: UpdateStore, *, batch_max: int = 4096, queue_max: int = 65536
    ) -> None:
        self.store = store
        self._batch_max = batch_max
        self._queue_max = queue_max
        self._queue: deque[_Pending] = deque()
        self._compactions: dict[str, CompactionDone] = {}
        self._wakeup = asyncio.Event()
        self._room_for_more = asyncio.Event()
        self._room_for_more.set()
        self._submitted = 0
        self._committed = 0
        self._flush_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._stopping = False
        #: False while commits are failing; ``/healthz`` reports it.
        self.healthy = True

    @property
    def backlog(self) -> int:
        """Updates submitted and not yet committed."""
        return self._submitted - self._committed

    def submit(self, room: str, update: bytes, owner: Durable, seq: int) -> None:
        """Queue one update; ``owner.durable(seq)`` is called once it is on disk."""
        self._queue.append(_Pending(room, update, owner, seq))
        self._submitted += 1
        if len(self._queue) >= self._queue_max:
            self._room_for_more.clear()
        self._wakeup.set()

    async def wait_for_room(self) -> None:
        """Return once the queue is below its limit; readers call this per frame."""
        if not self._room_for_more.is_set():
            await self._room_for_more.wait()

    def request_compaction(self, room: str, done: CompactionDone) -> None:
        """Compact ``room`` soon; ``done`` gets the result, or None on failure."""
        self._compactions.setdefault(room, done)
        self._wakeup.set()

    async def flush(self) -> None:
        """Return once everything submitted before this call is committed."""
        target = self._submitted
        if self._committed >= target:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._flush_waiters.append((target, waiter))
        await waiter

    def stop(self) -> None:
        """Let :meth:`run` return once the queue is empty."""
        self._stopping = True
        self._wakeup.set()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """The writer loop. Returns after :meth:`stop` once everything is committed."""
        task_status.started()
        while True:
            if not self._queue and not self._compactions:
                if self._stopping:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
            if self._queue:
                await self._commit_next_batch()
            elif self._compactions:
                await self._compact_one()

    async def _commit_next_batch(self) -> None:
        count = min(len(self._queue), self._batch_max)
        batch = [self._queue[i] for i in range(count)]
        await self._append_with_retry([(p.room, p.update) for p in batch])
        for _ in range(count):
            self._queue.popleft()
        self._committed += count
        if len(self._queue) < self._queue_max:
            self._room_for_more.set()
        # Tell each owner once, with its highest sequence number in the batch.
        latest: dict[int, _Pending] = {}
        for pending in batch:
            latest[id(pending.owner)] = pending
        for pending in latest.values():
            pending.owner.durable(pending.seq)
        self._wake_flushers()

    async def _append_with_retry(self, rows: list[tuple[str, bytes]]) -> None:
        delay = _RETRY_FIRST
        failures = 0
        while True:
            try:
                await self.store.append(rows)
            except (OSError, StoreError) as exc:
                failures += 1
                self.healthy = False
                log.error(
                    "commit of %d updates failed (attempt %d), retrying in %.2f s: %s",
                    len(rows),
                    failures,
                    delay,
                    exc,
                )
                await anyio.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX)
                continue
            if failures:
                log.warning("commit succeeded after %d failed attempts", failures)
            self.healthy = True
            return

    async def _compact_one(self) -> None:
        room, done = next(iter(self._compactions.items()))
        del self._compactions[room]
        try:
            result: Compaction | None = await self.store.compact(room)
        except (OSError, StoreError):
            log.exception("compaction of room %r failed; its log is left as it was", room)
            result = None
        done(result)

    def _wake_flushers(self) -> None:
        still: list[tuple[int, asyncio.Future[None]]] = []
        for target, waiter in self._flush_waiters:
            if target <= self._committed:
                if not waiter.done():
                    waiter.set_result(None)
            else:
                still.append((target, waiter))
        self._flush_waiters = still

