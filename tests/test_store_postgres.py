"""The PostgreSQL store where many nodes share it (the contract itself runs in
test_store.py against every store).

Real PostgreSQL, started by the tests (tests/services.py). Every check is on
document content.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence

import asyncpg
import pytest

from tests.test_store import content, edits
from ysyncd.errors import ForeignDatabase, SchemaError, StoreInUse, StoreOpenError
from ysyncd.store import UpdateStore, open_store
from ysyncd.store.base import build_here
from ysyncd.store.postgres import SCHEMA
from ysyncd.store.snapshot import Snapshot


@pytest.fixture
async def nodes(pg_url: str) -> AsyncIterator[tuple[UpdateStore, UpdateStore]]:
    """Two nodes' stores on one database, as with a backplane."""
    first = await open_store(pg_url, shared=True)
    second = await open_store(pg_url, shared=True)
    try:
        yield first, second
    finally:
        await first.aclose()
        await second.aclose()


async def test_nodes_share_rooms_and_the_epoch(
    nodes: tuple[UpdateStore, UpdateStore],
) -> None:
    """What one node appends, the other loads; both hand out one epoch (the
    Jupyter sessionId is the same on every node)."""
    first, second = nodes
    updates = edits(60)
    await first.append([("r", u) for u in updates[:30]])
    await second.append([("r", u) for u in updates[30:]])
    assert first.epoch == second.epoch
    for store in nodes:
        assert content((await store.load("r")).updates) == content(updates)


async def test_concurrent_appends_and_compactions_from_two_nodes_keep_everything(
    nodes: tuple[UpdateStore, UpdateStore],
) -> None:
    """Both nodes append to one room and both try to compact it at once: one
    compaction runs at a time (the other skips), and every update stays."""
    first, second = nodes
    updates = edits(1200)
    await first.append([("r", u) for u in updates[:400]])

    async def write(store: UpdateStore, part: Sequence[bytes]) -> None:
        for start in range(0, len(part), 25):
            await store.append([("r", u) for u in part[start : start + 25]])
            await asyncio.sleep(0)

    results = await asyncio.gather(
        write(first, updates[400:800]),
        write(second, updates[800:]),
        first.compact("r"),
        second.compact("r"),
    )
    compactions = [r for r in results[2:] if r is not None]
    assert any(c.rows_before for c in compactions)  # type: ignore[union-attr]
    assert content((await second.load("r")).updates) == content(updates)
    await first.compact("r")
    assert content((await first.load("r")).updates) == content(updates)


async def test_a_row_committed_during_a_compaction_is_kept(pg_url: str) -> None:
    """Ids come from a sequence, not from commit order: a row with a lower id
    than the last one a compaction read may commit while it builds. It is not
    in the snapshot, so it must not be deleted with the rows that are."""
    store = await open_store(pg_url)
    updates = edits(40)
    late, early = updates[:20], updates[20:]
    raw = await asyncpg.connect(pg_url)
    try:
        await store.append([("r", late[0])])  # the room's row exists
        transaction = raw.transaction()
        await transaction.start()
        # Takes its id now, commits later: another node's slow commit.
        await raw.executemany(
            f"INSERT INTO {SCHEMA}.updates (room_id, data) "
            f"SELECT id, $2 FROM {SCHEMA}.rooms WHERE name = $1",
            [("r", u) for u in late[1:]],
        )
        await store.append([("r", u) for u in early])

        async def build_while_it_commits(rows: Sequence[bytes]) -> Snapshot:
            await transaction.commit()
            return await build_here(rows)

        await store.compact("r", build_while_it_commits)
        assert content((await store.load("r")).updates) == content(updates)
    finally:
        await raw.close()
        await store.aclose()


async def test_a_second_node_without_a_backplane_is_refused(pg_url: str) -> None:
    """Two nodes on one database without a backplane would each keep their
    own copy of a room, and their clients would never meet."""
    alone = await open_store(pg_url)
    try:
        with pytest.raises(StoreInUse, match="--backplane"):
            await open_store(pg_url)
        with pytest.raises(StoreInUse, match="without --backplane"):
            await open_store(pg_url, shared=True)
    finally:
        await alone.aclose()
    shared = await open_store(pg_url, shared=True)
    try:
        with pytest.raises(StoreInUse):
            await open_store(pg_url)
    finally:
        await shared.aclose()


async def test_schema_1_gains_commit_times(pg_url: str) -> None:
    """A database of schema 1 is migrated: its rows stay, without a time or
    author; rows committed afterwards carry theirs (for the history)."""
    every = edits(8)
    store = await open_store(pg_url)
    await store.append([("r", u) for u in every[:5]])
    await store.aclose()
    raw = await asyncpg.connect(pg_url)
    try:  # back to schema 1, as an older ysyncd left it
        await raw.execute(f"ALTER TABLE {SCHEMA}.updates DROP COLUMN time")
        await raw.execute(f"ALTER TABLE {SCHEMA}.updates DROP COLUMN author")
        await raw.execute(f"DROP TABLE {SCHEMA}.quarantine")
        await raw.execute(f"DROP TABLE {SCHEMA}.history")
        await raw.execute(f"DROP TABLE {SCHEMA}.checkpoints")
        await raw.execute(
            f"ALTER TABLE {SCHEMA}.rooms DROP COLUMN generation, DROP COLUMN kept_since"
        )
        await raw.execute(
            f"UPDATE {SCHEMA}.meta SET value = '1' WHERE key = 'schema_version'"
        )
    finally:
        await raw.close()
    store = await open_store(pg_url)
    try:
        before = time.time()
        who = [("ann", None, "bo")[i % 3] for i in range(len(every) - 5)]
        await store.append([("r", u) for u in every[5:]], who)
        loaded = await store.load("r")
        assert content(loaded.updates) == content(every)
        assert loaded.times[:5] == [None] * 5
        assert loaded.authors == [None] * 5 + who
        assert all(
            t is not None and before <= t <= time.time() for t in loaded.times[5:]
        )
    finally:
        await store.aclose()


async def test_a_newer_schema_and_a_foreign_schema_are_refused(pg_url: str) -> None:
    """A schema from a newer ysyncd, or a ``ysyncd`` schema of another
    program, is refused with one line and left unchanged."""
    store = await open_store(pg_url)
    await store.aclose()
    raw = await asyncpg.connect(pg_url)
    try:
        await raw.execute(
            f"UPDATE {SCHEMA}.meta SET value = '99' WHERE key = 'schema_version'"
        )
        with pytest.raises(SchemaError, match="newer"):
            await open_store(pg_url)
        await raw.execute(f"DROP SCHEMA {SCHEMA} CASCADE")
        await raw.execute(f"CREATE SCHEMA {SCHEMA}")
        await raw.execute(f"CREATE TABLE {SCHEMA}.accounts (id int)")
        with pytest.raises(ForeignDatabase, match="accounts"):
            await open_store(pg_url)
        tables = await raw.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = $1",
            SCHEMA,
        )
        assert [t["table_name"] for t in tables] == ["accounts"]
    finally:
        await raw.close()


async def test_an_unreachable_database_is_one_line_without_the_password(
    pg_url: str,
) -> None:
    """A refused connection names the URL with its password hidden."""
    url = "postgresql://someone:hunter2@127.0.0.1:1/nowhere"
    with pytest.raises(StoreOpenError) as caught:
        await open_store(url)
    assert "hunter2" not in str(caught.value)
    assert "refused" in str(caught.value)
    missing = pg_url.rsplit("/", 1)[0] + "/no_such_database"
    with pytest.raises(StoreOpenError, match="no such database"):
        await open_store(missing)
