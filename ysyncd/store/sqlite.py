"""The SQLite store: WAL, one writer connection, append-only rows.

Layout (schema version in ``PRAGMA user_version``)::

    meta(key TEXT PRIMARY KEY, value TEXT)         -- 'epoch'
    rooms(id INTEGER PRIMARY KEY, name TEXT UNIQUE, snapshot BLOB)
    updates(id INTEGER PRIMARY KEY, room_id INTEGER, data BLOB)

``updates.id`` is the commit order; there is no wall-clock ordering. Loads use a
second, read-only connection, so they never wait behind a commit and, in WAL
mode, always see a committed state.

Both connections run in autocommit mode, and the hot paths are one statement
each, so each costs one hop to aiosqlite's thread: an append is a single
multi-row ``INSERT`` (one statement, so one atomic transaction), and a load is
a single ``SELECT`` (so it sees one consistent snapshot). Compaction and
migrations open explicit transactions.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sqlite3
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import aiosqlite
import anyio

from ysyncd.errors import SchemaError, StoreError
from ysyncd.store.base import Compaction, StoredRoom
from ysyncd.store.snapshot import build_snapshot

__all__ = ["MAX_BATCH", "SCHEMA_VERSION", "SQLiteStore"]

log = logging.getLogger("ysyncd.store")

SCHEMA_VERSION = 1
_ROOM_ID_CACHE = 65_536
#: Most updates in one append: two bound values a row, and SQLite allows 32,766
#: per statement (the append must stay one statement to stay one transaction).
MAX_BATCH = 8192

# The snapshot (as row 0) and the log, in order, in one consistent statement.
_LOAD = """
SELECT 0, snapshot FROM rooms WHERE name = :name
UNION ALL
SELECT u.id, u.data FROM updates AS u JOIN rooms AS r ON r.id = u.room_id
WHERE r.name = :name
ORDER BY 1
"""


@functools.lru_cache(maxsize=64)
def _insert_sql(rows: int) -> str:
    return "INSERT INTO updates (room_id, data) VALUES " + ", ".join(["(?, ?)"] * rows)


_MIGRATIONS: dict[int, str] = {
    1: """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE rooms (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        snapshot BLOB
    );
    CREATE TABLE updates (
        id INTEGER PRIMARY KEY,
        room_id INTEGER NOT NULL REFERENCES rooms(id),
        data BLOB NOT NULL
    );
    CREATE INDEX updates_by_room ON updates(room_id, id);
    """,
}


class SQLiteStore:
    """Durable update store in one SQLite file."""

    def __init__(
        self, writer: aiosqlite.Connection, reader: aiosqlite.Connection, epoch: str
    ) -> None:
        self._writer = writer
        self._reader = reader
        self._epoch = epoch
        self._room_ids: dict[str, int] = {}
        self._write_lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path, *, synchronous: str = "full") -> SQLiteStore:
        """Open (creating and migrating if needed) the database at ``path``."""
        read_only_uri = _prepare(path)
        writer = await aiosqlite.connect(path, isolation_level=None)
        try:
            # Before any table exists, so that compaction can hand pages back.
            await writer.execute("PRAGMA auto_vacuum = INCREMENTAL")
            await writer.execute("PRAGMA journal_mode = WAL")
            await writer.execute(f"PRAGMA synchronous = {synchronous.upper()}")
            await writer.execute("PRAGMA foreign_keys = ON")
            epoch = await _migrate(writer)
            reader = await aiosqlite.connect(
                read_only_uri, uri=True, isolation_level=None
            )
        except BaseException:
            await writer.close()
            raise
        return cls(writer, reader, epoch)

    @property
    def epoch(self) -> str:
        return self._epoch

    async def load(self, room: str) -> StoredRoom:
        try:
            rows = await self._reader.execute_fetchall(_LOAD, {"name": room})
        except sqlite3.Error as exc:
            raise StoreError(f"load of room {room!r} failed: {exc}") from exc
        updates = [bytes(data) for _, data in rows if data is not None]
        log_rows = sum(1 for row_id, _ in rows if row_id != 0)
        head = len(updates) - log_rows  # 1 with a snapshot, else 0
        return StoredRoom(updates, log_rows, len(updates[0]) if head else 0)

    async def append(self, batch: Sequence[tuple[str, bytes]]) -> None:
        # The lock keeps an append out of a compaction's open transaction,
        # where it would look committed before the transaction is.
        try:
            if len(batch) > MAX_BATCH:
                raise StoreError(f"at most {MAX_BATCH} updates per append")
            async with self._write_lock:
                rows = [(await self._room_id(room), update) for room, update in batch]
                await self._writer.execute(
                    _insert_sql(len(rows)), [v for row in rows for v in row]
                )
        except sqlite3.Error as exc:
            raise StoreError(f"append failed: {exc}") from exc

    async def _room_id(self, room: str) -> int:
        room_id = self._room_ids.get(room)
        if room_id is None:
            if len(self._room_ids) >= _ROOM_ID_CACHE:
                self._room_ids.clear()  # a cache: rooms come and go for ever
            rows = await self._writer.execute_fetchall(
                "INSERT INTO rooms (name) VALUES (?) "
                "ON CONFLICT (name) DO UPDATE SET name = excluded.name RETURNING id",
                (room,),
            )
            room_id = int(next(iter(rows))[0])
            self._room_ids[room] = room_id
        return room_id

    async def compact(self, room: str) -> Compaction:
        try:
            return await self._compact(room)
        except sqlite3.Error as exc:
            raise StoreError(f"compaction of room {room!r} failed: {exc}") from exc

    async def _compact(self, room: str) -> Compaction:
        started = time.perf_counter()
        # Read and build with no lock held, so appends go on meanwhile. Rows
        # are append-only and only a compaction (one at a time per room, see
        # Committer) rewrites a room, so what was read is still there after.
        rows = [
            (row_id, bytes(data))
            for row_id, data in await self._reader.execute_fetchall(
                _LOAD, {"name": room}
            )
            if data is not None
        ]
        log_rows = [(row_id, data) for row_id, data in rows if row_id != 0]
        if not log_rows:
            return Compaction(0, 0, 0, 0)
        updates = [data for _, data in rows]
        head = len(rows) - len(log_rows)
        # CPU-bound; a worker thread keeps the event loop responsive.
        snap = await anyio.to_thread.run_sync(build_snapshot, updates)
        kept = {log_rows[i - head][0] for i in snap.pending if i >= head}
        last_id = log_rows[-1][0]
        async with self._write_lock:
            await self._replace(room, snap.update, log_rows, kept)
        # executescript steps the pragma to completion; execute() frees one page.
        await self._writer.executescript("PRAGMA incremental_vacuum;")
        result = Compaction(
            rows_before=len(log_rows),
            rows_after=len(kept),
            bytes_before=sum(map(len, updates)),
            bytes_after=len(snap.update)
            + sum(len(d) for i, d in log_rows if i in kept),
        )
        log.info(
            "compacted room %r: %d rows (%d B) -> snapshot %d B + %d rows "
            "up to id %d in %.1f ms",
            room,
            result.rows_before,
            result.bytes_before,
            len(snap.update),
            result.rows_after,
            last_id,
            (time.perf_counter() - started) * 1000,
        )
        return result

    async def _replace(
        self,
        room: str,
        snapshot: bytes,
        log_rows: list[tuple[int, bytes]],
        kept: set[int],
    ) -> None:
        """Swap in the snapshot and drop the rows it holds, in one transaction."""
        db = self._writer
        await db.execute("BEGIN IMMEDIATE")
        try:
            await db.execute(
                "UPDATE rooms SET snapshot = ? WHERE name = ?", (snapshot, room)
            )
            if kept:
                await db.executemany(
                    "DELETE FROM updates WHERE id = ?",
                    [(row_id,) for row_id, _ in log_rows if row_id not in kept],
                )
            else:
                await db.execute(
                    "DELETE FROM updates WHERE room_id = "
                    "(SELECT id FROM rooms WHERE name = ?) AND id <= ?",
                    (room, log_rows[-1][0]),
                )
            await db.commit()
        except BaseException:
            await db.rollback()
            raise

    async def aclose(self) -> None:
        await self._reader.close()
        await self._writer.close()


def _prepare(path: Path) -> str:
    """Create the database's folder; return a read-only URI for the same file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.resolve().as_uri() + "?mode=ro"


async def _migrate(db: aiosqlite.Connection) -> str:
    """Bring the schema up to :data:`SCHEMA_VERSION`; return the store epoch."""
    rows = await db.execute_fetchall("PRAGMA user_version")
    version = int(next(iter(rows))[0])
    if version > SCHEMA_VERSION:
        raise SchemaError(
            f"database schema version {version} is newer than this ysyncd "
            f"understands ({SCHEMA_VERSION}); upgrade ysyncd"
        )
    await db.execute("BEGIN IMMEDIATE")
    try:
        for step in range(version + 1, SCHEMA_VERSION + 1):
            for statement in filter(str.strip, _MIGRATIONS[step].split(";")):
                await db.execute(statement)
            await db.execute(f"PRAGMA user_version = {step}")
        await db.execute(
            "INSERT INTO meta (key, value) VALUES ('epoch', ?) "
            "ON CONFLICT (key) DO NOTHING",
            (uuid.uuid4().hex,),
        )
        await db.commit()
    except BaseException:
        await db.rollback()
        raise
    rows = await db.execute_fetchall("SELECT value FROM meta WHERE key = 'epoch'")
    return str(next(iter(rows))[0])
