"""Opening a PostgreSQL store: the schema (``ysyncd``), its migrations under
an advisory lock (nodes starting together take turns), the node lock, and
why a connection failed, in a few words.

Schema versions (``meta.schema_version``): 1, the tables; 2, each row's
commit time; 3, each row's author, the quarantine table, and the history
(rows compactions folded, and checkpoints).
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg

from ysyncd.errors import ForeignDatabase, SchemaError, StoreInUse, StoreOpenError

__all__ = [
    "SCHEMA",
    "SCHEMA_VERSION",
    "check_schema",
    "connect_reason",
    "lock_sql",
    "migrate",
    "take_node_lock",
]

SCHEMA_VERSION = 3
SCHEMA = "ysyncd"
_TABLES = frozenset({"meta", "rooms", "updates"})
#: Advisory lock keys, in a namespace of ysyncd's own.
_MIGRATION_LOCK = "ysyncd:migrate"
_NODE_LOCK = "ysyncd:nodes"

_MIGRATIONS: dict[int, list[str]] = {
    1: [
        f"CREATE TABLE {SCHEMA}.meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        f"""CREATE TABLE {SCHEMA}.rooms (
            id BIGSERIAL PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            snapshot BYTEA
        )""",
        f"""CREATE TABLE {SCHEMA}.updates (
            id BIGSERIAL PRIMARY KEY,
            room_id BIGINT NOT NULL REFERENCES {SCHEMA}.rooms(id),
            data BYTEA NOT NULL
        )""",
        f"CREATE INDEX updates_by_room ON {SCHEMA}.updates (room_id, id)",
    ],
    # When each row was committed (Unix seconds), for the history.
    2: [f"ALTER TABLE {SCHEMA}.updates ADD COLUMN time DOUBLE PRECISION"],
    # Who wrote each row; and where `ysyncd verify --repair` moves bad rows.
    3: [
        f"ALTER TABLE {SCHEMA}.updates ADD COLUMN author TEXT",
        f"""CREATE TABLE {SCHEMA}.quarantine (
            id BIGSERIAL PRIMARY KEY,
            room TEXT NOT NULL,
            row_id BIGINT,
            data BYTEA NOT NULL,
            time DOUBLE PRECISION,
            author TEXT,
            reason TEXT NOT NULL,
            moved DOUBLE PRECISION NOT NULL
        )""",
        # The history (see UpdateStore.compact): a room compacted before it
        # starts its history now, with its snapshot as the first checkpoint.
        f"""ALTER TABLE {SCHEMA}.rooms
            ADD COLUMN generation BIGINT NOT NULL DEFAULT 0,
            ADD COLUMN kept_since DOUBLE PRECISION""",
        f"""CREATE TABLE {SCHEMA}.history (
            id BIGSERIAL PRIMARY KEY,
            room_id BIGINT NOT NULL REFERENCES {SCHEMA}.rooms(id),
            row_id BIGINT NOT NULL,
            data BYTEA NOT NULL,
            time DOUBLE PRECISION,
            author TEXT,
            moved_in BIGINT NOT NULL
        )""",
        f"CREATE INDEX history_by_room ON {SCHEMA}.history (room_id, moved_in)",
        f"""CREATE TABLE {SCHEMA}.checkpoints (
            id BIGSERIAL PRIMARY KEY,
            room_id BIGINT NOT NULL REFERENCES {SCHEMA}.rooms(id),
            generation BIGINT NOT NULL,
            time DOUBLE PRECISION NOT NULL,
            data BYTEA NOT NULL
        )""",
        f"CREATE INDEX checkpoints_by_room ON {SCHEMA}.checkpoints (room_id, time)",
        f"""INSERT INTO {SCHEMA}.checkpoints (room_id, generation, time, data)
            SELECT id, 0, extract(epoch FROM now()), snapshot FROM {SCHEMA}.rooms
            WHERE snapshot IS NOT NULL""",
        f"""UPDATE {SCHEMA}.rooms SET kept_since = extract(epoch FROM now())
            WHERE snapshot IS NOT NULL""",
    ],
}


def lock_sql(function: str) -> str:
    return f"SELECT {function}(hashtextextended($1, 0))"


async def migrate(conn: asyncpg.Connection, shown: str) -> str:
    """Create or bring the schema up to :data:`SCHEMA_VERSION`; return the epoch.

    Under a transaction-level advisory lock, so that nodes starting together
    take turns, and the second finds the work done.
    """
    async with conn.transaction():
        await conn.execute(lock_sql("pg_advisory_xact_lock"), _MIGRATION_LOCK)
        tables = {
            str(r["table_name"])
            for r in await conn.fetch(
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_schema = $1",
                SCHEMA,
            )
        }
        if tables and not _TABLES <= tables:
            others = ", ".join(sorted(tables - _TABLES)[:3])
            raise ForeignDatabase(
                shown,
                f"schema {SCHEMA!r} is not ysyncd's (it has {others}); left unchanged",
            )
        version = 0
        if tables:
            value = await conn.fetchval(
                f"SELECT value FROM {SCHEMA}.meta WHERE key = 'schema_version'"
            )
            version = int(value or 0)
        if version > SCHEMA_VERSION:
            raise SchemaError(
                shown,
                f"database schema version {version} is newer than this ysyncd "
                f"understands ({SCHEMA_VERSION}); upgrade ysyncd",
            )
        if not tables:
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
        for step in range(version + 1, SCHEMA_VERSION + 1):
            for statement in _MIGRATIONS[step]:
                await conn.execute(statement)
            await _set_meta(conn, "schema_version", str(step), replace=True)
        await _set_meta(conn, "epoch", uuid.uuid4().hex, replace=False)
        epoch = await conn.fetchval(
            f"SELECT value FROM {SCHEMA}.meta WHERE key = 'epoch'"
        )
    return str(epoch)


async def check_schema(conn: asyncpg.Connection, shown: str) -> str:
    """The epoch of a database at this ysyncd's schema; StoreOpenError if
    it is not one (nothing is written)."""
    try:
        version = await conn.fetchval(
            f"SELECT value FROM {SCHEMA}.meta WHERE key = 'schema_version'"
        )
    except asyncpg.UndefinedTableError:
        raise StoreOpenError(shown, "holds no ysyncd schema") from None
    if int(version or 0) != SCHEMA_VERSION:
        raise StoreOpenError(
            shown,
            f"schema version {version}; `ysyncd serve` brings it to "
            f"{SCHEMA_VERSION} first",
        )
    epoch = await conn.fetchval(f"SELECT value FROM {SCHEMA}.meta WHERE key = 'epoch'")
    return str(epoch)


async def _set_meta(
    conn: asyncpg.Connection, key: str, value: str, *, replace: bool
) -> None:
    action = "UPDATE SET value = excluded.value" if replace else "NOTHING"
    await conn.execute(
        f"INSERT INTO {SCHEMA}.meta (key, value) VALUES ($1, $2) "
        f"ON CONFLICT (key) DO {action}",
        key,
        value,
    )


async def take_node_lock(conn: asyncpg.Connection, shown: str, *, shared: bool) -> None:
    function = "pg_try_advisory_lock_shared" if shared else "pg_try_advisory_lock"
    if await conn.fetchval(lock_sql(function), _NODE_LOCK):
        return
    if shared:
        reason = "in use by a ysyncd without --backplane; give every node one"
    else:
        reason = "in use by another ysyncd; nodes sharing a database need --backplane"
    raise StoreInUse(shown, reason)


def connect_reason(exc: BaseException) -> str:
    """Say in a few words why the database could not be reached."""
    if isinstance(exc, asyncio.TimeoutError):
        return "no answer (timed out)"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (is PostgreSQL running there?)"
    if isinstance(exc, OSError):
        return exc.strerror.lower() if exc.strerror else str(exc)
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return "no such database"
    if isinstance(
        exc,
        asyncpg.InvalidPasswordError | asyncpg.InvalidAuthorizationSpecificationError,
    ):
        return f"authentication failed: {exc}"
    if isinstance(exc, asyncpg.InsufficientPrivilegeError):
        return f"permission denied: {exc}"
    message: Any = getattr(exc, "message", None) or str(exc)
    return str(message)
