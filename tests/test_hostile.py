"""Hostile clients against a real ``ysyncd serve``.

Every bad input must get its documented close code or HTTP status, and only the
offending connection may suffer: afterwards the server still serves new clients,
and a room that a healthy client filled before the attack ("good") still holds
exactly its content, as the healthy client sees it and as a fresh client loads it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import json
import random
import sqlite3
import threading
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pycrdt import Array, Doc, Map, Text, write_message, write_var_uint
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.protocol import State

from tests.rawclient import (
    abort,
    connect_non_reader,
    handshake,
    open_tcp,
    process_memory,
    upgrade_request,
)
from tests.serverproc import ServerProcess, running_server
from tests.timing import scaled, wait_until
from tests.vectors import VECTORS
from tests.yclient import YClient, stored_content
from ysyncd import protocol
from ysyncd.awareness import decode_update

T = TypeVar("T")
Content = dict[str, Any]

MiB = 2**20
GOOD = "good"
#: The healthy client's Yjs client ID: fixed, so its document is reproducible.
GOOD_CLIENT_ID = 4242
#: Close codes the server documents for bad input.
BAD_INPUT_CODES = {1002, 1003, 1007, 1008, 1009}


# --- the good room ------------------------------------------------------------


def _fill(text: Text, map_: Map[Any], array: Array[Any]) -> None:
    """The healthy client's edits, one update each."""
    text.insert(0, "hello world")
    map_["k"] = "v"
    map_["n"] = 3
    array.extend([1, 2, "three"])
    map_["nested"] = Map({"x": 1})
    array.append(Array([4, 5]))
    text.insert(5, ",")


def base_doc() -> Doc[Any]:
    """A document holding exactly what the healthy client puts in the good room."""
    doc: Doc[Any] = Doc(client_id=GOOD_CLIENT_ID)
    _fill(
        doc.get("text", type=Text),
        doc.get("map", type=Map),
        doc.get("array", type=Array),
    )
    return doc


BASE_CONTENT: Content = {
    "text": "hello, world",
    "map": {"k": "v", "n": 3.0, "nested": {"x": 1.0}},
    "array": [1.0, 2.0, "three", [4.0, 5.0]],
}


@contextlib.asynccontextmanager
async def good_room(server: ServerProcess) -> AsyncIterator[tuple[YClient, Content]]:
    """A healthy client that filled the good room and stays connected."""
    async with YClient.connect(
        server.url, GOOD, doc=Doc(client_id=GOOD_CLIENT_ID)
    ) as good:
        _fill(good.text, good.map, good.array)
        await good.wait_confirmed()
        expected = good.content()
        assert expected == BASE_CONTENT
        yield good, expected


async def assert_survived(
    server: ServerProcess, good: YClient, expected: Content
) -> None:
    """The server still serves, and the good room holds exactly ``expected``."""
    assert good.content() == expected, "the healthy client's document changed"
    assert await stored_content(server.url, GOOD) == expected
    # The healthy client can still write, and gets its echo.
    good.text.insert(len(good.text), "!")
    await good.wait_confirmed()
    after = {**expected, "text": expected["text"] + "!"}
    assert good.content() == after
    assert await stored_content(server.url, GOOD) == after
    # A brand-new client in a brand-new room connects, writes and syncs.
    async with YClient.connect(server.url, "after-attack") as fresh:
        fresh.map["alive"] = "yes"
        await fresh.wait_confirmed()
    assert (await stored_content(server.url, "after-attack"))["map"] == {"alive": "yes"}
    assert (await http_get(server.http_url + "/healthz"))[0] == 200


# --- HTTP, metrics, close codes -----------------------------------------------


async def http_get(url: str) -> tuple[int, str]:
    """GET ``url`` (loopback); return the status and the body."""

    def get() -> tuple[int, str]:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(url, timeout=scaled(10)) as response:
                return int(response.status), response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    return await asyncio.to_thread(get)


async def metrics(server: ServerProcess) -> dict[str, float]:
    """``/metrics`` as ``{'name{labels}': value}``."""
    status, body = await http_get(server.http_url + "/metrics")
    assert status == 200
    values: dict[str, float] = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


