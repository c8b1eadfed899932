"""Soak: thousands of rooms opened and closed leave the server's memory where it was.

``YSYNCD_SOAK_ROOMS`` sets the number of rooms churned after the warm-up (3,000
by default; raise it for a longer run).

The bound on growth comes from measurements on this code (Linux, CPython 3.11,
3,000 rooms, 100 at a time): resident memory grew 2.4-3.1 MiB. Part of that is
SQLite's page caches filling up (bounded, about 2 MiB per connection) and part
is the store's cache of room ids (about 130 bytes per room ever written, kept
for the life of the process); 10,000 rooms grew it by 4.1 MiB. A room left in
memory costs about 11.5 KiB, so 3,000 rooms never freed would add some 34 MiB.
The bound allows 4 MiB plus 0.5 KiB per room (5.5 MiB for 3,000 rooms), about
twice what was measured. It catches small leaks too: the registry once kept a
cancel scope per evicted room (about 1.5 KiB each), which measured +6.2 MiB.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
from pathlib import Path

import pytest

from tests.serverproc import ServerProcess, running_server
from tests.timing import scaled
from tests.yclient import YClient

pytestmark = pytest.mark.slow

ROOMS = int(os.environ.get("YSYNCD_SOAK_ROOMS", "3000"))
WARM_UP_ROOMS = 500
CONCURRENCY = 100
SAMPLE = 50
MiB = 2**20
FIXED_GROWTH_BYTES = 4 * MiB
GROWTH_PER_ROOM_BYTES = 512


def rss_bytes(server: ServerProcess) -> int:
    """The server process's resident set size (VmRSS in /proc/<pid>/status)."""
    assert server.proc is not None
    status = Path(f"/proc/{server.proc.pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB$", status, re.M)
    assert match is not None, status
    return int(match.group(1)) * 1024


async def metrics(server: ServerProcess) -> dict[str, float]:
    """``GET /metrics`` over a raw loopback socket, as ``{name: value}``."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(
            b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
        await writer.drain()
        response = (await reader.read()).decode()
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = response.partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 200"), head
    return {
        name: float(value)
        for name, value in re.findall(r"^(ysyncd_[a-z_]+) (\S+)$", body, re.M)
    }


async def wait_for_eviction(server: ServerProcess, timeout: float = 30) -> None:
    """Wait until the server holds no room and no connection."""
    m: dict[str, float] = {}
    try:
        async with asyncio.timeout(scaled(timeout)):
            while True:
                m = await metrics(server)
                if m["ysyncd_rooms"] == 0 and m["ysyncd_connections"] == 0:
                    return
                await asyncio.sleep(0.05)  # polling: /metrics has no push
    except TimeoutError:
        raise AssertionError(f"rooms not evicted: {m}") from None


def text_for(i: int) -> str:
    return f"room {i} ✓"


async def churn(server: ServerProcess, rooms: range) -> None:
    """Open each room, make one small edit, wait for its echo, close; 100 at once."""
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(i: int) -> None:
        async with gate, YClient.connect(server.url, f"soak/{i}") as client:
            client.text.insert(0, text_for(i))
            await client.wait_confirmed()

    await asyncio.gather(*(one(i) for i in rooms))


async def test_thousands_of_rooms_leave_memory_near_where_it_started(
    db_path: Path,
) -> None:
    """After churning thousands of rooms and evicting them, RSS barely grows."""
    async with running_server(db_path, "--room-idle-seconds", "0") as server:
        await churn(server, range(WARM_UP_ROOMS))
        await wait_for_eviction(server)
        before = rss_bytes(server)

        churned = range(WARM_UP_ROOMS, WARM_UP_ROOMS + ROOMS)
        await churn(server, churned)
        await wait_for_eviction(server)
        after = rss_bytes(server)

        growth = after - before
        allowed = FIXED_GROWTH_BYTES + GROWTH_PER_ROOM_BYTES * ROOMS
        figures = (
            f"RSS {before / MiB:.2f} MiB after {WARM_UP_ROOMS} warm-up rooms, "
            f"{after / MiB:.2f} MiB after {ROOMS} more: "
            f"growth {growth / MiB:+.2f} MiB ({growth / ROOMS:+.0f} B/room), "
            f"allowed {allowed / MiB:.2f} MiB"
        )
        print(figures)
        assert growth < allowed, figures

        # Durability through eviction: rooms come back from the store intact.
        sample = random.Random(ROOMS).sample(churned, min(SAMPLE, ROOMS))
        for i in [0, *sample]:
            async with YClient.connect(server.url, f"soak/{i}") as reader:
                assert reader.content() == {"text": text_for(i), "map": {}, "array": []}
        errors = [ln for ln in server.log if "ERROR" in ln or "Traceback" in ln]
        assert not errors, "".join(errors)
