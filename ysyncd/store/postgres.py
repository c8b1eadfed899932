"""The PostgreSQL store: many ysyncd nodes on one database.

Layout, in a schema of its own (``ysyncd``), so that it can share a database
with JupyterHub's tables::

    meta(key TEXT PRIMARY KEY, value TEXT)      -- 'epoch', 'schema_version'
    rooms(id BIGSERIAL PRIMARY KEY, name TEXT UNIQUE, snapshot BYTEA)
    updates(id BIGSERIAL PRIMARY KEY, room_id BIGINT, data BYTEA)

The contract is the SQLite store's (see :mod:`ysyncd.store.base`), kept with
one statement per hot path, each its own transaction in autocommit, so each
costs one round trip: an append is one ``INSERT ... SELECT FROM unnest(...)``
for the whole batch, and a load is one ``SELECT`` that sees one snapshot.

What changes with many writers:

* ``updates.id`` comes from a sequence, which orders rows by when they were
  *inserted*, not committed: a row with a lower id may become visible after
  one with a higher id. So compaction deletes exactly the rows it read, never
  a range of ids, and nothing else here reads an id as a position.
* Compaction of a room runs on one node at a time, under a session advisory
  lock named after the room; a node that cannot take it skips the room.
  Rows other nodes append meanwhile are not among those read, so they stay.
* Migrations run under a transaction-level advisory lock, so nodes starting
  together migrate once.
* A node without a backplane holds an exclusive advisory lock for its life
  (see :meth:`PostgresStore.open`): two of them would each keep their own
  copy of a room, and their clients would never see each other's edits.
  Nodes with a backplane share the lock.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Sequence
from typing import Any

import asyncpg
from asyncpg import Record
from asyncpg.pool import PoolConnectionProxy

from ysyncd.errors import (
    ForeignDatabase,
    SchemaError,
    StoreError,
    StoreInUse,
    StoreOpenError,
)
from ysyncd.store import redact_url
from ysyncd.store.base import (
    Build,
    Compaction,
    RoomSummary,
    StoredRoom,
    build_here,
    compacted,
    kept_rows,
)

__all__ = ["SCHEMA_VERSION", "PostgresStore"]

log = logging.getLogger("ysyncd.store")

SCHEMA_VERSION = 2
SCHEMA = "ysyncd"
_TABLES = frozenset({"meta", "rooms", "updates"})
_ROOM_ID_CACHE = 65_536
#: Advisory lock keys: a fixed one for migrations and for the node lock, and
#: one per room for compaction, all in a namespace of ysyncd's own.
_MIGRATION_LOCK = "ysyncd:migrate"
_NODE_LOCK = "ysyncd:nodes"
_COMPACTION_LOCK = "ysyncd:compact:"
_POOL_MIN = 1
_POOL_MAX = 8

_LOAD = f"""
SELECT 0::bigint AS id, snapshot AS data, NULL::float8 AS time
FROM {SCHEMA}.rooms WHERE name = $1
UNION ALL
SELECT u.id, u.data, u.time FROM {SCHEMA}.updates AS u
JOIN {SCHEMA}.rooms AS r ON r.id = u.room_id
WHERE r.name = $1
ORDER BY 1
"""

# Rows keep the batch's order (ids from the sequence follow ``ord``).
_APPEND = f"""
INSERT INTO {SCHEMA}.updates (room_id, data, time)
SELECT room_id, data, $3::float8 FROM unnest($1::bigint[], $2::bytea[])
    WITH ORDINALITY AS batch(room_id, data, ord)
ORDER BY ord
"""

_ROOMS = f"""
SELECT r.name, count(u.id) AS rows,
       coalesce(octet_length(r.snapshot), 0)
       + coalesce(sum(octet_length(u.data)), 0) AS bytes,
       max(u.time) AS last_change
