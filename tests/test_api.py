"""Documents over HTTP (``/api/``), the reading half, on a real server.

Tokens from a real token file decide per room, on the same key a WebSocket
would open; the admin token opens everything. Every check compares document
content with what real clients hold.
"""

from __future__ import annotations

import base64
import datetime
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from pycrdt import Doc, Text

from tests.serverproc import ServerProcess, running_server
from tests.test_auth import ALICE, VIEWER, token_file  # noqa: F401 - fixture
from tests.yclient import YClient
from ysyncd.api import ROOM_DELETED, Gone, _as_of
from ysyncd.store.base import History

ADMIN = secrets.token_hex(24)


@pytest.fixture
async def server(
    tmp_path: Path,
    token_file: Path,  # noqa: F811 - the fixture
) -> AsyncIterator[ServerProcess]:
    """Tokens from tests/test_auth.py: alice and a read-only viewer may open
    notes/*; and an admin token."""
    admin = tmp_path / "admin.token"
    admin.write_text(ADMIN + "\n")
    args = ("--auth", "token", "--token-file", str(token_file))
    async with running_server(
        tmp_path / "api.db", *args, "--admin-token-file", str(admin)
    ) as server:
        yield server


async def get(
    server: ServerProcess, path: str, token: str | None, **params: str
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(trust_env=False, timeout=30) as http:
        return await http.get(server.http_url + path, headers=headers, params=params)


def room(name: str) -> str:
    return quote(name, safe="")


async def test_documents_are_read_over_http_as_the_grant_allows(
    server: ServerProcess,
) -> None:
    auth = {"additional_headers": {"Authorization": f"Bearer {ALICE}"}}
    async with YClient.connect(server.url, "notes/plan", **auth) as client:
        client.text.insert(0, "first line")
        client.map["status"] = "draft"
        await client.wait_confirmed()
        before = client.doc.get_state()
        base = client.doc.get_update()
        client.text.insert(len(client.text), ", second")
        await client.wait_confirmed()
        expected = client.doc.get_update()
        state = client.content()

    # The whole document, and the exact difference from a state vector.
    resp = await get(server, f"/api/rooms/{room('notes/plan')}/update", VIEWER)
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "application/octet-stream"
    assert same_content(resp.content, expected)
    sv = base64.urlsafe_b64encode(before).decode().rstrip("=")
    resp = await get(server, f"/api/rooms/{room('notes/plan')}/update", ALICE, sv=sv)
    assert resp.status_code == 200
    # What a peer at that state lacks, exactly: it brings the peer up to date.
    peer: Doc = Doc()
    peer.apply_update(base)
    assert str(peer.get("text", type=Text)) == "first line"
    peer.apply_update(resp.content)
    assert str(peer.get("text", type=Text)) == "first line, second"
    assert peer.get_state() == state_of(expected)
    assert len(resp.content) < len(expected)

    resp = await get(server, f"/api/rooms/{room('notes/plan')}/json", ALICE)
    assert resp.status_code == 200
    assert resp.json() == {"map": {"status": "draft"}, "text": state["text"]}

    resp = await get(server, f"/api/rooms/{room('notes/plan')}", ALICE)
    assert resp.json()["name"] == "notes/plan"
    assert resp.json()["rows"] >= 2

    # The same decisions as for a WebSocket, on the same key.
    assert (
        await get(server, f"/api/rooms/{room('board')}/json", ALICE)
    ).status_code == 403
    assert (
        await get(server, f"/api/rooms/{room('notes/plan')}", None)
    ).status_code == 401
    assert (
        await get(server, f"/api/rooms/{room('notes/plan')}", "nope")
    ).status_code == 401
    bad_sv = await get(
        server, f"/api/rooms/{room('notes/plan')}/update", ALICE, sv="!!"
    )
    assert bad_sv.status_code == 400
    missing = await get(server, f"/api/rooms/{room('notes/none')}/json", ALICE)
    assert missing.status_code == 404 and "error" in missing.json()


async def test_the_admin_token_lists_every_room_a_page_at_a_time(
    server: ServerProcess,
) -> None:
    auth = {"additional_headers": {"Authorization": f"Bearer {ALICE}"}}
    for name in ("notes/a", "notes/b", "notes/c"):
        async with YClient.connect(server.url, name, **auth) as client:
            client.text.insert(0, name)
            await client.wait_confirmed()
    assert (await get(server, "/api/rooms", ALICE)).status_code == 401
    first = (await get(server, "/api/rooms", ADMIN, limit="2")).json()
    assert [r["name"] for r in first["rooms"]] == ["notes/a", "notes/b"]
    assert first["next"] == "notes/b"
    rest = (await get(server, "/api/rooms", ADMIN, limit="2", after="notes/b")).json()
    assert [r["name"] for r in rest["rooms"]] == ["notes/c"] and rest["next"] is None
    # The admin token reads any room.
    resp = await get(server, f"/api/rooms/{room('notes/c')}/json", ADMIN)
    assert resp.json()["text"] == "notes/c"
    spec = (await get(server, "/api/openapi.json", None)).json()
    assert spec["openapi"].startswith("3.1")
    assert set(spec["paths"]) >= {"/api/rooms", "/api/rooms/{room}/update"}


def state_of(update: bytes) -> bytes:
    doc: Doc = Doc()
    doc.apply_update(update)
    return bytes(doc.get_state())


def same_content(a: bytes, b: bytes) -> bool:
    docs: list[Any] = []
    for update in (a, b):
        doc: Doc = Doc()
        doc.apply_update(update)
        docs.append((str(doc.get("text", type=Text)), doc.get_state()))
    return bool(docs[0] == docs[1])


async def test_history_and_the_document_as_it_was(server: ServerProcess) -> None:
    auth = {"additional_headers": {"Authorization": f"Bearer {ALICE}"}}
    seen: list[str] = []
    async with YClient.connect(server.url, "notes/log", **auth) as client:
        for word in ("one", " two", " three"):
            client.text.insert(len(client.text), word)
            await client.wait_confirmed()  # one commit each: one row each
            seen.append(str(client.text))
    path = f"/api/rooms/{room('notes/log')}"
    history = (await get(server, f"{path}/history", VIEWER)).json()
    assert history["snapshot"] is False
    times = [v["time"] for v in history["versions"]]
    assert len(times) == 3 and times == sorted(times) and len(set(times)) == 3
    for when, text in zip(times, seen, strict=True):
        as_of = await get(server, f"{path}/json", VIEWER, at=str(when))
        assert as_of.json()["text"] == text
    # ISO 8601 keeps microseconds: a moment between the first two rows.
    middle = (times[0] + times[1]) / 2
    iso = datetime.datetime.fromtimestamp(middle, tz=datetime.UTC).isoformat()
    assert (await get(server, f"{path}/json", VIEWER, at=iso)).json()["text"] == "one"
    before = await get(server, f"{path}/update", VIEWER, at=str(times[0] - 1))
    assert before.status_code == 200 and state_of(before.content) == b"\x00"
    assert (
        await get(server, f"{path}/json", VIEWER, at="yesterday")
    ).status_code == 400


def test_history_before_what_is_kept_is_gone() -> None:
    """Pure: a moment before the history's start is 410; after it, the base
    and the rows committed by then."""
    kept = History([b"base", b"row"], [None, 1000.0], [None, "ann"], 990.0, True)
    with pytest.raises(Gone):
        _as_of(kept, 989.0)
    assert _as_of(kept, 995.0) == [b"base"]
    assert _as_of(kept, 1000.0) == [b"base", b"row"]
    whole = History([b"a", b"b"], [5.0, 6.0], ["x", "y"], None)
    assert _as_of(whole, 5.5) == [b"a"]


async def test_deleting_a_room_closes_its_peers_and_removes_its_history(
    server: ServerProcess,
) -> None:
    auth = {"additional_headers": {"Authorization": f"Bearer {ALICE}"}}
    path = f"/api/rooms/{room('notes/old')}"
    async with YClient.connect(server.url, "notes/old", **auth) as client:
        client.text.insert(0, "to be deleted")
        await client.wait_confirmed()
        refused = await request(server, "DELETE", path, VIEWER)
        assert refused.status_code == 403  # read-only
        deleted = await request(server, "DELETE", path, ALICE)
        assert deleted.status_code == 200, deleted.text
        await client.wait(lambda: client.close_code is not None, "the close")
        assert client.close_code == ROOM_DELETED
    assert (await get(server, f"{path}/json", ALICE)).status_code == 404
    assert (await request(server, "DELETE", path, ALICE)).status_code == 404
    async with YClient.connect(server.url, "notes/old", **auth) as again:
        assert str(again.text) == ""  # a new, empty room
    assert (await request(server, "PUT", path, ALICE)).status_code == 405


async def request(
    server: ServerProcess, method: str, path: str, token: str
) -> httpx.Response:
    async with httpx.AsyncClient(trust_env=False, timeout=30) as http:
        return await http.request(
            method, server.http_url + path, headers={"Authorization": f"Bearer {token}"}
        )
