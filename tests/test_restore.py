"""Point-in-time restore over HTTP, with the real JavaScript client.

Two stock y-websocket clients edit one room (inserts and deletes in a text,
a map and an array). ``POST /api/rooms/{room}/restore?at=`` brings the room
back to an earlier time as a forward edit: both clients show exactly that
content without a reload, a fresh client agrees, and restoring to the time
just before the restore brings everything back.
"""

from __future__ import annotations

from typing import Any

import anyio
import httpx
from pycrdt import Doc, Map, Text

from tests.jsclient import JsClient, require_node
from tests.serverproc import ServerProcess, running_server
from tests.timing import scaled
from tests.yclient import YClient
from ysyncd.restore import restoring_update


async def last_commit(server: ServerProcess, room: str) -> float:
    async with httpx.AsyncClient(trust_env=False, timeout=30) as http:
        resp = await http.get(f"{server.http_url}/api/rooms/{room}/history")
    times = [v["time"] for v in resp.json()["versions"] if v["time"] is not None]
    return max(times)


async def restore(server: ServerProcess, room: str, at: float) -> Any:
    async with httpx.AsyncClient(trust_env=False, timeout=60) as http:
        resp = await http.post(
            f"{server.http_url}/api/rooms/{room}/restore", params={"at": repr(at)}
        )
    assert resp.status_code == 200, resp.text
    return resp.json()


async def test_restore_brings_every_client_back_and_can_be_undone(
    any_db: str,
) -> None:
    require_node()
    async with (
        running_server(any_db) as server,
        JsClient.start(server.url, "story") as alice,
        JsClient.start(server.url, "story") as bob,
    ):
        for client in (alice, bob):
            await client.call("wait_synced")
        await alice.call("edit", n=40, seed=1)
        await alice.call("wait_confirmed")
        await bob.call("wait_content", expect=await alice.dump())
        then = await alice.dump()
        moment = await last_commit(server, "story")

        # Later: both edit, deleting too.
        await bob.call("edit", n=40, seed=2)
        await alice.call("delete_text", index=0, length=5)
        await alice.call("delete_map", key=sorted(then["map"])[0])
        for client in (alice, bob):
            await client.call("wait_confirmed")
        await alice.call("wait_content", expect=await bob.dump())
        latest = await alice.dump()
        assert latest != then
        before_restore = await last_commit(server, "story")

        assert (await restore(server, "story", moment))["restored"] is True
        for client in (alice, bob):
            await client.call("wait_content", expect=then, timeout_ms=scaled(20) * 1000)
        async with YClient.connect(server.url, "story") as fresh:
            assert fresh.content() == then

        # The restore is an edit like any other: restoring to just before it
        # brings back what it undid, once, with nothing duplicated.
        assert (await restore(server, "story", before_restore))["restored"] is True
        for client in (alice, bob):
            await client.call(
                "wait_content", expect=latest, timeout_ms=scaled(20) * 1000
            )
        async with YClient.connect(server.url, "story") as fresh:
            assert fresh.content() == latest


async def test_restore_reaches_back_past_compactions(any_db: str) -> None:
    """Compactions fold the log every 10 rows; the rows they fold stay in the
    room's history, so a moment before several of them is still read
    (``?at=``) and restored exactly."""
    async with (
        running_server(any_db, "--compact-after", "10") as server,
        YClient.connect(server.url, "log") as client,
    ):
        client.text.insert(0, "early words")
        client.map["state"] = "draft"
        await client.wait_confirmed()
        then = client.content()
        moment = await last_commit(server, "log")
        for i in range(60):
            client.text.insert(len(client.text), f" {i}")
            client.map[f"k{i % 5}"] = i
            if i % 7 == 0:
                del client.text[0:2]
            await client.wait_confirmed()
        later = client.content()
        async with httpx.AsyncClient(trust_env=False, timeout=30) as http:
            base = f"{server.http_url}/api/rooms/log"
            with anyio.fail_after(scaled(30)):
                # Compactions run behind the commits: wait for them to fold
                # most rows out of the log.
                while (await http.get(base)).json()["rows"] >= 60:  # noqa: ASYNC110
                    await anyio.sleep(0.05)
            history = (await http.get(f"{base}/history")).json()
            as_of = await http.get(f"{base}/update", params={"at": repr(moment)})
        assert len(history["versions"]) >= 120  # the folded rows are kept
        assert as_of.status_code == 200
        old: Doc = Doc()
        old.apply_update(as_of.content)
        assert str(old.get("text", type=Text)) == then["text"]
        assert old.get("map", type=Map).to_py() == then["map"]

        assert (await restore(server, "log", moment))["restored"] is True
        await client.wait(lambda: client.content() == then, "the restored content")
        async with YClient.connect(server.url, "log") as fresh:
            assert fresh.content() == then
        assert later != then


def test_a_restore_is_a_forward_edit_checked_by_content() -> None:
    """Pure: the update undoes the later rows in every root but the skipped
    ones, and applies on top of the present (a client's view) as is."""
    doc: Doc = Doc()
    rows: list[bytes] = []
    doc.observe(lambda event: rows.append(event.update))
    text, meta = doc.get("text", type=Text), doc.get("meta", type=Map)
    state = doc.get("state", type=Map)
    text.insert(0, "kept")
    meta["v"] = 1
    text.insert(4, " and later")
    meta["v"] = 2
    state["dirty"] = True
    times = [1.0, 2.0, 3.0, 4.0, 5.0]
    assert restoring_update(rows, times, 9.0) is None  # nothing after 9.0
    update = restoring_update(rows, times, 2.0, skip=frozenset({"state"}))
    assert update is not None
    doc.apply_update(update)
    assert str(text) == "kept" and meta.to_py() == {"v": 1.0}
    assert state.to_py() == {"dirty": True}  # skipped: as it is now
