"""A real ``ysyncd serve`` in a subprocess, on a free loopback port."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

from tests.timing import scaled

_LISTENING = re.compile(r"listening on (wss?)://127\.0\.0\.1:(\d+)")


class ServerProcess:
    """Start, stop, kill and restart one ysyncd server process."""

    def __init__(
        self, db: Path | str, *args: str, env: Mapping[str, str] | None = None
    ) -> None:
        #: A SQLite file, or a ``postgresql://`` URL.
        self.db = db
        self.args = list(args)
        self.env = dict(env or {})
        self.port = 0
        self.scheme = "ws"
        self.log: list[str] = []
        self.proc: asyncio.subprocess.Process | None = None
        self._drain: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    @property
    def http_url(self) -> str:
        http = "https" if self.scheme == "wss" else "http"
        return f"{http}://127.0.0.1:{self.port}"

    async def start(self) -> None:
        """Start the server (on the previous port after a restart) and wait for it."""
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "ysyncd",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--db",
            str(self.db),
            *self.args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
        )
        assert self.proc.stderr is not None
        try:
            async with asyncio.timeout(scaled(20)):
                while True:
                    line = (await self.proc.stderr.readline()).decode()
                    if not line:
                        raise AssertionError("ysyncd exited:\n" + "".join(self.log))
                    self.log.append(line)
                    match = _LISTENING.search(line)
                    if match:
                        self.scheme, self.port = match[1], int(match[2])
                        break
        except TimeoutError:
            raise AssertionError(
                "ysyncd did not start:\n" + "".join(self.log)
            ) from None
        self._drain = asyncio.create_task(self._drain_stderr())

    async def _drain_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        async for line in self.proc.stderr:
            self.log.append(line.decode())

    async def signal(self, signum: int, *, timeout: float = 20) -> int:
        """Send ``signum`` and wait for the exit; return the exit code."""
        assert self.proc is not None
        self.proc.send_signal(signum)
        try:
            async with asyncio.timeout(scaled(timeout)):
                code = await self.proc.wait()
                if self._drain is not None:
                    await self._drain
        except TimeoutError:
            self.proc.kill()
            raise AssertionError("ysyncd did not exit:\n" + "".join(self.log)) from None
        return code

    async def stop(self) -> int:
        """Graceful stop (SIGTERM); return the exit code."""
        return await self.signal(signal.SIGTERM)

    async def kill(self) -> None:
        """Crash it: SIGKILL, no chance to flush anything."""
        await self.signal(signal.SIGKILL)

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    async def close(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        if self._drain is not None:
            await self._drain


@contextlib.asynccontextmanager
async def running_server(
    db: Path | str, *args: str, env: Mapping[str, str] | None = None
) -> AsyncIterator[ServerProcess]:
    server = ServerProcess(db, *args, env=env)
    await server.start()
    try:
        yield server
    finally:
        await server.close()