async def wait_for_metrics(
    server: ServerProcess,
    condition: Callable[[dict[str, float]], bool],
    what: str,
    timeout: float = 10,
) -> dict[str, float]:
    """Poll ``/metrics`` until ``condition`` holds; return them."""
    last: dict[str, float] = {}
    try:
        async with asyncio.timeout(scaled(timeout)):
            for _ in range(10_000):
                last = await metrics(server)
                if condition(last):
                    return last
                await asyncio.sleep(0.05)  # polling: /metrics has no push
    except TimeoutError as exc:
        raise AssertionError(f"timed out waiting for {what}; /metrics: {last}") from exc
    raise AssertionError(f"{what} never held in 10,000 polls; /metrics: {last}")


async def wait_for_metric(server: ServerProcess, name: str, expected: float) -> None:
    """Poll ``/metrics`` until ``name`` equals ``expected``."""
    await wait_for_metrics(server, lambda m: m.get(name) == expected, f"{name}")


def limit_hits(limit: str) -> str:
    return f'ysyncd_limit_hits_total{{limit="{limit}"}}'


async def counted_closes(server: ServerProcess) -> dict[str, float]:
    """Closes counted in ``/metrics`` (normal ones left out), once there is one."""

    def abnormal(m: dict[str, float]) -> dict[str, float]:
        return {
            name: value
            for name, value in m.items()
            if name.startswith("ysyncd_closes_total") and '"1000"' not in name
        }

    counted = await wait_for_metrics(
        server, lambda m: bool(abnormal(m)), "a counted close"
    )
    return abnormal(counted)


def closes(code: int) -> str:
    return f'ysyncd_closes_total{{code="{code}"}}'


async def close_code_after(url: str, room: str, *frames: bytes | str) -> int:
    """Send ``frames`` on a new connection; return the code the server closes with."""
    ws = await connect(
        f"{url}/{room}",
        max_size=None,
        compression=None,
        proxy=None,
        open_timeout=scaled(10),
    )
    try:
        async with asyncio.timeout(scaled(15)):
            with contextlib.suppress(ConnectionClosed):
                for frame in frames:
                    await ws.send(frame)
                for _ in range(10_000):
                    await ws.recv()
    except TimeoutError:
        raise AssertionError("the server did not close the connection") from None
    finally:
        if ws.state is not State.CLOSED:
            ws.transport.abort()
    received = ws.protocol.close_rcvd
    assert received is not None, "the connection was dropped without a close frame"
    return received.code


async def wait_closed_by_server(ws: ClientConnection, timeout: float = 15) -> int:
    """Read (and drop) what ``ws`` receives until the server closes it."""
    try:
        async with asyncio.timeout(scaled(timeout)):
            with contextlib.suppress(ConnectionClosed):
                for _ in range(1_000_000):
                    await ws.recv()
    except TimeoutError:
        raise AssertionError("the server did not close the connection") from None
    received = ws.protocol.close_rcvd
    assert received is not None, "the connection was dropped without a close frame"
    return received.code


def awareness_frame(*entries: tuple[int, int, str]) -> bytes:
    """One awareness message with ``(client_id, clock, state_json)`` entries."""
    update = write_var_uint(len(entries))
    for client_id, clock, state in entries:
        update += write_var_uint(client_id) + write_var_uint(clock)
        update += write_message(state.encode())
    return protocol.encode(protocol.Awareness(update))


def awareness_states_seen(client: YClient) -> list[tuple[int, str]]:
    """Every awareness entry ``client`` has received, in order."""
    return [
        (client_id, state)
        for message in client.received
        if isinstance(message, protocol.Awareness)
        for client_id, _clock, state in decode_update(message.update)
    ]


# --- malformed frames ---------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        pytest.param("hello", 1003, id="text-frame"),
        pytest.param(b"", 1002, id="empty-binary-frame"),
        pytest.param(b"\x00\x02\x80", 1002, id="truncated-varuint"),
        pytest.param(
            b"\x00\x02" + write_var_uint(1000) + b"abc", 1002, id="length-over-frame"
        ),
        pytest.param(
            b"\x00\x02" + write_var_uint(2**40) + b"abc", 1002, id="length-2**40"
        ),
        pytest.param(b"\x07", 1003, id="unknown-message-type"),
        pytest.param(b"\x00\x03\x01\x00", 1003, id="unknown-sync-subtype"),
    ],
)
async def test_malformed_frame_closes_only_its_sender(
    server: ServerProcess, frame: bytes | str, code: int
) -> None:
    """A malformed frame in the good room closes its sender with the documented code."""
    async with good_room(server) as (good, expected):
        assert await close_code_after(server.url, GOOD, frame) == code
        await assert_survived(server, good, expected)
        assert await counted_closes(server) == {closes(code): 1}


