"""Commands that work on a store without a server: ``ysyncd rooms``,
``export``, ``import``, ``compact``, ``backup``, ``verify`` and ``migrate``.

They take ``--db`` as ``ysyncd serve`` does (the same setting: a SQLite file
or a PostgreSQL URL, ``$YSYNCD_DB``; cli.py adds it). Reading commands
(``rooms``, ``export``) open the store read-only: no lock and no migration,
so they work beside a running server, and a SQLite reader sees only
committed rows. Writing commands (``import``, ``compact``) take the store as
a server would, so they refuse to run while a server holds it (SQLite's
lock file, PostgreSQL's node lock): two writers would each keep their own
idea of a room. ``import --url`` goes through a running server's HTTP API
instead, as any client's edit does.

An import is checked as a client's update is (shape limits, then applied to
the room's document) and stored as one more row: a merge, never a
replacement. A compaction is verified by content, as the server's is.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import sqlite3
import sys
import urllib.parse
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import click
import httpx
from pycrdt import Doc

from ysyncd.errors import (
    InvalidUpdate,
    ProtocolError,
    StoreError,
    StoreInUse,
    YsyncdError,
)
from ysyncd.integrate import UpdatePolicy, apply_update
from ysyncd.jupyter.roomids import parse_room_id
from ysyncd.namespaces import PathPattern
from ysyncd.rendering import document_json, jupyter_json
from ysyncd.store import UpdateStore, is_postgres_url, open_store, redact_url
from ysyncd.store.base import DEFAULT_RETENTION
from ysyncd.store.snapshot import build_snapshot, doc_from_updates
from ysyncd.updates import shape_of

__all__ = ["commands"]

T = TypeVar("T")

#: The PostgreSQL schema the store lives in.
SCHEMA_NAME = "ysyncd"
#: Rows per append when copying a room.
_BATCH = 500


def _run(work: Coroutine[Any, Any, T]) -> T:
    """Run ``work``; a store that cannot be used is one line, exit status 1."""
    try:
        return asyncio.run(work)
    except StoreInUse as exc:
        raise click.ClickException(
            f"{exc}: stop the server first; these commands write to the store"
        ) from None
    except YsyncdError as exc:
        raise click.ClickException(str(exc)) from None


async def _opened(
    db: str, *, read_only: bool, history_retention: float = DEFAULT_RETENTION
) -> UpdateStore:
    return await open_store(
        db, read_only=read_only, history_retention=history_retention
    )


@click.command("rooms")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def rooms(db: str, as_json: bool) -> None:
    """List the stored rooms: rows, bytes and last change."""

    async def listing() -> list[Any]:
        store = await _opened(db, read_only=True)
        try:
            return await store.rooms()
        finally:
            await store.aclose()

    summaries = _run(listing())
    if as_json:
        for s in summaries:
            click.echo(
                json.dumps(
                    {
                        "room": s.name,
                        "rows": s.rows,
                        "bytes": s.bytes,
                        "last_change": s.last_change,
                    }
                )
            )
        return
    click.echo(f"{'ROWS':>8} {'BYTES':>12}  {'LAST CHANGE (UTC)':<20} ROOM")
    for s in summaries:
        when = _iso(s.last_change) if s.last_change is not None else "-"
        click.echo(f"{s.rows:>8} {s.bytes:>12}  {when:<20} {s.name}")


@click.command("export")
@click.argument("room")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["update", "json"]),
    default="update",
    show_default=True,
    help="update: one Yjs update (v1); json: the document as JSON (a Jupyter "
    "room's: its file's content).",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write here instead of to standard output.",
)
def export(
    db: str, room_pattern: str, room: str, fmt: str, output: Path | None
) -> None:
    """Write ROOM's document, as a Yjs update or as JSON."""

    async def stored_updates() -> list[bytes]:
        store = await _opened(db, read_only=True)
        try:
            stored = await store.load(room)
        finally:
            await store.aclose()
        if not stored.updates:
            raise StoreError(f"{redact_url(db)}: no room {room!r}")
        return stored.updates

    updates = _run(stored_updates())
    if fmt == "update":
        data = bytes(doc_from_updates(updates).get_update())
    else:
        located = PathPattern(room_pattern).locate(room)
        kind = None if located is None else parse_room_id(located.room_id)
        content = (
            document_json(updates)
            if kind is None
            else jupyter_json(updates, kind.file_type)
        )
        data = (json.dumps(content, indent=1, ensure_ascii=False) + "\n").encode()
    if output is None:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    else:
        output.write_bytes(data)


