"""End-to-end behaviour of a real ``ysyncd serve`` with pycrdt clients."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from pycrdt import Doc, Text
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.serverproc import ServerProcess, running_server
from tests.timing import wait_until
from tests.yclient import YClient, stored_content


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


async def test_healthz_answers_without_upgrade(server: ServerProcess) -> None:
    """GET /healthz is a plain 200, usable by probes."""
    assert await asyncio.to_thread(http_status, server.http_url + "/healthz") == 200


@pytest.mark.parametrize(
    "path",
    ["/", "/%ff%fe", "/bad%00name", "/tab%09name", "/" + "x" * 600],
)
async def test_invalid_room_names_get_400_before_upgrade(
    server: ServerProcess, path: str
) -> None:
    """A path that names no valid room is refused with HTTP 400, never upgraded."""
    with pytest.raises(InvalidStatus) as caught:
        async with connect(server.url + path):
            pass
    assert caught.value.response.status_code == 400


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
async def test_each_event_loop_serves_and_persists(db_path: Path, loop: str) -> None:
    """Both event loops relay edits and store them (uvloop comes with the extra)."""
    async with running_server(db_path, "--loop", loop) as server:
        async with (
            YClient.connect(server.url, "loops") as a,
            YClient.connect(server.url, "loops") as b,
        ):
            a.text.insert(0, loop)
            await b.wait_content({"text": loop, "map": {}, "array": []})
    async with running_server(db_path, "--loop", loop) as server:
        assert (await stored_content(server.url, "loops"))["text"] == loop


async def test_two_clients_converge_and_updates_are_echoed(
    server: ServerProcess,
) -> None:
    """Edits from both sides reach both, and each sender gets its echo."""
    async with (
        YClient.connect(server.url, "pair") as a,
        YClient.connect(server.url, "pair") as b,
    ):
        a.text.insert(0, "hello ")
        b.map["k"] = "v"
        b.text.insert(0, "world")
        await a.wait_confirmed()
        await b.wait_confirmed()
        union = await stored_content(server.url, "pair")
        assert union["map"] == {"k": "v"}
        assert sorted(union["text"]) == sorted("hello world")
        await a.wait(lambda: a.content() == union, "convergence at a")
        await b.wait(lambda: b.content() == union, "convergence at b")


async def test_late_joiner_receives_everything(server: ServerProcess) -> None:
    """A client joining after 1,000 edits gets the whole document."""
    async with YClient.connect(server.url, "late") as a:
        for i in range(1000):
            a.text.insert(len(a.text), f"{i % 10}")
            if i % 3 == 0:
                a.array.append(i)
        await a.wait_confirmed(timeout=30)
        expected = a.content()
    async with YClient.connect(server.url, "late") as b:
        assert b.content() == expected
        assert len(str(b.text)) == 1000


async def test_offline_edits_merge_on_reconnect(server: ServerProcess) -> None:
    """A client that edits while disconnected merges when it comes back."""
    doc: Doc = Doc()
    async with YClient.connect(server.url, "offline", doc=doc) as a:
        a.text.insert(0, "base.")
        await a.wait_confirmed()
    async with YClient.connect(server.url, "offline") as b:
        b.text.insert(len(b.text), " online.")
        await b.wait_confirmed()
        # Offline edit on the first client's doc, then reconnect with it.
        doc.get("text", type=Text).insert(0, "offline! ")
        async with YClient.connect(server.url, "offline", doc=doc) as a2:
            await a2.wait_confirmed()
            expected = "offline! base. online."
            await a2.wait(lambda: str(a2.text) == expected, "merged text")
            await b.wait(lambda: str(b.text) == expected, "merged text at b")


async def test_rooms_are_isolated_including_unicode_and_slashes(
    server: ServerProcess,
) -> None:
    """Rooms whose names differ only subtly never see each other's content."""
    names = [
        "a/b/c",
        "a/b",
        "a%2Fb",
        "caf%C3%A9",
        "café-2",
        "日本/ノート",
        "x?ignored=1",
    ]
    for i, name in enumerate(names):
        async with YClient.connect(server.url, name) as c:
            c.text.insert(0, f"room {i}")
            await c.wait_confirmed()
    # %2F decodes to '/', so "a%2Fb" is the room "a/b" again; "x?…" is room "x".
    expected = {
        "a/b/c": "room 0",
        "a/b": "room 2room 1",
        "caf%C3%A9": "room 3",
        "café-2": "room 4",
        "日本/ノート": "room 5",
        "x": "room 6",
    }
    for name, text in expected.items():
        async with YClient.connect(server.url, name) as c:
            got = str(c.text)
            assert sorted(got) == sorted(text), name


