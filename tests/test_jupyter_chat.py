"""jupyterlab-chat's ``chat`` documents through ysyncd.

``chat`` is a document type of jupyterlab-chat's own, registered through
jupyter_ydoc's entry points: ysyncd builds the room with its model (YChat),
saves it to the ``.chat`` file and loads it back. The model stamps each new
message's time from an observer, after the update that brought it: ysyncd
records that edit like a client's, so that every client and the store agree.
jupyterlab-chat's server extension waits for the room's ``initialize`` event
and resolves the chat through ``get_document`` (jupyter-ai works this way).

Two users write messages as the chat frontend does: a map pushed onto
``messages`` with the client's time and ``raw_time: true``, and their user
entry in ``users``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from pycrdt import Array, Map

from tests.jupyterclient import JupyterClient
from tests.jupyterstack import Session, Stack, ecosystem

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    async with ecosystem(
        tmp_path_factory.mktemp("chat"), extensions=["jupyterlab_chat"]
    ) as stack:
        yield stack


def say(client: JupyterClient, user: str, body: str) -> None:
    """What the chat frontend does when ``user`` sends ``body``."""
    doc = client.doc
    with doc.transaction():
        doc.get("users", type=Map)[user] = {"username": user, "name": user.title()}
        doc.get("messages", type=Array).append(
            Map(
                {
                    "type": "msg",
                    "id": str(uuid.uuid4()),
                    "body": body,
                    "sender": user,
                    "time": 1.0,  # the client's clock; the server restamps it
                    "raw_time": True,
                }
            )
        )


def messages(client: JupyterClient) -> list[dict[str, Any]]:
    return client.doc.get("messages", type=Array).to_py() or []


def chat_of(client: JupyterClient) -> dict[str, Any]:
    """What the chat's users see: messages and users (not the room's state)."""
    return {
        "messages": messages(client),
        "users": client.doc.get("users", type=Map).to_py() or {},
    }


def stamped(client: JupyterClient, count: int) -> bool:
    got = messages(client)
    return len(got) == count and all(m.get("raw_time") is False for m in got)


async def test_two_users_chat_and_the_chat_is_kept(
    stack: Stack, tmp_path: Path
) -> None:
    disk = stack.jupyter.root_dir / "team.chat"
    disk.write_text("")  # as the chat frontend creates one
    session: Session = await stack.open(
        "team.chat", file_type="chat", file_format="text"
    )
    async with stack.events() as events:
        async with stack.client(session) as alice, stack.client(session) as bob:
            # jupyterlab-chat resolved the chat through get_document.
            opened = await events.wait_for("jupyterlab_chat/room/v1", action="opened")
            assert opened["path"] == "team.chat"
            say(alice, "alice", "hello bob")
            await bob.wait(lambda: stamped(bob, 1), "alice's message, stamped")
            say(bob, "bob", "hi alice")
            for client in (alice, bob):
                await client.wait(lambda c=client: stamped(c, 2), "both, stamped")
            assert [m["body"] for m in messages(alice)] == ["hello bob", "hi alice"]
            assert all(m["time"] > 1.0 for m in messages(alice))
            assert await alice.save(1) == "success"
            # Every client holds what a fresh joiner gets, times included:
            # the server's stamps reached them all.
            async with stack.client(session) as fresh:
                for client in (alice, bob):
                    await client.wait(
                        lambda c=client: chat_of(c) == chat_of(fresh), "the same chat"
                    )
                kept = chat_of(fresh)
    on_disk = json.loads(disk.read_text())
    assert on_disk["messages"] == kept["messages"]
    assert set(on_disk["users"]) == {"alice", "bob"}

    # Both servers restart: the chat comes back from the store and the file.
    await stack.ysyncd.kill()
    await stack.jupyter.restart()
    await stack.ysyncd.start()
    session = await stack.open("team.chat", file_type="chat", file_format="text")
    async with stack.client(session) as back:
        assert messages(back) == kept["messages"]
