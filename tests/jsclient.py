"""Async driver for the real JavaScript y-websocket client (tests/js/yclient.mjs).

Each :class:`JsClient` is one Node process holding one stock ``WebsocketProvider``.
Commands and replies are newline-delimited JSON; see yclient.mjs for the list::

    async with JsClient.start(url, "room") as c:
        await c.call("wait_synced")
        await c.call("edit", n=100, seed=1)
        await c.call("wait_confirmed")
        content = await c.call("dump")

:func:`reference_server` runs the Node reference server (@y/websocket-server) on
127.0.0.1, for differential tests. Timeouts scale with the environment variable
``YSYNCD_TESTS_TIMEOUT_FACTOR`` (yclient.mjs applies the same factor to its own waits).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.subprocs import free_port
from tests.timing import scaled

JS_DIR = Path(__file__).resolve().parent / "js"
NODE_MODULES = JS_DIR / "node_modules"
YCLIENT = JS_DIR / "yclient.mjs"
REFERENCE_SERVER = NODE_MODULES / "@y" / "websocket-server" / "src" / "server.js"
DEFAULT_TIMEOUT = 20.0
# Large enough for a `dump` of any test document on one line.
_LINE_LIMIT = 64 * 1024 * 1024
_STDERR_KEEP = 64 * 1024

Json = dict[str, Any]


def node_available() -> bool:
    """True when ``node`` is on PATH and ``npm ci --prefix tests/js`` has been run."""
    packages = ("yjs", "y-websocket", "ws", "y-protocols", "lib0")
    return shutil.which("node") is not None and all(
        (NODE_MODULES / name / "package.json").is_file() for name in packages
    )


def require_node() -> None:
    """Skip the calling test without Node, except on CI (``CI=true``): fail there."""
    if node_available():
        return
    msg = "node or tests/js/node_modules missing: run `npm ci --prefix tests/js`"
    if os.environ.get("CI") == "true":
        pytest.fail(msg)
    pytest.skip(msg)


class JsClientError(Exception):
    """An error reply from yclient.mjs, a missing reply, or a dead Node process."""

    def __init__(self, message: str, reply: Json | None = None) -> None:
        super().__init__(message)
        self.reply = reply


class _Tail:
    """Drains a pipe so the child never blocks on it; keeps the last bytes."""

    def __init__(self, stream: asyncio.StreamReader | None) -> None:
        self.data = bytearray()
        self.task: asyncio.Task[None] | None = None
        if stream is not None:
            self.task = asyncio.create_task(self._drain(stream))

    async def _drain(self, stream: asyncio.StreamReader) -> None:
        while chunk := await stream.read(65536):
            self.data += chunk
            del self.data[:-_STDERR_KEEP]

    def text(self) -> str:
        return self.data.decode("utf-8", "replace")

    async def finish(self, grace_s: float = 2.0) -> None:
        """Wait briefly for EOF (the process has exited), then stop draining."""
        if self.task is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.task), grace_s)
        if not self.task.done():
            self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


class JsClient:
    """One y-websocket client in a Node process. Create with :meth:`start`."""

    def __init__(self, proc: asyncio.subprocess.Process, label: str) -> None:
        self.proc = proc
        self.label = label
        #: Unsolicited events ({"event": ...}) in arrival order.
        self.events: list[Json] = []
        self.client_id: int | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Json]] = {}
        self._changed = asyncio.Condition()
        self._stderr = _Tail(proc.stderr)
        self._exit: str | None = None  # set once stdout hit EOF
        self._reader = asyncio.create_task(self._read_stdout())

    @classmethod
    @contextlib.asynccontextmanager
    async def start(
        cls,
        url: str,
        room: str,
        *,
        client_id: int | None = None,
        params: Mapping[str, str] | None = None,
        max_backoff_ms: int | None = None,
    ) -> AsyncIterator[JsClient]:
        """Spawn ``node yclient.mjs url room``; kill it when the block exits."""
        argv = [str(YCLIENT), url, room]
        if client_id is not None:
            argv += ["--client-id", str(client_id)]
        for key, value in (params or {}).items():
            argv += ["--param", f"{key}={value}"]
        if max_backoff_ms is not None:
            argv += ["--max-backoff-ms", str(max_backoff_ms)]
        node = shutil.which("node")
        if node is None:
            raise JsClientError("node is not on PATH")
        proc = await asyncio.create_subprocess_exec(
            node,
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            limit=_LINE_LIMIT,
        )
        client = cls(proc, f"yclient[{room}]")
        try:
            started = await client.wait_event("started")
            client.client_id = int(started["client_id"])
            yield client
        finally:
            await client.close()

    # ---- commands -------------------------------------------------------------

    async def call(
        self, cmd: str, /, *, reply_timeout: float | None = None, **args: Any
    ) -> Json:
        """Send one command and return its reply; raise JsClientError on error.

        ``reply_timeout`` (seconds, scaled) defaults to 20 s, and is stretched to
        outlast any ``timeout_ms`` given to the Node side so that its own, more
        descriptive timeout error arrives first.
        """
        if self._exit is not None:
            raise JsClientError(
                f"{self.label}: {cmd}: {self._exit}{self._stderr_note()}"
            )
        wait = scaled(DEFAULT_TIMEOUT if reply_timeout is None else reply_timeout)
        node_ms = args.get("timeout_ms")
        if isinstance(node_ms, int | float):
            wait = max(wait, scaled(node_ms / 1000 + 5))
        cid = next(self._ids)
        fut: asyncio.Future[Json] = asyncio.get_running_loop().create_future()
        self._pending[cid] = fut
        try:
            line = json.dumps({"id": cid, "cmd": cmd, **args}, ensure_ascii=False)
            assert self.proc.stdin is not None
            try:
                self.proc.stdin.write(line.encode() + b"\n")
                await self.proc.stdin.drain()
            except (BrokenPipeError, ConnectionResetError) as exc:
                raise JsClientError(
                    f"{self.label}: {cmd}: node stdin closed{self._stderr_note()}"
                ) from exc
            try:
                reply = await asyncio.wait_for(fut, wait)
            except TimeoutError:
                raise JsClientError(
                    f"{self.label}: no reply to {cmd!r} within {wait:.1f} s"
                    f"{self._stderr_note()}"
                ) from None
        finally:
            self._pending.pop(cid, None)
        if "error" in reply:
            raise JsClientError(f"{self.label}: {cmd}: {reply['error']}", reply)
        return reply

    async def dump(self) -> Json:
        """The document as ``{"text": str, "map": dict, "array": list}``."""
        reply = await self.call("dump")
        return {k: reply[k] for k in ("text", "map", "array")}

    async def wait_event(
        self,
        event: str,
        *,
        match: Callable[[Json], bool] | None = None,
        since: int = 0,
        wait_s: float = DEFAULT_TIMEOUT,
    ) -> Json:
        """First event named ``event`` at index >= ``since`` (and passing ``match``).

        Pass ``since=len(client.events)`` to wait for a *new* event.
        """
        deadline = asyncio.get_running_loop().time() + scaled(wait_s)
        async with self._changed:
            while True:
                for ev in self.events[since:]:
                    if ev.get("event") == event and (match is None or match(ev)):
                        return ev
                if self._exit is not None:
                    raise JsClientError(
                        f"{self.label}: no {event!r} event: {self._exit}"
                        f"{self._stderr_note()}"
                    )
                left = deadline - asyncio.get_running_loop().time()
                if left <= 0:
                    raise JsClientError(
                        f"{self.label}: no {event!r} event within"
                        f" {scaled(wait_s):.1f} s; events: {self.events[since:]}"
                        f"{self._stderr_note()}"
                    )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), left)

    def events_named(self, event: str) -> list[Json]:
        return [ev for ev in self.events if ev.get("event") == event]

    @property
    def stderr(self) -> str:
        """What the Node process wrote to stderr so far (last 64 KiB)."""
        return self._stderr.text()

    # ---- plumbing -------------------------------------------------------------

    def _stderr_note(self) -> str:
        err = self.stderr.strip()
        return f"\n--- node stderr ---\n{err[-4000:]}" if err else ""

    async def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        try:
            while line := await self.proc.stdout.readline():
                try:
                    msg = json.loads(line)
                except json.JSONDecodeError:
                    msg = None
                if not isinstance(msg, dict):
                    # Something other than yclient.mjs wrote to stdout: keep it.
                    text = line.decode("utf-8", "replace")
                    msg = {"event": "stdout-noise", "line": text}
                if "id" in msg and "event" not in msg:
                    fut = self._pending.get(msg["id"])
                    if fut is not None and not fut.done():
                        fut.set_result(msg)
                    continue
                self.events.append(msg)
                async with self._changed:
                    self._changed.notify_all()
        finally:
            code = await self.proc.wait()
            await self._stderr.finish()
            self._exit = f"node exited with code {code}"
            err = JsClientError(f"{self.label}: {self._exit}{self._stderr_note()}")
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(err)
            async with self._changed:
                self._changed.notify_all()

    async def close(self) -> None:
        """Ask the client to quit (it destroys the provider); kill it if it lingers."""
        if self.proc.returncode is None and self._exit is None:
            with contextlib.suppress(JsClientError):
                await self.call("quit", reply_timeout=5)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._reader), scaled(5))
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        await self.proc.wait()
        if self.proc.stdin is not None:
            self.proc.stdin.close()
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                await self.proc.stdin.wait_closed()
        await self._reader
        await self._stderr.finish()


@contextlib.asynccontextmanager
async def reference_server(**env: str) -> AsyncIterator[str]:
    """Run @y/websocket-server (in-memory) on 127.0.0.1; yields its ``ws://`` URL.

    Extra keyword arguments become its environment (e.g. ``GC="false"``).
    """
    node = shutil.which("node")
    if node is None:
        raise JsClientError("node is not on PATH")
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        node,
        str(REFERENCE_SERVER),
        env={**os.environ, **env, "HOST": "127.0.0.1", "PORT": str(port)},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stderr = _Tail(proc.stderr)
    stdout: _Tail | None = None
    try:
        assert proc.stdout is not None
        try:
            # It prints "running at '127.0.0.1' on port N" once listening.
            line = await asyncio.wait_for(proc.stdout.readline(), scaled(10))
        except TimeoutError:
            line = b""
        if b"running at" not in line:
            await stderr.finish()
            raise JsClientError(
                f"reference server did not start: {line!r}\n{stderr.text()}"
            )
        stdout = _Tail(proc.stdout)
        yield f"ws://127.0.0.1:{port}"
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), scaled(5))
            except TimeoutError:
                proc.kill()
        await proc.wait()
        await stderr.finish()
        if stdout is not None:
            await stdout.finish()
