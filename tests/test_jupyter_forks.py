"""Forks and the timeline (jupyter-server-ydoc's fork, timeline and undo_redo
endpoints), served by ysyncd.jupyter with the rooms in a real ysyncd.

Clients do what JupyterLab's fork manager and timeline slider do: they call
the REST endpoints and connect their document to the rooms these name.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import pytest_asyncio
from pycrdt import Array, Map, Text

from tests.jupyterclient import ROOM_PREFIX, JupyterClient, cells_of
from tests.jupyterstack import Session, Stack, ecosystem

pytestmark = pytest.mark.asyncio(loop_scope="module")

FIXTURES = Path(__file__).parent / "fixtures" / "jupyter"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    async with ecosystem(tmp_path_factory.mktemp("forks")) as stack:
        yield stack


async def opened(stack: Stack, path: str) -> Session:
    shutil.copy(FIXTURES / "nb45.ipynb", stack.jupyter.root_dir / path)
    return await stack.open(path)


def add_cell(client: JupyterClient, source: str) -> None:
    """A code cell appended as JupyterLab's model does it."""
    cell = Map(
        {
            "id": source,
            "cell_type": "code",
            "source": Text(source),
            "metadata": Map(),
            "outputs": Array(),
            "execution_count": None,
        }
    )
    client.doc.get("cells", type=Array).append(cell)


def sources(client: JupyterClient) -> list[str]:
    return [str(cell["source"]) for cell in cells_of(client)]


async def fork_of(stack: Stack, root: str, synchronize: bool) -> dict[str, Any]:
    resp = await stack.jupyter.request(
        "PUT",
        f"api/collaboration/fork/{quote(root, safe='')}",
        json={"synchronize": synchronize, "title": "t", "description": "d"},
        expect=201,
    )
    return dict(resp.json())


async def delete_fork(stack: Stack, fork: str, merge: str | None) -> httpx.Response:
    params = {} if merge is None else {"merge": merge}
    return await stack.jupyter.request(
        "DELETE", f"api/collaboration/fork/{fork}", params=params
    )


async def history_rows(stack: Stack, room_id: str) -> int:
    """How many rows ysyncd holds for the room (its history endpoint)."""
    async with httpx.AsyncClient(trust_env=False) as http:
        resp = await http.get(
            f"{stack.ysyncd.http_url}/_ysyncd/history/user/local/"
            f"{ROOM_PREFIX}{room_id}",
            headers={"Authorization": f"Bearer {stack.secret}"},
        )
    assert resp.status_code == 200, resp.text
    return len(resp.json()["updates"])


async def test_a_merged_fork_lands_in_the_root_once(stack: Stack) -> None:
    session = await opened(stack, "fork.ipynb")
    async with stack.events() as events, stack.client(session) as root:
        original = sources(root)
        made = await fork_of(stack, session.room_id, synchronize=False)
        fork_id = made["fork_roomid"]
        assert made["fork_info"] == {
            "root_roomid": session.room_id,
            "synchronize": False,
            "title": "t",
            "description": "d",
        }
        await events.wait_for("fork/v1", fork_roomid=fork_id, action="create")
        listed = await stack.get_json(f"api/collaboration/fork/{session.room_id}")
        assert list(listed) == [fork_id]
        async with stack.client(session, room_id=fork_id) as fork:
            assert sources(fork) == original  # the root's content
            add_cell(fork, "forked()")
            add_cell(fork, "forked_again()")
            await fork.wait_confirmed()
        assert sources(root) == original  # a fork is a room of its own
        rows = await history_rows(stack, session.room_id)
        assert (await delete_fork(stack, fork_id, "true")).status_code == 200
        await root.wait(lambda: "forked_again()" in sources(root), "the merge")
        assert sources(root) == [*original, "forked()", "forked_again()"]
        # The merge is one recorded edit.
        assert await history_rows(stack, session.room_id) == rows + 1
        await events.wait_for("fork/v1", fork_roomid=fork_id, action="delete")
        assert await stack.get_json(f"api/collaboration/fork/{session.room_id}") == {}
    async with stack.client(session) as fresh:
        assert sources(fresh) == [*original, "forked()", "forked_again()"]


