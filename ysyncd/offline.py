"""Commands that work on a store without a server: ``ysyncd rooms``,
``export``, ``import`` and ``compact``.

They take ``--db`` as ``ysyncd serve`` does (the same setting: a SQLite file
or a PostgreSQL URL, ``$YSYNCD_DB``; cli.py adds it). Reading commands
(``rooms``, ``export``) open the store read-only: no lock and no migration,
so they work beside a running server, and a SQLite reader sees only
committed rows. Writing commands (``import``, ``compact``) take the store as
a server would, so they refuse to run while a server holds it (SQLite's
lock file, PostgreSQL's node lock): two writers would each keep their own
idea of a room.

An import is checked as a client's update is (shape limits, then applied to
the room's document) and stored as one more row: a merge, never a
replacement. A compaction is verified by content, as the server's is.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import click

from ysyncd.errors import (
    InvalidUpdate,
    ProtocolError,
    StoreError,
    StoreInUse,
    YsyncdError,
)
from ysyncd.integrate import UpdatePolicy, apply_update
from ysyncd.store import UpdateStore, open_store, redact_url
from ysyncd.store.snapshot import doc_from_updates
from ysyncd.updates import shape_of

__all__ = ["commands"]

T = TypeVar("T")


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


async def _opened(db: str, *, read_only: bool) -> UpdateStore:
    return await open_store(db, read_only=read_only)


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
    "-o",
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write here instead of to standard output.",
)
def export(db: str, room: str, output: Path | None) -> None:
    """Write ROOM's document as one Yjs update (v1)."""

    async def state() -> bytes:
        store = await _opened(db, read_only=True)
        try:
            stored = await store.load(room)
        finally:
            await store.aclose()
        if not stored.updates:
            raise StoreError(f"{redact_url(db)}: no room {room!r}")
        return bytes(doc_from_updates(stored.updates).get_update())

    update = _run(state())
    if output is None:
        sys.stdout.buffer.write(update)
        sys.stdout.buffer.flush()
    else:
        output.write_bytes(update)


@click.command("import")
@click.argument("room")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False, exists=True))
def import_(db: str, room: str, file: Path) -> None:
    """Merge the Yjs update (v1) in FILE into ROOM, as one stored row."""
    update = file.read_bytes()

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


@click.command("compact")
@click.argument("room", required=False)
def compact(db: str, room: str | None) -> None:
    """Compact ROOM's log (every room's without ROOM) into a snapshot."""

    async def compact_all() -> list[tuple[str, Any]]:
        store = await _opened(db, read_only=False)
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


def _iso(seconds: float) -> str:
    when = datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC)
    return when.strftime("%Y-%m-%d %H:%M:%S")


commands = [rooms, export, import_, compact]
