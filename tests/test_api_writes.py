"""Writing over HTTP: ``POST /api/rooms/{room}/update``, with the real
JavaScript client on the other side.

An update posted over HTTP reaches connected y-websocket clients, and the
answer comes only once it is durable; ``GET .../update?sv=`` then gives the
poster exactly what it lacks. An update that cannot be applied gets 400 and
changes nothing; a body over the message limit gets 413.
"""

from __future__ import annotations

import base64

import httpx
from pycrdt import Array, Doc, Map, Text

from tests.jsclient import JsClient, require_node
from tests.serverproc import ServerProcess, running_server
from tests.timing import scaled


async def post(server: ServerProcess, room: str, body: bytes) -> httpx.Response:
    async with httpx.AsyncClient(trust_env=False, timeout=60) as http:
        return await http.post(
            f"{server.http_url}/api/rooms/{room}/update",
            content=body,
            headers={"Content-Type": "application/octet-stream"},
        )


async def fetch(server: ServerProcess, room: str, sv: bytes | None = None) -> bytes:
    params = {"sv": base64.urlsafe_b64encode(sv).decode()} if sv else {}
    async with httpx.AsyncClient(trust_env=False, timeout=60) as http:
        resp = await http.get(
            f"{server.http_url}/api/rooms/{room}/update", params=params
        )
    assert resp.status_code == 200, resp.text
    return resp.content


def content(doc: Doc) -> dict[str, object]:
    """The document as the JavaScript client dumps it."""
    return {
        "text": str(doc.get("text", type=Text)),
        "map": doc.get("map", type=Map).to_py(),
        "array": doc.get("array", type=Array).to_py(),
    }


async def test_a_posted_update_reaches_js_clients_once_durable(
    any_db: str,
) -> None:
    """On SQLite and on PostgreSQL."""
    require_node()
    async with (
        running_server(any_db, "--max-message-bytes", "65536") as server,
        JsClient.start(server.url, "board") as alice,
    ):
        await alice.call("wait_synced")
        await alice.call("edit", n=20, seed=3)
        await alice.call("wait_confirmed")

        # A service edits over HTTP: it reads the document, changes it, and
        # posts only what it added.
        doc: Doc = Doc()
        doc.apply_update(await fetch(server, "board"))
        assert content(doc) == await alice.dump()
        before = doc.get_state()
        text = doc.get("text", type=Text)
        text.insert(len(text), " (posted)")
        doc.get("map", type=Map)["source"] = "http"
        del text[0:3]
        posted = doc.get_update(before)
        resp = await post(server, "board", posted)
        assert resp.status_code == 200, resp.text
        assert resp.json()["changed"] is True
        # Durable before the answer: a fresh read holds it already.
        fresh: Doc = Doc()
        fresh.apply_update(await fetch(server, "board"))
        assert content(fresh) == content(doc)
        await alice.call(
            "wait_content", expect=content(doc), timeout_ms=scaled(20) * 1000
        )

        # The client edits on; ?sv= gives the poster exactly what it lacks.
        await alice.call("edit", n=5, seed=4)
        await alice.call("wait_confirmed")
        difference = await fetch(server, "board", doc.get_state())
        doc.apply_update(difference)
        assert content(doc) == await alice.dump()
        assert difference != await fetch(server, "board")  # not the whole doc

        # Posting the same update again changes nothing.
        again = await post(server, "board", posted)
        assert again.status_code == 200 and again.json()["changed"] is False

        # Garbage: 400, and the document is as it was.
        held = await alice.dump()
        bad = await post(server, "board", b"\x01\x05garbage-not-an-update")
        assert bad.status_code == 400, bad.text
        assert "error" in bad.json()
        empty = await post(server, "board", b"")
        assert empty.status_code == 400
        # Over --max-message-bytes: 413, and the body is not applied.
        big: Doc = Doc()
        big.get("text", type=Text).insert(0, "x" * 70_000)
        over = await post(server, "board", big.get_update())
        assert over.status_code == 413, over.text
        after: Doc = Doc()
        after.apply_update(await fetch(server, "board"))
        assert content(after) == held == await alice.dump()
