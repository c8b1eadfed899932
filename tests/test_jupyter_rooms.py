"""Jupyter rooms on a real server: URLs, namespaces, session ids, the dialect.

File-backed behaviour (load, save, outside edits) is in test_jupyter_e2e.py.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from pathlib import Path

import pytest
from pycrdt import Doc, Map
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.jupyterclient import JupyterClient, room_path, state_of
from tests.serverproc import ServerProcess, running_server
from tests.test_auth import ALICE, VIEWER, token_file  # noqa: F401 - fixture
from tests.timing import scaled
from ysyncd import protocol

NOTEBOOK = "json:notebook:6f1c0a4e-1111-4c2b-9d7e-000000000001"


def epoch_of(server: ServerProcess) -> str:
    with urllib.request.urlopen(server.http_url + "/_ysyncd/epoch", timeout=5) as r:
        return str(json.loads(r.read())["epoch"])


async def turned_away(url: str) -> tuple[int, str]:
    """The close code and reason of a connection the server closes at once."""
    async with connect(url, open_timeout=scaled(10)) as ws:
        with pytest.raises(ConnectionClosed):
            async with asyncio.timeout(scaled(10)):
                await ws.recv()
        assert ws.close_code is not None
        return ws.close_code, ws.close_reason or ""


async def test_the_session_id_must_be_this_stores_epoch(
    server: ServerProcess,
) -> None:
    """A sessionId from another store's lineage is told to reload (1003 JSON)."""
    epoch = epoch_of(server)
    good = room_path("alice", NOTEBOOK, sessionId=epoch)
    async with JupyterClient.connect(server.url, good) as client:
        client.doc.get("state", type=Map)["marker"] = "kept"
        await client.wait_confirmed()
    stale = room_path("alice", NOTEBOOK, sessionId="0" * 32)
    code, reason = await turned_away(f"{server.url}/{stale}")
    assert code == 1003
    assert json.loads(reason) == {
        "reason": "unknown_session",
        "sessionId": "0" * 32,
        "reloadable": True,
    }
    # No sessionId (a plain y-websocket client): admitted.
    async with JupyterClient.connect(server.url, room_path("alice", NOTEBOOK)) as c:
        assert state_of(c) == {"marker": "kept"}


async def test_a_wiped_store_sends_stale_clients_away_and_merges_nothing(
    db_path: Path, tmp_path: Path
) -> None:
    """After the database is lost, a client holding old history must reload."""
    async with running_server(db_path) as server:
        old_epoch = epoch_of(server)
        path = room_path("alice", NOTEBOOK, sessionId=old_epoch)
        async with JupyterClient.connect(server.url, path, doc=Doc()) as client:
            client.doc.get("state", type=Map)["cell"] = "old lineage"
            await client.wait_confirmed()
    async with running_server(tmp_path / "wiped.db") as server:
        assert epoch_of(server) != old_epoch
        code, reason = await turned_away(f"{server.url}/{path}")
        assert code == 1003 and json.loads(reason)["reason"] == "unknown_session"
        async with JupyterClient.connect(server.url, room_path("alice", NOTEBOOK)) as c:
            assert state_of(c) == {}


async def test_the_epoch_survives_restarts(server: ServerProcess) -> None:
    before = epoch_of(server)
    await server.restart()
    assert epoch_of(server) == before


async def test_a_prefix_names_the_same_room(server: ServerProcess) -> None:
    """A hub base URL or a service prefix in front does not change the room."""
    async with (
        JupyterClient.connect(server.url, room_path("alice", NOTEBOOK)) as direct,
        JupyterClient.connect(
            server.url, "services/ysyncd/" + room_path("alice", NOTEBOOK)
        ) as proxied,
        JupyterClient.connect(server.url, room_path("bob", NOTEBOOK)) as other_ns,
    ):
        direct.doc.get("state", type=Map)["who"] = "alice"
        await proxied.wait(
            lambda: state_of(proxied).get("who") == "alice", "the same room"
        )
        await direct.wait_confirmed()
        # Same file id, another Jupyter server: another room.
        assert state_of(other_ns) == {}


async def test_transient_rooms_are_namespaced_and_never_stored(
    server: ServerProcess,
) -> None:
    """JupyterLab:globalAwareness lives in memory, one per Jupyter server."""
    room = "JupyterLab:globalAwareness"
    async with (
        JupyterClient.connect(server.url, room_path("alice", room)) as a,
        JupyterClient.connect(server.url, room_path("alice", room)) as b,
        JupyterClient.connect(server.url, room_path("bob", room)) as other,
    ):
        a.text.insert(0, "in memory")
        await b.wait(lambda: str(b.text) == "in memory", "the transient edit")
        assert str(other.text) == ""
    await server.restart()
    async with JupyterClient.connect(server.url, room_path("alice", room)) as again:
        assert str(again.text) == ""


async def test_read_only_jupyter_peers_get_no_auth_frame(
    db_path: Path,
    token_file: Path,  # noqa: F811 - the fixture
) -> None:
    """A read-only JupyterLab client's edits are dropped without a type-2 frame
    (its provider would misread one), and it keeps receiving."""
    args = ("--auth", "token", "--token-file", str(token_file))
    args += ("--room-pattern", r"^(?P<owner>notes)/(?P<room>.+)$")
    async with running_server(db_path, *args) as server:
        async with (
            JupyterClient.connect(server.url, f"notes/{NOTEBOOK}?token={VIEWER}") as v,
            JupyterClient.connect(server.url, f"notes/{NOTEBOOK}?token={ALICE}") as w,
        ):
            v.doc.get("state", type=Map)["viewer"] = True
            w.doc.get("state", type=Map)["writer"] = True
            await v.wait(lambda: "writer" in state_of(v), "the writer's edit")
            await w.wait_confirmed()
            assert "viewer" not in state_of(w)
            assert v.frames_of_type_2 == 0 and v.close_code is None
            # Nor may it save the writers' edits to their file.
            assert await v.save(3) == "failed"


async def test_save_without_a_file_backend_is_skipped(server: ServerProcess) -> None:
    """With --jupyter-files none a document room has no file: save says so."""
    async with JupyterClient.connect(server.url, room_path("alice", NOTEBOOK)) as c:
        assert await c.save(7) == "skipped"
        assert c.raw == [{"type": "save", "responseTo": 7, "status": "skipped"}]


async def test_an_update_that_cannot_be_applied_is_a_conflict_not_a_close(
    server: ServerProcess,
) -> None:
    """As jupyter_server_ydoc does: {"type": "conflict"}, and the client stays."""
    async with JupyterClient.connect(server.url, room_path("alice", NOTEBOOK)) as c:
        c.doc.get("state", type=Map)["before"] = 1
        await c.wait_confirmed()
        await c.ws.send(protocol.encode(protocol.Update(b"\x05\xff\xff")))
        await c.wait(lambda: {"type": "conflict"} in c.raw, "the conflict message")
        c.doc.get("state", type=Map)["after"] = 2
        await c.wait_confirmed()
        assert c.close_code is None
    async with JupyterClient.connect(server.url, room_path("alice", NOTEBOOK)) as c:
        assert state_of(c) == {"before": 1, "after": 2}