# --- updates pycrdt refuses ---------------------------------------------------

#: Garbage inside a well-formed sync update message; pycrdt cannot decode it.
GARBAGE_UPDATE = b"\xde\xad\xbe\xef-ysyncd-garbage-\xde\xad\xbe\xef"


async def test_undecodable_update_closes_1007_and_is_neither_stored_nor_relayed(
    server: ServerProcess,
) -> None:
    """Garbage in a sync update closes 1007; it is never stored nor relayed."""
    with pytest.raises(ValueError):
        base_doc().apply_update(GARBAGE_UPDATE)
    async with good_room(server) as (good, expected):
        frame = protocol.encode_update(GARBAGE_UPDATE)
        assert await close_code_after(server.url, GOOD, frame) == 1007
        await assert_survived(server, good, expected)
        assert await counted_closes(server) == {closes(1007): 1}
        # The survival check's echo came after any relay of the garbage would have.
        relayed = [
            m
            for m in good.received
            if isinstance(m, protocol.Update | protocol.SyncStep2)
            and GARBAGE_UPDATE in m.update
        ]
        assert relayed == []
        final = good.content()
    with contextlib.closing(sqlite3.connect(server.db)) as db:
        (stored,) = db.execute(
            "SELECT count(*) FROM updates WHERE instr(data, ?) > 0", (GARBAGE_UPDATE,)
        ).fetchone()
        (snapshots,) = db.execute(
            "SELECT count(*) FROM rooms WHERE instr(snapshot, ?) > 0",
            (GARBAGE_UPDATE,),
        ).fetchone()
    assert (stored, snapshots) == (0, 0)
    await server.restart()
    assert await stored_content(server.url, GOOD) == final


@functools.cache
def tainting_update() -> bytes:
    """A corrupted copy of the good room's update that fails half-way through.

    Flip 1-3 bytes of the base document's update (seeded, so the pick is always
    the same) until pycrdt, applying it on top of the base content, raises the
    RuntimeError of an update that was decoded fine but cannot be integrated.
    """
    base = base_doc().get_update()
    rng = random.Random(20240611)
    for _ in range(200_000):
        candidate = bytearray(base)
        for _ in range(rng.randint(1, 3)):
            candidate[rng.randrange(len(candidate))] = rng.randrange(256)
        try:
            base_doc().apply_update(bytes(candidate))
        except RuntimeError as exc:
            if "must be deleted or shared ref type" in str(exc):
                return bytes(candidate)
        except ValueError:
            continue
    raise AssertionError("no corrupted update fails half-way through integration")


async def test_update_failing_half_way_closes_1007_and_room_is_rebuilt(
    server: ServerProcess,
) -> None:
    """An update that breaks during integration closes 1007; the room is rebuilt."""
    update = tainting_update()
    with pytest.raises(RuntimeError, match="must be deleted or shared ref type"):
        base_doc().apply_update(update)
    async with (
        good_room(server) as (good, expected),
        YClient.connect(server.url, GOOD) as other,
    ):
        assert other.content() == expected
        frame = protocol.encode_update(update)
        assert await close_code_after(server.url, GOOD, frame) == 1007
        await wait_until(
            lambda: any(f"room '{GOOD}' rebuilt" in line for line in server.log),
            "the room to be rebuilt",
        )
        # The second peer of the room keeps working too.
        other.array.append("from the other peer")
        await other.wait_confirmed()
        await good.wait(
            lambda: good.content()["array"][-1] == "from the other peer",
            "the other peer's edit",
        )
        expected = {**expected, "array": [*expected["array"], "from the other peer"]}
        assert other.content() == expected
        await assert_survived(server, good, expected)
        assert await counted_closes(server) == {closes(1007): 1}