FROM {SCHEMA}.rooms AS r LEFT JOIN {SCHEMA}.updates AS u ON u.room_id = r.id
GROUP BY r.id ORDER BY r.name
"""

_ROOM_ID = f"""
INSERT INTO {SCHEMA}.rooms (name) VALUES ($1)
ON CONFLICT (name) DO UPDATE SET name = excluded.name
RETURNING id
"""

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
}

#: What a lost connection, a server shutting down or a refused connection
#: raise: the commit is retried, the load fails that room only.
_DB_ERRORS = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,  # TimeoutError included: a statement past its command timeout
)
#: Seconds a statement may take before it counts as failed (a server that
#: went silent must not hold commits for the kernel's TCP timeout).
_COMMAND_TIMEOUT = 30.0


class PostgresStore:
    """Durable update store in a PostgreSQL database, shared by many nodes."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        node_lock: asyncpg.Connection,
        epoch: str,
        shown: str,
        *,
        dsn: str,
        shared: bool,
    ) -> None:
        self._pool = pool
        self._node_lock = node_lock
        self._epoch = epoch
        self._url = shown  # for messages: without the password
        self._dsn = dsn
        self._shared = shared
        self._writer: asyncpg.Connection | None = None
        self._write_lock = asyncio.Lock()
        self._room_ids: dict[str, int] = {}
        self._read_only = False

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        shared: bool = False,
        connect_timeout: float = 10.0,
        read_only: bool = False,
    ) -> PostgresStore:
        """Connect to ``url``, create or migrate the schema, take the node lock.

        Args:
            url: a ``postgresql://`` (or ``postgres://``) URL.
            shared: other nodes serve the same rooms through a backplane;
                without one, a second node refuses to start.
            connect_timeout: seconds to wait for the server at start-up.
            read_only: only read (the offline CLI's listings and exports):
                no node lock, so running nodes may hold the database, and no
                migration, so the schema must be this ysyncd's.

        Raises:
            StoreOpenError: the database cannot be reached, belongs to
                another program (:class:`ForeignDatabase`), has a newer schema
                (:class:`SchemaError`), or another node serves it without a
                backplane (:class:`StoreInUse`).
        """
        shown = redact_url(url)
        try:
            node_lock = await asyncpg.connect(url, timeout=connect_timeout)
        except (TimeoutError, *_DB_ERRORS) as exc:
            raise StoreOpenError(shown, _connect_reason(exc)) from exc
        try:
            if read_only:
                epoch = await _check_schema(node_lock, shown)
            else:
                epoch = await _migrate(node_lock, shown)
                await _take_node_lock(node_lock, shown, shared=shared)
            pool = await asyncpg.create_pool(
                url,
                min_size=_POOL_MIN,
                max_size=_POOL_MAX,
                timeout=connect_timeout,
                command_timeout=_COMMAND_TIMEOUT,
            )
        except BaseException as exc:
            await node_lock.close()
            if isinstance(exc, _DB_ERRORS):
                raise StoreOpenError(shown, _connect_reason(exc)) from exc
            raise
        log.info("store: PostgreSQL at %s", shown)
        store = cls(pool, node_lock, epoch, shown, dsn=url, shared=shared)
        store._read_only = read_only
        return store

    @property
    def epoch(self) -> str:
        return self._epoch

    async def load(self, room: str) -> StoredRoom:
        try:
            rows = await self._pool.fetch(_LOAD, room)
        except _DB_ERRORS as exc:
            raise StoreError(f"load of room {room!r} failed: {exc}") from exc
        kept = [row for row in rows if row["data"] is not None]
        updates = [bytes(row["data"]) for row in kept]
        log_rows = sum(1 for row in rows if row["id"] != 0)
        head = len(updates) - log_rows
        return StoredRoom(
            updates,
            log_rows,
            len(updates[0]) if head else 0,
            [row["time"] for row in kept],
        )

    async def rooms(self) -> list[RoomSummary]:
        try:
            rows = await self._pool.fetch(_ROOMS)
        except _DB_ERRORS as exc:
            raise StoreError(f"listing the rooms failed: {exc}") from exc
        return [
            RoomSummary(
                str(r["name"]), int(r["rows"]), int(r["bytes"]), r["last_change"]
            )
            for r in rows
        ]

    async def delete(self, room: str) -> bool:
        if self._read_only:
            raise StoreError("the store was opened read-only")
        try:
            async with self._write_lock:
                writer = await self._writer_connection()
                async with writer.transaction():
                    await writer.execute(
                        f"DELETE FROM {SCHEMA}.updates WHERE room_id = "
                        f"(SELECT id FROM {SCHEMA}.rooms WHERE name = $1)",
                        room,
                    )
                    gone = await writer.fetchval(
                        f"DELETE FROM {SCHEMA}.rooms WHERE name = $1 RETURNING id",
                        room,
                    )
                self._room_ids.pop(room, None)
        except _DB_ERRORS as exc:
            raise StoreError(f"deleting room {room!r} failed: {exc}") from exc
        return gone is not None

    async def append(self, batch: Sequence[tuple[str, bytes]]) -> None:
        if self._read_only:
            raise StoreError("the store was opened read-only")
        try:
            async with self._write_lock:
                writer = await self._writer_connection()
                room_ids = [await self._room_id(writer, room) for room, _ in batch]
                await writer.execute(
                    _APPEND, room_ids, [u for _, u in batch], time.time()
                )
        except _DB_ERRORS as exc:
            raise StoreError(f"append failed: {exc}") from exc

    async def _writer_connection(self) -> asyncpg.Connection:
        """The connection appends use: one round trip each. (A pooled one
        would cost a second, asyncpg's reset on release: measured 600 µs and
        270 µs of CPU per append, against 330 µs and 80 µs.)"""
        if self._writer is None or self._writer.is_closed():
            self._writer = await asyncpg.connect(
                self._dsn, timeout=_COMMAND_TIMEOUT, command_timeout=_COMMAND_TIMEOUT
            )
        return self._writer

    async def _room_id(self, conn: asyncpg.Connection, room: str) -> int:
        room_id = self._room_ids.get(room)
        if room_id is None:
            if len(self._room_ids) >= _ROOM_ID_CACHE:
                self._room_ids.clear()
            # DO UPDATE, not DO NOTHING: it returns the row another node
            # inserted first, too.
            room_id = int(await conn.fetchval(_ROOM_ID, room))
            self._room_ids[room] = room_id
        return room_id

    async def compact(self, room: str, build: Build = build_here) -> Compaction:
        if self._read_only:
            raise StoreError("the store was opened read-only")
        try:
            async with self._pool.acquire() as conn:
                return await self._compact(conn, room, build)
        except _DB_ERRORS as exc:
            raise StoreError(f"compaction of room {room!r} failed: {exc}") from exc

    async def _compact(
        self, conn: PoolConnectionProxy[Record], room: str, build: Build
    ) -> Compaction:
        started = time.perf_counter()
        key = _COMPACTION_LOCK + room
        if not await conn.fetchval(
            "SELECT pg_try_advisory_lock(hashtextextended($1, 0))", key
        ):
            log.info("room %r: another node is compacting it", room)
            return Compaction(0, 0, 0, 0)
        try:
            rows = [
                (int(r["id"]), bytes(r["data"]))
                for r in await conn.fetch(_LOAD, room)
                if r["data"] is not None
            ]
            log_rows = [(row_id, data) for row_id, data in rows if row_id != 0]
            if not log_rows:
                return Compaction(0, 0, 0, 0)
            updates = [data for _, data in rows]
            head = len(rows) - len(log_rows)
            snap = await build(updates)
            kept = kept_rows(log_rows, head, snap)
            # Exactly the rows read: ids are not commit order across nodes.
            dropped = [row_id for row_id, _ in log_rows if row_id not in kept]
            async with conn.transaction():
                await conn.execute(
                    f"UPDATE {SCHEMA}.rooms SET snapshot = $1 WHERE name = $2",
                    snap.update,
                    room,
                )
                await conn.execute(
                    f"DELETE FROM {SCHEMA}.updates WHERE id = ANY($1::bigint[])",
                    dropped,
                )
        finally:
            await conn.execute(
                "SELECT pg_advisory_unlock(hashtextextended($1, 0))", key
            )
        return compacted(room, log_rows, kept, updates, snap.update, started)

    async def ping(self) -> None:
        """Raise :class:`StoreError` unless the database answers now, and
        this node holds its node lock again after losing its connection."""
        try:
            await self._pool.fetchval("SELECT 1")
            if self._node_lock.is_closed() and not self._read_only:
                await self._take_node_lock_again()
        except _DB_ERRORS as exc:
            raise StoreError(f"PostgreSQL at {self._url} unreachable: {exc}") from exc

    async def _take_node_lock_again(self) -> None:
        # A restart or failover of PostgreSQL ended the session holding the
        # lock: without it, a node with no backplane could start beside us.
        conn = await asyncpg.connect(self._dsn, timeout=_COMMAND_TIMEOUT)
        try:
            await _take_node_lock(conn, self._url, shared=self._shared)
        except BaseException:
            await conn.close()
            raise
        self._node_lock = conn
        log.warning("store: the node lock is held again")

    async def aclose(self) -> None:
        try:
            if self._writer is not None:
                await self._writer.close()
            await self._pool.close()
        finally:
            await self._node_lock.close()


def _lock_sql(function: str) -> str:
    return f"SELECT {function}(hashtextextended($1, 0))"


async def _migrate(conn: asyncpg.Connection, shown: str) -> str:
    """Create or bring the schema up to :data:`SCHEMA_VERSION`; return the epoch.

    Under a transaction-level advisory lock, so that nodes starting together
    take turns, and the second finds the work done.
    """
    async with conn.transaction():
        await conn.execute(_lock_sql("pg_advisory_xact_lock"), _MIGRATION_LOCK)
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


async def _check_schema(conn: asyncpg.Connection, shown: str) -> str:
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


async def _take_node_lock(
    conn: asyncpg.Connection, shown: str, *, shared: bool
) -> None:
    function = "pg_try_advisory_lock_shared" if shared else "pg_try_advisory_lock"
    if await conn.fetchval(_lock_sql(function), _NODE_LOCK):
        return
    if shared:
        reason = "in use by a ysyncd without --backplane; give every node one"
    else:
        reason = "in use by another ysyncd; nodes sharing a database need --backplane"
    raise StoreInUse(shown, reason)


def _connect_reason(exc: BaseException) -> str:
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
