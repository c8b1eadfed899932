"""PostgreSQL and Redis servers of our own, on free loopback ports.

Each server is a fresh instance in a temporary directory of its own, started
on a free port the way tests/subprocs.py starts the other test servers, so a
bare machine with just the binaries behaves like CI; the machine's own
servers (5432, 6379) are never used. The tests' fixtures (tests/services.py)
and the benchmark's cluster case (benchmarks/services.py) both run them.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Literal, TypeVar

import asyncpg
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from tests.subprocs import LoggedServer
from tests.timing import scaled, wait_until

__all__ = [
    "PG_USER",
    "REDIS_DATABASES",
    "PostgresServer",
    "RedisServer",
    "Service",
    "ServiceError",
    "ServiceMissing",
    "postgres_bindir",
]

#: Where Debian installs each PostgreSQL major version.
PG_BINDIRS = "/usr/lib/postgresql/*/bin"
#: The OS user that runs PostgreSQL as root, and the database superuser.
PG_USER = "postgres"
#: The signals ``pg_ctl stop -m MODE`` sends to the postmaster.
PG_STOP_SIGNALS = {
    "smart": signal.SIGTERM,
    "fast": signal.SIGINT,
    "immediate": signal.SIGQUIT,
}
#: Where Debian installs Redis.
REDIS_SERVER = "/usr/bin/redis-server"
#: Databases per Redis, so that ``redis_url`` can give each test a fresh one.
REDIS_DATABASES = 1024

S = TypeVar("S", bound="Service")


class ServiceMissing(Exception):
    """What it takes to run the server is not installed here."""


class ServiceError(AssertionError):
    """A server failed to start or stop, or was driven from the wrong place."""


# --- finding the binaries -------------------------------------------------------


def _version(bindir: Path) -> tuple[int, ...]:
    """(15,) for /usr/lib/postgresql/15/bin; () when the name is no version."""
    try:
        return tuple(int(part) for part in bindir.parent.name.split("."))
    except ValueError:
        return ()


def postgres_bindir() -> Path | None:
    """Debian's newest PostgreSQL, else whatever ``pg_config --bindir`` names."""
    debian = sorted(Path("/").glob(PG_BINDIRS.lstrip("/")), key=_version)
    candidates = list(reversed(debian))
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        result = subprocess.run(
            [pg_config, "--bindir"], capture_output=True, text=True, check=False
        )
        if result.returncode == 0:
            candidates.append(Path(result.stdout.strip()))
    for bindir in candidates:
        if (bindir / "postgres").is_file() and (bindir / "initdb").is_file():
            return bindir
    return None


