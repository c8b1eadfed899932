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
from collections.abc import Callable, Sequence

import asyncpg
from asyncpg import Record
from asyncpg.pool import PoolConnectionProxy

from ysyncd.errors import (
    StoreError,
    StoreOpenError,
)
from ysyncd.store import redact_url
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
from ysyncd.store.postgres_open import (
    SCHEMA,
    SCHEMA_VERSION,
    check_schema,
    connect_reason,
    migrate,
    take_node_lock,
)

__all__ = ["SCHEMA", "SCHEMA_VERSION", "PostgresStore"]

log = logging.getLogger("ysyncd.store")

_ROOM_ID_CACHE = 65_536
#: The advisory lock key of a room's compaction (see postgres_open.py).
_COMPACTION_LOCK = "ysyncd:compact:"
_POOL_MIN = 1
_POOL_MAX = 8

_LOAD = f"""
SELECT 0::bigint AS id, snapshot AS data, NULL::float8 AS time,
       NULL::text AS author
FROM {SCHEMA}.rooms WHERE name = $1
UNION ALL
SELECT u.id, u.data, u.time, u.author FROM {SCHEMA}.updates AS u
JOIN {SCHEMA}.rooms AS r ON r.id = u.room_id
WHERE r.name = $1
ORDER BY 1
"""

# Rows keep the batch's order (ids from the sequence follow ``ord``).
_APPEND = f"""
INSERT INTO {SCHEMA}.updates (room_id, data, time, author)
SELECT room_id, data, $3::float8, author
FROM unnest($1::bigint[], $2::bytea[], $4::text[])
    WITH ORDINALITY AS batch(room_id, data, author, ord)
ORDER BY ord
"""

