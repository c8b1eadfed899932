"""The servers under test, each a child process listening on 127.0.0.1.

* ``ysyncd``: ``python -m ysyncd serve`` with its default settings and its
  SQLite database in a directory the caller gives (durable).
* ``node``: the reference ``@y/websocket-server`` from ``benchmarks/node_modules``
  (in memory: it has no persistence unless ``YPERSISTENCE`` is set, which we
  never pass on).
* ``relay``: the floor (``python -m benchmarks.relay``): ysyncd's stack
  forwarding frames, with no CRDT and no store.

A server is stopped (SIGTERM, then SIGKILL) when its ``start`` block exits, however
it exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from benchmarks import procstat

__all__ = [
    "FLOOR",
    "NODE_MODULES",
    "SERVERS",
    "RunningServer",
    "ServerError",
    "ServerSpec",
    "SetupError",
    "ensure_node_modules",
]

BENCH_DIR = Path(__file__).resolve().parent
NODE_MODULES = BENCH_DIR / "node_modules"
NODE_SERVER = NODE_MODULES / "@y" / "websocket-server" / "src" / "server.js"
START_TIMEOUT_S = 30.0
# ysyncd's graceful shutdown may take its --shutdown-timeout (10 s) twice over.
STOP_TIMEOUT_S = 25.0
NPM_TIMEOUT_S = 600.0
_LOG_LINES = 200
_ALERTS_KEPT = 100
# Lines worth reporting: Python logging levels (ysyncd) and errors that the Node
# server prints with console.error.
_ALERT = re.compile(r"\b(WARNING|ERROR|CRITICAL)\b|Traceback|Error")
_LINE_LIMIT = 1 << 20
# Settings that would change what we compare: a user's YSYNCD_* variables would
# replace ysyncd's defaults, and these would give the Node server persistence,
# callbacks or a different GC.
_NODE_ENV_DROP = ("YPERSISTENCE", "CALLBACK_URL", "CALLBACK_OBJECTS", "GC")


class SetupError(Exception):
    """Node.js or npm is missing, or the npm packages could not be installed."""


class ServerError(Exception):
    """A server did not start, or died while it was being measured."""


def ensure_node_modules() -> None:
    """Install the pinned npm packages (``npm ci``) unless they are there."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        missing = " and ".join(n for n, p in (("node", node), ("npm", npm)) if not p)
        raise SetupError(
            f"{missing} not found on PATH: the Node reference server needs"
            " Node.js 18 or newer with npm (or pass --servers ysyncd)"
        )
    if NODE_SERVER.is_file():
        return
    print(f"installing the Node reference server into {NODE_MODULES} (npm ci)")
    cmd = [npm, "ci", "--prefix", str(BENCH_DIR), "--no-audit", "--no-fund"]
    try:
        result = subprocess.run(cmd, check=False, timeout=NPM_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        raise SetupError(f"{' '.join(cmd)} took over {NPM_TIMEOUT_S:.0f} s") from exc
    if result.returncode != 0 or not NODE_SERVER.is_file():
        raise SetupError(f"{' '.join(cmd)} failed with exit code {result.returncode}")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class _Tail:
    """Drains one pipe of the child (so it never blocks) and keeps its last lines.

    With a pattern, ``ready`` is set at the first line that matches it, or at
    end of file (then ``match`` stays None). Warnings and errors are kept apart
    (the first few, and how many there were), to be reported. Each line is kept
    with the time it was read (``time.perf_counter_ns()``).
    """

    def __init__(
        self, stream: asyncio.StreamReader | None, pattern: re.Pattern[str] | None
    ) -> None:
        self.lines: deque[tuple[int, str]] = deque(maxlen=_LOG_LINES)
        self.match: re.Match[str] | None = None
        self.ready = asyncio.Event()
        self.alerts: list[str] = []
        self.alert_count = 0
        self._task = asyncio.create_task(self._drain(stream, pattern))

    async def _drain(
        self, stream: asyncio.StreamReader | None, pattern: re.Pattern[str] | None
    ) -> None:
        in_alert = False
        try:
            while stream is not None and (line := await stream.readline()):
                text = line.decode(errors="replace").rstrip()
                self.lines.append((time.perf_counter_ns(), text))
                # An indented line after an alert is part of its traceback.
                in_alert = bool(_ALERT.search(text)) or (in_alert and text[:1] == " ")
                if in_alert:
                    self.alert_count += 1
                    if len(self.alerts) < _ALERTS_KEPT:
                        self.alerts.append(text)
                if pattern is not None and self.match is None:
                    self.match = pattern.search(text)
                    if self.match is not None:
                        self.ready.set()
        finally:
            self.ready.set()

    async def close(self) -> None:
        """Wait briefly for end of file (the child has exited), then stop."""
        try:
            await asyncio.wait_for(asyncio.shield(self._task), 2.0)
        except TimeoutError:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class RunningServer:
    """A started server: its URL, and its process for CPU and memory readings."""

    def __init__(
        self, name: str, proc: asyncio.subprocess.Process, port: int, tails: list[_Tail]
    ) -> None:
        self.name = name
        self.proc = proc
        self.port = port
        self._tails = tails

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def cpu_seconds(self) -> float:
        """The server's CPU time, its child processes' included."""
        return procstat.cpu_seconds(self.pid) + self.children_cpu_seconds()

    def children_cpu_seconds(self) -> float:
        """The CPU time of the server's child processes (ysyncd's worker)."""
        return procstat.children_cpu_seconds(self.pid)

    def cpu_readings(self) -> dict[str, float]:
        """Its own CPU time and its child processes' (see ``measure.Measured``)."""
        [(own, children)] = procstat.tree_cpu_seconds([self.pid])
        return {"own": own, "children": children}

    def rss_bytes(self) -> int:
        return procstat.rss_bytes(self.pid)

    def log_tail(self, lines: int = 20) -> str:
        merged = [line for tail in self._tails for _, line in tail.lines]
        return "\n".join(merged[-lines:])

    def log_matches(self, pattern: re.Pattern[str]) -> list[tuple[int, re.Match[str]]]:
        """The server's recent log lines that match, with the time each was read."""
        return [
            (t, match)
            for tail in self._tails
            for t, line in tail.lines
            if (match := pattern.search(line)) is not None
        ]

    def check_alive(self) -> None:
        """Raise ServerError if the server has exited (it should not, under load)."""
        code = self.proc.returncode
        if code is not None:
            raise ServerError(
                f"{self.name} exited with code {code} during the run;"
                f" its last output:\n{self.log_tail()}"
            )


class ServerSpec(ABC):
    """How to start one kind of server."""

    name: str
    #: True when the server stores rooms on disk and keeps them across a restart.
    durable: bool
    #: False for the relay: it keeps no document, so a fresh reader sees none.
    stateful: bool = True

    def __init__(self) -> None:
        #: Warning and error lines of every server started since the last clear.
        self.alerts: list[str] = []
        self.alert_count = 0

    @abstractmethod
    def _command(
        self, data_dir: Path, args: Sequence[str]
    ) -> tuple[list[str], dict[str, str], int]:
        """argv, environment, and the port (0 when the server picks and prints it)."""

    @abstractmethod
    def _ready_pattern(self) -> tuple[re.Pattern[str], str]:
        """The line that says it listens, and the stream it comes on."""

    @contextlib.asynccontextmanager
    async def start(
        self, data_dir: Path, args: Sequence[str] = ()
    ) -> AsyncIterator[RunningServer]:
        """Run the server until the block exits; ``data_dir`` holds its files.

        ``args``: ysyncd's storage options (``--db``, ``--backplane``), in
        place of the SQLite file in ``data_dir``.
        """
        argv, env, port = self._command(data_dir, args)
        pattern, stream = self._ready_pattern()
        proc = await asyncio.create_subprocess_exec(
            *argv,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            limit=_LINE_LIMIT,
        )
        out = _Tail(proc.stdout, pattern if stream == "stdout" else None)
        err = _Tail(proc.stderr, pattern if stream == "stderr" else None)
        ready = out if stream == "stdout" else err
        try:
            with contextlib.suppress(TimeoutError):  # judged just below
                await asyncio.wait_for(ready.ready.wait(), START_TIMEOUT_S)
            if ready.match is None:
                log = "\n".join(line for _, line in [*out.lines, *err.lines][-20:])
                raise ServerError(f"{self.name} did not start; its output:\n{log}")
            if port == 0:
                port = int(ready.match.group(1))
            server = RunningServer(self.name, proc, port, [out, err])
            yield server
            server.check_alive()
        finally:
            await _stop(proc)
            await out.close()
            await err.close()
            for tail in (out, err):
                self.alerts += tail.alerts
                self.alert_count += tail.alert_count


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
    await proc.wait()


class YsyncdSpec(ServerSpec):
    name = "ysyncd"
    durable = True

    def _command(
        self, data_dir: Path, args: Sequence[str]
    ) -> tuple[list[str], dict[str, str], int]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("YSYNCD_")}
        argv = [sys.executable, "-m", "ysyncd", "serve", "--host", "127.0.0.1"]
        argv += ["--port", "0", *(args or ["--db", str(data_dir / "ysyncd.db")])]
        return argv, env, 0

    def _ready_pattern(self) -> tuple[re.Pattern[str], str]:
        return re.compile(r"listening on ws://127\.0\.0\.1:(\d+)"), "stderr"