def _postgres_account() -> pwd.struct_passwd | None:
    """The ``postgres`` OS user when we are root (PostgreSQL refuses to run as
    root), else None: then it runs as we do."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(PG_USER)
    except KeyError:
        raise ServiceMissing(
            f"PostgreSQL refuses to run as root and there is no {PG_USER!r} user"
        ) from None


def _run_as(account: pwd.struct_passwd | None) -> dict[str, Any]:
    """Subprocess options that run a program as ``account`` (all its groups).

    Not ``runuser -u``: its watching parent passes any signal on as SIGTERM
    (then SIGKILLs 2 s later), and with it SIGKILLed the orphaned postmaster
    lingers unreaped, so that the next start finds its postmaster.pid "in use".
    """
    if account is None:
        return {}
    return {
        "user": account.pw_uid,
        "group": account.pw_gid,
        "extra_groups": os.getgrouplist(account.pw_name, account.pw_gid),
    }


def _signal_group(pgid: int, sig: int) -> bool:
    """Send ``sig`` to process group ``pgid``; False if none of it is left
    (it can exit before asyncio has seen the leader's exit status)."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    return True


def _group_alive(pgid: int) -> bool:
    """Whether a process of group ``pgid`` still runs (zombies do not count)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            # After the command name in parentheses: state, ppid, pgrp, ...
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # it exited while we looked
        if fields[0] != "Z" and int(fields[2]) == pgid:
            return True
    return False


# --- the servers ----------------------------------------------------------------


class Service(LoggedServer):
    """A server process in a temporary directory of its own.

    Subclasses give :meth:`_argv`, :meth:`_ready` and :meth:`stop`, and may
    prepare the directory before the first start (:meth:`_prepare`).
    """

    error = ServiceError
    # Both PostgreSQL and Redis say so when they cannot bind.
    port_taken = "Address already in use"

    @property
    def pid(self) -> int:
        """The server's process id (it runs)."""
        assert self.proc is not None, "not started"
        return self.proc.pid

    def __init__(self, prefix: str) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=prefix))
        super().__init__(self.dir / "server.log")
        # The loop whose child watcher owns ``self.proc``.
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self, timeout: float = 30, attempts: int = 3) -> None:
        """Start on a free port, or on the same port again after a stop, so
        that URLs handed out before stay valid."""
        if self._live_proc() is not None:
            raise ServiceError(f"{self.name} is running already")
        await self._prepare()
        if not self.port:
            await self._start_on_free_port(timeout, attempts)
            return
        started = time.monotonic()
        await self._spawn()
        try:
            await self._wait_ready(timeout)
        except BaseException:
            await self.kill()
            raise
        self.startup_seconds = time.monotonic() - started

    async def restart(self) -> None:
        """Stop gracefully and start again on the same port."""
        await self.stop()
        await self.start()

    async def kill(self) -> None:
        """SIGKILL all the server's processes at once, as a crash would."""
        proc = self._live_proc()
        if proc is None:
            return
        _signal_group(proc.pid, signal.SIGKILL)
        await self._wait_exit(10)
        await self._wait_group_gone(proc.pid, 10)

    async def close(self) -> None:
        """Kill the server if it runs, and delete its directory."""
        try:
            await self.kill()
        finally:
            shutil.rmtree(self.dir)

    async def stop(self) -> None:
        """Shut down gracefully and wait for the exit; no-op when not running."""
        raise NotImplementedError

    async def _prepare(self) -> None:
        """Whatever the first start needs in the directory."""

    def _argv(self) -> list[str]:
        raise NotImplementedError

    def _spawn_options(self) -> dict[str, Any]:
        """More options for the server's subprocess."""
        return {}

    async def _spawn(self) -> None:
        # A session of its own: kill() then reaches every process the server
        # has (PostgreSQL's backends) and nothing else.
        with self.log_path.open("ab") as log:
            self._log_start = log.tell()
            self.proc = await asyncio.create_subprocess_exec(
                *self._argv(),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                cwd=self.dir,
                start_new_session=True,
                **self._spawn_options(),
            )
        self._loop = asyncio.get_running_loop()

    def _live_proc(self) -> asyncio.subprocess.Process | None:
        """The running process, if any, checked to belong to this event loop:
        another loop cannot wait for it (the shared servers live in a loop
        thread of the session's)."""
        if self.proc is None or self.proc.returncode is not None:
            return None
        if asyncio.get_running_loop() is not self._loop:
            raise ServiceError(
                f"this {self.name} was started in another event loop (the shared "
                "session server?); take own_postgres / own_redis to stop, kill "
                "or restart a server"
            )
        return self.proc

    async def _wait_exit(self, timeout: float) -> None:
        """Wait for the exit; past ``timeout``, SIGKILL everything and fail."""
        assert self.proc is not None
        try:
            async with asyncio.timeout(scaled(timeout)):
                await self.proc.wait()
        except TimeoutError:
            _signal_group(self.proc.pid, signal.SIGKILL)
            await self.proc.wait()
            raise ServiceError(
                f"{self.name} did not exit within {scaled(timeout)}s:\n" + self.log()
            ) from None

    async def _wait_group_gone(self, pgid: int, timeout: float) -> None:
        # A killed PostgreSQL backend that still maps the old shared memory
        # would make the next start refuse the data directory. Nothing to
        # await: the backends are not our children.
        await wait_until(
            lambda: not _group_alive(pgid), f"{self.name}'s processes to die", timeout
        )