# A room's rows after a checkpoint: those compactions since moved to the
# history, and the log, in id order.
_HISTORY_ROWS = f"""
SELECT row_id AS id, data, time, author FROM {SCHEMA}.history
WHERE room_id = $1 AND moved_in > $2
UNION ALL
SELECT id, data, time, author FROM {SCHEMA}.updates WHERE room_id = $1
ORDER BY 1
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
        history_retention: float = DEFAULT_RETENTION,
        clock: Callable[[], float] = time.time,
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
        self._retention = history_retention
        self._clock = clock

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        shared: bool = False,
        connect_timeout: float = 10.0,
        read_only: bool = False,
        history_retention: float = DEFAULT_RETENTION,
        clock: Callable[[], float] = time.time,
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
            history_retention: seconds of history compactions keep (0: none).
            clock: the time compactions go by (tests).

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
            raise StoreOpenError(shown, connect_reason(exc)) from exc
        try:
            if read_only:
                epoch = await check_schema(node_lock, shown)
            else:
                epoch = await migrate(node_lock, shown)
                await take_node_lock(node_lock, shown, shared=shared)
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
                raise StoreOpenError(shown, connect_reason(exc)) from exc
            raise
        log.info("store: PostgreSQL at %s", shown)
        store = cls(
            pool,
            node_lock,
            epoch,
            shown,
            dsn=url,
            shared=shared,
            history_retention=history_retention,
            clock=clock,
        )
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
            [row["author"] for row in kept],
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
                    for table in ("updates", "history", "checkpoints"):
                        await writer.execute(
                            f"DELETE FROM {SCHEMA}.{table} WHERE room_id = "
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

    def append_inline(
        self,
        batch: Sequence[tuple[str, bytes]],
        authors: Sequence[str | None],
    ) -> bool:
        return False  # a round trip to the server: always awaited

    async def append(
        self,
        batch: Sequence[tuple[str, bytes]],
        authors: Sequence[str | None] | None = None,
    ) -> None:
        if self._read_only:
            raise StoreError("the store was opened read-only")
        who = list(authors) if authors is not None else [None] * len(batch)
        if len(who) != len(batch):
            raise ValueError("one author per update")
        try:
            async with self._write_lock:
                writer = await self._writer_connection()
                known = self._room_ids
                room_ids = [
                    known[room] if room in known else await self._room_id(writer, room)
                    for room, _ in batch
                ]
                await writer.execute(
                    _APPEND, room_ids, [u for _, u in batch], self._clock(), who
                )
        except asyncpg.ForeignKeyViolationError as exc:
            # Another node deleted a room whose id we remember: the retry
            # (the committer's) looks every id up again.
            self._room_ids.clear()
            raise StoreError(f"append failed: {exc}") from exc
        except _DB_ERRORS as exc:
            raise StoreError(f"append failed: {exc}") from exc

    async def quarantine(self, room: str, bad: Judge) -> list[str]:
        if self._read_only:
            raise StoreError("the store was opened read-only")
        try:
            rows = await self._pool.fetch(_LOAD, room)
            moved = [
                (row["id"] or None, bytes(row["data"]), row, reason)
                for row in rows
                if row["data"] is not None
                and (reason := bad(bytes(row["data"]))) is not None
            ]
            if not moved:
                return []
            async with self._write_lock:
                writer = await self._writer_connection()
                async with writer.transaction():
                    for row_id, data, row, reason in moved:
                        await writer.execute(
                            f"INSERT INTO {SCHEMA}.quarantine (room, row_id, data, "
                            "time, author, reason, moved) "
                            "VALUES ($1, $2, $3, $4, $5, $6, $7)",
                            room,
                            row_id,
                            data,
                            row["time"],
                            row["author"],
                            reason,
                            time.time(),
                        )
                        if row_id is None:
                            await writer.execute(
                                f"UPDATE {SCHEMA}.rooms SET snapshot = NULL "
                                "WHERE name = $1",
                                room,
                            )
                        else:
                            await writer.execute(
                                f"DELETE FROM {SCHEMA}.updates WHERE id = $1", row_id
                            )
        except _DB_ERRORS as exc:
            raise StoreError(
                f"quarantining room {room!r}'s rows failed: {exc}"
            ) from exc
        return [
            f"{'snapshot' if row_id is None else f'row {row_id}'}: {reason}"
            for row_id, _, _, reason in moved
        ]

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
                changed = await conn.fetchrow(
                    f"UPDATE {SCHEMA}.rooms SET snapshot = $1, "
                    "generation = generation + 1 WHERE name = $2 "
                    "RETURNING id, generation",
                    snap.update,
                    room,
                )
                if changed is None:  # deleted meanwhile (DELETE /api/rooms/...)
                    raise StoreError(f"room {room!r} was deleted")
                room_id, generation = changed["id"], changed["generation"]
                if self._retention > 0:
                    await conn.execute(
                        f"INSERT INTO {SCHEMA}.history (room_id, row_id, data, "
                        "time, author, moved_in) SELECT room_id, id, data, time, "
                        f"author, $2 FROM {SCHEMA}.updates "
                        "WHERE id = ANY($1::bigint[])",
                        dropped,
                        generation,
                    )
                await conn.execute(
                    f"DELETE FROM {SCHEMA}.updates WHERE id = ANY($1::bigint[])",
                    dropped,
                )
                await self._keep_history(conn, room_id, generation, snap.update)
        finally:
            await conn.execute(
                "SELECT pg_advisory_unlock(hashtextextended($1, 0))", key
            )
        return compacted(room, log_rows, kept, updates, snap.update, started)

    async def _keep_history(
        self,
        conn: PoolConnectionProxy[Record],
        room_id: int,
        generation: int,
        snapshot: bytes,
    ) -> None:
        """Keep a checkpoint if one is due, and thin what is past retention."""
        now, retention = self._clock(), self._retention
        if retention <= 0:  # no history: the moment of this snapshot on
            for table in ("history", "checkpoints"):
                await conn.execute(
                    f"DELETE FROM {SCHEMA}.{table} WHERE room_id = $1", room_id
                )
            await conn.execute(
                f"UPDATE {SCHEMA}.rooms SET kept_since = $1 WHERE id = $2",
                now,
                room_id,
            )
            return
        latest = await conn.fetchval(
            f"SELECT max(time) FROM {SCHEMA}.checkpoints WHERE room_id = $1", room_id
        )
        if checkpoint_due(latest, now, retention):
            await conn.execute(
                f"INSERT INTO {SCHEMA}.checkpoints (room_id, generation, time, data) "
                "VALUES ($1, $2, $3, $4)",
                room_id,
                generation,
                now,
                snapshot,
            )
        edge = await conn.fetchrow(
            f"SELECT generation, time FROM {SCHEMA}.checkpoints WHERE room_id = $1 "
            "AND time <= $2 ORDER BY time DESC LIMIT 1",
            room_id,
            now - retention,
        )
        if edge is None:
            return
        await conn.execute(
            f"DELETE FROM {SCHEMA}.history WHERE room_id = $1 AND moved_in <= $2",
            room_id,
            edge["generation"],
        )
        await conn.execute(
            f"DELETE FROM {SCHEMA}.checkpoints WHERE room_id = $1 AND time < $2",
            room_id,
            edge["time"],
        )
        await conn.execute(
            f"UPDATE {SCHEMA}.rooms SET kept_since = $1 WHERE id = $2",
            edge["time"],
            room_id,
        )

    async def history(self, room: str, at: float | None = None) -> History:
        try:
            async with self._pool.acquire() as conn:
                # One snapshot of the database: a compaction cannot move rows
                # in between the reads.
                async with conn.transaction(isolation="repeatable_read"):
                    return await self._history(conn, room, at)
        except _DB_ERRORS as exc:
            raise StoreError(f"reading room {room!r}'s history failed: {exc}") from exc

    async def _history(
        self, conn: PoolConnectionProxy[Record], room: str, at: float | None
    ) -> History:
        found = await conn.fetchrow(
            f"SELECT id, snapshot, generation, kept_since FROM {SCHEMA}.rooms "
            "WHERE name = $1",
            room,
        )
        if found is None:
            return History([], [], [], None)
        room_id, generation = found["id"], found["generation"]
        checkpoint = await conn.fetchrow(
            f"SELECT generation, data FROM {SCHEMA}.checkpoints "
            "WHERE room_id = $1 AND time <= $2 ORDER BY time DESC LIMIT 1",
            room_id,
            earliest(at, found["kept_since"]),
        )
        base: list[bytes] = []
        if checkpoint is not None:
            generation = checkpoint["generation"]
            base = [bytes(checkpoint["data"])]
        elif found["kept_since"] is None:
            generation = 0  # nothing was ever thinned: every row is here
        elif found["snapshot"] is not None:
            base = [bytes(found["snapshot"])]  # no history kept
        rows = await conn.fetch(_HISTORY_ROWS, room_id, generation)
        return History(
            base + [bytes(r["data"]) for r in rows],
            [None] * len(base) + [r["time"] for r in rows],
            [None] * len(base) + [r["author"] for r in rows],
            found["kept_since"],
            bool(base),
        )

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
            await take_node_lock(conn, self._url, shared=self._shared)
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