# --- sizes --------------------------------------------------------------------


async def test_64_mib_message_closes_1009_without_being_buffered(
    server: ServerProcess,
) -> None:
    """A 64 MiB frame closes 1009 and never sits in the server's memory."""
    assert server.proc is not None
    pid = server.proc.pid
    async with good_room(server) as (good, expected):
        rss_before, _ = process_memory(pid)
        size = 64 * MiB
        frame = b"\x00\x02" + write_var_uint(size) + bytes(size)
        assert await close_code_after(server.url, GOOD, frame) == 1009
        _, peak = process_memory(pid)
        assert peak - rss_before < 16 * MiB, (rss_before, peak)
        await assert_survived(server, good, expected)
        assert await counted_closes(server) == {closes(1009): 1}


async def test_awareness_state_over_the_byte_limit_closes_1009(
    server: ServerProcess,
) -> None:
    """An awareness state of 65536 UTF-8 bytes is relayed; one more closes 1009."""
    async with (
        good_room(server) as (good, expected),
        YClient.connect(server.url, GOOD) as attacker,
    ):
        # Two UTF-8 bytes per character: the limit counts bytes, not characters.
        fits = json.dumps({"blob": "é" * 32762}, ensure_ascii=False)
        too_big = json.dumps({"blob": "é" * 32762 + "x"}, ensure_ascii=False)
        assert (len(fits.encode()), len(too_big.encode())) == (65536, 65537)
        assert len(too_big) < 40_000
        await attacker.ws.send(awareness_frame((777, 1, fits)))
        await good.wait(lambda: 777 in good.awareness, "the state at the limit")
        await attacker.ws.send(awareness_frame((777, 2, too_big)))
        assert await attacker.wait_closed() == 1009
        await good.wait(lambda: 777 not in good.awareness, "the state's removal")
        assert (777, too_big) not in awareness_states_seen(good)
        await assert_survived(server, good, expected)
        assert await counted_closes(server) == {closes(1009): 1}


# --- awareness policy ---------------------------------------------------------


async def test_seventeenth_awareness_client_closes_1008(
    server: ServerProcess,
) -> None:
    """A connection may control 16 awareness client IDs; the 17th closes it 1008."""
    async with (
        good_room(server) as (good, expected),
        YClient.connect(server.url, GOOD) as attacker,
    ):
        ids = range(1000, 1016)
        await attacker.ws.send(awareness_frame(*((i, 1, "{}") for i in ids)))
        await good.wait(lambda: all(i in good.awareness for i in ids), "16 states")
        await attacker.ws.send(awareness_frame((1016, 1, "{}")))
        assert await attacker.wait_closed() == 1008
        await good.wait(lambda: not good.awareness, "removal of every state")
        # The 17th state was never relayed (only, harmlessly, its removal).
        assert (1016, "{}") not in awareness_states_seen(good)
        await assert_survived(server, good, expected)
        assert await counted_closes(server) == {closes(1008): 1}


async def test_awareness_flood_closes_1008(server: ServerProcess) -> None:
    """256 awareness updates in a burst are merged; a flood over 300/s closes 1008."""
    per_frame = protocol.MAX_MESSAGES_PER_FRAME

    def burst(first_clock: int, frames: int) -> list[bytes]:
        return [
            awareness_frame((888, clock, json.dumps({"clock": clock})))
            for clock in range(first_clock, first_clock + frames * per_frame)
        ]

    def pack(messages: list[bytes]) -> list[bytes]:
        """Put up to 64 messages in each frame, as a batching client may."""
        return [
            b"".join(messages[i : i + per_frame])
            for i in range(0, len(messages), per_frame)
        ]

    async with (
        good_room(server) as (good, expected),
        YClient.connect(server.url, GOOD) as attacker,
    ):
        # 256 updates at once: under 10 x 30/s, so merged and relayed, not closed.
        for frame in pack(burst(1, 4)):
            await attacker.ws.send(frame)
        await good.wait(
            lambda: good.awareness.get(888) == {"clock": 256}, "the merged state"
        )
        # 448 more at once: over 10 x 30 within one second, a flood.
        for frame in pack(burst(257, 7)):
            with contextlib.suppress(ConnectionClosed):
                await attacker.ws.send(frame)
        assert await attacker.wait_closed() == 1008
        await good.wait(lambda: 888 not in good.awareness, "the flooder's removal")
        await assert_survived(server, good, expected)
        assert await counted_closes(server) == {closes(1008): 1}


