"""The store contract, run against every store, plus SQLite specifics.

Every check compares document content, never row counts alone.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pycrdt import Array, Doc, Map, Text, TransactionEvent

from tests.services import PostgresServer
from ysyncd.errors import SchemaError, StoreError
from ysyncd.store import MemoryStore, SQLiteStore, UpdateStore, open_store
from ysyncd.store.postgres import PostgresStore
from ysyncd.store.snapshot import build_snapshot, doc_from_updates, prepare
from ysyncd.store.sqlite import SCHEMA_VERSION


def content(updates: list[bytes]) -> dict[str, object]:
    """The document ``updates`` make, in whatever order they come.

    yrs can leave updates pending although what they wait for came later
    (see ysyncd.store.snapshot); applying them all again, until nothing
    changes, is the plain way round that.
    """
    doc: Doc = Doc()
    for _ in range(8):
        before = doc.get_update()
        for u in updates:
            doc.apply_update(u)
        if doc.get_update() == before:
            break
    return {
        "text": str(doc.get("text", type=Text)),
        "map": doc.get("map", type=Map).to_py(),
        "array": doc.get("array", type=Array).to_py(),
    }


def edits(n: int, client_id: int = 1) -> list[bytes]:
    """``n`` small updates touching a Text, a Map and an Array."""
    doc: Doc = Doc(client_id=client_id)
    out: list[bytes] = []

    def keep(event: TransactionEvent) -> None:
        out.append(event.update)

    doc.observe(keep)
    text, mp, arr = (
        doc.get("text", type=Text),
        doc.get("map", type=Map),
        doc.get("array", type=Array),
    )
    for i in range(n):
        text.insert(len(text), "é" if i % 2 else "a")
        if i % 3 == 0:
            mp[f"k{i % 7}"] = i
        if i % 5 == 0:
            arr.append(i)
        if i % 11 == 0 and len(text) > 2:
            del text[0]
    return out


def second_writer(text: str) -> tuple[bytes, Doc, list[bytes]]:
    """Client 1 writes ``text``; client 2 has seen it and records its own updates.

    The store will be shown client 2's updates without client 1's, which is how
    rows with unmet dependencies come about.
    """
    first: Doc = Doc(client_id=1)
    first.get("text", type=Text).insert(0, text)
    base = first.get_update()
    second: Doc = Doc(client_id=2)
    second.apply_update(base)
    recorded: list[bytes] = []
    second.observe(lambda event: recorded.append(event.update))
    return base, second, recorded


_databases = itertools.count()


@pytest.fixture(params=["memory", "sqlite", "postgres"])
async def store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[UpdateStore]:
    s: UpdateStore
    if request.param == "memory":
        s = MemoryStore()
    elif request.param == "sqlite":
        s = await SQLiteStore.open(tmp_path / "s.db")
    else:
        # The session's PostgreSQL (a sync fixture), a database of our own.
        server: PostgresServer = request.getfixturevalue("postgres_server")
        name = f"store_{next(_databases)}"
        s = await open_store(await server.create_database(name))
    try:
        yield s
    finally:
        await s.aclose()


async def test_rows_keep_their_authors_through_a_compaction(
    store: UpdateStore,
) -> None:
    """Each row keeps the user who wrote it; a compaction's snapshot has none,
    and the rows it keeps beside it keep theirs."""
    updates = edits(6, 4)
    authors = [("ann", "bo", None, "cy")[i % 4] for i in range(len(updates))]
    await store.append([("a", u) for u in updates], authors)
    loaded = await store.load("a")
    assert loaded.authors == authors
    assert content(loaded.updates) == content(updates)
    await store.compact("a")
    after = await store.load("a")
    assert after.authors[0] is None  # the snapshot
    assert content(after.updates) == content(updates)
    with pytest.raises((ValueError, StoreError)):
        await store.append([("a", updates[0])], ["one", "too many"])


async def test_quarantine_moves_bad_rows_aside_and_the_room_loads(
    store: UpdateStore,
) -> None:
    """Rows the judge faults leave the log in one step (kept, never deleted);
    the good rows load as before, in order, with their authors."""
    good = edits(5, 6)
    names = [f"user{i}" for i in range(len(good))]
    bad = b"\x01\x02\x03\x04\x05"
    await store.append([("q", u) for u in good[:3]], names[:3])
    await store.append([("q", bad)], ["mallory"])
    await store.append([("q", u) for u in good[3:]], names[3:])
    await store.append([("other", bad)])

    def judge(data: bytes) -> str | None:
        return "planted" if data == bad else None

    moved = await store.quarantine("q", judge)
    assert len(moved) == 1 and moved[0].endswith(": planted")
    loaded = await store.load("q")
    assert loaded.updates == good
    assert loaded.authors == names
    assert content(loaded.updates) == content(good)
    assert (await store.load("other")).updates == [bad]  # another room: untouched
    assert await store.quarantine("q", judge) == []


class Clock:
    """The time a store's compactions go by, moved by the test."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["memory", "sqlite", "postgres"])
