"""Hostile updates against the shared server: valid in structure, extreme in
content or in cost.

Each attack gets its documented close code, nothing it sent is stored, other
rooms keep their latency (a probe times round trips through another room
while it runs), and the process is the same one at the end (the ``hostile``
fixture checks that after the last test).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import sqlite3
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from pycrdt import Doc, Text
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from tests.hostile import (
    BAD_INPUT_CODES,
    STALL_BOUND,
    Counts,
    LoopThread,
    MiB,
    assert_survived,
    big_room,
    close_code_after,
    good_room,
    limit_hits,
    probing,
    send_fuzz,
)
from tests.jsclient import JsClient, require_node
from tests.serverproc import ServerProcess
from tests.timing import scaled, wait_until
from tests.yclient import YClient, stored_content
from tests.yjs_updates import (
    deep_any_update,
    deep_embed_update,
    deep_format_update,
    delete_every_other,
    nested_maps_update,
    updates,
)
from ysyncd import protocol

REPO = Path(__file__).resolve().parents[1]
WRITER = 99_001


async def text_room(server: ServerProcess, room: str, chars: int) -> None:
    """``room`` holding ``chars`` characters typed by client WRITER."""
    doc: Doc[Any] = Doc(client_id=WRITER)
    doc.get("text", type=Text).insert(0, "x" * chars)
    async with YClient.connect(server.url, room, doc=doc) as writer:
        await writer.wait_confirmed(timeout=60)
        assert len(writer.text) == chars


# --- what one update costs -----------------------------------------------------


async def test_an_update_too_costly_to_apply_is_undone_and_closes_1008(
    hostile: ServerProcess, rooms: Any
) -> None:
    """Deleting every other character of a 600,000-character text in one
    update (1.2 MB, 300,000 ranges) costs more than its size allows: it is
    undone, nothing is stored, its sender is closed with 1008, and another
    room's round trips stay under 250 ms all the while."""
    counts = await Counts.now(hostile)
    big = rooms("big")
    await text_room(hostile, big, 600_000)
    attack = delete_every_other(WRITER, 300_000)
    assert len(attack) > MiB
    async with good_room(hostile, rooms("good")) as good:
        async with probing(hostile, rooms("probe")) as probe:
            code = await close_code_after(
                hostile.url, big, protocol.encode_update(attack)
            )
        assert code == 1008
        assert probe.worst < STALL_BOUND, probe.times
        assert len(probe.times) > 10
        text = (await stored_content(hostile.url, big))["text"]
        assert text == "x" * 600_000
        await assert_survived(hostile, good)
    grown = await counts.delta()
    assert grown[limit_hits("apply_budget")] == 1


@pytest.mark.interop
async def test_a_real_client_with_a_big_delete_set_syncs_and_resyncs(
    hostile: ServerProcess, rooms: Any
) -> None:
    """The real y-websocket client deletes every other character of a
    40,000-character text in one transaction, then reconnects: its sync step
    2 carries the whole delete set (20,000 ranges) again. Both go through,
    other rooms keep their latency, and every client sees the same text."""
    require_node()
    room = rooms("doc")
    async with JsClient.start(hostile.url, room) as js:
        await js.call("wait_synced")
        await js.call("insert_text", index=0, text="ab" * 20_000)
        await js.call("wait_confirmed", timeout_ms=60_000)
        async with probing(hostile, rooms("probe")) as probe:
            await js.call("delete_every_other", timeout_ms=60_000)
            await js.call("wait_confirmed", timeout_ms=60_000)
            await js.call("disconnect")
            await js.call("connect")
            await js.call("wait_synced", timeout_ms=60_000)
            await js.call("wait_confirmed", timeout_ms=60_000)
        assert probe.worst < STALL_BOUND, probe.times
        status = await js.call("status")
        assert status["connected"], status
    assert (await stored_content(hostile.url, room))["text"] == "a" * 20_000


async def test_compacting_and_loading_a_big_room_never_stalls_other_rooms(
    hostile: ServerProcess, rooms: Any
) -> None:
    """A room of 1,200,000 structs (each one pycrdt call to build or encode
    holds the GIL for about half a second) and 1,000 more rows is compacted
    in the background, evicted and loaded cold again: other rooms' round
    trips stay under 250 ms meanwhile."""
    room = rooms("big")
    async with probing(hostile, rooms("probe")) as probe:
        text = await big_room(hostile, room, structs=1_200_000)
        # Its sync step 2 carries 1.2M structs, built in the worker process.
        async with YClient.connect(hostile.url, room, sync_timeout=60) as writer:
            for i in range(1_000):
                writer.text.insert(len(writer.text), str(i % 10))
            await writer.wait_confirmed(timeout=60)
            expected = writer.content()
        assert expected["text"] == text + "".join(str(i % 10) for i in range(1_000))
        await wait_until(
            lambda: any(f"compacted room '{room}'" in line for line in hostile.log),
            "the compaction",
            timeout=120,
        )
        await wait_until(
            lambda: any(f"room '{room}' evicted" in line for line in hostile.log),
            "the eviction",
            timeout=30,
        )
        assert await stored_content(hostile.url, room) == expected
    assert probe.worst < STALL_BOUND, probe.times


async def _drain(ws: ClientConnection) -> None:
    with contextlib.suppress(ConnectionClosed):
        async for _ in ws:
            continue