class NodeSpec(ServerSpec):
    name = "node"
    durable = False

    def _command(
        self, data_dir: Path, args: Sequence[str]
    ) -> tuple[list[str], dict[str, str], int]:
        if args:
            raise ValueError("the Node server takes no storage options")
        node = shutil.which("node")
        if node is None:
            raise SetupError("node not found on PATH")
        port = _free_port()
        env = {k: v for k, v in os.environ.items() if k not in _NODE_ENV_DROP}
        env.update(HOST="127.0.0.1", PORT=str(port))
        return [node, str(NODE_SERVER)], env, port

    def _ready_pattern(self) -> tuple[re.Pattern[str], str]:
        return re.compile(r"running at"), "stdout"


class RelaySpec(ServerSpec):
    """The floor: ysyncd's Python stack relaying frames (benchmarks/relay.py)."""

    name = "relay"
    durable = False
    stateful = False

    def _command(
        self, data_dir: Path, args: Sequence[str]
    ) -> tuple[list[str], dict[str, str], int]:
        if args:
            raise ValueError("the relay takes no storage options")
        argv = [sys.executable, "-m", "benchmarks.relay", "--port", "0"]
        return argv, dict(os.environ), 0

    def _ready_pattern(self) -> tuple[re.Pattern[str], str]:
        return re.compile(r"listening on ws://127\.0\.0\.1:(\d+)"), "stderr"


SERVERS: dict[str, ServerSpec] = {
    "ysyncd": YsyncdSpec(),
    "node": NodeSpec(),
    "relay": RelaySpec(),
}
#: The server whose column is the floor: ysyncd's stack with no work of its own.
FLOOR = "relay"
