"""The SQLite store: WAL, one writer connection, append-only rows.

Layout (schema version in ``PRAGMA user_version``)::

    meta(key TEXT PRIMARY KEY, value TEXT)         -- 'epoch'
    rooms(id INTEGER PRIMARY KEY, name TEXT UNIQUE, snapshot BLOB)
    updates(id INTEGER PRIMARY KEY, room_id INTEGER, data BLOB, time REAL)

``updates.id`` is the commit order; ``updates.time`` is when the row was
committed (Unix seconds; NULL for rows from before schema 2), for the
history a timeline shows, never for ordering. Loads use a
second, read-only connection, so they never wait behind a commit and, in WAL
mode, always see a committed state.

Both connections run in autocommit mode, and the hot paths are one statement
each, so each costs one hop to aiosqlite's thread: an append is a single
multi-row ``INSERT`` (one statement, so one atomic transaction), and a load is
a single ``SELECT`` (so it sees one consistent snapshot). Compaction and
migrations open explicit transactions.

One ysyncd at a time serves a database: it holds an exclusive ``flock`` on
``<db>-lock`` next to it for the life of the store (see :func:`_lock`). Two
servers on one file would each keep their own copy of a room, and their
clients would never see each other's edits.
"""

from __future__ import annotations

import asyncio
import fcntl
import functools
import logging
import os
import sqlite3
import stat
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import aiosqlite
import anyio

from ysyncd.errors import (
    ForeignDatabase,
    SchemaError,
    StoreError,
    StoreInUse,
    StoreOpenError,
)
from ysyncd.store.base import (
    Build,
    Compaction,
    RoomSummary,
    StoredRoom,
    build_here,
    compacted,
    kept_rows,
)

__all__ = ["MAX_BATCH", "SCHEMA_VERSION", "SQLiteStore"]

log = logging.getLogger("ysyncd.store")

SCHEMA_VERSION = 2
#: The tables every schema version since 1 has; a file without them is not ours.
_TABLES = frozenset({"meta", "rooms", "updates"})
_ROOM_ID_CACHE = 65_536
#: Most updates in one append: two bound values a row, and SQLite allows 32,766
#: per statement (the append must stay one statement to stay one transaction).
MAX_BATCH = 8192