# --- updates that add nothing -------------------------------------------------


async def test_updates_that_add_nothing_are_neither_stored_nor_relayed(
    hostile: ServerProcess, rooms: Any
) -> None:
    """examples/client.py (pycrdt's Provider, which sends back all it
    receives) reading a room, and a client resending an update the room has,
    add no row to the log and send nothing to the room's other peers."""
    room = rooms("doc")
    async with YClient.connect(hostile.url, room) as writer:
        writer.text.insert(0, "hello")
        writer.map["k"] = "v"
        del writer.text[0:1]
        await writer.wait_confirmed()
        known = writer.doc.get_update()
        expected = writer.content()
    rows_before = _stored(hostile.db, room)
    async with YClient.connect(hostile.url, room) as watcher:
        for _ in range(3):
            result = await asyncio.create_subprocess_exec(
                sys.executable,
                str(REPO / "examples" / "client.py"),
                f"{hostile.url}/{room}",
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            out, err = await asyncio.wait_for(result.communicate(), scaled(30))
            assert result.returncode == 0, err
            assert out.decode().strip() == "ello"
        async with YClient.connect(hostile.url, room) as resender:
            await resender.ws.send(protocol.encode_update(known))
            resender.text.insert(0, "!")  # one real edit, to mark the end
            await resender.wait_confirmed()
        await watcher.wait(lambda: str(watcher.text) == "!ello", "the real edit")
        relayed = [m for m in watcher.received if isinstance(m, protocol.Update)]
        assert len(relayed) == 1, relayed  # the real edit only
    assert (await stored_content(hostile.url, room)) == {**expected, "text": "!ello"}
    rows_after = _stored(hostile.db, room)
    assert len(rows_after) == len(rows_before) + 1, (rows_before, rows_after)


def _stored(db: Path, room: str) -> list[bytes]:
    """The room's stored log rows (read-only, beside the running server)."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        rows = conn.execute(
            "SELECT u.data FROM updates AS u JOIN rooms AS r ON r.id = u.room_id "
            "WHERE r.name = ? ORDER BY u.id",
            (room,),
        ).fetchall()
    return [bytes(data) for (data,) in rows]


# --- nesting that would crash pycrdt ------------------------------------------


@pytest.mark.parametrize(
    ("update", "what"),
    [
        pytest.param(lambda: deep_any_update(100_000), "any", id="any-100000"),
        pytest.param(lambda: deep_any_update(30_000), "any", id="any-30000"),
        pytest.param(lambda: deep_embed_update(5_000), "json", id="embed-5000"),
        pytest.param(lambda: deep_format_update(5_000), "json", id="format-5000"),
        pytest.param(lambda: nested_maps_update(1_000), "types", id="maps-1000"),
    ],
)
async def test_deep_nesting_closes_1008_and_never_reaches_pycrdt(
    hostile: ServerProcess, rooms: Any, update: Any, what: str
) -> None:
    """An update nesting Any values, JSON or shared types deeper than 64
    (a 200 KB one segfaulted pycrdt) closes 1008; nothing is stored, and the
    process serves on."""
    counts = await Counts.now(hostile)
    data = update()
    async with good_room(hostile, rooms("good")) as good:
        room = rooms("deep")
        code = await close_code_after(hostile.url, room, protocol.encode_update(data))
        assert code == 1008
        assert _stored(hostile.db, room) == []
        await assert_survived(hostile, good)
    assert (await counts.closes()) == {'ysyncd_closes_total{code="1008"}': 1}
    assert hostile.proc is not None and hostile.proc.returncode is None


# --- the structure-aware fuzz test -----------------------------------------

#: Drawn updates per run; set YSYNCD_FUZZ_EXAMPLES for a longer one.
FUZZ_EXAMPLES = int(os.environ.get("YSYNCD_FUZZ_EXAMPLES", "60"))


def test_structure_aware_fuzz_never_ends_the_server_or_hurts_a_canary(
    hostile: ServerProcess, rooms: Any
) -> None:
    """Updates valid in structure and extreme in content (nesting, counts,
    lengths, delete sets, client ids, clocks) each get applied or a
    documented close; a canary room that keeps editing stays exact."""
    outcomes: dict[int | None, int] = {}
    fuzz_rooms = itertools.cycle([rooms(f"fuzz-{i}") for i in range(4)])
    probes = itertools.count()
    with LoopThread() as bg:
        stack = contextlib.AsyncExitStack()
        good = bg.run(stack.enter_async_context(good_room(hostile, rooms("canary"))))
        try:

            @settings(
                max_examples=FUZZ_EXAMPLES,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            @given(updates(max_bytes=MiB))
            @example(deep_any_update(100_000))
            @example(delete_every_other(7, 50_000))
            def fuzz(update: bytes) -> None:
                frames: list[bytes | str] = [protocol.encode_update(update)]
                room, probe = next(fuzz_rooms), next(probes)
                code = bg.run(
                    send_fuzz(hostile.url, room, frames, probe, timeout=60),
                    timeout=120,
                )
                assert code is None or code in BAD_INPUT_CODES, code
                outcomes[code] = outcomes.get(code, 0) + 1

            fuzz()
            assert hostile.proc is not None and hostile.proc.returncode is None
            bg.run(assert_survived(hostile, good))
        finally:
            bg.run(stack.aclose())
    assert sum(outcomes.values()) >= 2, outcomes
