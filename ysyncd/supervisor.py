"""``ysyncd serve --workers N``: N nodes on one port, on one machine's cores.

The supervisor binds the listening socket once and starts N ``ysyncd serve``
processes that inherit it (pre-fork: the kernel hands each new connection to
one of the processes waiting in ``accept``). Each is a full node with the same
guarantees as nodes on separate machines: they share the store and keep rooms
in step through the backplane, so a room may be open in several of them.

A worker that exits while the supervisor runs is started again, after a
delay that doubles while it keeps dying young (a database that is away, say).
SIGTERM or SIGINT to the supervisor is passed on to every worker, which shut
down as a single server does; the supervisor exits once they have.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Sequence

from ysyncd.worker import die_with_parent

__all__ = ["LISTEN_FD_ENV", "inherited_socket", "supervise"]

log = logging.getLogger("ysyncd.supervisor")

#: Names the file descriptor of the listening socket a worker inherits, and
#: the supervisor's pid (a worker stops when its supervisor is gone).
LISTEN_FD_ENV = "YSYNCD_LISTEN_FD"
SUPERVISOR_ENV = "YSYNCD_SUPERVISOR_PID"
_RESTART_FIRST = 0.5
_RESTART_MAX = 30.0
#: A worker that ran this long was healthy: its next restart is quick again.
_HEALTHY_SECONDS = 10.0


def inherited_socket() -> socket.socket | None:
    """The listening socket a supervisor handed this worker, if any."""
    fd = os.environ.get(LISTEN_FD_ENV)
    if fd is None:
        return None
    supervisor = os.environ.get(SUPERVISOR_ENV)
    if supervisor is not None:
        # SIGTERM: a graceful stop, its last commits flushed, as on Ctrl-C.
        die_with_parent(int(supervisor), signal.SIGTERM)
    return socket.socket(fileno=int(fd))


def supervise(
    host: str, port: int, workers: int, args: Sequence[str], grace: float
) -> int:
    """Bind ``host:port`` and keep ``workers`` servers on it; return the exit status.

    ``args`` are the ``ysyncd serve`` options each worker runs with.

    Raises:
        OSError: the address cannot be bound (shown as one line by the CLI).
    """
    listener = socket.create_server((host, port), backlog=4096)
    listener.set_inheritable(True)
    try:
        return asyncio.run(_Supervisor(listener, workers, args, grace).run())
    finally:
        listener.close()


class _Supervisor:
    def __init__(
        self, listener: socket.socket, workers: int, args: Sequence[str], grace: float
    ) -> None:
        self._listener = listener
        self._workers = workers
        self._args = list(args)
        self._grace = grace
        self._stopping = asyncio.Event()
        self._procs: dict[int, asyncio.subprocess.Process] = {}

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._stop, signum)
        host, port = self._listener.getsockname()[:2]
        log.info("ysyncd supervising %d workers on %s:%d", self._workers, host, port)
        await asyncio.gather(*(self._keep(n) for n in range(self._workers)))
        return 0

    def _stop(self, signum: int) -> None:
        log.info("%s received: stopping the workers", signal.Signals(signum).name)
        self._stopping.set()
        for proc in self._procs.values():
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)

    async def _keep(self, n: int) -> None:
        """Run worker ``n``, and start it again whenever it exits."""
        delay = _RESTART_FIRST
        while not self._stopping.is_set():
            started = time.monotonic()
            proc = await self._spawn()
            self._procs[n] = proc
            code = await self._wait(proc)
            if self._stopping.is_set():
                return
            if time.monotonic() - started > _HEALTHY_SECONDS:
                delay = _RESTART_FIRST
            log.warning(
                "worker %d (pid %d) exited with %s; starting it again in %.1f s",
                n,
                proc.pid,
                code,
                delay,
            )
            stopped = asyncio.ensure_future(self._stopping.wait())
            await asyncio.wait({stopped}, timeout=delay)
            stopped.cancel()
            delay = min(delay * 2, _RESTART_MAX)

    async def _spawn(self) -> asyncio.subprocess.Process:
        fd = self._listener.fileno()
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "ysyncd",
            "serve",
            *self._args,
            "--workers",
            "1",
            pass_fds=(fd,),
            env={
                **os.environ,
                LISTEN_FD_ENV: str(fd),
                SUPERVISOR_ENV: str(os.getpid()),
            },
        )

    async def _wait(self, proc: asyncio.subprocess.Process) -> int:
        """Wait for ``proc``; once stopping, give it the grace period, then kill."""
        exited = asyncio.ensure_future(proc.wait())
        stopping = asyncio.ensure_future(self._stopping.wait())
        await asyncio.wait({exited, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not exited.done():
            try:
                return await asyncio.wait_for(exited, self._grace)
            except TimeoutError:
                log.error("worker pid %d did not stop in time; killing it", proc.pid)
                proc.kill()
                return await proc.wait()
            finally:
                stopping.cancel()
        stopping.cancel()
        return exited.result()
