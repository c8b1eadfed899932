"""Server subprocesses for tests: a free loopback port, a log file, readiness.

JupyterHub and jupyter_server start the same way here (tests/hub.py,
tests/jupyterproc.py): pick a free port, spawn, poll until the server answers,
and retry on a new port if another process took the chosen one meanwhile.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from tests.timing import scaled

__all__ = ["LoggedServer", "PortTakenError", "free_port", "launch_code"]


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def launch_code(main: str) -> str:
    """``python -c`` code calling ``main`` ("module:function") about 1-2 s sooner.

    jupyter_events imports jsonschema's format checkers, and the "iri" checker's
    rfc3987_syntax module builds an Earley parser at import. jsonschema skips a
    checker whose module fails to import, and neither server validates an IRI,
    so the import is blocked.
    """
    module, function = main.split(":")
    return (
        "import sys; sys.modules['rfc3987_syntax'] = None; "
        f"from {module} import {function}; sys.exit({function}())"
    )


class PortTakenError(AssertionError):
    """Someone bound the chosen port before the server did."""


class LoggedServer:
    """A server subprocess whose output goes to ``log_path``.

    Subclasses give :meth:`_spawn` (start ``self.proc`` on ``self.port``, with
    :meth:`_spawn_logged`), :meth:`_ready` (one readiness probe) and
    :meth:`kill`.
    """

    #: What failure messages call it.
    name = "server"
    #: The error raised when it fails to start.
    error: type[AssertionError] = AssertionError
    #: Text in an attempt's output meaning the port was taken ({port} filled).
    port_taken = ""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.port = 0
        self.startup_seconds = 0.0
        self.proc: asyncio.subprocess.Process | None = None
        # Where the current start attempt's output begins in the shared log.
        self._log_start = 0
        #: The tests' HTTP client for its API; subclasses open it.
        self._client: httpx.AsyncClient | None = None

    def log(self, *, this_attempt: bool = False) -> str:
        """The output so far (all start attempts), for failure messages."""
        try:
            with self.log_path.open("rb") as f:
                f.seek(self._log_start if this_attempt else 0)
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    async def _start_on_free_port(self, timeout: float, attempts: int) -> None:
        """Spawn on a free port and wait until ready; on a taken port, retry."""
        started = time.monotonic()
        for attempt in range(1, attempts + 1):
            self.port = free_port()
            await self._spawn()
            try:
                await self._wait_ready(timeout)
            except PortTakenError:
                await self.kill()
                if attempt < attempts:
                    continue
                raise
            except BaseException:
                await self.kill()
                raise
            self.startup_seconds = time.monotonic() - started
            return

    async def _spawn_logged(self, *argv: str, **options: Any) -> None:
        """``python *argv`` with its output appended to the log."""
        with self.log_path.open("ab") as log:
            self._log_start = log.tell()
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                **options,
            )

    async def _wait_ready(self, timeout: float) -> None:
        assert self.proc is not None
        taken = self.port_taken.format(port=self.port)
        try:
            async with asyncio.timeout(scaled(timeout)):
                while True:
                    # Checked before the exit status: a server that could not
                    # bind exits with 1, and that case is worth another attempt.
                    if taken and taken in self.log(this_attempt=True):
                        raise PortTakenError(f"port {self.port} taken:\n" + self.log())
                    if self.proc.returncode is not None:
                        raise self.error(
                            f"{self.name} exited with {self.proc.returncode}:\n"
                            + self.log()
                        )
                    if await self._ready():
                        return
                    # Nothing to await: the server gives no readiness signal.
                    await asyncio.sleep(0.05)
        except TimeoutError:
            raise self.error(
                f"{self.name} not ready after {scaled(timeout)}s:\n" + self.log()
            ) from None

    async def _spawn(self) -> None:
        raise NotImplementedError

    async def _ready(self) -> bool:
        raise NotImplementedError

    async def kill(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        """Kill the server and close the API client."""
        try:
            await self.kill()
        finally:
            if self._client is not None:
                await self._client.aclose()
                self._client = None

    def expect(
        self, resp: httpx.Response, expect: int | tuple[int, ...] | None, what: str
    ) -> httpx.Response:
        """``resp``, if its status is one of ``expect`` (None: any)."""
        wanted = (expect,) if isinstance(expect, int) else expect
        if wanted is not None and resp.status_code not in wanted:
            raise self.error(
                f"{what}: HTTP {resp.status_code}, expected {wanted}: {resp.text}"
            )
        return resp
