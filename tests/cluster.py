"""Several real ``ysyncd serve`` nodes on one PostgreSQL and one Redis."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import httpx

from tests.serverproc import ServerProcess
from tests.timing import scaled

__all__ = ["healthz", "metric", "running_cluster", "wait_healthz"]


@contextlib.asynccontextmanager
async def running_cluster(
    db: str, backplane: str, nodes: int, *args: str
) -> AsyncIterator[list[ServerProcess]]:
    """``nodes`` servers sharing ``db`` through ``backplane``, started together."""
    servers = [ServerProcess(db, "--backplane", backplane, *args) for _ in range(nodes)]
    try:
        await asyncio.gather(*(s.start() for s in servers))
        yield servers
    finally:
        await asyncio.gather(*(s.close() for s in servers))


async def healthz(server: ServerProcess) -> tuple[int, str]:
    async with httpx.AsyncClient(timeout=scaled(5)) as client:
        response = await client.get(f"{server.http_url}/healthz")
        return response.status_code, response.text.strip()


async def metric(server: ServerProcess, name: str) -> float:
    """One sample of ``/metrics`` (0 when absent)."""
    async with httpx.AsyncClient(timeout=scaled(5)) as client:
        text = (await client.get(f"{server.http_url}/metrics")).text
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


async def wait_healthz(server: ServerProcess, status: int, timeout: float = 10) -> None:
    """Poll ``/healthz`` until it answers ``status``."""
    seen: list[int] = []

    async def poll() -> None:
        for _ in range(10_000):
            code, _ = await healthz(server)
            seen.append(code)
            if code == status:
                return
            await asyncio.sleep(0.1)

    try:
        async with asyncio.timeout(scaled(timeout)):
            await poll()
    except TimeoutError:
        raise AssertionError(f"/healthz never said {status}: {seen[-5:]}") from None