class PostgresServer(Service):
    """A PostgreSQL cluster of its own: ``initdb`` on first start, then
    ``postgres`` on a free port (the same one again after a stop).

    fsync stays on, as in production: tests that kill the server rely on
    committed transactions being on disk.
    """

    name = "postgres"

    def __init__(self, bindir: Path | None = None) -> None:
        found = bindir or postgres_bindir()
        if found is None:
            raise ServiceMissing(
                f"PostgreSQL not found (no {PG_BINDIRS}/postgres, no pg_config); "
                "install Debian's postgresql"
            )
        account = _postgres_account()
        self.bindir = found
        self._as_postgres = _run_as(account)
        super().__init__("ysyncd-pg-")
        self.data = self.dir / "data"
        self.sockets = self.dir / "sockets"
        self.sockets.mkdir()
        if account is not None:
            # initdb creates the data directory here, and postgres its socket.
            for path in (self.dir, self.sockets):
                os.chown(path, account.pw_uid, account.pw_gid)

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{PG_USER}@127.0.0.1:{self.port}/{dbname}"

    async def create_database(self, name: str) -> str:
        """Create database ``name`` and return its URL."""
        await self._execute(f'CREATE DATABASE "{_identifier(name)}"')
        return self.url(name)

    async def drop_database(self, name: str) -> None:
        # FORCE: a server under test may still hold connections to it.
        await self._execute(
            f'DROP DATABASE IF EXISTS "{_identifier(name)}" WITH (FORCE)'
        )

    async def stop(
        self,
        mode: Literal["smart", "fast", "immediate"] = "fast",
        timeout: float = 30,
    ) -> None:
        """Shut down as ``pg_ctl stop -m MODE`` does, and wait for the exit."""
        sig = PG_STOP_SIGNALS[mode]
        proc = self._live_proc()
        if proc is None:
            return
        proc.send_signal(sig)
        await self._wait_exit(timeout)

    async def _execute(self, sql: str) -> None:
        conn = await asyncpg.connect(self.url(), timeout=scaled(10))
        try:
            await conn.execute(sql, timeout=scaled(30))
        finally:
            await conn.close()

    async def _prepare(self) -> None:
        if (self.data / "PG_VERSION").exists():
            return
        await self._run(
            str(self.bindir / "initdb"),
            "-D",
            str(self.data),
            "--auth=trust",
            "-U",
            PG_USER,
            # Only initdb's own files: a crash of the test machine loses the
            # whole temporary cluster anyway.
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C",
            timeout=60,
        )

    async def _run(self, *argv: str, timeout: float) -> None:
        """Run a PostgreSQL program to its end, its output into the log."""
        with self.log_path.open("ab") as log:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                cwd=self.dir,
                start_new_session=True,
                **self._as_postgres,
            )
        try:
            async with asyncio.timeout(scaled(timeout)):
                code = await proc.wait()
        except TimeoutError:
            _signal_group(proc.pid, signal.SIGKILL)
            await proc.wait()
            raise ServiceError(
                f"{argv[0]} took over {scaled(timeout)}s:\n" + self.log()
            ) from None
        if code != 0:
            raise ServiceError(f"{argv[0]} exited with {code}:\n" + self.log())

    def _spawn_options(self) -> dict[str, Any]:
        return self._as_postgres

    def _argv(self) -> list[str]:
        return [
            str(self.bindir / "postgres"),
            "-D",
            str(self.data),
            "-p",
            str(self.port),
            "-k",
            str(self.sockets),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "shared_buffers=32MB",
            "-c",
            "max_connections=200",
        ]

    async def _ready(self) -> bool:
        try:
            conn = await asyncpg.connect(self.url(), timeout=scaled(1))
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
            return False  # not listening, or still starting up
        try:
            data_directory = await conn.fetchval("SHOW data_directory")
        finally:
            await conn.close()
        # Another cluster that took the port would answer as well.
        # (postgres reports the -D path as given, made absolute.)
        return bool(data_directory == str(self.data))


def _identifier(name: str) -> str:
    """``name``, if it needs no quoting in SQL or in a URL."""
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", name):
        raise ValueError(f"not a plain database name: {name!r}")
    return name


class RedisServer(Service):
    """A Redis of its own that keeps nothing on disk: a restart empties it."""

    name = "redis-server"

    def __init__(self, binary: str | None = None) -> None:
        found = binary or shutil.which("redis-server")
        if found is None and Path(REDIS_SERVER).is_file():
            found = REDIS_SERVER  # not on this PATH, but where Debian puts it
        if found is None:
            raise ServiceMissing(
                "redis-server not found; install Debian's redis-server"
            )
        self.binary = found
        super().__init__("ysyncd-redis-")

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    async def stop(self, timeout: float = 30) -> None:
        """SIGTERM, and wait for the exit."""
        proc = self._live_proc()
        if proc is None:
            return
        proc.send_signal(signal.SIGTERM)
        await self._wait_exit(timeout)

    def _argv(self) -> list[str]:
        return [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
            "--dir",
            str(self.dir),
            "--databases",
            str(REDIS_DATABASES),
        ]

    async def _ready(self) -> bool:
        assert self.proc is not None
        client = aioredis.Redis(
            host="127.0.0.1",
            port=self.port,
            socket_timeout=scaled(1),
            socket_connect_timeout=scaled(1),
            # One try per probe: redis-py's default retries with backoff would
            # hold a probe of a port someone else took for over 10 s.
            retry=Retry(NoBackoff(), 0),
        )
        try:
            await client.ping()
            info = await client.info("server")
        except (RedisError, OSError):
            return False  # not listening yet
        finally:
            await client.aclose()
        # Another Redis that took the port would answer as well.
        return bool(info.get("process_id") == self.proc.pid)