async def timed_store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[UpdateStore, Clock]]:
    """A store with 7 days of history, on a clock the test moves."""
    clock = Clock()
    s: UpdateStore
    if request.param == "memory":
        s = MemoryStore(clock=clock)
    elif request.param == "sqlite":
        s = await SQLiteStore.open(tmp_path / "h.db", clock=clock)
    else:
        server: PostgresServer = request.getfixturevalue("postgres_server")
        url = await server.create_database(f"store_{next(_databases)}")
        s = await PostgresStore.open(url, clock=clock)
    try:
        yield s, clock
    finally:
        await s.aclose()


async def stamp(
    store: UpdateStore, clock: Clock, room: str, updates: list[bytes]
) -> float:
    """Append ``updates`` a minute on; return their commit time."""
    clock.now += 60
    await store.append([(room, u) for u in updates], ["w"] * len(updates))
    times = (await store.load(room)).times
    assert times[-1] == clock.now
    return clock.now


async def test_history_rebuilds_any_moment_across_compactions(
    timed_store: tuple[UpdateStore, Clock],
) -> None:
    """Rows folded by compactions stay in the history: the document at each
    commit is the base and the rows committed by then, before and after
    every compaction; and the history ends at the document as it is."""
    store, clock = timed_store
    every = edits(30, 7)
    parts = [every[:10], every[10:20], every[20:]]
    moments = []
    for part in parts:
        moments.append(await stamp(store, clock, "h", part))
        clock.now += 86400  # compactions a day apart: each keeps a checkpoint
        await store.compact("h")
    for moment, upto in zip(moments, (10, 20, len(every)), strict=True):
        history = await store.history("h", moment)
        rows = [
            u
            for t, u in zip(history.times, history.updates, strict=True)
            if t is None or t <= moment
        ]
        assert content(rows) == content(every[:upto]), upto
    whole = await store.history("h")
    assert content(whole.updates) == content(every)
    assert whole.since is None
    assert [a for a in whole.authors[1 if whole.based else 0 :]] == ["w"] * len(
        whole.authors[1 if whole.based else 0 :]
    )


async def test_history_past_retention_is_thinned_to_one_checkpoint(
    timed_store: tuple[UpdateStore, Clock],
) -> None:
    """A week and more later, a compaction thins the history to the
    checkpoint at its edge: older moments are gone (``since``), the edge and
    everything after it still rebuild, and the document is whole."""
    store, clock = timed_store
    every = edits(20, 8)
    early = await stamp(store, clock, "t", every[:10])
    clock.now += 60
    await store.compact("t")  # checkpoint 1, at the clock's now
    edge = clock.now
    clock.now += 8 * 86400  # past the 7-day retention
    await stamp(store, clock, "t", every[10:])
    await store.compact("t")  # checkpoint 2; thins everything before edge
    history = await store.history("t", clock.now)
    assert history.since == edge
    assert early < edge
    assert content(history.updates) == content(every)
    oldest = await store.history("t")
    assert oldest.based
    assert content(oldest.updates) == content(every)
    assert content((await store.load("t")).updates) == content(every)


async def test_no_history_keeps_the_present_only(tmp_path: Path) -> None:
    """With no retention, a compaction folds the rows away for good: the
    history begins at it."""
    clock = Clock()
    store = await SQLiteStore.open(
        tmp_path / "none.db", history_retention=0, clock=clock
    )
    try:
        every = edits(10, 9)
        await stamp(store, clock, "n", every)
        clock.now += 60
        await store.compact("n")
        history = await store.history("n")
        assert history.since == clock.now
        assert history.based and content(history.updates) == content(every)
    finally:
        await store.aclose()


async def test_append_then_load_round_trips_content(store: UpdateStore) -> None:
    """What is appended loads back, in order, per room."""
    a, b = edits(50, 1), edits(30, 2)
    await store.append([("a", u) for u in a[:20]])
    await store.append([("b", u) for u in b] + [("a", u) for u in a[20:]])
    loaded_a, loaded_b = await store.load("a"), await store.load("b")
    assert loaded_a.updates == a
    assert content(loaded_b.updates) == content(b)
    assert (await store.load("nobody")).updates == []


async def test_compaction_preserves_content(store: UpdateStore) -> None:
    """A compacted room loads to exactly the same document, from fewer rows."""
    updates = edits(500)
    await store.append([("r", u) for u in updates])
    before = content((await store.load("r")).updates)
    result = await store.compact("r")
    after = await store.load("r")
    assert content(after.updates) == before
    assert result.rows_before == len(updates)
    assert result.rows_after == 0
    assert after.log_rows == 0
    assert result.bytes_after < result.bytes_before


