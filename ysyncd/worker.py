"""A worker process for the CPU-heavy pycrdt work on whole rooms.

pycrdt holds the GIL while it works, so a thread does not help: replaying a
big room's history, or compacting its log, in this process would stall every
other room for as long (18.8 s were measured for one compaction). The worker
process does it instead, and this process only applies the result, a slice
at a time. If the worker dies (a stored history pycrdt cannot survive), that
job fails, the room it was for is not loaded, and the next job starts a new
worker.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import logging
import multiprocessing
import os
import resource
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import ParamSpec, TypeVar

from ysyncd.errors import StoreError

__all__ = ["Worker", "WorkerCrashed", "raise_stack_limit"]

log = logging.getLogger("ysyncd.worker")

P = ParamSpec("P")
T = TypeVar("T")

#: The main thread's stack may grow this far (when the hard limit allows):
#: yrs recurses once per level of nested shared types when it deletes them.
STACK_BYTES = 1 << 30

_PR_SET_PDEATHSIG = 1


class WorkerCrashed(StoreError):
    """The worker process died during a job; the job's room is not loaded."""


def raise_stack_limit() -> None:
    """Let the main thread's stack grow to :data:`STACK_BYTES`.

    yrs deletes a shared type by recursing into the types nested in it, one
    native frame per level, so a document nested deep enough would overflow
    the default 8 MiB stack and kill the process (SIGSEGV at about 50,000
    levels). Each update may nest only ``--max-nesting-depth`` levels, but
    many updates can nest further; with a 1 GiB stack, that takes more
    levels than a document fits in memory. Linux grows the main thread's
    stack on demand up to the current limit.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_STACK)
    wanted = STACK_BYTES if hard == resource.RLIM_INFINITY else min(hard, STACK_BYTES)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_STACK, (wanted, hard))


def _init(parent: int) -> None:
    # The server handles Ctrl-C and shuts the worker down itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent(parent, signal.SIGKILL)
    raise_stack_limit()


def die_with_parent(parent: int, signum: signal.Signals) -> None:
    """Get ``signum`` when the parent exits, even if it was killed (kill -9):
    an orphan would hold the parent's stderr and its own share of memory for
    ever. (A server's build worker, or a supervisor's server.)"""
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signum) != 0:
            log.warning("the worker cannot follow the server's exit")
        if os.getppid() != parent:  # it died before prctl took effect
            os.kill(os.getpid(), signum)
        return

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os.kill(os.getpid(), signum)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


class Worker:
    """One worker process, started on first use."""

    def __init__(self) -> None:
        self._pool: ProcessPoolExecutor | None = None

    def _ensure(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # spawn: forking a process that runs an event loop and threads
            # (aiosqlite's) is unsafe.
            self._pool = ProcessPoolExecutor(
                max_workers=1,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init,
                initargs=(os.getpid(),),
            )
        return self._pool

    async def run(
        self, function: Callable[P, T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """``function(*args, **kwargs)`` in the worker process.

        Raises:
            WorkerCrashed: the process died; a new one serves the next job.
        """
        pool = self._ensure()
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(
                pool, functools.partial(function, *args, **kwargs)
            )
        except BrokenProcessPool as exc:
            if self._pool is pool:
                self._pool = None
                pool.shutdown(wait=False, cancel_futures=True)
            log.error("the worker process died during %s", function.__name__)
            raise WorkerCrashed(f"the worker died during {function.__name__}") from exc

    def close(self) -> None:
        """Stop the process (jobs under way are abandoned)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