async def test_a_fork_deleted_unmerged_leaves_the_root_alone(stack: Stack) -> None:
    session = await opened(stack, "drop.ipynb")
    async with stack.client(session) as root:
        original = sources(root)
        fork_id = (await fork_of(stack, session.room_id, synchronize=True))[
            "fork_roomid"
        ]
        async with stack.client(session, room_id=fork_id) as fork:
            # synchronize: the root's edits follow into the fork, one way.
            add_cell(root, "in_root()")
            await fork.wait(lambda: "in_root()" in sources(fork), "root's edit")
            add_cell(fork, "only_in_fork()")
            await fork.wait_confirmed()
        resp = await delete_fork(stack, fork_id, None)
        assert resp.status_code == 400  # merge must be said
        assert (await delete_fork(stack, fork_id, "false")).status_code == 200
        unknown = await delete_fork(stack, fork_id, "false")
        assert unknown.status_code == 404
        assert unknown.json() == {"code": 404, "error": "Fork room not found"}
    async with stack.client(session) as fresh:
        assert sources(fresh) == [*original, "in_root()"]


async def test_a_fork_of_a_room_not_open_is_404(stack: Stack) -> None:
    await opened(stack, "closed.ipynb")
    resp = await stack.jupyter.request(
        "PUT",
        "api/collaboration/fork/json:notebook:00000000-0000-0000-0000-000000000000",
        json={"synchronize": False},
    )
    assert resp.status_code == 404
    assert resp.json() == {"code": 404, "error": "Root room not found"}


async def test_the_timeline_restores_an_earlier_version(stack: Stack) -> None:
    """Edits, then the slider back two steps and Restore: every client shows
    that version, with no reload and no duplicated cell."""
    session = await opened(stack, "timeline.ipynb")
    async with stack.client(session) as other, stack.client(session) as page:
        versions = [sources(page)]
        for name in ("one()", "two()", "three()"):
            add_cell(page, name)
            await page.wait_confirmed()
            versions.append(sources(page))
        await other.wait(lambda: sources(other) == versions[-1], "the edits")
        timeline = await stack.get_json(
            f"api/collaboration/timeline/{session.path}",
            format="json",
            type="notebook",
        )
        assert timeline["roomId"] == session.room_id
        assert len(timeline["timestamps"]) >= 4
        assert timeline["timestamps"] == sorted(timeline["timestamps"])
        fork = timeline["forkRoom"]
        undo = f"api/collaboration/undo_redo/{quote(session.room_id, safe='')}"

        # The page shows the replay: its document joins the fork room.
        doc = page.doc
        query = f"sessionId={timeline['sessionId']}&token={stack.jupyter.token}"
        async with JupyterClient.connect(
            stack.url, f"{ROOM_PREFIX}{fork}?{query}", doc=doc
        ) as replay:
            resp = await stack.jupyter.request(
                "PUT", undo, params={"action": "undo", "steps": "2", "forkRoom": fork}
            )
            assert resp.json() == {"status": "undone"}
            await replay.wait(lambda: sources(replay) == versions[1], "two steps back")
            resp = await stack.jupyter.request(
                "PUT", undo, params={"action": "redo", "steps": "1", "forkRoom": fork}
            )
            assert resp.json() == {"status": "redone"}
            await replay.wait(lambda: sources(replay) == versions[2], "one forward")
            resp = await stack.jupyter.request(
                "PUT",
                undo,
                params={"action": "restore", "steps": "0", "forkRoom": fork},
            )
            assert resp.json()["code"] == 200
            await replay.wait_confirmed()
        # Restore: the page goes back to the document's room with what it shows.
        async with JupyterClient.connect(
            stack.url, f"{ROOM_PREFIX}{session.room_id}?{query}", doc=doc
        ) as back:
            await back.wait_confirmed()
            await other.wait(lambda: sources(other) == versions[2], "the restore")
            assert sources(back) == versions[2]
    async with stack.client(session) as fresh:
        assert sources(fresh) == versions[2]
