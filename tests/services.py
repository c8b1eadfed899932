"""Private PostgreSQL and Redis servers for tests, on free loopback ports.

Tests never use the machine's own servers (5432, 6379): each server here is a
fresh instance in a temporary directory of its own, started on a free port the
way tests/subprocs.py starts the other test servers, so a bare machine with
just the binaries behaves like CI.

Fixtures: ``postgres_server`` and ``redis_server`` are one shared server each
per session, started when a test first asks; ``pg_url`` and ``redis_url`` give
a test an empty database of its own on them. A test that stops, kills or
restarts a server takes ``own_postgres`` / ``own_redis``, so the shared ones
stay up. Without the binaries the fixtures skip, except on CI (``CI=true``):
they fail there.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import NoReturn, TypeVar

import pytest
import redis.asyncio as aioredis

from tests.dbservers import (
    REDIS_DATABASES,
    PostgresServer,
    RedisServer,
    Service,
    ServiceError,
    ServiceMissing,
)
from tests.hostile import LoopThread

__all__ = [
    "PostgresServer",
    "RedisServer",
    "ServiceError",
    "ServiceMissing",
    "own_postgres",
    "own_redis",
    "pg_url",
    "postgres_server",
    "redis_server",
    "redis_url",
    "server_or_skip",
]

S = TypeVar("S", bound=Service)


# --- fixtures -------------------------------------------------------------------


def _missing(reason: str) -> NoReturn:
    """Skip without the server's binaries, except on CI (CI=true): fail there."""
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def server_or_skip(factory: Callable[[], S]) -> S:
    """``factory()``, or a skip (a failure on CI) if its binaries are missing."""
    try:
        return factory()
    except ServiceMissing as exc:
        _missing(str(exc))


@contextlib.contextmanager
def _session_server(factory: Callable[[], S]) -> Iterator[S]:
    """A server for the whole session, in a loop thread like ``hostile``'s:
    each test runs in an event loop of its own, and the process outlives them."""
    server = server_or_skip(factory)
    with LoopThread() as loop:
        try:
            loop.run(server.start(), timeout=180)
            yield server
        finally:
            loop.run(server.close(), timeout=60)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """The session's shared PostgreSQL; only connect to it (see ``pg_url``)."""
    with _session_server(PostgresServer) as server:
        yield server


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """The session's shared Redis; only connect to it (see ``redis_url``)."""
    with _session_server(RedisServer) as server:
        yield server


_database_numbers = itertools.count(1)
# 0 stays free for anyone who opens url() without a number.
_redis_databases = itertools.cycle(range(1, REDIS_DATABASES))


@pytest.fixture
async def pg_url(
    postgres_server: PostgresServer, request: pytest.FixtureRequest
) -> AsyncIterator[str]:
    """A new, empty database on the shared PostgreSQL, dropped afterwards."""
    slug = re.sub(r"[^a-z0-9]+", "_", request.node.name.lower())[:40]
    name = f"t{next(_database_numbers)}_{slug}"
    url = await postgres_server.create_database(name)
    yield url
    await postgres_server.drop_database(name)


@pytest.fixture(params=["sqlite", "postgres"])
def any_db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """``--db`` for each store a server runs on: a SQLite file, then a new
    database on the shared PostgreSQL."""
    if request.param == "sqlite":
        return str(tmp_path / "any.db")
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
async def redis_url(redis_server: RedisServer) -> str:
    """A database number of the test's own on the shared Redis, emptied first.

    A number, not FLUSHALL: a client a previous test left running cannot
    write into this test's keys. Pub/sub channels are server-wide in Redis,
    though: name the channels after the test.
    """
    url = redis_server.url(next(_redis_databases))
    client = aioredis.Redis.from_url(url)
    try:
        # Numbers come round again after REDIS_DATABASES - 1 tests.
        await client.flushdb()
    finally:
        await client.aclose()
    return url


@pytest.fixture
async def own_postgres() -> AsyncIterator[PostgresServer]:
    """A private PostgreSQL, for a test that stops, kills or restarts it."""
    server = server_or_skip(PostgresServer)
    try:
        await server.start()
        yield server
    finally:
        await server.close()


@pytest.fixture
async def own_redis() -> AsyncIterator[RedisServer]:
    """A private Redis, for a test that stops, kills or restarts it."""
    server = server_or_skip(RedisServer)
    try:
        await server.start()
        yield server
    finally:
        await server.close()