@click.command("import")
@click.argument("room")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option(
    "--url",
    default="",
    help="Go through the running server at this http(s):// URL (its "
    "POST /api/rooms/{room}/update) instead of opening --db, which it holds.",
)
@click.option(
    "--token-file",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="With --url: a file holding the token to present (the admin token, "
    "or one that may write ROOM).",
)
def import_(db: str, room: str, file: Path, url: str, token_file: Path | None) -> None:
    """Merge the Yjs update (v1) in FILE into ROOM, as one stored row."""
    update = file.read_bytes()
    if url:
        _post_update(url, room, update, token_file)
        return

    async def merge() -> bool:
        store = await _opened(db, read_only=False)
        try:
            stored = await store.load(room)
            doc = doc_from_updates(stored.updates)
            try:
                # As a client's update is checked: its shape, then pycrdt.
                shape_of(update, UpdatePolicy().limits)
                if not apply_update(doc, update):
                    return False
            except ProtocolError as exc:
                raise InvalidUpdate(f"{file} is not a Yjs update (v1): {exc}") from exc
            await store.append([(room, update)])
            return True
        finally:
            await store.aclose()

    if _run(merge()):
        click.echo(f"{room}: merged {len(update)} bytes")
    else:
        click.echo(f"{room}: nothing new in {file}")


def _post_update(url: str, room: str, update: bytes, token_file: Path | None) -> None:
    """``import`` through a running server's HTTP API."""
    headers = {"Content-Type": "application/octet-stream"}
    if token_file is not None:
        headers["Authorization"] = f"Bearer {token_file.read_text().strip()}"
    target = f"{url.rstrip('/')}/api/rooms/{urllib.parse.quote(room, safe='')}/update"
    try:
        resp = httpx.post(target, content=update, headers=headers, timeout=60)
    except httpx.HTTPError as exc:
        raise click.ClickException(f"{url}: {exc}") from exc
    if resp.status_code != 200:
        raise click.ClickException(
            f"{url} answered {resp.status_code}: {resp.text.strip()[:200]}"
        )
    changed = resp.json().get("changed")
    click.echo(
        f"{room}: merged {len(update)} bytes" if changed else f"{room}: nothing new"
    )


@click.command("compact")
@click.argument("room", required=False)
def compact(db: str, room: str | None, history_retention: float) -> None:
    """Compact ROOM's log (every room's without ROOM) into a snapshot,
    keeping --history-retention of history as the server does."""

    async def compact_all() -> list[tuple[str, Any]]:
        store = await _opened(db, read_only=False, history_retention=history_retention)
        try:
            names = [room] if room else [s.name for s in await store.rooms()]
            return [(name, await store.compact(name)) for name in names]
        finally:
            await store.aclose()

    for name, done in _run(compact_all()):
        click.echo(
            f"{name}: {done.rows_before} rows ({done.bytes_before} B) -> "
            f"{done.rows_after} rows beside the snapshot ({done.bytes_after} B)"
        )


@click.command("backup")
@click.argument("dest", type=click.Path(path_type=Path, dir_okay=False))
def backup(db: str, dest: Path) -> None:
    """Copy the SQLite database to DEST, consistent even while a server runs."""
    if is_postgres_url(db):
        raise click.ClickException(
            "a PostgreSQL store is backed up with PostgreSQL's own tools: "
            f"pg_dump --schema={SCHEMA_NAME} (the store is that schema)"
        )
    if dest.exists():
        raise click.ClickException(f"{dest} exists; a backup never overwrites")
    # SQLite's online backup: pages copied from one read transaction, so the
    # copy is the database as of one commit, whatever the server writes.
    source = sqlite3.connect(Path(db).resolve().as_uri() + "?mode=ro", uri=True)
    try:
        target = sqlite3.connect(dest)
        try:
            source.backup(target)
            check = target.execute("PRAGMA integrity_check").fetchone()
        finally:
            target.close()
    except sqlite3.Error as exc:
        raise click.ClickException(f"backing up {db} failed: {exc}") from None
    finally:
        source.close()
    if check != ("ok",):
        raise click.ClickException(f"the copy in {dest} fails its integrity check")
    click.echo(f"backed up {db} to {dest}")


