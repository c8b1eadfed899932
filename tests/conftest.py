"""Shared fixtures: a real ysyncd server on a free port with its own database."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.hostile import hostile, rooms  # noqa: F401 - fixtures
from tests.serverproc import ServerProcess, running_server
from tests.services import (  # noqa: F401 - fixtures
    any_db,
    own_postgres,
    own_redis,
    pg_url,
    postgres_server,
    redis_server,
    redis_url,
)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "ysyncd.db"


@pytest.fixture
async def server(db_path: Path) -> AsyncIterator[ServerProcess]:
    """A ``ysyncd serve`` subprocess with default settings."""
    async with running_server(db_path) as proc:
        yield proc
