"""Group commit: the single writer between every room and the store.

Rooms hand over updates with :meth:`Committer.submit`, which never blocks.
What queued up in one turn of the event loop (at most ``batch_max``) is
appended in one transaction; updates that arrive while a commit is in flight
share the next one. Only after the commit returns are the rooms told
(:meth:`Durable.durable`), and only then do they echo the updates. So an echo
always means "on disk", and the fsync cost is shared by everything that
arrived together.

A small commit is made by a callback at the end of the loop's turn, on the
loop's thread, when the store can do that cheaply
(:meth:`~ysyncd.store.UpdateStore.append_inline`): no task wakes and no
thread is switched to, which at one update per commit cost more CPU than
the insert. Otherwise one task appends it, awaiting the store; commits never
overlap, so rooms learn of them in order.

The committer also counts each room's log rows and compacts a room once its log
passes ``compact_after`` rows, or more for a big document (see
:data:`ROW_COST_BYTES`), so that compaction work stays linear in what is
written. One compaction runs at a time, beside the commits: the store builds
the snapshot without holding the write lock, so commits are not held up.

A failing commit is retried with backoff and never dropped: the rooms simply
hold their echoes until it succeeds.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import anyio
from anyio.abc import TaskStatus

from ysyncd.errors import StoreError
from ysyncd.store import Compaction, UpdateStore
from ysyncd.store.base import Build, build_here

__all__ = ["Committer", "Durable"]

log = logging.getLogger("ysyncd.commits")

#: Applying one log row costs about as much as applying this many snapshot
#: bytes (measured with pycrdt 0.14). A log is compacted once replaying it would
#: cost at least half as much as applying the snapshot, which bounds a cold
#: load to about twice the snapshot's cost and each byte's compaction work to
#: a constant number of rebuilds.
ROW_COST_BYTES = 400
#: A log's bytes cost more to replay than a snapshot's (20 rows of 1 MiB of
#: text: 130 ms, against 25 ms for the 20 MiB snapshot), so a log that holds
#: as many bytes as the snapshot (or this many, for a small one) is due too,
#: once the room is quiet, however few its rows: a big paste does not make
#: every cold load slow.
LOG_BYTES_MIN = 2**20
# A room still being written to is compacted when it has been quiet this long,
# or when its log reaches this many times its threshold anyway.
_QUIET_SECONDS = 2.0
_HOT_FACTOR = 16

#: The most update bytes in one commit (one update may be bigger alone).
_BATCH_BYTES = 64 * 2**20
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
    arrived: float  # time.monotonic() at submit
    author: str | None


class Committer:
    """The one writer: batches appends from all rooms into shared transactions."""

    def __init__(
        self,
        store: UpdateStore,
        *,
        batch_max: int = 4096,
        queue_max: int = 65536,
        compact_after: int = 1000,
        build: Build = build_here,
    ) -> None:
        self.store = store
        self._batch_max = batch_max
        self._queue_max = queue_max
        self._compact_after = compact_after
        self._build = build
        self._queue: deque[_Pending] = deque()
        # Per room in memory: log rows on disk, rows left by the last compaction
        # (rows it had to keep), rows that make it due; then the rooms due.
        self._log_rows: dict[str, int] = {}
        self._kept_rows: dict[str, int] = {}
        self._log_bytes: dict[str, int] = {}
        self._snapshot_bytes: dict[str, int] = {}
        self._due_rows: dict[str, int] = {}
        self._quiet_due: dict[str, float] = {}  # room -> time of its last write
        self._compactions: dict[str, None] = {}
        self._wakeup = asyncio.Event()
        self._room_for_more = asyncio.Event()
        self._room_for_more.set()
        self._submitted = 0
        self._committed = 0
        self._flush_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._loop: asyncio.AbstractEventLoop | None = None  # set by run()
        self._kicked = False  # a _kick is scheduled
        self._committing = False  # the task's commit is in flight
        self._stopping = False
        self._stopped = asyncio.Event()
        self._compacting = False
        self._compaction_done = asyncio.Event()
        #: False while commits are failing; ``/healthz`` reports it.
        self.healthy = True
        self.stats_commits = 0
        self.stats_compactions = 0
        #: Told of every commit, after the rooms (a cluster publishes it,
        #: webhooks note the rooms).
        self.listeners: list[Callable[[list[tuple[str, bytes]]], None]] = []
        #: Told of each commit's oldest update: how long it waited until it
        #: was durable, and until the rooms had sent it (seconds).
        self.on_latency: Callable[[float, float], None] | None = None

    @property
    def committed(self) -> int:
        """Updates committed since start."""
        return self._committed

    @property
    def backlog(self) -> int:
        """Updates submitted and not yet committed."""
        return self._submitted - self._committed

    def submit(
        self,
        room: str,
        update: bytes,
        owner: Durable,
        seq: int,
        author: str | None = None,
    ) -> None:
        """Queue one update, written by ``author``; ``owner.durable(seq)`` is
        called once it is on disk."""
        self._queue.append(_Pending(room, update, owner, seq, time.monotonic(), author))
        self._submitted += 1
        if len(self._queue) >= self._queue_max:
            self._room_for_more.clear()
        if self._kicked:
            return
        if self._loop is None or self._committing:
            self._wakeup.set()
            return
        self._kicked = True
        self._loop.call_soon(self._kick)

    def _kick(self) -> None:
        """Commit what queued in the loop's last turn, here and now if the
        store can do it inline; else hand it to the task."""
        self._kicked = False
        if not self._queue:
            return
        if self._committing or self._stopping:
            self._wakeup.set()
            return
        batch = self._next_batch()
        try:
            done = self.store.append_inline(
                [(p.room, p.update) for p in batch], [p.author for p in batch]
            )
        except StoreError as exc:  # the task retries it, with backoff
            log.warning("an inline commit failed; retrying: %s", exc)
            done = False
        if not done:
            self._wakeup.set()
            return
        self._committed_batch(batch, time.monotonic())
        if self._queue:  # more than one batch's worth
            self._wakeup.set()

    @property
    def has_room(self) -> bool:
        """False while the queue is at its limit (see :meth:`wait_for_room`)."""
        return self._room_for_more.is_set()

    async def wait_for_room(self) -> None:
        """Return once the queue is below its limit; readers call this per frame."""
        if not self._room_for_more.is_set():
            await self._room_for_more.wait()

    def track(
        self, room: str, log_rows: int, snapshot_bytes: int = 0, log_bytes: int = 0
    ) -> None:
        """Start counting ``room``'s log rows (it was just loaded with this many)."""
        self._log_rows[room] = log_rows
        self._log_bytes[room] = log_bytes
        self._set_due(room, snapshot_bytes)
        self._count(room, 0, 0)

    def forget(self, room: str) -> None:
        """Stop counting ``room`` (it left memory); compact it now if it is due."""
        if self._quiet_due.pop(room, None) is not None:
            self._compactions[room] = None
            self._wakeup.set()
        self._log_rows.pop(room, None)
        self._kept_rows.pop(room, None)
        self._due_rows.pop(room, None)
        self._log_bytes.pop(room, None)
        self._snapshot_bytes.pop(room, None)

    def _set_due(self, room: str, snapshot_bytes: int) -> None:
        rows = snapshot_bytes // (2 * ROW_COST_BYTES)
        self._due_rows[room] = max(self._compact_after, rows)
        self._snapshot_bytes[room] = snapshot_bytes

    def _count(self, room: str, added: int, added_bytes: int) -> None:
        rows = self._log_rows.get(room)
        if rows is None:
            return
        rows += added
        self._log_rows[room] = rows
        self._log_bytes[room] += added_bytes
        # Only rows make a busy room compact: bytes wait for it to go quiet,
        # so a room churning big edits is not rebuilt again and again.
        if self._due_by_rows(room) >= _HOT_FACTOR:
            self._quiet_due.pop(room, None)
            self._compactions[room] = None
            self._wakeup.set()
        elif self._due(room) >= 1:
            # A room still being written to is compacted once it goes quiet:
            # its cold-load time does not matter while it is loaded.
            if room not in self._quiet_due:
                self._wakeup.set()  # the task sets its timer by the quiet rooms
            self._quiet_due[room] = time.monotonic()

    def _due(self, room: str) -> float:
        """How many times over its threshold ``room``'s log is (1 = due)."""
        # Count from what the last compaction left, so rows it had to keep
        # (or a failed attempt) do not make every batch compact again.
        if room not in self._log_rows:
            return 0.0
        by_bytes = self._log_bytes[room] / max(
            self._snapshot_bytes[room], LOG_BYTES_MIN
        )
        return max(self._due_by_rows(room), by_bytes)

    def _due_by_rows(self, room: str) -> float:
        rows = self._log_rows.get(room)
        if rows is None:
            return 0.0
        return (rows - self._kept_rows.get(room, 0)) / self._due_rows[room]

    def _promote_quiet(self, now: float) -> float | None:
        """Queue quiet rooms that are due; return seconds until the next one is."""
        wait: float | None = None
        for room, last_write in list(self._quiet_due.items()):
            left = last_write + _QUIET_SECONDS - now
            if left <= 0:
                del self._quiet_due[room]
                self._compactions[room] = None
            else:
                wait = left if wait is None else min(wait, left)
        return wait

    async def flush(self) -> None:
        """Return once everything submitted before this call is committed."""
        target = self._submitted
        if self._committed >= target:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._flush_waiters.append((target, waiter))
        await waiter

    def stop(self) -> None:
        """Let :meth:`run` return once the queue and the compactions are done."""
        self._stopping = True
        self._compactions.update(dict.fromkeys(self._quiet_due))
        self._quiet_due.clear()
        self._wakeup.set()

    async def wait_stopped(self) -> None:
        """Return once :meth:`run` has returned after :meth:`stop`."""
        await self._stopped.wait()

    async def run(
        self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """The writer loop. Returns after :meth:`stop` once everything is committed."""
        self._loop = asyncio.get_running_loop()
        task_status.started()
        try:
            async with anyio.create_task_group() as tg:
                while self._queue or self._compactions or not self._stopping:
                    if self._queue:
                        await self._commit_next_batch()
                    if self._compactions and not self._compacting:
                        self._compacting = True
                        self._compaction_done = asyncio.Event()
                        tg.start_soon(self._compact_one)
                    if not (self._queue or self._stopping):
                        self._wakeup.clear()
                        wait = self._promote_quiet(time.monotonic())
                        if not self._compactions or self._compacting:
                            if not wait:
                                # No deadline: a cancel scope per idle
                                # wait cost more than the rest of a commit.
                                await self._wakeup.wait()
                            else:
                                with anyio.move_on_after(wait):
                                    await self._wakeup.wait()
                    elif not self._queue and self._compacting:
                        await self._compaction_done.wait()
        finally:
            self._stopped.set()

    def _next_batch(self) -> list[_Pending]:
        batch: list[_Pending] = []
        size = 0
        for pending in itertools.islice(self._queue, self._batch_max):
            # Bounded in bytes too: one statement carries the whole batch
            # (PostgreSQL refuses a parameter over 1 GB).
            if batch and size + len(pending.update) > _BATCH_BYTES:
                break
            batch.append(pending)
            size += len(pending.update)
        return batch

    async def _commit_next_batch(self) -> None:
        batch = self._next_batch()
        rows = [(p.room, p.update) for p in batch]
        self._committing = True
        try:
            await self._append_with_retry(rows, [p.author for p in batch])
        finally:
            self._committing = False
        self._committed_batch(batch, time.monotonic())

    def _committed_batch(self, batch: list[_Pending], durable_at: float) -> None:
        """Take the durable ``batch`` off the queue and tell everyone."""
        count = len(batch)
        for _ in range(count):
            self._queue.popleft()
        self._committed += count
        self.stats_commits += 1
        if len(self._queue) < self._queue_max:
            self._room_for_more.set()
        # Tell each owner once, with its highest sequence number in the batch.
        latest: dict[int, _Pending] = {}
        added: dict[str, tuple[int, int]] = {}
        for pending in batch:
            latest[id(pending.owner)] = pending
            count, size = added.get(pending.room, (0, 0))
            added[pending.room] = (count + 1, size + len(pending.update))
        for pending in latest.values():
            try:
                pending.owner.durable(pending.seq)
            except Exception:  # one room's bug must not stall the others
                log.exception("durability callback of room %r failed", pending.room)
        if self.on_latency is not None:
            oldest = batch[0].arrived
            self.on_latency(durable_at - oldest, time.monotonic() - oldest)
        made = [(p.room, p.update) for p in batch] if self.listeners else []
        for listener in self.listeners:
            try:
                listener(made)
            except Exception:  # the commit stands; other nodes repair
                log.exception("telling %r of a commit failed", listener)
        for room, (rows_added, size) in added.items():
            self._count(room, rows_added, size)
        self._wake_flushers()

    async def _append_with_retry(
        self, rows: list[tuple[str, bytes]], authors: list[str | None]
    ) -> None:
        delay = _RETRY_FIRST
        failures = 0
        while True:
            try:
                await self.store.append(rows, authors)
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
        room = next(iter(self._compactions))
        del self._compactions[room]
        try:
            if self._due(room) < 1 and room in self._log_rows:
                return  # a compaction that ran meanwhile already did the work
            result: Compaction = await self.store.compact(room, self._build)
        except Exception:  # the log is left as it was; the store rolled back
            log.exception("compaction of room %r failed; its log is kept", room)
            if room in self._log_rows:
                self._kept_rows[room] = self._log_rows[room]
        else:
            self.stats_compactions += 1
            if room in self._log_rows:
                # Rows appended meanwhile stay counted; the compacted ones go.
                removed = result.rows_before - result.rows_after
                self._log_rows[room] -= removed
                self._kept_rows[room] = result.rows_after
                # Rows appended meanwhile are not counted in bytes: at worst,
                # the next compaction comes a little later.
                self._log_bytes[room] = 0
                self._set_due(room, result.bytes_after)
        finally:
            self._compacting = False
            self._compaction_done.set()
            self._wakeup.set()

    def _wake_flushers(self) -> None:
        still: list[tuple[int, asyncio.Future[None]]] = []
        for target, waiter in self._flush_waiters:
            if waiter.done():  # its waiter was cancelled
                continue
            if target <= self._committed:
                waiter.set_result(None)
            else:
                still.append((target, waiter))
        self._flush_waiters = still
