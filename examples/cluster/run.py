"""Run examples/cluster's layout as plain processes on this machine.

Three ``ysyncd serve`` nodes on free loopback ports, sharing the PostgreSQL
and the Redis you name, behind HAProxy with ``haproxy.cfg`` (Debian's
``haproxy`` package). It starts neither PostgreSQL nor Redis::

    python3 examples/cluster/run.py \\
        --postgres postgresql://postgres@127.0.0.1:5432/ysyncd \\
        --redis redis://127.0.0.1:6379/0

Once HAProxy has checked every node, it prints the balancer's ``ws://`` URL;
Ctrl-C (or SIGTERM) stops HAProxy, then the nodes. Options after ``--`` go to
every node: ``... -- --workers 2 --log-level debug``.

tests/test_example_cluster.py imports the helpers below, and runs the script.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import os
import re
import shutil
import signal
import socket
import sys
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

__all__ = [
    "CONFIG",
    "SERVERS",
    "Balancer",
    "HaproxyExited",
    "Node",
    "haproxy_binary",
    "haproxy_env",
    "haproxy_servers",
    "main",
    "running_haproxy",
    "running_nodes",
    "start_haproxy",
    "start_node",
    "stop",
    "wait_checked",
]

#: The HAProxy configuration, shared with compose.yaml.
CONFIG = Path(__file__).resolve().parent / "haproxy.cfg"
#: The backend and its servers as haproxy.cfg names them (NODE1.. fill them).
BACKEND = "ysyncd"
SERVERS = ("n1", "n2", "n3")

_LISTENING = re.compile(r"listening on wss?://([^\s:]+):(\d+)")


class HaproxyExited(RuntimeError):
    """HAProxy exited before its checks passed (its log says why)."""


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def stop(proc: asyncio.subprocess.Process, timeout: float = 15) -> int:
    """SIGTERM (ysyncd flushes its commits; HAProxy stops at once), SIGKILL
    past ``timeout``; return the exit status."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
    try:
        async with asyncio.timeout(timeout):
            return await proc.wait()
    except TimeoutError:
        proc.kill()
        return await proc.wait()


# --- the nodes ------------------------------------------------------------------


@dataclass
class Node:
    """One ``ysyncd serve`` process listening on ``address`` (HOST:PORT);
    the last lines of its output are in ``lines``."""

    proc: asyncio.subprocess.Process
    address: str
    lines: deque[str]


_drains: set[asyncio.Task[None]] = set()