async def test_restart_keeps_everything(server: ServerProcess) -> None:
    """SIGTERM exits 0, and a fresh server on the same database serves all edits."""
    async with YClient.connect(server.url, "restart") as a:
        for i in range(200):
            a.text.insert(len(a.text), "ab")
            a.map[str(i)] = i
        await a.wait_confirmed()
        expected = a.content()
    assert await server.stop() == 0
    await server.start()
    async with YClient.connect(server.url, "restart") as b:
        assert b.content() == expected


async def test_crash_loses_no_echoed_edit(server: ServerProcess) -> None:
    """After kill -9 right after the echoes, a restart serves every echoed edit."""
    async with YClient.connect(server.url, "crash") as a:
        for i in range(300):
            a.text.insert(len(a.text), "x")
            a.array.append(i)
        await a.wait_confirmed()
        expected = a.content()
        await server.kill()
    await server.start()
    async with YClient.connect(server.url, "crash") as b:
        assert b.content() == expected
    with sqlite3.connect(server.db) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)


async def test_shutdown_closes_peers_with_1001(server: ServerProcess) -> None:
    """A graceful shutdown tells connected peers 'going away' and exits 0."""
    async with YClient.connect(server.url, "bye") as a:
        a.text.insert(0, "last words")
        await a.wait_confirmed()
        code = await server.stop()
        assert await a.wait_closed() == 1001
    assert code == 0


async def _edit_and_measure(db: Path, compact_after: int) -> tuple[dict, int, int]:
    # No history: the rows a compaction folds are dropped, not moved aside
    # (with a history, thinning is what reclaims them; see test_store.py).
    args = ("--compact-after", str(compact_after), "--history-retention", "0")
    async with running_server(db, *args) as server:
        async with YClient.connect(server.url, "compact") as a:
            for i in range(1000):
                a.text.insert(len(a.text), "y")
                a.map["counter"] = i
            # 2,000 durable commits (synchronous=FULL): tens of seconds on a
            # slow disk.
            await a.wait_confirmed(timeout=90)
            expected = a.content()
        assert await server.stop() == 0
        await server.start()
        async with YClient.connect(server.url, "compact") as b:
            assert b.content() == expected
        assert await server.stop() == 0
    return (expected, *_rows_and_size(db))


def _rows_and_size(db: Path) -> tuple[int, int]:
    with sqlite3.connect(db) as conn:
        (rows,) = conn.execute("SELECT count(*) FROM updates").fetchone()
    return rows, db.stat().st_size


async def test_compaction_keeps_document_and_shrinks_database(tmp_path: Path) -> None:
    """Past the threshold the log becomes a snapshot: same content, smaller file."""
    plain, plain_rows, plain_size = await _edit_and_measure(tmp_path / "a.db", 10**6)
    compacted, rows, size = await _edit_and_measure(tmp_path / "b.db", 200)
    assert compacted == plain
    assert plain_rows == 2000
    assert rows < 200
    assert size < plain_size * 0.75, (size, plain_size)


async def test_second_signal_forces_exit(server: ServerProcess) -> None:
    """While a graceful shutdown waits on a silent peer, a second signal exits 1."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(
        b"GET /stuck HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n"
    )
    await writer.drain()
    assert (await reader.readline()).startswith(b"HTTP/1.1 101")
    # This peer never answers the close frame, so the graceful close would wait
    # for websockets' close timeout (10 s).
    assert server.proc is not None
    server.proc.send_signal(signal.SIGTERM)
    await wait_until(
        lambda: any("shutting down" in line for line in server.log), "shutdown"
    )
    started = time.monotonic()
    assert await server.signal(signal.SIGINT) == 1
    assert time.monotonic() - started < 5
    writer.close()


async def test_dead_peer_is_dropped_by_ping_timeout(db_path: Path) -> None:
    """A peer that stops answering pings is dropped, and its cursor goes with it."""
    args = ("--ping-interval", "0.2", "--ping-timeout", "0.3", "--close-timeout", "0.5")
    async with (
        running_server(db_path, *args) as server,
        YClient.connect(server.url, "ping") as watcher,
        connect(f"{server.url}/ping", compression=None) as silent,
    ):
        body = b'{"user":{"name":"ghost"}}'
        update = b"\x01\x63\x01" + bytes([len(body)]) + body
        await silent.send(b"\x01" + bytes([len(update)]) + update)
        await watcher.wait(lambda: 99 in watcher.awareness, "the ghost's state")
        silent.transport.pause_reading()  # no more pongs from here on
        await watcher.wait(lambda: 99 not in watcher.awareness, "ghost removal", 5)
