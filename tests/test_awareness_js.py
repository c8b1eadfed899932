"""Awareness (cursors, user names) between real y-websocket clients and ysyncd."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pycrdt import write_message, write_var_uint

from tests.jsclient import JsClient, require_node
from tests.serverproc import ServerProcess, running_server
from tests.timing import scaled
from tests.yclient import YClient
from ysyncd import protocol
from ysyncd.awareness import decode_update

pytestmark = [pytest.mark.interop, pytest.mark.usefixtures("node")]

ZOE = {
    "user": {"name": "Zoë 日本", "color": "#ff8800"},
    "cursor": {"anchor": 3, "head": 5},
}
BJORN = {"user": {"name": "Bjørn 🙂 語"}, "cursor": {"anchor": 0, "head": 0}}
#: A removal must reach the other peers this fast once the connection is gone.
GONE_WITHIN_S = 2.0


@pytest.fixture
def node() -> None:
    require_node()


def awareness_update(*entries: tuple[int, int, Any]) -> bytes:
    """An awareness update body: ``(client_id, clock, state)`` entries, JSON-encoded."""
    out = write_var_uint(len(entries))
    for client_id, clock, state in entries:
        out += write_var_uint(client_id) + write_var_uint(clock)
        out += write_message(json.dumps(state, ensure_ascii=False).encode())
    return out


def awareness_bodies(client: YClient, start: int = 0) -> list[bytes]:
    """The awareness updates ``client`` received, from message index ``start`` on."""
    return [
        m.update for m in client.received[start:] if isinstance(m, protocol.Awareness)
    ]


def client_id(c: JsClient) -> int:
    """The Node client's awareness (and document) client ID."""
    assert c.client_id is not None
    return c.client_id


@contextlib.asynccontextmanager
async def pair(
    server: ServerProcess, room: str
) -> AsyncIterator[tuple[JsClient, JsClient]]:
    """Two Node clients in ``room``, synced, with ZOE and BJORN set and seen."""
    async with (
        JsClient.start(server.url, room) as a,
        JsClient.start(server.url, room) as b,
    ):
        await asyncio.gather(a.call("wait_synced"), b.call("wait_synced"))
        await a.call("set_awareness", state=ZOE)
        await b.call("set_awareness", state=BJORN)
        await b.call("wait_awareness", client_id=client_id(a), state=ZOE)
        await a.call("wait_awareness", client_id=client_id(b), state=BJORN)
        yield a, b


async def test_two_node_clients_see_each_others_name_and_cursor(
    server: ServerProcess,
) -> None:
    """Each y-websocket client sees the other's non-ASCII name and cursor."""
    async with pair(server, "aw-names") as (a, b):
        seen_by_a = (await a.call("awareness"))["states"]
        seen_by_b = (await b.call("awareness"))["states"]
        assert seen_by_a[str(b.client_id)] == BJORN
        assert seen_by_b[str(a.client_id)] == ZOE
        assert seen_by_a[str(a.client_id)] == ZOE  # its own local state
        # A change of cursor travels too.
        moved = {**ZOE, "cursor": {"anchor": 7, "head": 7}}
        await a.call("set_awareness", state=moved)
        await b.call("wait_awareness", client_id=client_id(a), state=moved)


async def test_state_is_gone_within_2s_after_disconnect(server: ServerProcess) -> None:
    """provider.disconnect() (goodbye, then close): the peer sees the state go fast."""
    async with pair(server, "aw-disconnect") as (a, b):
        a_id = client_id(a)
        started = time.monotonic()
        await a.call("disconnect")
        await b.call("wait_awareness", client_id=a_id, state=None)
        elapsed = time.monotonic() - started
        print(f"state removed {elapsed * 1000:.0f} ms after disconnect")
        assert elapsed < scaled(GONE_WITHIN_S)
        assert str(a_id) not in (await b.call("awareness"))["states"]
        # Back online, its next change is seen again. (Its re-announcement at the
        # old clock is ignored by everyone, as with the reference server: the
        # goodbye that provider.disconnect() sends has taken that clock.)
        await a.call("connect")
        await a.call("wait_synced")
        moved = {**ZOE, "cursor": {"anchor": 1, "head": 9}}
        await a.call("set_awareness", state=moved)
        await b.call("wait_awareness", client_id=a_id, state=moved)


async def test_state_is_gone_within_2s_after_client_process_is_killed(
    server: ServerProcess,
) -> None:
    """SIGKILL on the Node client (no goodbye): the peer sees its state go fast."""
    async with pair(server, "aw-kill") as (a, b):
        a_id = client_id(a)
        started = time.monotonic()
        a.proc.kill()
        await b.call("wait_awareness", client_id=a_id, state=None)
        elapsed = time.monotonic() - started
        print(f"state removed {elapsed * 1000:.0f} ms after SIGKILL")
        assert elapsed < scaled(GONE_WITHIN_S)
        assert await a.proc.wait() != 0  # it really was killed, not quit
        assert (await b.call("awareness"))["states"][str(b.client_id)] == BJORN


