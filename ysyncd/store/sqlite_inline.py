"""Small SQLite appends on the event loop's own connection.

The writer connection lives in aiosqlite's thread: each append costs a hop
there and back (two thread switches and a wake-up of the loop), which at one
update per commit is more CPU than the insert. :class:`InlineAppender` makes
a small append on a connection of the loop's thread instead; the loop waits
for the fsync. It only tries where that is cheap and safe:

* at most :data:`_INLINE_ROWS` rows and :data:`_INLINE_BYTES` bytes;
* not for a while after a commit slower than :data:`_INLINE_SLOW` (a slow
  disk must not stall the loop);
* a busy database is never waited for (busy_timeout 0): the caller uses the
  writer's thread instead.

SQLite's auto-checkpoint would run a whole checkpoint on the loop, so it is
off on this connection; a checkpoint runs in a worker thread every
:data:`_CHECKPOINT_ROWS` rows instead.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from pathlib import Path

import anyio

from ysyncd.errors import StoreError

__all__ = ["InlineAppender", "checkpoint"]

log = logging.getLogger("ysyncd.store")

_INLINE_ROWS = 8
_INLINE_BYTES = 64 * 1024
_INLINE_SLOW = 0.002
_INLINE_PAUSE = 5.0
# Rows written inline between two checkpoints (SQLite's own default, in pages).
_CHECKPOINT_ROWS = 1000
_BUSY = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


class InlineAppender:
    """The loop thread's connection to one database, for small appends."""

    def __init__(self, path: Path, synchronous: str) -> None:
        self._path = path
        db = sqlite3.connect(path, isolation_level=None, timeout=0)
        try:
            db.execute(f"PRAGMA synchronous = {synchronous.upper()}")
            db.execute("PRAGMA foreign_keys = ON")
            db.execute("PRAGMA wal_autocheckpoint = 0")
        except BaseException:
            db.close()
            raise
        self._db: sqlite3.Connection | None = db
        self._paused_until = 0.0
        self._unchecked = 0
        self._checkpoint: asyncio.Task[None] | None = None

    def fits(self, rows: int, size: int) -> bool:
        """Whether an append of ``rows`` rows and ``size`` bytes is tried here."""
        return (
            self._db is not None
            and rows <= _INLINE_ROWS
            and size <= _INLINE_BYTES
            and time.monotonic() >= self._paused_until
        )

    def append(self, sql: str, values: list[object], rows: int) -> bool:
        """Run the one-statement append ``sql``; False (nothing written) if
        another connection holds the database.

        Raises:
            StoreError: the append failed; nothing was written.
        """
        db = self._db
        assert db is not None
        started = time.monotonic()
        try:
            db.execute(sql, values)
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF not in _BUSY:  # extended codes too
                raise StoreError(f"append failed: {exc}") from exc
            return False
        except sqlite3.Error as exc:
            raise StoreError(f"append failed: {exc}") from exc
        if time.monotonic() - started > _INLINE_SLOW:
            self._paused_until = time.monotonic() + _INLINE_PAUSE
        self._unchecked += rows
        if self._unchecked >= _CHECKPOINT_ROWS and self._checkpoint is None:
            self._unchecked = 0
            self._checkpoint = asyncio.get_running_loop().create_task(
                self._checkpoint_wal()
            )
        return True

    async def _checkpoint_wal(self) -> None:
        try:
            await anyio.to_thread.run_sync(checkpoint, self._path)
        except sqlite3.Error as exc:
            log.warning("a WAL checkpoint failed (the next one retries): %s", exc)
        finally:
            self._checkpoint = None

    async def aclose(self) -> None:
        if self._checkpoint is not None:
            await self._checkpoint
        if self._db is not None:
            self._db.close()
            self._db = None


def checkpoint(path: Path) -> None:
    """Copy what the WAL holds into the database, without waiting for anyone
    (a passive checkpoint), on a connection of its own (in a worker thread)."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA wal_checkpoint(PASSIVE)")
    finally:
        db.close()
