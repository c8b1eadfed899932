"""Update stores: where every room's updates are kept durably.

:func:`open_store` picks an implementation from ``--db``: a
``postgresql://`` URL, ``memory://``, or else a SQLite file.
"""

from __future__ import annotations

import urllib.parse
from pathlib import Path

from ysyncd.errors import StoreOpenError
from ysyncd.store.base import (
    DEFAULT_RETENTION,
    Compaction,
    History,
    StoredRoom,
    UpdateStore,
)
from ysyncd.store.memory import MemoryStore
from ysyncd.store.sqlite import SQLiteStore

__all__ = [
    "Compaction",
    "History",
    "MemoryStore",
    "SQLiteStore",
    "StoredRoom",
    "UpdateStore",
    "is_postgres_url",
    "open_store",
    "redact_url",
]


def is_postgres_url(db: str) -> bool:
    """Whether ``--db`` names a PostgreSQL database rather than a file."""
    return db.startswith(("postgresql://", "postgres://"))


def redact_url(url: str) -> str:
    """``url`` with its password replaced, for messages and logs."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


async def open_store(
    db: Path | str,
    *,
    synchronous: str = "full",
    busy_timeout: float = 5.0,
    shared: bool = False,
    read_only: bool = False,
    history_retention: float = DEFAULT_RETENTION,
) -> UpdateStore:
    """Open the store ``db`` names.

    Args:
        db: a ``postgresql://`` URL, ``memory://``, or a SQLite file's path.
        synchronous, busy_timeout: SQLite's (see :meth:`SQLiteStore.open`).
        shared: other nodes serve the same rooms (there is a backplane).
        read_only: only read, beside a running server (no lock, no
            migration); appends and compactions raise StoreError.
        history_retention: seconds of history compactions keep (0: none).

    Raises:
        StoreOpenError: the database cannot be served, in a few words.
    """
    if is_postgres_url(str(db)):
        try:
            from ysyncd.store.postgres import PostgresStore
        except ImportError as exc:  # the cluster extra is not installed
            reason = f"needs asyncpg: pip install 'ysyncd[cluster]' ({exc})"
            raise StoreOpenError(redact_url(str(db)), reason) from exc
        return await PostgresStore.open(
            str(db),
            shared=shared,
            read_only=read_only,
            history_retention=history_retention,
        )
    if str(db) == "memory://":
        return MemoryStore(history_retention=history_retention)
    return await SQLiteStore.open(
        Path(db),
        synchronous=synchronous,
        busy_timeout=busy_timeout,
        read_only=read_only,
        history_retention=history_retention,
    )