# --- a peer that never reads --------------------------------------------------


async def test_peer_that_never_reads_is_dropped_1013_and_room_keeps_flowing(
    db_path: Path,
) -> None:
    """A non-reading peer is closed 1013; its room's other peers miss nothing."""
    args = (
        "--send-buffer-bytes",
        "65536",
        "--sqlite-synchronous",
        "normal",
        "--compact-after",
        "100000",
        "--close-timeout",
        "60",
    )
    chunk = "z" * (256 * 1024)
    async with (
        running_server(db_path, *args) as server,
        good_room(server) as (good, expected),
        YClient.connect(server.url, "busy") as writer,
        YClient.connect(server.url, "busy") as watcher,
    ):
        assert server.proc is not None
        pid = server.proc.pid
        slow = await connect_non_reader(f"{server.url}/busy", server.port)
        try:
            rss_before, _ = process_memory(pid)

            async def round_trip(i: int) -> None:
                # 256 KiB on the wire each round, but the document keeps only
                # one character: deleted text is garbage-collected.
                writer.text.insert(0, chunk)
                del writer.text[0 : len(chunk)]
                writer.text.insert(len(writer.text), str(i % 10))
                await writer.wait_confirmed()
                await watcher.wait(
                    lambda: watcher.doc.get_state() == writer.doc.get_state(),
                    f"round {i} at the watcher",
                    timeout=5,
                )
                assert watcher.content() == writer.content()

            rounds = 0
            for rounds in range(1, 201):
                await round_trip(rounds)
                if rounds % 5 == 0:
                    hits = (await metrics(server)).get(limit_hits("send_buffer_bytes"))
                    if hits == 1:
                        break
            else:
                raise AssertionError("the non-reading peer was never dropped")
            # Another 48 MiB through the room: none of it may pile up for the
            # dropped peer.
            for i in range(rounds + 1, rounds + 193):
                await round_trip(i)
            _, peak = process_memory(pid)
            assert peak - rss_before < 32 * MiB, (rss_before, peak)
            # Reading again, the dropped peer finds the server's 1013 close frame.
            slow.transport.resume_reading()
            assert await wait_closed_by_server(slow) == 1013
        finally:
            if slow.state is not State.CLOSED:
                slow.transport.abort()
        assert await counted_closes(server) == {closes(1013): 1}
        assert (await metrics(server))[limit_hits("send_buffer_bytes")] == 1
        assert await stored_content(server.url, "busy") == writer.content()
        await assert_survived(server, good, expected)


# --- connection churn ---------------------------------------------------------


#: Rooms the churn spreads over; several of them are first loaded concurrently.
CHURN_ROOMS = 7


async def _churn(server: ServerProcess, i: int) -> str:
    """One short-lived connection of kind ``i % 6``; return how it went."""
    path = f"/{GOOD}" if i % 3 == 0 else f"/churn-{i % CHURN_ROOMS}"
    kind = i % 6
    if kind == 5:  # a well-behaved client that leaves at once
        try:
            async with connect(
                server.url + path, compression=None, proxy=None, open_timeout=scaled(10)
            ) as ws:
                await ws.send(protocol.encode(protocol.SyncStep1(b"\x00")))
        except InvalidStatus as exc:
            return f"refused {exc.response.status_code}"
        return "closed cleanly"
    if kind in (3, 4):  # gone right after the 101: FIN, or RST
        reader, writer, status = await handshake(server.port, path)
        if not status.startswith(b"HTTP/1.1 101"):
            abort(writer)
            return f"refused {status.split()[1].decode()}"
        if kind == 3:  # end the stream without a close frame; the server follows
            writer.write_eof()
            async with asyncio.timeout(scaled(10)):
                await reader.read()
        abort(writer, reset=kind == 4)
        return "dropped after the 101"
    _, writer = await open_tcp(server.port)
    if kind == 1:  # half a request line
        writer.write(upgrade_request(path)[:20])
    elif kind == 2:  # a whole request, then gone before the response
        writer.write(upgrade_request(path))
    with contextlib.suppress(ConnectionError):
        await writer.drain()
    abort(writer, reset=kind == 2)
    return "dropped mid-handshake"


