"""Many ysyncd nodes serve the same rooms, on PostgreSQL and Redis.

Real processes throughout: ``ysyncd serve`` nodes, PostgreSQL and Redis
started by the tests (tests/services.py), the JavaScript y-websocket client
where it says so. Every check is on document content.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
from pycrdt import Doc, Text

from tests.cluster import healthz, metric, running_cluster, wait_healthz
from tests.jsclient import JsClient, require_node
from tests.jupyterclient import JupyterClient, room_path
from tests.serverproc import running_server
from tests.services import PostgresServer, RedisServer
from tests.timing import scaled, wait_until
from tests.yclient import YClient, stored_content
from ysyncd import protocol
from ysyncd.api import ROOM_DELETED
from ysyncd.backplane.messages import Heartbeat, Updates, encode
from ysyncd.store import open_store
from ysyncd.store.snapshot import doc_from_updates


async def test_three_nodes_converge_with_javascript_clients(
    pg_url: str, redis_url: str
) -> None:
    """Stock y-websocket clients, two on each of three nodes, see each other's
    cursors and make concurrent random edits in Y.Text, Y.Map and Y.Array:
    all converge, the store holds the same, and a late joiner on any node
    sees everything."""
    require_node()
    async with (
        running_cluster(pg_url, redis_url, 3) as nodes,
        contextlib.AsyncExitStack() as stack,
    ):
        clients = [
            await stack.enter_async_context(JsClient.start(node.url, "converge"))
            for node in nodes
            for _ in range(2)
        ]
        await asyncio.gather(*(c.call("wait_synced") for c in clients))
        # Cursors: each client sees every other's, whatever its node.
        ids = [(await c.call("status"))["client_id"] for c in clients]
        for n, c in enumerate(clients):
            await c.call("set_awareness", state={"user": f"u{n}"})
        await asyncio.gather(
            *(
                c.call("wait_awareness", client_id=cid, state={"user": f"u{n}"})
                for c in clients
                for n, cid in enumerate(ids)
            )
        )
        await asyncio.gather(
            *(c.call("edit", n=150, seed=seed) for seed, c in enumerate(clients))
        )
        await asyncio.gather(*(c.call("wait_confirmed") for c in clients))
        union = await stored_content(nodes[0].url, "converge")
        assert len(union["text"]) > 100 and union["map"] and union["array"]
        await asyncio.gather(*(c.call("wait_content", expect=union) for c in clients))
        for node in nodes:
            assert await stored_content(node.url, "converge") == union
    # What the store holds, read apart from any node.
    store = await open_store(pg_url, shared=True)
    try:
        stored = doc_from_updates((await store.load("converge")).updates)
    finally:
        await store.aclose()
    assert str(stored.get("text", type=Text)) == union["text"]


async def test_a_sync_answer_goes_to_its_one_peer_only(
    pg_url: str, redis_url: str
) -> None:
    """Only committed updates cross nodes: a peer asking node A for the whole
    document (sync step 1) gets the answer alone; a peer on node B receives
    nothing of it (Hocuspocus #1151 broadcast it, and stale replicas lost
    content)."""
    async with running_cluster(pg_url, redis_url, 2) as (a, b):
        async with YClient.connect(a.url, "one-peer") as writer:
            writer.text.insert(0, "committed once")
            await writer.wait_confirmed()
        async with (
            YClient.connect(b.url, "one-peer") as watcher,
            YClient.connect(a.url, "one-peer") as asker,
        ):
            await watcher.wait(lambda: str(watcher.text) == "committed once", "sync")
            seen = len(watcher.received)
            for _ in range(3):
                await asker.ws.send(protocol.encode(protocol.SyncStep1(b"\x00")))
            await asker.wait(
                lambda: (
                    sum(
                        isinstance(m, protocol.SyncStep2) and m.update != b"\x00\x00"
                        for m in asker.received
                    )
                    >= 3
                ),
                "the answers",
            )
            # A marker through the backplane: once it is here, anything sent
            # before it would be too.
            asker.text.insert(0, ">")
            await watcher.wait(lambda: str(watcher.text).startswith(">"), "marker")
            later = watcher.received[seen:]
            assert [type(m) for m in later] == [protocol.Update], later
            assert str(watcher.text) == ">committed once"


async def test_a_room_deleted_on_one_node_is_gone_from_every_node(
    pg_url: str, redis_url: str
) -> None:
    """``DELETE /api/rooms/{room}`` on node A closes the room's peers on node
    B too (4410); B's next edit in that room, on a room id it remembered,
    still commits (the id is looked up again), and starts the room afresh:
    nothing of the deleted document comes back."""
    async with running_cluster(pg_url, redis_url, 2) as (a, b):
        async with (
            YClient.connect(a.url, "doomed") as on_a,
            YClient.connect(b.url, "doomed") as on_b,
        ):
            on_a.text.insert(0, "secret plans")
            await on_a.wait_confirmed()
            await on_b.wait(lambda: str(on_b.text) == "secret plans", "the sync")
            on_b.text.insert(len(on_b.text), " and more")  # B remembers the id
            await on_b.wait_confirmed()
            await on_a.wait(lambda: str(on_a.text).endswith("more"), "B's edit")
            async with httpx.AsyncClient(trust_env=False, timeout=30) as http:
                resp = await http.delete(f"{a.http_url}/api/rooms/doomed")
            assert resp.status_code == 200, resp.text
            for client in (on_a, on_b):
                await client.wait(lambda c=client: c.close_code is not None, "close")
                assert client.close_code == ROOM_DELETED
        async with YClient.connect(b.url, "doomed") as again:
            assert str(again.text) == ""
            again.text.insert(0, "fresh start")
            await again.wait_confirmed()
        async with YClient.connect(a.url, "doomed") as check:
            await check.wait(lambda: str(check.text) == "fresh start", "the new room")


async def test_a_killed_node_loses_no_echoed_edit_and_its_cursors_go(
    pg_url: str, redis_url: str
) -> None:
    """``kill -9`` one of three nodes while clients on every node edit: every
    edit any node echoed is in the room afterwards, the dead node's clients
    carry on through another node and converge, and the dead node's cursors
    vanish from the others within 10 s."""
    room = "kill"
    async with running_cluster(pg_url, redis_url, 3) as nodes:
        victim, survivor, third = nodes
        async with (
            YClient.connect(victim.url, room) as doomed,
            YClient.connect(survivor.url, room) as alive,
            YClient.connect(third.url, room) as other,
        ):
            await doomed.set_awareness(doomed.doc.client_id, 1, {"user": "doomed"})
            await alive.wait(lambda: doomed.doc.client_id in alive.awareness, "cursor")
            writers = [doomed, alive, other]
            for i in range(60):
                for n, writer in enumerate(writers):
                    writer.text.insert(len(writer.text), f"{n}.{i} ")
                if i == 30:
                    await victim.kill()
                await asyncio.sleep(0.005)
            await alive.wait_confirmed()
            await other.wait_confirmed()
            # Echoed by the dead node before it died: those must be kept.
            echoed_by_victim = Doc()
            echoed_by_victim.apply_update(doomed.server_view.get_update())
            killed_at = time.monotonic()
            await alive.wait(
                lambda: doomed.doc.client_id not in alive.awareness,
                "the dead node's cursor to go",
                timeout=10,
            )
            assert time.monotonic() - killed_at < scaled(10)
            # The dead node's client reconnects elsewhere with its document.
            async with YClient.connect(survivor.url, room, doc=doomed.doc) as back:
                await back.wait_confirmed(timeout=20)
            expected = str(doomed.doc.get("text", type=Text))
            for client in (alive, other):
                await client.wait(
                    lambda c=client: len(str(c.text)) == len(expected),  # type: ignore[misc]
                    "convergence",
                    timeout=20,
                )
            final = await stored_content(third.url, room)
            assert sorted(final["text"].split()) == sorted(expected.split())
            for token in str(echoed_by_victim.get("text", type=Text)).split():
                assert token in final["text"].split()
            for n in range(3):
                for i in range(60):
                    assert f"{n}.{i}" in final["text"].split()


async def test_edits_converge_without_reconnecting_after_redis_restarts(
    pg_url: str, own_redis: RedisServer
) -> None:
    """Redis restarts (and forgets everything) while clients on two nodes
    edit: within 5 s of its return every client holds every edit, on the
    connection it had all along."""
    async with running_cluster(pg_url, own_redis.url(), 2) as (a, b):
        async with (
            YClient.connect(a.url, "redis-restart") as left,
            YClient.connect(b.url, "redis-restart") as right,
        ):
            for i in range(20):
                left.text.insert(len(left.text), f"L{i} ")
                right.text.insert(len(right.text), f"R{i} ")
                if i == 5:
                    await own_redis.stop()
                if i == 10:
                    await wait_healthz(a, 503)  # the backplane is away
                if i == 12:
                    await own_redis.start()
                await asyncio.sleep(0.05)
            await left.wait_confirmed()
            await right.wait_confirmed()
            back = time.monotonic()
            expected = {f"L{i}" for i in range(20)} | {f"R{i}" for i in range(20)}
            for client in (left, right):
                await client.wait(
                    lambda c=client: set(str(c.text).split()) == expected,  # type: ignore[misc]
                    "convergence after the restart",
                    timeout=5,
                )
            assert time.monotonic() - back < scaled(5)
            assert left.close_code is None and right.close_code is None
            await wait_healthz(a, 200)
            assert await metric(a, "ysyncd_cluster_repairs_total") >= 1


async def test_nothing_is_echoed_while_postgresql_is_down(
    own_postgres: PostgresServer, redis_url: str
) -> None:
    """PostgreSQL stops while a client edits: nothing is echoed, on any node,
    and /healthz says 503; once it is back, everything is echoed, converges,
    and is stored."""
    db = await own_postgres.create_database("down")
    async with running_cluster(db, redis_url, 2) as (a, b):
        async with (
            YClient.connect(a.url, "pg-down") as writer,
            YClient.connect(b.url, "pg-down") as reader,
        ):
            writer.text.insert(0, "before ")
            await reader.wait(lambda: str(reader.text) == "before ", "first edit")
            await own_postgres.stop()
            writer.text.insert(len(writer.text), "during")
            await wait_healthz(a, 503)
            await wait_healthz(b, 503)  # it writes nothing: its ping tells
            status, reason = await healthz(b)
            assert status == 503 and "store" in reason, reason
            assert writer.unconfirmed
            assert str(reader.text) == "before "
            await own_postgres.start()
            await writer.wait_confirmed(timeout=30)
            await reader.wait(lambda: str(reader.text) == "before during", "the edit")
            await wait_healthz(a, 200)
    store = await open_store(db)
    try:
        stored = doc_from_updates((await store.load("pg-down")).updates)
    finally:
        await store.aclose()
    assert str(stored.get("text", type=Text)) == "before during"


async def test_a_lost_message_and_a_late_commit_are_repaired(
    pg_url: str, redis_url: str
) -> None:
    """Another node (the test, speaking the backplane's format) commits three
    updates but publishes only the first and the third; later it commits a
    fourth and publishes nothing but a heartbeat naming it; then a fifth,
    whose message its heartbeat says it dropped. The node notices each gap
    and repairs from the store: its client gets all five."""
    async with running_cluster(pg_url, redis_url, 1) as (node,):
        async with YClient.connect(node.url, "gaps") as client:
            client.text.insert(0, "start ")
            await client.wait_confirmed()
            source: Doc = Doc()
            source.apply_update(client.doc.get_update())
            made: list[bytes] = []
            source.observe(lambda event: made.append(event.update))
            text = source.get("text", type=Text)
            for word in ("one ", "two ", "three ", "four "):
                text.insert(len(text), word)
            store = await open_store(pg_url, shared=True)
            publisher = aioredis.Redis.from_url(redis_url)
            try:
                origin = b"\x42" * 16
                channel = f"ysyncd:{store.epoch}:room:gaps".encode()
                nodes = f"ysyncd:{store.epoch}:nodes".encode()
                for seq, update in enumerate(made[:3], start=1):
                    await store.append([("gaps", update)])
                    if seq != 2:  # the lost one
                        message = Updates(
                            origin, seq, int(time.time() * 1000), [update]
                        )
                        await publisher.publish(channel, encode(message))
                await client.wait(
                    lambda: str(client.text) == "start one two three ", "gap repaired"
                )
                # The lost one arrives after all, out of order: nothing doubles.
                late = Updates(origin, 2, int(time.time() * 1000), [made[1]])
                await publisher.publish(channel, encode(late))
                await store.append([("gaps", made[3])])
                beat = Heartbeat(origin, {"gaps": 4})
                await publisher.publish(nodes, encode(beat))
                await client.wait(
                    lambda: str(client.text) == "start one two three four ",
                    "trailing gap repaired",
                )
                # A fifth it had to drop from its outbox: its heartbeat says so.
                text.insert(len(text), "five ")
                await store.append([("gaps", made[4])])
                lossy = Heartbeat(origin, {}, ["gaps"])
                await publisher.publish(nodes, encode(lossy))
                await client.wait(
                    lambda: str(client.text) == "start one two three four five ",
                    "dropped message repaired",
                )
            finally:
                await publisher.aclose()
                await store.aclose()
        assert await metric(node, "ysyncd_cluster_gaps_total") >= 3


async def test_a_backplane_needs_a_shared_store(tmp_path: Any, redis_url: str) -> None:
    """SQLite and a backplane refuse to start, with one line."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ysyncd",
        "serve",
        "--port",
        "0",
        "--db",
        str(tmp_path / "x.db"),
        "--backplane",
        redis_url,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(scaled(20)):
        _, err = await proc.communicate()
    assert proc.returncode == 2
    expected = (
        f"ysyncd: --backplane {redis_url}: needs a store shared by every node: "
        "--db postgresql://..."
    )
    assert err.decode().strip().splitlines() == [expected]


def worker_pids(supervisor: int) -> set[int]:
    """The supervisor's child processes (its workers)."""
    pids: set[int] = set()
    for task in Path(f"/proc/{supervisor}/task").iterdir():
        children = (task / "children").read_text().split()
        pids.update(int(pid) for pid in children)
    return pids


async def test_workers_serve_one_port_and_a_dead_one_is_started_again(
    pg_url: str, redis_url: str
) -> None:
    """``--workers 3`` runs three nodes on one port: clients spread over them
    converge. One is killed: the supervisor starts it again, its clients
    reconnect, and every edit is there; SIGTERM stops them all."""
    async with running_server(
        pg_url, "--backplane", redis_url, "--workers", "3"
    ) as server:
        assert server.proc is not None
        await wait_until(lambda: len(worker_pids(server.proc.pid)) == 3, "3 workers")
        first = worker_pids(server.proc.pid)
        async with contextlib.AsyncExitStack() as stack:
            clients = [
                await stack.enter_async_context(YClient.connect(server.url, "w"))
                for _ in range(6)
            ]
            for n, client in enumerate(clients):
                client.text.insert(0, f"<{n}>")
            for client in clients:
                await client.wait_confirmed()
            for client in clients:
                await client.wait(lambda c=client: str(c.text).count("<") == 6, "all")
            victim = min(first)
            os.kill(victim, signal.SIGKILL)
            await wait_until(
                lambda: len(worker_pids(server.proc.pid) - (first - {victim})) == 1,
                "a new worker",
                timeout=15,
            )
            await wait_until(
                lambda: any("starting it again" in line for line in server.log),
                "the supervisor's word",
            )
        async with YClient.connect(server.url, "w") as late:
            late.text.insert(0, "<late>")
            await late.wait_confirmed()
            assert str(late.text).count("<") == 7
        assert await server.stop() == 0
        gone = [pid for pid in first - {victim} if not os.path.exists(f"/proc/{pid}")]  # noqa: ASYNC240
        assert len(gone) == 2


async def test_an_unreachable_backplane_is_one_line(pg_url: str) -> None:
    """Redis that does not answer at start: one line naming the flag, exit 2."""
    url = "redis://127.0.0.1:1/0"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "ysyncd", "serve", "--port", "0"),
        *("--db", pg_url, "--backplane", url),
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(scaled(30)):
        _, err = await proc.communicate()
    assert proc.returncode == 2
    text = err.decode()
    assert "Traceback" not in text, text
    last = text.strip().splitlines()[-1]
    assert last.startswith(f"ysyncd: --backplane {url}: "), text
    assert "refused" in last