async def test_appends_after_compaction_are_kept(store: UpdateStore) -> None:
    """Snapshot plus later rows still make the whole document."""
    updates = edits(300)
    await store.append([("r", u) for u in updates[:200]])
    await store.compact("r")
    await store.append([("r", u) for u in updates[200:]])
    await store.compact("r")
    await store.append([("r", updates[-1])])
    assert content((await store.load("r")).updates) == content(updates)


async def test_compaction_keeps_updates_whose_dependencies_are_missing(
    store: UpdateStore,
) -> None:
    """Doc.get_update() drops pending structs; their rows must survive compaction."""
    base, second, later = second_writer("hello")
    text = second.get("text", type=Text)
    text.insert(5, " world")
    text.insert(0, ">> ")
    # The store never saw ``base``, so these two cannot be integrated yet.
    await store.append([("r", u) for u in later])
    result = await store.compact("r")
    assert result.rows_after == 2
    await store.append([("r", base)])
    loaded = await store.load("r")
    doc: Doc = Doc()
    for u in loaded.updates:
        doc.apply_update(u)
    assert str(doc.get("text", type=Text)) == ">> hello world"


async def test_rooms_lists_every_stored_room_with_its_size(store: UpdateStore) -> None:
    """The listing names each room once, with the bytes its load returns and
    the time of its newest row (none once all of it is in the snapshot)."""
    before = time.time()
    await store.append([("b", u) for u in edits(20, client_id=2)])
    await store.append([("a", u) for u in edits(30)])
    await store.compact("b")
    listed = {room.name: room for room in await store.rooms()}
    assert sorted(listed) == ["a", "b"]
    for name in ("a", "b"):
        loaded = await store.load(name)
        assert listed[name].rows == loaded.log_rows
        assert listed[name].bytes == sum(map(len, loaded.updates))
    last = listed["a"].last_change
    assert last is not None and before <= last <= time.time()
    assert content((await store.load("b")).updates) == content(edits(20, client_id=2))


async def test_a_deleted_room_is_gone_and_the_others_stay(store: UpdateStore) -> None:
    await store.append([("gone", u) for u in edits(10)])
    await store.compact("gone")
    await store.append([("gone", u) for u in edits(12)[10:]])
    await store.append([("kept", u) for u in edits(5, client_id=3)])
    assert await store.delete("gone") is True
    assert (await store.load("gone")).updates == []
    assert [r.name for r in await store.rooms()] == ["kept"]
    assert content((await store.load("kept")).updates) == content(edits(5, client_id=3))
    assert await store.delete("gone") is False
    # A room of the same name starts afresh.
    await store.append([("gone", u) for u in edits(3, client_id=4)])
    assert content((await store.load("gone")).updates) == content(edits(3, client_id=4))


async def test_epoch_is_stable(store: UpdateStore) -> None:
    """The store epoch is a non-empty id."""
    assert len(store.epoch) >= 16


def test_snapshot_refuses_corrupt_logs() -> None:
    """Compaction never replaces a log it cannot read."""
    with pytest.raises(StoreError):
        build_snapshot([b"\x01\x02\x03garbage"])


async def test_sqlite_persists_across_reopen_with_same_epoch(tmp_path: Path) -> None:
    """Closing and reopening keeps rows, snapshot and epoch."""
    path = tmp_path / "p.db"
    first = await SQLiteStore.open(path)
    updates = edits(100)
    await first.append([("room/ü", u) for u in updates])
    await first.compact("room/ü")
    epoch = first.epoch
    await first.aclose()
    second = await SQLiteStore.open(path)
    try:
        assert second.epoch == epoch
        assert content((await second.load("room/ü")).updates) == content(updates)
    finally:
        await second.aclose()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)


async def test_sqlite_version_1_gains_commit_times(tmp_path: Path) -> None:
    """A database of schema 1 is migrated: its rows stay, without a time;
    rows committed afterwards carry theirs (for the history)."""
    path = tmp_path / "v1.db"
    every = edits(8)
    old, new = every[:5], every[5:]
    with sqlite3.connect(path) as db:
        db.executescript(
            """
            CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
            CREATE TABLE rooms (
                id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, snapshot BLOB
            );
            CREATE TABLE updates (
                id INTEGER PRIMARY KEY,
                room_id INTEGER NOT NULL REFERENCES rooms(id),
                data BLOB NOT NULL
            );
            CREATE INDEX updates_by_room ON updates(room_id, id);
            INSERT INTO meta VALUES ('epoch', 'e1');
            INSERT INTO rooms (id, name) VALUES (1, 'r');
            PRAGMA user_version = 1;
            """
        )
        db.executemany(
            "INSERT INTO updates (room_id, data) VALUES (1, ?)", [(u,) for u in old]
        )
    store = await SQLiteStore.open(path)
    try:
        assert store.epoch == "e1"
        before = time.time()
        who = [("ann", None, "bo")[i % 3] for i in range(len(new))]
        await store.append([("r", u) for u in new], who)
        loaded = await store.load("r")
        assert content(loaded.updates) == content(old + new)
        assert loaded.times[:5] == [None] * 5
        assert loaded.authors == [None] * len(old) + who
        assert all(
            t is not None and before <= t <= time.time() for t in loaded.times[5:]
        )
    finally:
        await store.aclose()


