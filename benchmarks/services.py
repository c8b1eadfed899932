"""The cluster's backing services: a PostgreSQL and a Redis of the benchmark's own.

Both run on free loopback ports (never the machine's own 5432 and 6379), each
in a temporary directory, started once per benchmark run when a cluster case
first needs them and stopped when the run ends. Each cluster run gets a fresh
database (``CREATE DATABASE``) and a Redis database number of its own, so runs
share nothing but the server processes.

The servers are the tests' own (``tests/dbservers.py``, which needs no
pytest): PostgreSQL runs as the ``postgres`` OS user when we are root (it
refuses to run as root), with fsync on, as in production; Redis keeps nothing
on disk.

The Python clients (asyncpg, redis) come with ysyncd's ``cluster`` extra, which
the nodes need anyway.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from benchmarks.servers import SetupError
from tests.dbservers import (
    PG_USER,
    REDIS_SERVER,
    PostgresServer,
    RedisServer,
    ServiceError,
    postgres_bindir,
)

__all__ = ["Postgres", "Redis", "ServiceError", "Services", "missing_services"]

Postgres = PostgresServer
Redis = RedisServer
S = TypeVar("S", PostgresServer, RedisServer)


def missing_services() -> list[str]:
    """What the cluster cases need and this machine lacks (empty: all there)."""
    missing: list[str] = []
    if postgres_bindir() is None:
        missing.append("PostgreSQL (initdb and postgres)")
    if shutil.which("redis-server") is None and not Path(REDIS_SERVER).is_file():
        missing.append("redis-server")
    for module in ("asyncpg", "redis"):
        try:
            __import__(module)
        except ImportError:
            missing.append(f"the {module} package (pip install -e '.[cluster]')")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(PG_USER)
        except KeyError:
            missing.append(f"a {PG_USER!r} user (PostgreSQL refuses to run as root)")
    return missing


class Services:
    """The run's PostgreSQL and Redis: started on first use, closed at the end."""

    def __init__(self, log: Callable[[str], None]) -> None:
        self._log = log
        self._postgres: Postgres | None = None
        self._redis: Redis | None = None
        self._lock = asyncio.Lock()
        self._runs = 0

    async def start(self) -> tuple[Postgres, Redis]:
        """Both servers, started now if this is the first call."""
        async with self._lock:
            if self._postgres is None:
                self._postgres = await self._started(Postgres(), "PostgreSQL")
            if self._redis is None:
                self._redis = await self._started(Redis(), "Redis")
            return self._postgres, self._redis

    async def _started(self, server: S, label: str) -> S:
        try:
            await server.start()
        except ServiceError as exc:
            await server.close()
            raise SetupError(f"{label} did not start: {exc}") from exc
        except BaseException:
            await server.close()
            raise
        self._log(f"    {label} on 127.0.0.1:{server.port}")
        return server

    def next_run(self) -> int:
        """A number for one run's database names (1, 2, ...)."""
        self._runs += 1
        return self._runs

    async def close(self) -> None:
        for service in (self._redis, self._postgres):
            if service is not None:
                await service.close()
        self._postgres = self._redis = None