async def test_rapid_connects_and_disconnects_leave_the_server_serving(
    db_path: Path,
) -> None:
    """500 connections cut at every stage of their life leave the server healthy."""
    capacity = 64
    async with (
        running_server(db_path, "--max-connections", str(capacity)) as server,
        good_room(server) as (good, expected),
    ):
        gate = asyncio.Semaphore(16)

        async def one(i: int) -> str:
            async with gate:
                try:
                    return await _churn(server, i)
                except OSError as exc:  # refused, reset: is the server still up?
                    assert server.proc is not None
                    code = server.proc.returncode
                    return f"{type(exc).__name__} (ysyncd exit code {code})"

        async with asyncio.timeout(scaled(60)):
            outcomes = Counter(await asyncio.gather(*(one(i) for i in range(500))))
        # The server counts a connection until it has read its EOF, so under
        # churn a few handshakes may meet the connection limit (503); never
        # anything else.
        assert set(outcomes) <= {
            "closed cleanly",
            "dropped after the 101",
            "dropped mid-handshake",
            "refused 503",
        }, (outcomes, "".join(server.log[-3:]))
        cut_early = sum(1 for i in range(500) if i % 6 < 3)
        assert outcomes["dropped mid-handshake"] == cut_early, outcomes
        await wait_for_metric(server, "ysyncd_connections", 1)
        # No slot leaked: all but the healthy client's are free again.
        writers: list[asyncio.StreamWriter] = []
        try:
            for i in range(capacity - 1):
                _, writer, status = await handshake(server.port, "/capacity")
                writers.append(writer)
                assert status.startswith(b"HTTP/1.1 101"), (i, status)
            _, writer, status = await handshake(server.port, "/capacity")
            writers.append(writer)
            assert status.startswith(b"HTTP/1.1 503"), status
        finally:
            for writer in writers:
                abort(writer)
        await wait_for_metric(server, "ysyncd_connections", 1)
        await assert_survived(server, good, expected)


# --- limits before the upgrade ------------------------------------------------


@dataclass(frozen=True)
class LimitCase:
    limit: str
    option: str
    value: int
    held: tuple[str, ...]  # rooms of the peers that fill the limit
    refused: tuple[str, ...]  # rooms each further connection asks for
    admitted: tuple[str, ...]  # rooms still open to one more peer at the limit


LIMIT_CASES = [
    LimitCase("max_rooms", "--max-rooms", 3, ("r1", "r2"), ("r3", "r4", "r5"), ("r1",)),
    LimitCase(
        "max_peers_per_room",
        "--max-peers-per-room",
        2,
        (GOOD,),
        (GOOD, GOOD, GOOD),
        ("elsewhere",),
    ),
    LimitCase(
        "max_connections", "--max-connections", 3, ("r1", "r2"), (GOOD, "r1", "r9"), ()
    ),
]


@pytest.mark.parametrize("case", LIMIT_CASES, ids=[c.limit for c in LIMIT_CASES])
async def test_limits_refuse_with_503_before_the_upgrade(
    db_path: Path, case: LimitCase
) -> None:
    """Past a room, peer or connection limit: HTTP 503, counted, logged once."""
    args = (case.option, str(case.value), "--room-idle-seconds", "0")
    async with (
        running_server(db_path, *args) as server,
        good_room(server) as (good, expected),
    ):
        async with contextlib.AsyncExitStack() as held:
            for room in case.held:
                await held.enter_async_context(YClient.connect(server.url, room))
            for room in case.refused:
                with pytest.raises(InvalidStatus) as refused:
                    async with connect(
                        f"{server.url}/{room}", proxy=None, open_timeout=scaled(10)
                    ):
                        pass
                assert refused.value.response.status_code == 503
                assert refused.value.response.body == f"{case.limit}\n".encode()
            for room in case.admitted:
                async with YClient.connect(server.url, room):
                    pass
        assert (await metrics(server))[limit_hits(case.limit)] == len(case.refused)
        await wait_for_metric(server, "ysyncd_connections", 1)
        await wait_for_metric(server, "ysyncd_rooms", 1)
        await assert_survived(server, good, expected)
        # The survival check loaded a new room; once its log line is in, every
        # earlier line is too.
        await wait_until(
            lambda: any("room 'after-attack' loaded" in line for line in server.log),
            "the server log",
        )
        hit_lines = [line for line in server.log if f"limit {case.limit} hit" in line]
        assert len(hit_lines) == 1, hit_lines


