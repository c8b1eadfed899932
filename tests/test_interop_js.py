"""The real JavaScript yjs + y-websocket client (under Node) against ysyncd."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

from tests.jsclient import JsClient, require_node
from tests.serverproc import ServerProcess, running_server
from tests.yclient import YClient, stored_content

pytestmark = [pytest.mark.interop, pytest.mark.usefixtures("node")]


@pytest.fixture
def node() -> None:
    require_node()


async def test_concurrent_random_edits_from_node_clients_converge(
    server: ServerProcess,
) -> None:
    """Four Node clients editing Text, Map and Array at once end up identical."""
    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(JsClient.start(server.url, "converge"))
            for _ in range(4)
        ]
        for c in clients:
            await c.call("wait_synced")
        await asyncio.gather(
            *(c.call("edit", n=250, seed=seed) for seed, c in enumerate(clients))
        )
        await asyncio.gather(*(c.call("wait_confirmed") for c in clients))
        # Everything is on the server now; a fresh pycrdt reader sees the union.
        union = await stored_content(server.url, "converge")
        assert len(union["text"]) > 100 and union["map"] and union["array"]
        await asyncio.gather(*(c.call("wait_content", expect=union) for c in clients))


async def test_late_node_joiner_gets_1000_edits(server: ServerProcess) -> None:
    """A Node client joining after 1,000 edits receives all of them."""
    async with JsClient.start(server.url, "late-js") as a:
        await a.call("wait_synced")
        await a.call("edit", n=1000, seed=7)
        await a.call("wait_confirmed", timeout_ms=30000)
        expected = await a.dump()
    async with JsClient.start(server.url, "late-js") as b:
        await b.call("wait_synced")
        assert await b.dump() == expected


async def test_offline_node_edits_merge_on_reconnect(server: ServerProcess) -> None:
    """Edits made while disconnected on both sides merge after reconnecting."""
    async with (
        JsClient.start(server.url, "offline-js") as a,
        JsClient.start(server.url, "offline-js") as b,
    ):
        await a.call("wait_synced")
        await b.call("wait_synced")
        await a.call("insert_text", index=0, text="shared ")
        await a.call("wait_confirmed")
        await b.call("wait_content", expect={"text": "shared "})
        await a.call("disconnect")
        await a.call("insert_text", index=0, text="[offline A] ")
        await a.call("set_map", key="who", value="A")
        await b.call("insert_text", index=7, text="[online B]")
        await b.call("wait_confirmed")
        await a.call("connect")
        await a.call("wait_synced")
        await a.call("wait_confirmed")
        expected = {"text": "[offline A] shared [online B]", "map": {"who": "A"}}
        await a.call("wait_content", expect=expected)
        await b.call("wait_content", expect=expected)


async def test_pycrdt_and_node_clients_converge(server: ServerProcess) -> None:
    """A pycrdt client and a Node client editing one room agree."""
    async with (
        JsClient.start(server.url, "mixed") as js,
        YClient.connect(server.url, "mixed") as py,
    ):
        await js.call("wait_synced")
        await js.call("edit", n=200, seed=3)
        for i in range(200):
            py.text.insert(0, "π")
            py.map[f"py{i % 5}"] = i
            py.array.append(i)
        await js.call("wait_confirmed")
        await py.wait_confirmed()
        # Both sides' edits are on the server now; a fresh reader sees the union.
        union = await stored_content(server.url, "mixed")
        assert len(union["array"]) >= 200
        await py.wait(lambda: py.content() == union, "pycrdt sees the Node edits")
        await js.call("wait_content", expect=union)


async def test_node_client_survives_server_restart(db_path: Path) -> None:
    """A Node client reconnects after a restart and keeps editing; nothing is lost."""
    async with running_server(db_path, "--room-idle-seconds", "0") as server:
        async with JsClient.start(server.url, "restart-js", max_backoff_ms=200) as c:
            await c.call("wait_synced")
            await c.call("edit", n=300, seed=11)
            await c.call("wait_confirmed")
            assert await server.stop() == 0
            await c.wait_event("connection-close")
            await server.start()
            await c.call("wait_status", status="connected", timeout_ms=15000)
            await c.call("edit", n=100, seed=12)
            await c.call("wait_confirmed")
            expected = await c.dump()
        async with JsClient.start(server.url, "restart-js") as fresh:
            await fresh.call("wait_synced")
            assert await fresh.dump() == expected
