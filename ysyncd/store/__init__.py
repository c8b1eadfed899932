"""Update stores: where every room's updates are kept durably.

:func:`open_store` picks an implementation from a URL-ish string, so later
stores (PostgreSQL, say) plug in without touching the rooms.
"""

from __future__ import annotations

from pathlib import Path

from ysyncd.store.base import Compaction, StoredRoom, UpdateStore
from ysyncd.store.memory import MemoryStore
from ysyncd.store.sqlite import SQLiteStore

__all__ = [
    "Compaction",
    "MemoryStore",
    "SQLiteStore",
    "StoredRoom",
    "UpdateStore",
    "open_store",
]


async def open_store(
    db: Path | str, *, synchronous: str = "full", busy_timeout: float = 5.0
) -> UpdateStore:
    """Open ``memory://`` as a :class:`MemoryStore`, anything else as SQLite.

    Raises:
        StoreOpenError: the database cannot be served; see
            :meth:`SQLiteStore.open`.
    """
    if str(db) == "memory://":
        return MemoryStore()
    return await SQLiteStore.open(
        Path(db), synchronous=synchronous, busy_timeout=busy_timeout
    )