async def test_sqlite_refuses_a_newer_schema(tmp_path: Path) -> None:
    """A database from a future ysyncd is left alone, with a clear error."""
    path = tmp_path / "future.db"
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(SchemaError):
        await SQLiteStore.open(path)


async def test_sqlite_compaction_shrinks_the_file(tmp_path: Path) -> None:
    """Compaction without a history hands freed pages back to the file
    system (with one, thinning does; see the history tests)."""
    path = tmp_path / "shrink.db"
    store = await SQLiteStore.open(path, history_retention=0)
    try:
        await store.append([("r", u) for u in edits(3000)])
        with sqlite3.connect(path) as db:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            before = db.execute("PRAGMA page_count").fetchone()[0]
        await store.compact("r")
        with sqlite3.connect(path) as db:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            after = db.execute("PRAGMA page_count").fetchone()[0]
    finally:
        await store.aclose()
    assert after < before / 2, (before, after)


async def test_compaction_keeps_deletes_of_items_not_seen_yet(
    store: UpdateStore,
) -> None:
    """A delete whose target has not arrived survives compaction (no resurrection)."""
    insert, second, deletes = second_writer("abc")
    del second.get("text", type=Text)[1:2]
    await store.append([("r", deletes[0])])
    result = await store.compact("r")
    assert result.rows_after == 1
    await store.append([("r", insert)])
    assert content((await store.load("r")).updates)["text"] == "ac"


async def test_concurrent_loads_all_succeed(store: UpdateStore) -> None:
    """Many rooms loading at once (a reconnect storm) each get their content."""
    rooms = [f"room-{i}" for i in range(16)]
    await store.append([(r, u) for r in rooms for u in edits(20, 3)])
    loaded = await asyncio.gather(*(store.load(r) for r in rooms))
    assert all(content(s.updates) == content(edits(20, 3)) for s in loaded)


async def test_compaction_of_a_room_with_many_writers(store: UpdateStore) -> None:
    """Many clients' interleaved edits compact to the same document.

    Random client IDs (as real clients pick them) make pycrdt encode equal
    state vectors in different byte orders; the check must not mind.
    """
    rng = random.Random(5)
    docs: list[Doc] = [Doc(client_id=rng.randrange(2**31)) for _ in range(40)]
    log: list[bytes] = []
    for doc in docs:
        doc.observe(lambda event: log.append(event.update))
    for round_ in range(5):
        for i, doc in enumerate(docs):
            doc.get("text", type=Text).insert(0, f"{i}.{round_};")
            doc.get("map", type=Map)[f"w{i}"] = round_
    await store.append([("many", u) for u in log])
    result = await store.compact("many")
    assert result.rows_before == len(log)
    assert result.rows_after == 0
    assert content((await store.load("many")).updates) == content(log)


async def test_appends_during_a_compaction_are_kept(store: UpdateStore) -> None:
    """Compaction runs beside commits; rows appended meanwhile survive it."""
    updates = edits(2000)
    half = len(updates) // 2
    await store.append([("r", u) for u in updates[:half]])
    compaction = asyncio.create_task(store.compact("r"))
    for start in range(half, len(updates), 50):
        await store.append([("r", u) for u in updates[start : start + 50]])
        await asyncio.sleep(0)  # let the compaction interleave
    await compaction
    assert content((await store.load("r")).updates) == content(updates)


def test_a_room_is_built_whatever_order_its_rows_were_committed_in() -> None:
    """Nodes commit one client's updates out of order: a run of them before
    the gap they follow, part of the gap, more of the run, then the rest.
    pycrdt alone leaves the run pending for good; the room's doc, its
    snapshot and its prepared pieces must all hold everything."""
    updates = edits(1200)
    stored = (
        updates[:400]
        + updates[800:825]
        + updates[400:425]
        + updates[825:850]
        + updates[425:800]
        + updates[850:]
    )
    plain: Doc = Doc()
    for update in stored:
        plain.apply_update(update)
    assert plain.get_state() != doc_from_updates(updates).get_state()  # the trap
    expected = content(updates)
    assert content([doc_from_updates(stored).get_update()]) == expected
    snapshot = build_snapshot(stored)
    assert snapshot.pending == []
    assert content([snapshot.update]) == expected
    assert content(prepare(stored).pieces) == expected