async def test_room_name_over_the_byte_limit_gets_400(db_path: Path) -> None:
    """Room names are limited in UTF-8 bytes: 64 fit, 65 or more get HTTP 400."""
    async with (
        running_server(db_path, "--max-room-name-bytes", "64") as server,
        good_room(server) as (good, expected),
    ):
        at_limit = quote("é" * 32)  # 32 characters, 64 bytes
        async with YClient.connect(server.url, at_limit) as client:
            client.text.insert(0, "fits")
            await client.wait_confirmed()
        assert (await stored_content(server.url, at_limit))["text"] == "fits"
        for name in ("x" * 65, quote("é" * 33), quote("日" * 22)):
            with pytest.raises(InvalidStatus) as refused:
                async with connect(
                    f"{server.url}/{name}", proxy=None, open_timeout=scaled(10)
                ):
                    pass
            assert refused.value.response.status_code == 400
        assert (await metrics(server))[limit_hits("room_name")] == 3
        await assert_survived(server, good, expected)


# --- fuzzing ------------------------------------------------------------------

GOLDEN_FRAMES = [vector.frame for vector in VECTORS]
LENGTHS = [0, 1, 2, 127, 128, 1000, 2**31, 2**40, 2**53 - 1, 2**53, 2**63]


def _var_uint(value: int) -> bytes:
    """lib0's varUint, for any size (pycrdt's encoder stops at 64 bits)."""
    out = bytearray()
    while value >= 0x80:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    out.append(value)
    return bytes(out)


def _relength(frame: bytes, length: int) -> bytes:
    """Replace the first message's length prefix (sync or awareness) by ``length``."""
    head = 2 if frame[:1] == b"\x00" else 1
    pos = head
    while pos < len(frame) and frame[pos] & 0x80:
        pos += 1
    return frame[:head] + _var_uint(length) + frame[pos + 1 :]


@st.composite
def mutated_frames(draw: st.DrawFn) -> bytes:
    """A golden frame from the real JS client, with a few bytes changed."""
    frame = bytearray(draw(st.sampled_from(GOLDEN_FRAMES)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "length", "truncate"]))
        if op == "length":
            length = draw(st.sampled_from(LENGTHS) | st.integers(0, 300))
            frame = bytearray(_relength(bytes(frame), length))
        elif op == "insert":
            at = draw(st.integers(0, len(frame)))
            frame[at:at] = draw(st.binary(min_size=1, max_size=4))
        elif not frame:
            continue
        elif op == "flip":
            at = draw(st.integers(0, len(frame) - 1))
            frame[at] ^= draw(st.integers(1, 255))
        elif op == "delete":
            del frame[draw(st.integers(0, len(frame) - 1))]
        else:
            frame = frame[: draw(st.integers(0, len(frame) - 1))]
    return bytes(frame)


FUZZ_FRAMES: st.SearchStrategy[bytes | str] = st.one_of(
    mutated_frames(),
    st.sampled_from(GOLDEN_FRAMES),
    st.binary(max_size=64),
    st.builds(
        lambda kind, rest: bytes([kind]) + rest,
        st.integers(0, 9),
        st.binary(max_size=32),
    ),
    st.lists(mutated_frames(), min_size=2, max_size=3).map(b"".join),
    st.text(max_size=16),
)


