"""The private PostgreSQL and Redis servers of tests/services.py, for real."""

from __future__ import annotations

import asyncio
import shutil
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from redis.asyncio.client import PubSub

from tests import dbservers, services, subprocs
from tests.services import PostgresServer, RedisServer, Service, ServiceError
from tests.timing import scaled

MACHINE_PORTS = {5432, 6379}


async def pg_connect(url: str) -> asyncpg.Connection:
    return await asyncpg.connect(url, timeout=scaled(10))


async def write_note(url: str, body: str) -> None:
    conn = await pg_connect(url)
    try:
        await conn.execute("CREATE TABLE notes (body text)")
        await conn.execute("INSERT INTO notes VALUES ($1)", body)
    finally:
        await conn.close()


async def read_notes(url: str) -> list[str]:
    conn = await pg_connect(url)
    try:
        return [row["body"] for row in await conn.fetch("SELECT body FROM notes")]
    finally:
        await conn.close()


async def pg_answers(server: PostgresServer) -> bool:
    try:
        conn = await pg_connect(server.url())
    except OSError:
        return False
    await conn.close()
    return True


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url, socket_timeout=scaled(10))
    yield client
    await client.aclose()


async def next_of_type(pubsub: PubSub, kind: str) -> dict[str, Any]:
    """The next pub/sub message of ``kind`` ("subscribe", "message")."""
    async with asyncio.timeout(scaled(5)):
        async for message in pubsub.listen():
            if message["type"] == kind:
                return dict(message)
    raise AssertionError("the subscription ended")


# --- PostgreSQL -------------------------------------------------------------------


async def test_pg_url_is_a_fresh_database_on_the_shared_server(
    pg_url: str, postgres_server: PostgresServer
) -> None:
    assert postgres_server.port not in MACHINE_PORTS
    assert pg_url.startswith(postgres_server.url(""))
    conn = await pg_connect(pg_url)
    try:
        tables = await conn.fetchval(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
        )
        assert tables == 0
    finally:
        await conn.close()
    await write_note(pg_url, "shared")
    assert await read_notes(pg_url) == ["shared"]


async def test_shared_postgres_cannot_be_restarted_from_a_test(
    postgres_server: PostgresServer,
) -> None:
    with pytest.raises(ServiceError, match="own_postgres"):
        await postgres_server.restart()
    assert await pg_answers(postgres_server)


async def test_postgres_write_survives_restart(own_postgres: PostgresServer) -> None:
    url = await own_postgres.create_database("durable")
    await write_note(url, "hello")
    port = own_postgres.port
    await own_postgres.restart()
    assert own_postgres.port == port
    assert await read_notes(url) == ["hello"]


async def test_postgres_commit_survives_sigkill(own_postgres: PostgresServer) -> None:
    url = await own_postgres.create_database("crash")
    await write_note(url, "committed")
    await own_postgres.kill()
    await own_postgres.start()  # crash recovery replays the WAL
    assert await read_notes(url) == ["committed"]


async def test_own_postgres_is_gone_after_stop_and_back_after_start(
    own_postgres: PostgresServer,
) -> None:
    assert own_postgres.port not in MACHINE_PORTS
    await own_postgres.stop()
    assert not await pg_answers(own_postgres)
    await own_postgres.start()
    assert await pg_answers(own_postgres)


# --- Redis ------------------------------------------------------------------------


async def test_redis_url_is_an_empty_database_on_the_shared_server(
    redis_url: str, redis_server: RedisServer, redis_client: aioredis.Redis
) -> None:
    assert redis_server.port not in MACHINE_PORTS
    assert redis_url.startswith(f"redis://127.0.0.1:{redis_server.port}/")
    assert await redis_client.dbsize() == 0


async def test_redis_pubsub_delivers(
    redis_client: aioredis.Redis, request: pytest.FixtureRequest
) -> None:
    channel = request.node.nodeid  # channels are server-wide
    pubsub = redis_client.pubsub()
    try:
        await pubsub.subscribe(channel)
        # Published before the server saw SUBSCRIBE, it would reach nobody.
        await next_of_type(pubsub, "subscribe")
        assert await redis_client.publish(channel, b"hello") == 1
        message = await next_of_type(pubsub, "message")
        assert message["data"] == b"hello"
    finally:
        await pubsub.aclose()


async def test_redis_restart_empties_it(own_redis: RedisServer) -> None:
    client = aioredis.Redis.from_url(own_redis.url(), socket_timeout=scaled(10))
    try:
        await client.set("key", b"value")
        assert await client.get("key") == b"value"
        port = own_redis.port
        await own_redis.restart()
        assert own_redis.port == port
        # The pool reconnects: the same client talks to the new process.
        assert await client.get("key") is None
        assert await client.dbsize() == 0
    finally:
        await client.aclose()


# --- both -------------------------------------------------------------------------


@pytest.fixture
def taken_port(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """A port someone listens on, which free_port() names first."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port: int = taken.getsockname()[1]
        ports = iter([port])
        free_port = subprocs.free_port
        monkeypatch.setattr(
            subprocs, "free_port", lambda: next(ports, 0) or free_port()
        )
        yield port


@pytest.mark.parametrize("factory", [PostgresServer, RedisServer])
async def test_a_taken_port_means_another_try(
    factory: Callable[[], Service], taken_port: int
) -> None:
    server = services.server_or_skip(factory)
    try:
        await server.start()
        assert server.port != taken_port
        assert "Address already in use" in server.log()
    finally:
        await server.close()


@pytest.mark.parametrize(
    ("ci", "outcome"), [("true", pytest.fail.Exception), ("", pytest.skip.Exception)]
)
@pytest.mark.parametrize(
    ("factory", "message"),
    [(PostgresServer, "PostgreSQL not found"), (RedisServer, "redis-server not found")],
)
def test_missing_binaries_skip_except_on_ci(
    monkeypatch: pytest.MonkeyPatch,
    ci: str,
    outcome: type[BaseException],
    factory: Callable[[], Service],
    message: str,
) -> None:
    monkeypatch.setenv("CI", ci)
    monkeypatch.setattr(dbservers, "postgres_bindir", lambda: None)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setattr(dbservers, "REDIS_SERVER", "/nonexistent/redis-server")
    with pytest.raises(outcome, match=message):
        services.server_or_skip(factory)
