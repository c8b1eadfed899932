"""Hostile peers that cost CPU or memory with tiny frames, against the shared
server: whole-document requests, peers that never read, half-open handshakes.

A probe times round trips through another room while each attack runs: no
message may keep it waiting more than 250 ms. Memory must come back.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pycrdt import write_var_uint
from websockets.asyncio.client import connect

from tests.hostile import (
    STALL_BOUND,
    Counts,
    MiB,
    assert_survived,
    big_room,
    good_room,
    limit_hits,
    metrics,
    probing,
    rss,
    wait_rss_below,
)
from tests.rawclient import abort, connect_non_reader, open_tcp, upgrade_request
from tests.serverproc import ServerProcess
from tests.timing import scaled
from tests.yclient import stored_content
from ysyncd import protocol


def cpu_seconds(pid: int) -> float:
    """The process's user and system CPU time so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def step1(client: int, clock: int) -> bytes:
    """A sync step 1 message claiming ``client`` is at ``clock``: each one
    asks for a different diff, so no answer can be reused."""
    state = write_var_uint(1) + write_var_uint(client) + write_var_uint(clock)
    return protocol.encode(protocol.SyncStep1(state))


async def test_whole_document_requests_are_coalesced_cached_and_rate_limited(
    hostile: ServerProcess, rooms: Any
) -> None:
    """Eight frames of 32 sync step 1s and 32 query-awarenesses each (the
    most a frame may hold; a few KB in all) against a big document get a
    handful of answers, cost little CPU, and keep another room's round trips
    under 250 ms."""
    assert hostile.proc is not None
    room = rooms("big")
    text = await big_room(hostile, room)
    query = protocol.encode(protocol.QueryAwareness())
    frames = [
        b"".join(step1(9_000 + f, 32 * f + m) + query for m in range(32))
        for f in range(8)
    ]
    assert sum(map(len, frames)) < 8 * 1024
    async with good_room(hostile, rooms("good")) as good:
        async with (
            probing(hostile, rooms("probe")) as probe,
            connect(
                f"{hostile.url}/{room}", max_size=None, compression=None, proxy=None
            ) as attacker,
        ):
            before = cpu_seconds(hostile.proc.pid)
            for frame in frames:
                await attacker.send(frame)
            answers: list[protocol.Message] = []
            # What comes within three seconds: the greeting, then answers.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(scaled(3)):
                    for _ in range(10_000):
                        message = await attacker.recv()
                        assert isinstance(message, bytes)
                        answers += protocol.decode(message)
            spent = cpu_seconds(hostile.proc.pid) - before
        step2s = [m for m in answers if isinstance(m, protocol.SyncStep2)]
        # Four at once, then one every two seconds; before, one per message.
        assert 1 <= len(step2s) <= 6, len(step2s)
        assert spent < 2.0, spent
        assert probe.worst < STALL_BOUND, probe.times
        assert (await stored_content(hostile.url, room))["text"] == text
        await assert_survived(hostile, good)


async def test_peers_that_never_read_are_dropped_and_memory_comes_back(
    hostile: ServerProcess, rooms: Any
) -> None:
    """40 sockets each send a 7-byte sync step 1 to a big room and never read:
    each pins a copy of the document until --drain-timeout (3 s) drops it;
    then the memory is back, and the room and its neighbours never noticed."""
    assert hostile.proc is not None
    pid = hostile.proc.pid
    counts = await Counts.now(hostile)
    room = rooms("big")
    text = await big_room(hostile, room)
    async with good_room(hostile, rooms("good")) as good:
        baseline = rss(pid)
        async with probing(hostile, rooms("probe")) as probe:
            readers = []
            for _ in range(40):
                peer = await connect_non_reader(
                    f"{hostile.url}/{room}", hostile.port, receive_buffer=4096
                )
                await peer.send(protocol.encode(protocol.SyncStep1(b"\x00")))
                readers.append(peer)
            try:
                await counts.wait(
                    lambda grown: grown.get(limit_hits("drain_timeout"), 0) >= 40,
                    "every non-reader dropped",
                )
                await wait_rss_below(
                    pid, baseline + 32 * MiB, "memory back after the drops"
                )
            finally:
                for peer in readers:
                    peer.transport.abort()
        assert probe.worst < STALL_BOUND, probe.times
        assert (await stored_content(hostile.url, room))["text"] == text
        await assert_survived(hostile, good)


async def test_half_open_handshakes_are_capped(
    hostile: ServerProcess, rooms: Any
) -> None:
    """Connections that send half a request and wait are dropped unread past
    --max-handshakes (256); once they go, the server takes clients again."""
    counts = await Counts.now(hostile)
    async with good_room(hostile, rooms("good")) as good:
        writers = []
        try:
            for _ in range(300):
                reader, writer = await open_tcp(hostile.port)
                writer.write(upgrade_request(f"/{rooms('x')}")[:30])
                writers.append((reader, writer))
            # Those over the cap are closed unread, at once; the others wait
            # (until websockets' 10 s open timeout). Even /metrics, a request
            # too, waits for a free slot meanwhile.
            closed = await asyncio.gather(*(_closed_soon(r) for r, _ in writers))
            assert 300 - 256 <= sum(closed) <= 300 - 256 + 8, sum(closed)
            assert not any(closed[:250])
        finally:
            for _, writer in writers:
                abort(writer)
        await wait_for_gauge(hostile, "ysyncd_handshakes", lambda n: n <= 4)
        grown = await counts.delta()
        assert grown[limit_hits("max_handshakes")] >= 300 - 256, grown
        await assert_survived(hostile, good)


async def _closed_soon(reader: asyncio.StreamReader) -> bool:
    """Whether the server closes this connection within two seconds."""
    try:
        async with asyncio.timeout(scaled(2)):
            return await reader.read(1) == b""
    except TimeoutError:
        return False
    except ConnectionError:
        return True


async def wait_for_gauge(
    server: ServerProcess, name: str, condition: Callable[[float], bool]
) -> None:
    """Poll /metrics until the gauge ``name`` satisfies ``condition``."""
    value = None
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(scaled(15)):
            for _ in range(10_000):
                try:
                    value = (await metrics(server))[name]
                except ConnectionError:
                    # Dropped unread: the handshakes the test just aborted
                    # may not all have reached the server yet.
                    value = None
                else:
                    if condition(value):
                        return
                await asyncio.sleep(0.05)  # polling: /metrics has no push
    raise AssertionError(f"{name} is {value}")
