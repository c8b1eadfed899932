"""Limits that need server settings of their own, each against its own server.

The hostile tests share one server (tests/hostile.py) with one set of
settings; these need other ones (a few rooms, peers or connections at most, a
short room name limit), so each starts its own ``ysyncd serve``, attacks it as
a hostile test would, and checks that the process is still running at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.hostile import (
    assert_survived,
    churn,
    good_room,
    limit_hits,
    metrics,
    wait_for_metric,
)
from tests.rawclient import abort, handshake
from tests.serverproc import ServerProcess, running_server
from tests.timing import scaled, wait_until
from tests.yclient import YClient, stored_content


def assert_running(server: ServerProcess) -> None:
    """The server process is still the one that started, and still running."""
    assert server.proc is not None
    assert server.proc.returncode is None, "".join(server.log[-40:])


# --- limits before the upgrade ------------------------------------------------

#: The good room, in a limit case's room lists.
GOOD = "good"


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
    db_path: Path, rooms: Callable[[str], str], case: LimitCase
) -> None:
    """Past a room, peer or connection limit: HTTP 503, counted, logged once."""
    args = (case.option, str(case.value), "--room-idle-seconds", "0")
    async with (
        running_server(db_path, *args) as server,
        good_room(server, rooms(GOOD)) as good,
    ):
        async with contextlib.AsyncExitStack() as held:
            for name in case.held:
                await held.enter_async_context(YClient.connect(server.url, rooms(name)))
            for name in case.refused:
                with pytest.raises(InvalidStatus) as refused:
                    async with connect(
                        f"{server.url}/{rooms(name)}",
                        proxy=None,
                        open_timeout=scaled(10),
                    ):
                        pass
                assert refused.value.response.status_code == 503
                assert refused.value.response.body == f"{case.limit}\n".encode()
            for name in case.admitted:
                async with YClient.connect(server.url, rooms(name)):
                    pass
        assert (await metrics(server))[limit_hits(case.limit)] == len(case.refused)
        await wait_for_metric(server, "ysyncd_connections", 1)
        await wait_for_metric(server, "ysyncd_rooms", 1)
        await assert_survived(server, good)
        # The survival check loaded a new room; once its log line is in, every
        # earlier line is too.
        loaded = f"room {good.room + '-after'!r} loaded"
        await wait_until(
            lambda: any(loaded in line for line in server.log), "the server log"
        )
        hit_lines = [line for line in server.log if f"limit {case.limit} hit" in line]
        assert len(hit_lines) == 1, hit_lines
        assert_running(server)


async def test_room_name_over_the_byte_limit_gets_400(
    db_path: Path, rooms: Callable[[str], str]
) -> None:
    """Room names are limited in UTF-8 bytes: 64 fit, 65 or more get HTTP 400."""
    good_name = rooms("good")
    # The good room and the survival check's "<good>-after" fit the limit too.
    assert len(f"{good_name}-after".encode()) <= 64
    async with (
        running_server(db_path, "--max-room-name-bytes", "64") as server,
        good_room(server, good_name) as good,
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
        await assert_survived(server, good)
        assert_running(server)


# --- connection churn against a connection limit ------------------------------


async def test_connection_churn_leaks_no_connection_slot(
    db_path: Path, rooms: Callable[[str], str]
) -> None:
    """After 500 connections cut at every stage, every connection slot is free.

    The shared hostile server churns the same way (tests/test_hostile.py), but
    its connection limit is too high to fill; this one allows 64.
    """
    capacity = 64
    async with (
        running_server(db_path, "--max-connections", str(capacity)) as server,
        good_room(server, rooms("good")) as good,
    ):
        outcomes = await churn(server, rooms, 500)
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
        capacity_room = f"/{rooms('capacity')}"
        writers: list[asyncio.StreamWriter] = []
        try:
            for i in range(capacity - 1):
                _, writer, status = await handshake(server.port, capacity_room)
                writers.append(writer)
                assert status.startswith(b"HTTP/1.1 101"), (i, status)
            _, writer, status = await handshake(server.port, capacity_room)
            writers.append(writer)
            assert status.startswith(b"HTTP/1.1 503"), status
        finally:
            for writer in writers:
                abort(writer)
        await wait_for_metric(server, "ysyncd_connections", 1)
        await assert_survived(server, good)
        assert_running(server)
