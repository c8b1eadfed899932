"""Opening a SQLite store: the checks before anything is written, the lock
that lets one ysyncd at a time serve a file, and the schema's migrations.

Schema versions (``PRAGMA user_version``): 1, the tables; 2, each row's
commit time; 3, each row's author, the quarantine table, and the history
(rows compactions folded, and checkpoints; a room compacted before it starts
its history at the migration, with its snapshot as the first checkpoint).
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import stat
import uuid
from pathlib import Path

import aiosqlite

from ysyncd.errors import (
    ForeignDatabase,
    SchemaError,
    StoreInUse,
    StoreOpenError,
)

__all__ = [
    "SCHEMA_VERSION",
    "check_owner",
    "migrate",
    "open_error",
    "prepare",
    "set_up",
    "take_lock",
    "try_open",
    "user_version",
]

SCHEMA_VERSION = 3
#: The tables every schema version since 1 has; a file without them is not ours.
_TABLES = frozenset({"meta", "rooms", "updates"})

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
    3: """
    ALTER TABLE updates ADD COLUMN author TEXT;
    CREATE TABLE quarantine (
        id INTEGER PRIMARY KEY,
        room TEXT NOT NULL,
        row_id INTEGER,
        data BLOB NOT NULL,
        time REAL,
        author TEXT,
        reason TEXT NOT NULL,
        moved REAL NOT NULL
    );
    ALTER TABLE rooms ADD COLUMN generation INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE rooms ADD COLUMN kept_since REAL;
    CREATE TABLE history (
        id INTEGER PRIMARY KEY,
        room_id INTEGER NOT NULL REFERENCES rooms(id),
        row_id INTEGER NOT NULL,
        data BLOB NOT NULL,
        time REAL,
        author TEXT,
        moved_in INTEGER NOT NULL
    );
    CREATE INDEX history_by_room ON history(room_id, moved_in);
    CREATE TABLE checkpoints (
        id INTEGER PRIMARY KEY,
        room_id INTEGER NOT NULL REFERENCES rooms(id),
        generation INTEGER NOT NULL,
        time REAL NOT NULL,
        data BLOB NOT NULL
    );
    CREATE INDEX checkpoints_by_room ON checkpoints(room_id, time);
    INSERT INTO checkpoints (room_id, generation, time, data)
        SELECT id, 0, unixepoch('now'), snapshot FROM rooms
        WHERE snapshot IS NOT NULL;
    UPDATE rooms SET kept_since = unixepoch('now') WHERE snapshot IS NOT NULL;
    """,
}


def prepare(path: Path) -> str:
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


def try_open(path: Path) -> None:
    """Open and close ``path`` with SQLite: raise what the open raises."""
    sqlite3.connect(path).close()


def take_lock(path: Path) -> int:
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


async def check_owner(db: aiosqlite.Connection, path: Path) -> None:
    """Refuse a database of another program or of a newer ysyncd; only reads."""
    version = await user_version(db)
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


async def set_up(db: aiosqlite.Connection, path: Path, synchronous: str) -> str:
    """Set the connection's pragmas and migrate; return the store epoch."""
    # Before any table exists, so that compaction can hand pages back.
    await db.execute("PRAGMA auto_vacuum = INCREMENTAL")
    await db.execute("PRAGMA journal_mode = WAL")
    await db.execute(f"PRAGMA synchronous = {synchronous.upper()}")
    await db.execute("PRAGMA foreign_keys = ON")
    return await migrate(db, path)


async def user_version(db: aiosqlite.Connection) -> int:
    rows = await db.execute_fetchall("PRAGMA user_version")
    return int(next(iter(rows))[0])


def _newer_schema(path: Path, version: int) -> SchemaError:
    return SchemaError(
        str(path),
        f"database schema version {version} is newer than this ysyncd "
        f"understands ({SCHEMA_VERSION}); upgrade ysyncd",
    )


def open_error(path: Path, exc: sqlite3.Error, busy_timeout: float) -> StoreOpenError:
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


async def migrate(db: aiosqlite.Connection, path: Path) -> str:
    """Bring the schema up to :data:`SCHEMA_VERSION`; return the store epoch."""
    await db.execute("BEGIN IMMEDIATE")
    try:
        # Read inside the write transaction, so that it cannot change meanwhile.
        version = await user_version(db)
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
