"""The SQLite store: WAL, one writer connection, append-only rows.

Layout (schema version in ``PRAGMA user_version``)::

    meta(key TEXT PRIMARY KEY, value TEXT)         -- 'epoch'
    rooms(id INTEGER PRIMARY KEY, name TEXT UNIQUE, snapshot BLOB)
    updates(id INTEGER PRIMARY KEY, room_id INTEGER, data BLOB, time REAL,
            author TEXT)
    quarantine(id INTEGER PRIMARY KEY, room TEXT, row_id INTEGER, data BLOB,
               time REAL, author TEXT, reason TEXT, moved REAL)

``updates.id`` is the commit order; ``updates.time`` is when the row was
committed (Unix seconds; NULL for rows from before schema 2) and
``updates.author`` the user of the grant that wrote it (NULL before schema 3,
and for the server's own edits), for the history, never for ordering.
``quarantine`` holds rows ``ysyncd verify --repair`` moved aside (a
snapshot's with a NULL ``row_id``); nothing ever deletes them. Loads use a
second, read-only connection, so they never wait behind a commit and, in WAL
mode, always see a committed state.

Both connections run in autocommit mode, and the hot paths are one statement
each, so each costs one hop to aiosqlite's thread: an append is a single
multi-row ``INSERT`` (one statement, so one atomic transaction), and a load is
a single ``SELECT`` (so it sees one consistent snapshot). Compaction and
migrations open explicit transactions.

One ysyncd at a time serves a database: it holds an exclusive ``flock`` on
``<db>-lock`` next to it for the life of the store (see :func:`take_lock`). Two
servers on one file would each keep their own copy of a room, and their
clients would never see each other's edits.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import aiosqlite
import anyio

from ysyncd.errors import (
    StoreError,
    StoreOpenError,
)
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
    compacted,
    earliest,
    kept_rows,
)
from ysyncd.store.sqlite_inline import InlineAppender
from ysyncd.store.sqlite_open import (
    SCHEMA_VERSION,
    check_owner,
    open_error,
    prepare,
    set_up,
    take_lock,
    try_open,
    user_version,
)

__all__ = ["MAX_BATCH", "SCHEMA_VERSION", "SQLiteStore"]

log = logging.getLogger("ysyncd.store")

_ROOM_ID_CACHE = 65_536
#: Most updates in one append: four bound values a row, and SQLite allows
#: 32,766 per statement (the append must stay one statement to stay one
#: transaction).
MAX_BATCH = 8000

# The snapshot (as row 0) and the log, in order, in one consistent statement.
_LOAD = """
SELECT 0, snapshot, NULL, NULL FROM rooms WHERE name = :name
UNION ALL
SELECT u.id, u.data, u.time, u.author
FROM updates AS u JOIN rooms AS r ON r.id = u.room_id
WHERE r.name = :name
ORDER BY 1
"""


# A room's rows after a checkpoint: those compactions since moved to the
# history, and the log, in commit order.
_HISTORY_ROWS = """
SELECT row_id, data, time, author FROM history WHERE room_id = ? AND moved_in > ?
UNION ALL
SELECT id, data, time, author FROM updates WHERE room_id = ?
ORDER BY 1
"""

_ROOMS = """
SELECT r.name, count(u.id),
       coalesce(length(r.snapshot), 0) + coalesce(sum(length(u.data)), 0),
       max(u.time)