class LoopThread:
    """An asyncio event loop in a thread of its own, driven from synchronous code."""

    def __init__(self) -> None:
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="fuzz-loop")

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._ready.set()
        await self._stop.wait()

    def __enter__(self) -> LoopThread:
        self._thread.start()
        assert self._ready.wait(scaled(10)), "the event loop did not start"
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(scaled(30))
        assert not self._thread.is_alive(), "the event loop did not stop"

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Start ``coro`` in the loop without waiting for it."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def call(self, callback: Callable[[], object]) -> None:
        """Call ``callback`` in the loop's thread."""
        assert self._loop is not None
        self._loop.call_soon_threadsafe(callback)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        """Run ``coro`` in the loop and wait (from this thread) for its result."""
        assert self._loop is not None
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(scaled(timeout))
        except TimeoutError:
            future.cancel()
            raise AssertionError(f"timed out after {timeout} s") from None


async def send_fuzz(url: str, frames: list[bytes | str], probe: int) -> int | None:
    """Send ``frames`` to room "fuzz"; return the close code, or None if still open.

    An awareness state sent last (and relayed back to its sender) shows that the
    server has handled every frame before it and kept the connection.
    """
    probe_state = json.dumps({"probe": probe})
    async with connect(
        f"{url}/fuzz",
        max_size=None,
        compression=None,
        proxy=None,
        open_timeout=scaled(10),
    ) as ws:
        try:
            async with asyncio.timeout(scaled(10)):
                with contextlib.suppress(ConnectionClosed):
                    for frame in frames:
                        await ws.send(frame)
                    await ws.send(awareness_frame((2**40 + probe, 1, probe_state)))
                    for _ in range(10_000):
                        message = await ws.recv()
                        assert isinstance(message, bytes)
                        for m in protocol.decode(message):
                            if isinstance(m, protocol.Awareness) and (
                                (2**40 + probe, 1, probe_state)
                                in decode_update(m.update)
                            ):
                                return None
        except TimeoutError:
            raise AssertionError(
                "no close and no probe echo: the server hangs"
            ) from None
    received = ws.protocol.close_rcvd
    assert received is not None, "dropped without a close frame"
    return received.code


async def keep_editing(good: YClient, stop: asyncio.Event) -> int:
    """Append digits to the good room's text, one echoed edit at a time."""
    for i in range(100_000):
        if stop.is_set():
            return i
        good.text.insert(len(good.text), str(i % 10))
        await good.wait_confirmed()
    raise AssertionError("the healthy client was never told to stop")


def test_fuzzed_frames_never_hurt_the_server_or_other_rooms(tmp_path: Path) -> None:
    """Random and mutated frames close only their sender; a busy room stays exact."""
    # Hypothesis calls its test function synchronously, once per example. An
    # async test under @given would run each example as a separate trip into the
    # event loop (via pytest-asyncio internals), and the healthy client's edits
    # would stall whenever Hypothesis is generating. So this test is synchronous:
    # the server, the healthy client and every example's connection live in one
    # event loop in a thread of its own, which keeps running between examples;
    # each example hands a coroutine to that loop and waits for its result, with
    # a timeout.
    outcomes: Counter[int | None] = Counter()
    with LoopThread() as bg:
        stack = contextlib.AsyncExitStack()
        stop = asyncio.Event()
        try:
            server = bg.run(
                stack.enter_async_context(running_server(tmp_path / "f.db"))
            )
            good, expected = bg.run(stack.enter_async_context(good_room(server)))
            editing = bg.submit(keep_editing(good, stop))
            probes = iter(range(1_000_000))

            @settings(
                max_examples=200,
                deadline=None,
                database=None,
                suppress_health_check=[HealthCheck.too_slow],
            )
            @given(st.lists(FUZZ_FRAMES, min_size=1, max_size=3))
            @example([GOLDEN_FRAMES[0]])  # accepted: the probe comes back
            @example([b"\x00\x02\x05\x01"])  # refused: 1002
            def fuzz(frames: list[bytes | str]) -> None:
                code = bg.run(send_fuzz(server.url, frames, next(probes)))
                assert code is None or code in BAD_INPUT_CODES, code
                outcomes[code] += 1

            fuzz()
            bg.call(stop.set)
            edits = editing.result(scaled(30))
            expected = {
                **expected,
                "text": expected["text"] + "".join(str(i % 10) for i in range(edits)),
            }
            assert edits > 0
            assert outcomes[None] > 0 and outcomes[1002] > 0, outcomes
            bg.run(assert_survived(server, good, expected))
        finally:
            bg.call(stop.set)
            bg.run(stack.aclose())