# The snapshot (as row 0) and the log, in order, in one consistent statement.
_LOAD = """
SELECT 0, snapshot, NULL FROM rooms WHERE name = :name
UNION ALL
SELECT u.id, u.data, u.time FROM updates AS u JOIN rooms AS r ON r.id = u.room_id
WHERE r.name = :name
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
    return "INSERT INTO updates (room_id, data, time) VALUES " + ", ".join(
        ["(?, ?, ?)"] * rows
    )


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
    2: "ALTER TABLE updates ADD COLUMN time REAL",
}


class SQLiteStore:
    """Durable update store in one SQLite file."""

    def __init__(
        self,
        writer: aiosqlite.Connection | None,
        reader: aiosqlite.Connection,
        epoch: str,
        lock: int,
    ) -> None:
        self._writer = writer
        self._reader = reader
        self._epoch = epoch
        self._lock = lock  # the fd holding the flock; see _lock()
        self._room_ids: dict[str, int] = {}
        self._write_lock = asyncio.Lock()

    @classmethod
    async def open(
        cls,
        path: Path,
        *,
        synchronous: str = "full",
        busy_timeout: float = 5.0,
        read_only: bool = False,
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

        Raises:
            StoreOpenError: ``path`` cannot be served, with the reason in a few
                words: it cannot be opened, is not a SQLite database, is
                corrupt, is another program's (:class:`ForeignDatabase`), has
                a newer schema (:class:`SchemaError`), stays locked by another
                process, or another ysyncd serves it (:class:`StoreInUse`).
        """
        read_only_uri = _prepare(path)
        if read_only:
            return await cls._open_read_only(path, read_only_uri, busy_timeout)
        try:
            # aiosqlite.connect() reports a failed open from its thread after
            # the loop may have closed, printing a traceback at exit
            # (omnilib/aiosqlite#389), so a plain open finds the failure first.
            await anyio.to_thread.run_sync(_try_open, path)
            writer = await aiosqlite.connect(
                path, isolation_level=None, timeout=busy_timeout
            )
        except sqlite3.Error as exc:
            raise _open_error(path, exc, busy_timeout) from exc
        lock = -1
        try:
            # Read-only checks first: a file that is not ours stays unchanged.
            await _check_owner(writer, path)
            lock = _lock(path)
            epoch = await _set_up(writer, path, synchronous)
            reader = await aiosqlite.connect(
                read_only_uri, uri=True, isolation_level=None, timeout=busy_timeout
            )
        except BaseException as exc:
            await writer.close()
            if lock >= 0:
                os.close(lock)
            if isinstance(exc, sqlite3.Error):
                raise _open_error(path, exc, busy_timeout) from exc
            raise
        return cls(writer, reader, epoch, lock)

    @classmethod
    async def _open_read_only(
        cls, path: Path, uri: str, busy_timeout: float
    ) -> SQLiteStore:
        try:
            reader = await aiosqlite.connect(
                uri, uri=True, isolation_level=None, timeout=busy_timeout
            )
        except sqlite3.Error as exc:
            raise _open_error(path, exc, busy_timeout) from exc
        try:
            await _check_owner(reader, path)
            version = await _user_version(reader)
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
                raise _open_error(path, exc, busy_timeout) from exc
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
        kept = [(bytes(data), when) for _, data, when in rows if data is not None]
        log_rows = sum(1 for row_id, _, _ in rows if row_id != 0)
        head = len(kept) - log_rows  # 1 with a snapshot, else 0
        return StoredRoom(
            [data for data, _ in kept],
            log_rows,
            len(kept[0][0]) if head else 0,
            [when for _, when in kept],
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
                    await db.execute(
                        "DELETE FROM updates WHERE room_id = "
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

    async def append(self, batch: Sequence[tuple[str, bytes]]) -> None:
        # The lock keeps an append out of a compaction's open transaction,
        # where it would look committed before the transaction is.
        try:
            if len(batch) > MAX_BATCH:
                raise StoreError(f"at most {MAX_BATCH} updates per append")
            async with self._write_lock:
                now = time.time()
                rows = [
                    (await self._room_id(room), update, now) for room, update in batch
                ]
                await self._db.execute(
                    _insert_sql(len(rows)), [v for row in rows for v in row]
                )
        except sqlite3.Error as exc:
            raise StoreError(f"append failed: {exc}") from exc

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
            for row_id, data, _ in await self._reader.execute_fetchall(
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
        # executescript steps the pragma to completion; execute() frees one page.
        await self._db.executescript("PRAGMA incremental_vacuum;")
        return compacted(room, log_rows, kept, updates, snap.update, started)

    async def _replace(
        self,
        room: str,
        snapshot: bytes,
        log_rows: list[tuple[int, bytes]],
        kept: set[int],
    ) -> None:
        """Swap in the snapshot and drop the rows it holds, in one transaction."""
        db = self._db
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

    async def ping(self) -> None:
        try:
            await self._reader.execute_fetchall("SELECT 1")
        except sqlite3.Error as exc:
            raise StoreError(f"the database does not answer: {exc}") from exc

    async def aclose(self) -> None:
        try:
            await self._reader.close()
            if self._writer is not None:
                await self._writer.close()
        finally:
            # Only once the connections are closed may another ysyncd open it.
            if self._lock >= 0:
                os.close(self._lock)
                self._lock = -1


def _prepare(path: Path) -> str:
    """Check the database's folder; return a read-only URI for the same file.

    The folder is not created: that would turn a typo in the path into a new,
    empty database.
    """
    folder = path.parent
    try:
        if not stat.S_ISDIR(os.stat(folder).st_mode):
            raise StoreOpenError(str(path), f"{folder} is not a directory")
        if path.is_dir():
            raise StoreOpenError(str(path), "is a directory, not a database file")
    except FileNotFoundError as exc:
        raise StoreOpenError(str(path), f"directory {folder} does not exist") from exc
    except OSError as exc:
        raise StoreOpenError(str(path), _os_reason(exc)) from exc
    return path.resolve().as_uri() + "?mode=ro"


def _try_open(path: Path) -> None:
    """Open and close ``path`` with SQLite: raise what the open raises."""
    sqlite3.connect(path).close()


def _lock(path: Path) -> int:
    """Take the lock that lets one ysyncd at a time serve ``path``; return its fd.

    An ``flock`` on a file next to the database rather than a lock on the
    database itself: SQLite locks the database with POSIX (fcntl) locks, and a
    process loses all of those when it closes any descriptor of that file. A
    plain SQLite connection (a read-only worker, a backup) ignores this lock.
    The lock file is never deleted: deleting it while another process is about
    to lock it would let two servers each hold a lock on a different file.
    """
    lock_path = path.resolve().with_name(path.resolve().name + "-lock")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        reason = f"cannot open its lock file {lock_path}: {_os_reason(exc)}"
        raise StoreOpenError(str(path), reason) from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        holder = os.pread(fd, 20, 0).decode("ascii", "replace").strip()
        os.close(fd)
        pid = f" (pid {holder})" if holder.isdigit() else ""
        raise StoreInUse(str(path), f"in use by another ysyncd{pid}") from exc
    except OSError as exc:
        os.close(fd)
        reason = f"cannot lock {lock_path}: {_os_reason(exc)}"
        raise StoreOpenError(str(path), reason) from exc
    # For the message above, in the next ysyncd that tries.
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


async def _check_owner(db: aiosqlite.Connection, path: Path) -> None:
    """Refuse a database of another program or of a newer ysyncd; only reads."""
    version = await _user_version(db)
    rows = await db.execute_fetchall(
        "SELECT name FROM sqlite_master WHERE type = 'table'"
    )
    tables = {str(name) for (name,) in rows}
    if version > SCHEMA_VERSION and (not tables or "meta" in tables):
        raise _newer_schema(path, version)
    if version == 0 and not tables:
        return  # a new or empty file: ours to set up
    if version == 0 or not _TABLES <= tables:
        others = sorted(tables - _TABLES)
        listing = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
        detail = (
            f"it has other tables: {listing}"
            if others
            else f"user_version {version} but no ysyncd tables"
        )
        raise ForeignDatabase(
            str(path), f"not a ysyncd database ({detail}); left unchanged"
        )


async def _set_up(db: aiosqlite.Connection, path: Path, synchronous: str) -> str:
    """Set the connection's pragmas and migrate; return the store epoch."""
    # Before any table exists, so that compaction can hand pages back.
    await db.execute("PRAGMA auto_vacuum = INCREMENTAL")
    await db.execute("PRAGMA journal_mode = WAL")
    await db.execute(f"PRAGMA synchronous = {synchronous.upper()}")
    await db.execute("PRAGMA foreign_keys = ON")
    return await _migrate(db, path)


async def _user_version(db: aiosqlite.Connection) -> int:
    rows = await db.execute_fetchall("PRAGMA user_version")
    return int(next(iter(rows))[0])


def _newer_schema(path: Path, version: int) -> SchemaError:
    return SchemaError(
        str(path),
        f"database schema version {version} is newer than this ysyncd "
        f"understands ({SCHEMA_VERSION}); upgrade ysyncd",
    )


def _open_error(path: Path, exc: sqlite3.Error, busy_timeout: float) -> StoreOpenError:
    """Say in a few words why SQLite could not open the database at ``path``."""
    code = exc.sqlite_errorcode & 0xFF  # the primary code of an extended one
    if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
        reason = f"locked by another process (still locked after {busy_timeout:g} s)"
    elif code == sqlite3.SQLITE_NOTADB:
        reason = "not a SQLite database"
    elif code == sqlite3.SQLITE_CORRUPT:
        reason = f"corrupt SQLite database ({exc})"
    elif code in (
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_READONLY,
        sqlite3.SQLITE_PERM,
    ):
        reason = _access_reason(path, exc)
    elif code == sqlite3.SQLITE_FULL:
        reason = "the disk is full"
    else:
        reason = str(exc)
    return StoreOpenError(str(path), reason)


def _access_reason(path: Path, exc: sqlite3.Error) -> str:
    """Why SQLite could not open or write the file: usually a permission."""
    if path.exists() and not os.access(path, os.R_OK | os.W_OK):
        return "permission denied (ysyncd reads and writes it)"
    if not os.access(path.parent, os.W_OK | os.X_OK):
        # SQLite creates the file, and its -wal and -shm files, there.
        return f"permission denied in directory {path.parent}"
    return f"cannot open it ({exc})"


def _os_reason(exc: OSError) -> str:
    return exc.strerror.lower() if exc.strerror else str(exc)


async def _migrate(db: aiosqlite.Connection, path: Path) -> str:
    """Bring the schema up to :data:`SCHEMA_VERSION`; return the store epoch."""
    await db.execute("BEGIN IMMEDIATE")
    try:
        # Read inside the write transaction, so that it cannot change meanwhile.
        version = await _user_version(db)
        if version > SCHEMA_VERSION:
            raise _newer_schema(path, version)
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