FROM rooms AS r LEFT JOIN updates AS u ON u.room_id = r.id
GROUP BY r.id ORDER BY r.name
"""


@functools.lru_cache(maxsize=64)
def _insert_sql(rows: int) -> str:
    return "INSERT INTO updates (room_id, data, time, author) VALUES " + ", ".join(
        ["(?, ?, ?, ?)"] * rows
    )


class SQLiteStore:
    """Durable update store in one SQLite file."""

    def __init__(
        self,
        writer: aiosqlite.Connection | None,
        reader: aiosqlite.Connection,
        epoch: str,
        lock: int,
        history_retention: float = DEFAULT_RETENTION,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._writer = writer
        self._reader = reader
        # Small appends on the loop's own connection (sqlite_inline.py).
        self._inline: InlineAppender | None = None
        self._epoch = epoch
        self._lock = lock  # the fd holding the flock; see take_lock()
        self._room_ids: dict[str, int] = {}
        self._write_lock = asyncio.Lock()
        self._history_lock = asyncio.Lock()
        self._retention = history_retention
        self._clock = clock

    @classmethod
    async def open(
        cls,
        path: Path,
        *,
        synchronous: str = "full",
        busy_timeout: float = 5.0,
        read_only: bool = False,
        history_retention: float = DEFAULT_RETENTION,
        clock: Callable[[], float] = time.time,
    ) -> SQLiteStore:
        """Open (creating and migrating if needed) the database at ``path``.

        Args:
            path: the database file; its folder must exist.
            synchronous: SQLite's ``synchronous`` mode, ``full`` or ``normal``.
            busy_timeout: seconds a statement waits for another process's
                lock before it fails (at open: before giving up).
            read_only: only read (the offline CLI's listings and exports):
                no lock, so a running ysyncd may hold the file, and no
                migration, so the schema must be this ysyncd's.
            history_retention: seconds of history compactions keep (0: none).
            clock: the time compactions go by (tests).

        Raises:
            StoreOpenError: ``path`` cannot be served, with the reason in a few
                words: it cannot be opened, is not a SQLite database, is
                corrupt, is another program's (:class:`ForeignDatabase`), has
                a newer schema (:class:`SchemaError`), stays locked by another
                process, or another ysyncd serves it (:class:`StoreInUse`).
        """
        read_only_uri = prepare(path)
        if read_only:
            return await cls._open_read_only(path, read_only_uri, busy_timeout)
        try:
            # aiosqlite.connect() reports a failed open from its thread after
            # the loop may have closed, printing a traceback at exit
            # (omnilib/aiosqlite#389), so a plain open finds the failure first.
            await anyio.to_thread.run_sync(try_open, path)
            writer = await aiosqlite.connect(
                path, isolation_level=None, timeout=busy_timeout
            )
        except sqlite3.Error as exc:
            raise open_error(path, exc, busy_timeout) from exc
        lock = -1
        try:
            # Read-only checks first: a file that is not ours stays unchanged.
            await check_owner(writer, path)
            lock = take_lock(path)
            epoch = await set_up(writer, path, synchronous)
            reader = await aiosqlite.connect(
                read_only_uri, uri=True, isolation_level=None, timeout=busy_timeout
            )
            inline = InlineAppender(path, synchronous)
        except BaseException as exc:
            await writer.close()
            if lock >= 0:
                os.close(lock)
            if isinstance(exc, sqlite3.Error):
                raise open_error(path, exc, busy_timeout) from exc
            raise
        store = cls(writer, reader, epoch, lock, history_retention, clock)
        store._inline = inline
        return store

    @classmethod
    async def _open_read_only(
        cls, path: Path, uri: str, busy_timeout: float
    ) -> SQLiteStore:
        try:
            reader = await aiosqlite.connect(
                uri, uri=True, isolation_level=None, timeout=busy_timeout
            )
        except sqlite3.Error as exc:
            raise open_error(path, exc, busy_timeout) from exc
        try:
            await check_owner(reader, path)
            version = await user_version(reader)
            if version != SCHEMA_VERSION:
                raise StoreOpenError(
                    str(path),
                    f"schema version {version}; `ysyncd serve` brings it to "
                    f"{SCHEMA_VERSION} first",
                )
            rows = await reader.execute_fetchall(
                "SELECT value FROM meta WHERE key = 'epoch'"
            )
            epoch = str(next(iter(rows))[0])
        except BaseException as exc:
            await reader.close()
            if isinstance(exc, sqlite3.Error):
                raise open_error(path, exc, busy_timeout) from exc
            raise
        return cls(None, reader, epoch, -1)

    @property
    def epoch(self) -> str:
        return self._epoch

    @property
    def _db(self) -> aiosqlite.Connection:
        """The writing connection; StoreError when opened read-only."""
        if self._writer is None:
            raise StoreError("the store was opened read-only")
        return self._writer

    async def load(self, room: str) -> StoredRoom:
        try:
            rows = await self._reader.execute_fetchall(_LOAD, {"name": room})
        except sqlite3.Error as exc:
            raise StoreError(f"load of room {room!r} failed: {exc}") from exc
        kept = [row for row in rows if row[1] is not None]
        log_rows = sum(1 for row in rows if row[0] != 0)
        head = len(kept) - log_rows  # 1 with a snapshot, else 0
        return StoredRoom(
            [bytes(row[1]) for row in kept],
            log_rows,
            len(kept[0][1]) if head else 0,
            [row[2] for row in kept],
            [row[3] for row in kept],
        )

    async def rooms(self) -> list[RoomSummary]:
        try:
            rows = await self._reader.execute_fetchall(_ROOMS)
        except sqlite3.Error as exc:
            raise StoreError(f"listing the rooms failed: {exc}") from exc
        return [RoomSummary(str(n), int(r), int(b), t) for n, r, b, t in rows]

    async def delete(self, room: str) -> bool:
        try:
            async with self._write_lock:
                db = self._db
                await db.execute("BEGIN IMMEDIATE")
                try:
                    for table in ("updates", "history", "checkpoints"):
                        await db.execute(
                            f"DELETE FROM {table} WHERE room_id = "
                            "(SELECT id FROM rooms WHERE name = ?)",
                            (room,),
                        )
                    gone = await db.execute_fetchall(
                        "DELETE FROM rooms WHERE name = ? RETURNING id", (room,)
                    )
                    await db.commit()
                except BaseException:
                    await db.rollback()
                    raise
                self._room_ids.pop(room, None)
        except sqlite3.Error as exc:
            raise StoreError(f"deleting room {room!r} failed: {exc}") from exc
        return bool(list(gone))

    async def append(
        self,
        batch: Sequence[tuple[str, bytes]],
        authors: Sequence[str | None] | None = None,
    ) -> None:
        # The lock keeps an append out of a compaction's open transaction,
        # where it would look committed before the transaction is.
        try:
            if len(batch) > MAX_BATCH:
                raise StoreError(f"at most {MAX_BATCH} updates per append")
            async with self._write_lock:
                now = self._clock()
                who = authors if authors is not None else [None] * len(batch)
                rows = [
                    (await self._room_id(room), update, now, author)
                    for (room, update), author in zip(batch, who, strict=True)
                ]
                await self._db.execute(
                    _insert_sql(len(rows)), [v for row in rows for v in row]
                )
        except sqlite3.Error as exc:
            raise StoreError(f"append failed: {exc}") from exc

    def append_inline(
        self,
        batch: Sequence[tuple[str, bytes]],
        authors: Sequence[str | None],
    ) -> bool:
        """A small append on the loop's own connection (see sqlite_inline.py),
        when no write transaction is open (the write lock is free) and the
        rooms already have their ids."""
        inline, ids = self._inline, self._room_ids
        if (
            inline is None
            or self._write_lock.locked()
            or not inline.fits(len(batch), sum(len(u) for _, u in batch))
            or any(room not in ids for room, _ in batch)
        ):
            return False
        now = self._clock()
        values: list[object] = []
        for (room, update), author in zip(batch, authors, strict=True):
            values += (ids[room], update, now, author)
        return inline.append(_insert_sql(len(batch)), values, len(batch))

    async def quarantine(self, room: str, bad: Judge) -> list[str]:
        try:
            rows = await self._reader.execute_fetchall(_LOAD, {"name": room})
            moved = [
                (row_id or None, bytes(data), when, author, reason)
                for row_id, data, when, author in rows
                if data is not None and (reason := bad(bytes(data))) is not None
            ]
            if not moved:
                return []
            now = time.time()
            async with self._write_lock:
                db = self._db
                await db.execute("BEGIN IMMEDIATE")
                try:
                    await db.executemany(
                        "INSERT INTO quarantine (room, row_id, data, time, author, "
                        "reason, moved) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        [(room, *row, now) for row in moved],
                    )
                    for row_id, *_ in moved:
                        if row_id is None:
                            await db.execute(
                                "UPDATE rooms SET snapshot = NULL WHERE name = ?",
                                (room,),
                            )
                        else:
                            await db.execute(
                                "DELETE FROM updates WHERE id = ?", (row_id,)
                            )
                    await db.commit()
                except BaseException:
                    await db.rollback()
                    raise
        except sqlite3.Error as exc:
            raise StoreError(
                f"quarantining room {room!r}'s rows failed: {exc}"
            ) from exc
        return [_row_name(row_id, reason) for row_id, _, _, _, reason in moved]

    async def _room_id(self, room: str) -> int:
        room_id = self._room_ids.get(room)
        if room_id is None:
            if len(self._room_ids) >= _ROOM_ID_CACHE:
                self._room_ids.clear()  # a cache: rooms come and go for ever
            rows = await self._db.execute_fetchall(
                "INSERT INTO rooms (name) VALUES (?) "
                "ON CONFLICT (name) DO UPDATE SET name = excluded.name RETURNING id",
                (room,),
            )
            room_id = int(next(iter(rows))[0])
            self._room_ids[room] = room_id
        return room_id

    async def compact(self, room: str, build: Build = build_here) -> Compaction:
        try:
            return await self._compact(room, build)
        except sqlite3.Error as exc:
            raise StoreError(f"compaction of room {room!r} failed: {exc}") from exc

    async def _compact(self, room: str, build: Build) -> Compaction:
        started = time.perf_counter()
        # Read and build with no lock held, so appends go on meanwhile. Rows
        # are append-only and only a compaction (one at a time per room, see
        # Committer) rewrites a room, so what was read is still there after.
        rows = [
            (row_id, bytes(data))
            for row_id, data, _, _ in await self._reader.execute_fetchall(
                _LOAD, {"name": room}
            )
            if data is not None
        ]
        log_rows = [(row_id, data) for row_id, data in rows if row_id != 0]
        if not log_rows:
            return Compaction(0, 0, 0, 0)
        updates = [data for _, data in rows]
        head = len(rows) - len(log_rows)
        # CPU-bound: the server's build runs it in its worker process.
        snap = await build(updates)
        kept = kept_rows(log_rows, head, snap)
        async with self._write_lock:
            await self._replace(room, snap.update, log_rows, kept)
            # executescript steps the pragma to completion; execute() frees
            # one page. Under the lock, as every write on the writer is.
            await self._db.executescript("PRAGMA incremental_vacuum;")
        return compacted(room, log_rows, kept, updates, snap.update, started)

    async def _replace(
        self,
        room: str,
        snapshot: bytes,
        log_rows: list[tuple[int, bytes]],
        kept: set[int],
    ) -> None:
        """Swap in the snapshot and drop the rows it holds (into the history,
        if kept), in one transaction."""
        db = self._db
        now = self._clock()
        await db.execute("BEGIN IMMEDIATE")
        try:
            room_id, generation = next(
                iter(
                    await db.execute_fetchall(
                        "UPDATE rooms SET snapshot = ?, generation = generation + 1 "
                        "WHERE name = ? RETURNING id, generation",
                        (snapshot, room),
                    )
                )
            )
            if kept:
                folded = "id = ?"
                params: list[tuple[int, ...]] = [
                    (row_id,) for row_id, _ in log_rows if row_id not in kept
                ]
            else:
                folded = "room_id = ? AND id <= ?"
                params = [(room_id, log_rows[-1][0])]
            if self._retention > 0:
                await db.executemany(
                    "INSERT INTO history (room_id, row_id, data, time, author, "
                    f"moved_in) SELECT room_id, id, data, time, author, {generation:d} "
                    f"FROM updates WHERE {folded}",
                    params,
                )
            await db.executemany(f"DELETE FROM updates WHERE {folded}", params)
            await self._keep_history(room_id, generation, snapshot, now)
            await db.commit()
        except BaseException:
            await db.rollback()
            raise

    async def _keep_history(
        self, room_id: int, generation: int, snapshot: bytes, now: float
    ) -> None:
        """Keep a checkpoint if one is due, and thin what is past retention."""
        db = self._db
        retention = self._retention
        if retention <= 0:  # no history: the moment of this snapshot on
            await db.execute("DELETE FROM history WHERE room_id = ?", (room_id,))
            await db.execute("DELETE FROM checkpoints WHERE room_id = ?", (room_id,))
            await db.execute(
                "UPDATE rooms SET kept_since = ? WHERE id = ?", (now, room_id)
            )
            return
        ((latest,),) = await db.execute_fetchall(
            "SELECT max(time) FROM checkpoints WHERE room_id = ?", (room_id,)
        )
        if checkpoint_due(latest, now, retention):
            await db.execute(
                "INSERT INTO checkpoints (room_id, generation, time, data) "
                "VALUES (?, ?, ?, ?)",
                (room_id, generation, now, snapshot),
            )
        edge = list(
            await db.execute_fetchall(
                "SELECT generation, time FROM checkpoints WHERE room_id = ? "
                "AND time <= ? ORDER BY time DESC LIMIT 1",
                (room_id, now - retention),
            )
        )
        if not edge:
            return
        ((edge_generation, edge_time),) = edge
        await db.execute(
            "DELETE FROM history WHERE room_id = ? AND moved_in <= ?",
            (room_id, edge_generation),
        )
        await db.execute(
            "DELETE FROM checkpoints WHERE room_id = ? AND time < ?",
            (room_id, edge_time),
        )
        await db.execute(
            "UPDATE rooms SET kept_since = ? WHERE id = ?", (edge_time, room_id)
        )

    async def history(self, room: str, at: float | None = None) -> History:
        try:
            return await self._history(room, at)
        except sqlite3.Error as exc:
            raise StoreError(f"reading room {room!r}'s history failed: {exc}") from exc

    async def _history(self, room: str, at: float | None) -> History:
        # One read transaction: a compaction cannot move rows in between.
        async with self._history_lock:
            return await self._history_in_transaction(room, at)

    async def _history_in_transaction(self, room: str, at: float | None) -> History:
        read = self._reader.execute_fetchall
        await self._reader.execute("BEGIN")
        try:
            found = list(
                await read(
                    "SELECT id, snapshot, generation, kept_since FROM rooms "
                    "WHERE name = ?",
                    (room,),
                )
            )
            if not found:
                return History([], [], [], None)
            ((room_id, snapshot, generation, since),) = found
            checkpoint = list(
                await read(
                    "SELECT generation, data FROM checkpoints WHERE room_id = ? "
                    "AND time <= ? ORDER BY time DESC LIMIT 1",
                    (room_id, earliest(at, since)),
                )
            )
            base: list[bytes] = []
            if checkpoint:
                ((generation, data),) = checkpoint
                base = [bytes(data)]
            elif since is None:
                generation = 0  # nothing was ever thinned: every row is here
            elif snapshot is not None:
                base = [bytes(snapshot)]  # no history kept: the live snapshot
            rows = await read(_HISTORY_ROWS, (room_id, generation, room_id))
        finally:
            await self._reader.execute("COMMIT")
        return History(
            base + [bytes(data) for _, data, _, _ in rows],
            [None] * len(base) + [when for _, _, when, _ in rows],
            [None] * len(base) + [author for _, _, _, author in rows],
            since,
            bool(base),
        )

    async def ping(self) -> None:
        try:
            await self._reader.execute_fetchall("SELECT 1")
        except sqlite3.Error as exc:
            raise StoreError(f"the database does not answer: {exc}") from exc

    async def aclose(self) -> None:
        try:
            if self._inline is not None:
                await self._inline.aclose()
                self._inline = None
            await self._reader.close()
            if self._writer is not None:
                await self._writer.close()
        finally:
            # Only once the connections are closed may another ysyncd open it.
            if self._lock >= 0:
                os.close(self._lock)
                self._lock = -1


def _row_name(row_id: int | None, reason: str) -> str:
    return f"{'snapshot' if row_id is None else f'row {row_id}'}: {reason}"