async def test_every_node_hands_out_the_same_session_id(
    pg_url: str, redis_url: str
) -> None:
    """The epoch (a Jupyter sessionId) is the shared store's."""
    async with running_cluster(pg_url, redis_url, 2) as nodes:
        epochs = set()
        for node in nodes:
            async with httpx.AsyncClient(timeout=scaled(5)) as client:
                answer = await client.get(f"{node.http_url}/_ysyncd/epoch")
            epochs.add(answer.json()["epoch"])
        assert len(epochs) == 1


@pytest.mark.interop
async def test_edits_across_reconnects_survive_rooms_unloading(
    pg_url: str, redis_url: str
) -> None:
    """A y-websocket client keeps dropping and re-opening its connection while
    it edits, and its node unloads the room each time it is left empty
    (--room-idle-seconds 0); a client on another node edits all along. No
    edit is lost, on either side (Hocuspocus #971 lost them)."""
    require_node()
    async with running_cluster(pg_url, redis_url, 2, "--room-idle-seconds", "0") as (
        a,
        b,
    ):
        async with (
            JsClient.start(a.url, "unload") as flaky,
            JsClient.start(b.url, "unload") as steady,
        ):
            await flaky.call("wait_synced")
            await steady.call("wait_synced")
            for i in range(12):
                await flaky.call("insert_text", text=f"f{i} ")
                await flaky.call("disconnect")
                await steady.call("insert_text", text=f"s{i} ")
                await flaky.call("insert_text", text=f"g{i} ")
                await flaky.call("connect")
                await flaky.call("wait_synced", timeout_ms=20_000)
            # (The test client counts an edit as confirmed by its echo, and
            # an edit the server had before the reconnect is not echoed
            # again: the store is asked instead.)
            expected = {f"{k}{i}" for i in range(12) for k in "fgs"}
            union: dict[str, Any] = {}

            async def everything_stored() -> None:
                for _ in range(200):
                    union.update(await stored_content(b.url, "unload"))
                    if set(union["text"].split()) == expected:
                        return
                    await asyncio.sleep(0.1)

            async with asyncio.timeout(scaled(20)):
                await everything_stored()
            assert sorted(union["text"].split()) == sorted(expected)
            # The room did leave node A's memory while its client was away.
            assert sum("evicted" in line for line in a.log) >= 3, a.log
            await flaky.call("wait_content", expect=union)
            await steady.call("wait_content", expect=union)


async def test_jupyterlabs_global_awareness_spans_the_nodes(
    pg_url: str, redis_url: str
) -> None:
    """JupyterLab's collaborators panel (its transient globalAwareness room,
    kept in memory) shows users whatever node they reached; never stored."""
    room = room_path("alice", "JupyterLab:globalAwareness")
    async with (
        running_cluster(pg_url, redis_url, 2) as (a, b),
        JupyterClient.connect(a.url, room) as here,
        JupyterClient.connect(b.url, room) as there,
    ):
        await here.set_awareness(101, 1, {"user": {"name": "alice"}})
        await there.wait(lambda: 101 in there.awareness, "alice on the other node")
        await there.set_awareness(202, 1, {"user": {"name": "bob"}})
        await here.wait(lambda: 202 in here.awareness, "bob on the first node")
        here.text.insert(0, "transient")
        await there.wait(lambda: str(there.text) == "transient", "the edit")
    store = await open_store(pg_url, shared=True)
    try:
        assert (await store.load(room)).updates == []
    finally:
        await store.aclose()
