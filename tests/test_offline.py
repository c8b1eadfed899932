"""The offline commands (``ysyncd rooms``, ``export``, ``import``,
``compact``) against a real store, beside a real ``ysyncd serve``.

Every check is on document content. The commands run as a user runs them:
``python -m ysyncd ...`` in a subprocess.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import sys
from pathlib import Path
from typing import Any

from jupyter_ydoc import YNotebook
from pycrdt import Doc, Text

from tests.jupyterclient import JupyterClient, room_path
from tests.serverproc import ServerProcess, running_server
from tests.timing import scaled
from tests.yclient import YClient


async def ysyncd(*args: str) -> tuple[int, str, str]:
    """``ysyncd ARGS``: exit status, stdout, stderr."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ysyncd",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(scaled(60)):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def content_of(update: bytes) -> dict[str, Any]:
    doc: Doc = Doc()
    doc.apply_update(update)
    return {"text": str(doc.get("text", type=Text))}


async def edit(server: ServerProcess, room: str, text: str) -> dict[str, Any]:
    async with YClient.connect(server.url, room) as client:
        client.text.insert(len(client.text), text)
        await client.wait_confirmed()
        return {"text": str(client.text)}


async def test_read_beside_a_running_server_write_only_without_one(
    tmp_path: Path,
) -> None:
    db = tmp_path / "y.db"
    exported = tmp_path / "notes.update"
    async with running_server(db) as server:
        await edit(server, "team/notes", "first ")
        seen = await edit(server, "team/notes", "second")
        await edit(server, "other", "x")

        # Reading works while the server holds the database.
        status, out, err = await ysyncd("rooms", "--json", "--db", str(db))
        assert status == 0, err
        listed = {r["room"]: r for r in map(json.loads, out.splitlines())}
        assert set(listed) == {"team/notes", "other"}
        assert listed["team/notes"]["rows"] >= 2
        assert listed["team/notes"]["last_change"] is not None
        status, _, err = await ysyncd(
            "export", "team/notes", "--db", str(db), "-o", str(exported)
        )
        assert status == 0, err
        assert content_of(exported.read_bytes()) == seen

        # Writing is refused while it runs; nothing is stored.
        status, _, err = await ysyncd("compact", "--db", str(db))
        assert status == 1
        assert "in use by another ysyncd" in err and "stop the server" in err
        # ... unless it goes through the server's API: a client sees it.
        live: Doc = Doc()
        live.get("text", type=Text).insert(0, "[live] ")
        through = tmp_path / "through.update"
        through.write_bytes(live.get_update())
        async with YClient.connect(server.url, "other") as watcher:
            status, out, err = await ysyncd(
                "import", "other", str(through), "--url", server.http_url
            )
            assert status == 0, err
            assert "merged" in out
            await watcher.wait(lambda: "[live] " in str(watcher.text), "the import")
        bad = tmp_path / "bad.update"
        bad.write_bytes(b"\x01\x02\x03not an update")
        status, _, err = await ysyncd(
            "import", "other", str(bad), "--url", server.http_url
        )
        assert status == 1 and "400" in err

    # Another document's edits, merged into the room offline.
    other: Doc = Doc()
    other.get("text", type=Text).insert(0, "from elsewhere: ")
    incoming = tmp_path / "incoming.update"
    incoming.write_bytes(other.get_update())
    status, out, err = await ysyncd(
        "import", "team/notes", str(incoming), "--db", str(db)
    )
    assert status == 0, err
    assert "merged" in out
    status, out, _ = await ysyncd(
        "import", "team/notes", str(incoming), "--db", str(db)
    )
    assert "nothing new" in out  # merging it again adds nothing
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"\x01\x02\x03not an update")
    status, _, err = await ysyncd("import", "team/notes", str(garbage), "--db", str(db))
    assert status == 1 and "update" in err

    status, out, err = await ysyncd("compact", "team/notes", "--db", str(db))
    assert status == 0, err
    status, out, _ = await ysyncd("rooms", "--json", "--db", str(db))
    listed = {r["room"]: r for r in map(json.loads, out.splitlines())}
    assert listed["team/notes"]["rows"] == 0  # all in the snapshot now

    async with (
        running_server(db) as server,
        YClient.connect(server.url, "team/notes") as client,
    ):
        text = str(client.text)
    # Both edits are there, once each, whatever order Yjs gave them.
    assert sorted([text.count("from elsewhere: "), text.count("first second")]) == [
        1,
        1,
    ]
    assert len(text) == len("from elsewhere: ") + len("first second")


async def test_postgres_is_read_beside_its_server_and_not_written(
    pg_url: str, tmp_path: Path
) -> None:
    async with running_server(pg_url) as server:
        seen = await edit(server, "pg/room", "kept in PostgreSQL")
        status, out, err = await ysyncd("rooms", "--json", "--db", pg_url)
        assert status == 0, err
        assert [json.loads(line)["room"] for line in out.splitlines()] == ["pg/room"]
        target = tmp_path / "pg.update"
        status, _, err = await ysyncd(
            "export", "pg/room", "--db", pg_url, "-o", str(target)
        )
        assert status == 0, err
        assert content_of(target.read_bytes()) == seen
        status, _, err = await ysyncd("compact", "--db", pg_url)
        assert status == 1 and "stop the server" in err