async def test_joiner_receives_all_current_states_on_connect(
    server: ServerProcess,
) -> None:
    """A third client has both states as soon as it has synced, without waiting."""
    async with (
        pair(server, "aw-joiner") as (a, b),
        JsClient.start(server.url, "aw-joiner") as c,
    ):
        await c.call("wait_synced")
        # The server sends every state right after its sync step 1, so both are
        # there before the sync step 2 that made the client "synced".
        states = (await c.call("awareness"))["states"]
        assert states[str(a.client_id)] == ZOE
        assert states[str(b.client_id)] == BJORN


async def test_query_awareness_is_answered_with_every_state(
    server: ServerProcess,
) -> None:
    """A raw ``0x03`` frame gets one awareness message holding both clients' states."""
    async with (
        pair(server, "aw-query") as (a, b),
        YClient.connect(server.url, "aw-query") as raw,
    ):
        start = len(raw.received)
        await raw.ws.send(b"\x03")
        wanted = {client_id(a): ZOE, client_id(b): BJORN}

        def answered() -> bool:
            for body in awareness_bodies(raw, start):
                states = {cid: json.loads(s) for cid, _, s in decode_update(body)}
                if all(states.get(cid) == st for cid, st in wanted.items()):
                    return True
            return False

        # Relays of live changes carry one client each; only the answer has both.
        await raw.wait(answered, "the answer to query-awareness")


async def test_unrenewed_state_expires_with_awareness_timeout(db_path: Path) -> None:
    """A state set once and never renewed is removed after --awareness-timeout."""
    async with (
        running_server(db_path, "--awareness-timeout", "1") as server,
        JsClient.start(server.url, "aw-expiry") as observer,
        YClient.connect(server.url, "aw-expiry") as stale,
        YClient.connect(server.url, "aw-expiry") as fresh,
    ):
        await observer.call("wait_synced")
        stale_id, fresh_id = 4_000_001, 4_000_002
        started = time.monotonic()
        await stale.set_awareness(stale_id, 1, ZOE)
        await fresh.set_awareness(fresh_id, 1, BJORN)
        await observer.call("wait_awareness", client_id=stale_id, state=ZOE)
        await observer.call("wait_awareness", client_id=fresh_id, state=BJORN)

        async def renew() -> None:
            # Spaces out renewals (well inside the 1 s timeout); not a wait.
            for clock in range(2, 100):
                await asyncio.sleep(0.25)
                await fresh.set_awareness(fresh_id, clock, BJORN)

        renewing = asyncio.create_task(renew())
        try:
            await observer.call("wait_awareness", client_id=stale_id, state=None)
            elapsed = time.monotonic() - started
            print(f"unrenewed state removed after {elapsed:.2f} s")
            assert 1.0 <= elapsed < scaled(3.0)
            # The renewed state survives, and the stale client is still connected
            # (it answers pings; only its state aged out) and was told as well.
            states = (await observer.call("awareness"))["states"]
            assert states.get(str(fresh_id)) == BJORN
            assert str(stale_id) not in states
            await stale.wait(lambda: stale_id not in stale.awareness, "own removal")
            assert stale.awareness.get(fresh_id) == BJORN
            assert stale.close_code is None and stale.closed_by is None
        finally:
            renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewing


async def test_awareness_is_echoed_to_its_sender(server: ServerProcess) -> None:
    """The sender gets its own awareness update back, byte for byte."""
    async with (
        JsClient.start(server.url, "aw-echo") as js,
        YClient.connect(server.url, "aw-echo") as raw,
    ):
        await js.call("wait_synced")
        start = len(raw.received)
        update = awareness_update((5_000_001, 3, ZOE))
        await raw.ws.send(protocol.encode(protocol.Awareness(update)))
        await raw.wait(lambda: update in awareness_bodies(raw, start), "the echo")
        assert raw.awareness[5_000_001] == ZOE
        await js.call("wait_awareness", client_id=5_000_001, state=ZOE)


async def test_client_dropped_without_goodbye_is_seen_again_at_next_renewal(
    server: ServerProcess,
) -> None:
    """After a drop without goodbye, the reconnected client's next renewal counts."""
    # The server's removal must keep the client's clock, as @y/websocket-server
    # does: with clock+1 the renewal below would be ignored by the server and by
    # every y-protocols peer, and the client would stay invisible for ~30 s.
    async with JsClient.start(server.url, "aw-return") as watcher:
        await watcher.call("wait_synced")
        async with YClient.connect(server.url, "aw-return") as gone:
            await gone.set_awareness(6_000_001, 5, ZOE)
            await watcher.call("wait_awareness", client_id=6_000_001, state=ZOE)
            gone.ws.transport.abort()  # the network drops: no goodbye, no close
        await watcher.call("wait_awareness", client_id=6_000_001, state=None)
        async with YClient.connect(server.url, "aw-return") as back:
            # What y-websocket does: re-announce at its clock, then renew (+1).
            await back.set_awareness(6_000_001, 5, ZOE)
            await back.set_awareness(6_000_001, 6, BJORN)
            await watcher.call(
                "wait_awareness", client_id=6_000_001, state=BJORN, timeout_ms=3000
            )
            async with YClient.connect(server.url, "aw-return") as joiner:
                assert joiner.awareness.get(6_000_001) == BJORN