@click.command("verify")
@click.option(
    "--repair",
    is_flag=True,
    help="Move rows that do not decode into the quarantine table (never "
    "deleted), so that their rooms load; refused while a server holds the store.",
)
def verify(db: str, repair: bool) -> None:
    """Check the store: SQLite's integrity check, and every room loads and
    builds its document. Exits 1, naming what is bad, if anything is."""

    async def check() -> dict[str, str]:
        bad: dict[str, str] = {}
        store = await _opened(db, read_only=True)
        try:
            for summary in await store.rooms():
                problem = await _room_problem(store, summary.name)
                if problem is not None:
                    bad[summary.name] = problem
        finally:
            await store.aclose()
        return bad

    async def quarantine(rooms: list[str]) -> dict[str, str]:
        still: dict[str, str] = {}
        store = await _opened(db, read_only=False)
        try:
            for name in rooms:
                for moved in await store.quarantine(name, _fault):
                    click.echo(f"room {name!r}: quarantined {moved}", err=True)
                problem = await _room_problem(store, name)
                if problem is not None:
                    still[name] = problem
        finally:
            await store.aclose()
        return still

    problems = [] if is_postgres_url(db) else _integrity(db)
    bad = _run(check())
    if repair and bad:
        for name, problem in bad.items():
            click.echo(f"room {name!r}: {problem}", err=True)
        bad = _run(quarantine(sorted(bad)))
    problems += [f"room {name!r}: {problem}" for name, problem in bad.items()]
    for problem in problems:
        click.echo(problem, err=True)
    if problems:
        raise click.ClickException(f"{len(problems)} problem(s) in {redact_url(db)}")
    click.echo(f"{redact_url(db)}: every room loads")


async def _room_problem(store: UpdateStore, room: str) -> str | None:
    """Why ``room`` does not load and build its document, or None."""
    try:
        build_snapshot((await store.load(room)).updates)
    except (YsyncdError, ValueError) as exc:
        return str(exc)
    return None


def _fault(data: bytes) -> str | None:
    """What is wrong with a stored row: it does not decode as an update."""
    try:
        Doc().apply_update(data)
    except ValueError as exc:
        return f"not a Yjs update ({exc})"
    return None


@click.command("migrate")
@click.option("--from", "source", required=True, help="The store to copy from.")
@click.option("--to", "target", required=True, help="The store to copy into.")
def migrate(source: str, target: str) -> None:
    """Copy every room from one store to another (SQLite file or PostgreSQL
    URL), then check that each room's document is the same in both."""

    async def copy() -> int:
        src = await _opened(source, read_only=True)
        try:
            dst = await _opened(target, read_only=False)
            try:
                names = [s.name for s in await src.rooms()]
                for name in names:
                    stored = await src.load(name)
                    for start in range(0, len(stored.updates), _BATCH):
                        batch = stored.updates[start : start + _BATCH]
                        await dst.append([(name, u) for u in batch])
                for name in names:
                    want = doc_from_updates((await src.load(name)).updates)
                    got = doc_from_updates((await dst.load(name)).updates)
                    if got.get_state() != want.get_state() or not _same(want, got):
                        raise StoreError(f"room {name!r} differs after the copy")
                return len(names)
            finally:
                await dst.aclose()
        finally:
            await src.aclose()

    count = _run(copy())
    click.echo(
        f"copied {count} rooms from {redact_url(source)} to {redact_url(target)}"
    )


def _integrity(db: str) -> list[str]:
    """What SQLite's integrity check finds wrong in the file (first 20)."""
    uri = Path(db).resolve().as_uri() + "?mode=ro"
    try:
        with contextlib.closing(sqlite3.connect(uri, uri=True)) as conn:
            rows = conn.execute("PRAGMA integrity_check").fetchall()
    except sqlite3.Error as exc:
        return [f"integrity: {exc}"]
    return [] if rows == [("ok",)] else [f"integrity: {r[0]}" for r in rows[:20]]


def _same(a: Doc[Any], b: Doc[Any]) -> bool:
    """Whether two docs hold the same content (each has what the other has)."""
    return a.get_update(b.get_state()) == b"\x00\x00" and (
        b.get_update(a.get_state()) == b"\x00\x00"
    )


def _iso(seconds: float) -> str:
    when = datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC)
    return when.strftime("%Y-%m-%d %H:%M:%S")


#: Each command, and the settings it takes besides --db (cli.py adds them).
commands: list[tuple[click.Command, tuple[str, ...]]] = [
    (rooms, ()),
    (export, ("room_pattern",)),
    (import_, ()),
    (compact, ("history_retention",)),
    (backup, ()),
    (verify, ()),
]
#: Commands that name their stores themselves.
own_stores = [migrate]
