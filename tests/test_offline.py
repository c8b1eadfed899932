"""The offline commands (``ysyncd rooms``, ``export``, ``import``,
``compact``) against a real store, beside a real ``ysyncd serve``.

Every check is on document content. The commands run as a user runs them:
``python -m ysyncd ...`` in a subprocess.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from pycrdt import Doc, Text

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