async def start_node(
    db: str, backplane: str, *args: str, name: str = "node", echo: bool = False
) -> Node:
    """``ysyncd serve`` on a free loopback port, once it listens. With
    ``echo``, its output is shown on our stderr, each line after ``[name]``."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ysyncd",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--db",
        db,
        "--backplane",
        backplane,
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        # Ctrl-C is for this script, which stops the nodes after HAProxy.
        start_new_session=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    node = Node(proc, "", deque(maxlen=1000))

    async def read() -> None:
        assert proc.stderr is not None
        async for raw in proc.stderr:
            line = raw.decode(errors="replace")
            node.lines.append(line)
            if echo:
                sys.stderr.write(f"[{name}] {line}")
            match = _LISTENING.search(line)
            if match and not node.address:
                node.address = f"{match[1]}:{match[2]}"
                listening.set()

    listening = asyncio.Event()
    # Read to the end, or a full pipe would stall the node.
    drain = asyncio.create_task(read())
    _drains.add(drain)
    drain.add_done_callback(_drains.discard)
    exited = asyncio.ensure_future(proc.wait())
    up = asyncio.ensure_future(listening.wait())
    try:
        await asyncio.wait(
            [exited, up], timeout=30, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        exited.cancel()
        up.cancel()
    if not node.address:
        await stop(proc)
        # The rest of its output, for the message.
        await asyncio.wait([drain], timeout=5)
        raise RuntimeError(f"{name} did not start:\n" + "".join(node.lines))
    return node


@contextlib.asynccontextmanager
async def running_nodes(
    db: str, backplane: str, *args: str, echo: bool = False
) -> AsyncIterator[list[Node]]:
    """One node per server in haproxy.cfg, on ``db`` and ``backplane``,
    stopped on exit."""
    started = await asyncio.gather(
        *(start_node(db, backplane, *args, name=n, echo=echo) for n in SERVERS),
        return_exceptions=True,
    )
    nodes = [node for node in started if isinstance(node, Node)]
    try:
        for result in started:
            if isinstance(result, BaseException):
                raise result
        yield nodes
    finally:
        await asyncio.gather(*(stop(node.proc) for node in nodes))


# --- HAProxy --------------------------------------------------------------------


def haproxy_binary() -> str | None:
    """HAProxy on PATH, or where Debian puts it (/usr/sbin is not on every PATH)."""
    found = shutil.which("haproxy")
    if found is None and os.access("/usr/sbin/haproxy", os.X_OK):
        found = "/usr/sbin/haproxy"
    return found


def haproxy_env(bind: str, stats_bind: str, nodes: Sequence[str]) -> dict[str, str]:
    """What haproxy.cfg reads: BIND, STATS_BIND, and NODE1.. (HOST:PORT each)."""
    if len(nodes) != len(SERVERS):
        raise ValueError(f"haproxy.cfg names {len(SERVERS)} nodes, not {len(nodes)}")
    env = {"BIND": bind, "STATS_BIND": stats_bind}
    env.update((f"NODE{i}", node) for i, node in enumerate(nodes, 1))
    return env


async def start_haproxy(
    env: Mapping[str, str], log: Path | None = None
) -> asyncio.subprocess.Process:
    """HAProxy in the foreground with haproxy.cfg, its variables from ``env``
    (see :func:`haproxy_env`); its output to ``log``, or to our stdout."""
    binary = haproxy_binary()
    if binary is None:
        raise FileNotFoundError("haproxy not found; install Debian's haproxy")
    environ = {**os.environ, **env}
    # Checked first, so that a mistake fails here with HAProxy's message.
    check = await asyncio.create_subprocess_exec(
        binary,
        "-c",
        "-q",
        "-f",
        str(CONFIG),
        env=environ,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await check.communicate()
    if check.returncode != 0:
        raise RuntimeError(f"haproxy -c failed:\n{out.decode(errors='replace')}")
    with contextlib.ExitStack() as files:
        output = files.enter_context(log.open("ab")) if log is not None else None
        # -db: one process, in the foreground (the official image runs -W).
        return await asyncio.create_subprocess_exec(
            binary,
            "-db",
            "-f",
            str(CONFIG),
            env=environ,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=output,
            stderr=asyncio.subprocess.STDOUT if output is not None else None,
            start_new_session=True,
        )


async def haproxy_servers(stats_url: str) -> dict[str, dict[str, str]]:
    """Each server's row of HAProxy's ``/stats;csv``, by name: ``status``
    (UP, DOWN, "DOWN 1/2", MAINT...), ``check_status`` (L7OK, L4CON,
    L7STS...), ``scur`` (connections open now), ``stot`` (in all)."""
    async with httpx.AsyncClient(timeout=5, trust_env=False) as client:
        response = await client.get(f"{stats_url};csv")
        response.raise_for_status()
    rows = csv.DictReader(response.text.removeprefix("# ").splitlines())
    return {
        row["svname"]: row
        for row in rows
        if row["pxname"] == BACKEND and row["svname"] in SERVERS
    }


async def wait_checked(
    stats_url: str,
    up: Sequence[str] = SERVERS,
    timeout: float = 30,
    proc: asyncio.subprocess.Process | None = None,
) -> dict[str, dict[str, str]]:
    """Wait until HAProxy's checks have found the servers ``up`` healthy and
    the others down, and return its view. A server counts as UP before any
    check ran, so it takes a passed check (L7OK) to count as healthy here."""
    seen: dict[str, dict[str, str]] = {}

    def as_wanted(name: str, row: Mapping[str, str]) -> bool:
        if name in up:
            return row["status"] == "UP" and row["check_status"] == "L7OK"
        return row["status"] in ("DOWN", "MAINT")

    try:
        async with asyncio.timeout(timeout):
            while True:
                if proc is not None and proc.returncode is not None:
                    raise HaproxyExited(f"haproxy exited with {proc.returncode}")
                with contextlib.suppress(httpx.HTTPError):
                    seen = await haproxy_servers(stats_url)
                    if len(seen) == len(SERVERS) and all(
                        as_wanted(name, row) for name, row in seen.items()
                    ):
                        return seen
                await asyncio.sleep(0.1)
    except TimeoutError:
        states = {name: (r["status"], r["check_status"]) for name, r in seen.items()}
        raise TimeoutError(
            f"HAProxy never found {sorted(up)} up and no other: {states}"
        ) from None


@dataclass
class Balancer:
    """A running HAProxy: clients dial ``url``; ``stats_url`` is its status page."""

    proc: asyncio.subprocess.Process
    url: str
    stats_url: str


@contextlib.asynccontextmanager
async def running_haproxy(
    nodes: Sequence[str],
    *,
    port: int = 0,
    stats_port: int = 0,
    log: Path | None = None,
    attempts: int = 3,
) -> AsyncIterator[Balancer]:
    """HAProxy on 127.0.0.1 in front of ``nodes`` (HOST:PORT each), once it
    has checked every node; stopped on exit. A port left 0 is picked free
    (again, if another process took it before HAProxy bound it)."""
    for attempt in range(1, attempts + 1):
        bind, stats = port or free_port(), stats_port or free_port()
        env = haproxy_env(f"127.0.0.1:{bind}", f"127.0.0.1:{stats}", nodes)
        proc = await start_haproxy(env, log)
        balancer = Balancer(
            proc, f"ws://127.0.0.1:{bind}", f"http://127.0.0.1:{stats}/stats"
        )
        try:
            await wait_checked(balancer.stats_url, proc=proc)
        except HaproxyExited:
            if (port and stats_port) or attempt == attempts:
                raise
            continue
        except BaseException:
            await stop(proc)
            raise
        break
    try:
        yield balancer
    finally:
        await stop(balancer.proc)


# --- the script -----------------------------------------------------------------


async def serve(args: argparse.Namespace, stopping: asyncio.Event) -> None:
    """Run the layout until ``stopping`` is set or a process exits."""
    async with (
        running_nodes(args.postgres, args.redis, *args.node_args, echo=True) as nodes,
        running_haproxy(
            [node.address for node in nodes],
            port=args.port,
            stats_port=args.stats_port,
        ) as balancer,
    ):
        for name, node in zip(SERVERS, nodes, strict=True):
            print(f"{name}: ws://{node.address} (pid {node.proc.pid})", flush=True)
        print(f"haproxy: {balancer.stats_url} (pid {balancer.proc.pid})", flush=True)
        print(f"Connect to {balancer.url}/<room>", flush=True)
        waits = [asyncio.ensure_future(stopping.wait())] + [
            asyncio.ensure_future(p.wait())
            for p in (balancer.proc, *(node.proc for node in nodes))
        ]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
        if not stopping.is_set():
            raise SystemExit("a node or HAProxy exited; stopping the rest")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Three ysyncd nodes behind HAProxy (examples/cluster).",
        usage="%(prog)s --postgres URL --redis URL [options] [-- NODE OPTIONS]",
    )
    parser.add_argument(
        "--postgres", required=True, help="postgresql://USER@HOST:PORT/DBNAME"
    )
    parser.add_argument("--redis", required=True, help="redis://HOST:PORT/DB")
    parser.add_argument(
        "--port", type=int, default=8080, help="the balancer's port (0: any free one)"
    )
    parser.add_argument(
        "--stats-port",
        type=int,
        default=8404,
        help="HAProxy's status page's port (0: any free one)",
    )
    parser.add_argument("node_args", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if haproxy_binary() is None:
        parser.error("haproxy not found; install it (apt-get install haproxy)")

    async def run() -> None:
        # Ctrl-C or SIGTERM asks for an orderly stop, HAProxy first; a
        # second one does not cut it short.
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stopping.set)
        await serve(args, stopping)
        print("stopped", flush=True)

    try:
        asyncio.run(run())
    except (RuntimeError, OSError) as exc:
        # A node or HAProxy that failed to start: their output says why.
        raise SystemExit(f"run.py: {exc}") from None


if __name__ == "__main__":
    main()