async def test_export_json_reads_the_types_off_the_content(tmp_path: Path) -> None:
    """A plain room's roots come out as a map, a text and an array; a
    Jupyter notebook room as the notebook's JSON (its file's content)."""
    db = tmp_path / "j.db"
    notebook_room = room_path(
        "alice", "json:notebook:6f1c0a4e-1111-4c2b-9d7e-00000000beef"
    )
    nb = {
        "cells": [
            {
                "cell_type": "code",
                "id": "c1",
                "source": "print(1)",
                "metadata": {},
                "outputs": [],
                "execution_count": None,
            }
        ],
        "metadata": {},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    async with running_server(db) as server:
        async with YClient.connect(server.url, "plain") as client:
            client.text.insert(0, "hello")
            client.map["k"] = "v"
            client.array.extend([1, "two"])
            await client.wait_confirmed()
        async with JupyterClient.connect(server.url, notebook_room) as client:
            model = YNotebook(client.doc)
            model.set(nb)
            expected = model.get()
            await client.wait_confirmed()
        status, out, err = await ysyncd(
            "export", "plain", "--format", "json", "--db", str(db)
        )
        assert status == 0, err
        assert json.loads(out) == {
            "array": [1, "two"],
            "map": {"k": "v"},
            "text": "hello",
        }
        status, out, err = await ysyncd(
            "export", notebook_room, "--format", "json", "--db", str(db)
        )
        assert status == 0, err
        assert json.loads(out) == expected
        assert json.loads(out)["cells"][0]["source"] == "print(1)"


async def test_backup_verify_and_migrate(tmp_path: Path, pg_url: str) -> None:
    db = tmp_path / "live.db"
    copy = tmp_path / "backup.db"
    async with running_server(db) as server:
        seen = await edit(server, "kept", "in the backup")
        await edit(server, "second", "room")
        # A consistent copy while the server runs and a client edits: the
        # copy holds every edit confirmed before it began, and opens clean.
        async with YClient.connect(server.url, "busy") as busy:
            before = ""
            for i in range(30):
                busy.text.insert(len(busy.text), f"{i} ")
            await busy.wait_confirmed()
            before = str(busy.text)
            editing = asyncio.create_task(keep_editing(busy, 200))
            status, out, err = await ysyncd("backup", str(copy), "--db", str(db))
            await editing
            assert status == 0, err
        status, _, err = await ysyncd("backup", str(copy), "--db", str(db))
        assert status == 1 and "never overwrites" in err
    exported = tmp_path / "kept.update"
    status, _, err = await ysyncd(
        "export", "kept", "--db", str(copy), "-o", str(exported)
    )
    assert status == 0, err
    assert content_of(exported.read_bytes()) == seen
    busy_copy = tmp_path / "busy.update"
    status, _, err = await ysyncd(
        "export", "busy", "--db", str(copy), "-o", str(busy_copy)
    )
    assert status == 0, err
    assert content_of(busy_copy.read_bytes())["text"].startswith(before)

    status, out, err = await ysyncd("verify", "--db", str(copy))
    assert status == 0, err
    # A row that is not an update: verify names its room and exits 1.
    planted = bytes.fromhex("0102030405")
    with sqlite3.connect(copy) as conn:
        conn.execute(
            "UPDATE updates SET data = ? WHERE id = "
            "(SELECT max(u.id) FROM updates u JOIN rooms r ON r.id = u.room_id "
            "WHERE r.name = 'second')",
            (planted,),
        )
    conn.close()
    status, _, err = await ysyncd("verify", "--db", str(copy))
    assert status == 1
    assert "room 'second'" in err and "room 'kept'" not in err
    # --repair moves it aside, into the quarantine table, and the room loads.
    status, out, err = await ysyncd("verify", "--repair", "--db", str(copy))
    assert status == 0, err
    assert "room 'second': quarantined row" in err
    with sqlite3.connect(copy) as conn:
        kept_aside = conn.execute("SELECT room, data FROM quarantine").fetchall()
    conn.close()
    assert kept_aside == [("second", planted)]
    status, _, err = await ysyncd("verify", "--db", str(copy))
    assert status == 0, err
    status, _, err = await ysyncd(
        "export", "kept", "--db", str(copy), "-o", str(exported)
    )
    assert status == 0, err
    assert content_of(exported.read_bytes()) == seen

    # Every room into PostgreSQL and back into a new file, verified by
    # content there and here.
    status, out, err = await ysyncd("migrate", "--from", str(db), "--to", pg_url)
    assert status == 0, err
    assert "copied 3 rooms" in out
    status, _, err = await ysyncd("export", "kept", "--db", pg_url, "-o", str(exported))
    assert status == 0, err
    assert content_of(exported.read_bytes()) == seen
    back = tmp_path / "back.db"
    status, out, err = await ysyncd("migrate", "--from", pg_url, "--to", str(back))
    assert status == 0, err
    for room in ("kept", "second", "busy"):
        here, there = tmp_path / "here.update", tmp_path / "there.update"
        for source, target in ((db, here), (back, there)):
            status, _, err = await ysyncd(
                "export", room, "--db", str(source), "-o", str(target)
            )
            assert status == 0, err
        assert content_of(there.read_bytes()) == content_of(here.read_bytes())


async def keep_editing(client: YClient, count: int) -> None:
    """``count`` confirmed edits, one after another."""
    for i in range(count):
        client.text.insert(len(client.text), f"+{i}")
        await client.wait_confirmed()
