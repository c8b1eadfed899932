"""Keepalive: one task pings every connection; another drops non-readers.

websockets' own keepalive runs a task per connection, which costs about
1.6 KiB and a timer wake-up per idle connection. All connections share the
same interval, so connections queue in FIFO order of their next ping, and
one loop sends the pings that are due and drops the peers whose pong is late
(close 1011, as websockets does).

:class:`DrainWatch` watches peers with a backlog (see :mod:`ysyncd.peer`):
what was waiting unsent when one was marked must have been sent
``timeout`` seconds later, or the connection is dropped and its buffer freed.
A reader that keeps up, however slowly, is marked afresh each time it does.
After dropping peers it asks the allocator to hand the freed buffers back to
the system (glibc keeps big freed blocks in its heap otherwise).
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import sys
import weakref
from collections import deque
from collections.abc import Callable
from typing import Protocol

import anyio
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode
from websockets.protocol import State

__all__ = ["DrainWatch", "Keepalive"]

log = logging.getLogger("ysyncd.keepalive")


class Keepalive:
    """Ping each added connection every ``interval`` s; a pong must follow
    within ``timeout`` s (0: never drop)."""

    def __init__(self, interval: float, timeout: float) -> None:
        self.interval = interval
        self.timeout = timeout
        # Weak: a closed connection must not stay in memory until its turn.
        self._due: deque[tuple[float, weakref.ref[ServerConnection]]] = deque()
        self._waiting: deque[tuple[float, ServerConnection, asyncio.Future[float]]] = (
            deque()
        )
        self._closing: set[asyncio.Task[None]] = set()

    def add(self, conn: ServerConnection) -> None:
        self._due.append((conn.loop.time() + self.interval, weakref.ref(conn)))

    async def run(self) -> None:
        # A few ticks per interval keeps each ping within a quarter interval
        # of its due time.
        tick = min(1.0, self.interval / 4, (self.timeout or 1.0) / 4)
        loop = asyncio.get_running_loop()
        while True:
            await anyio.sleep(tick)
            now = loop.time()
            self._drop_late(now)
            await self._ping_due(now)

    async def _ping_due(self, now: float) -> None:
        due = self._due
        while due and due[0][0] <= now:
            _, ref = due.popleft()
            conn = ref()
            if conn is None or conn.protocol.state is not State.OPEN:
                continue  # gone: forget it
            due.append((now + self.interval, ref))
            if conn.paused:
                # Its send buffer is full, so ping() would wait for it to
                # drain; the slow-reader limit deals with such peers.
                continue
            try:
                # ping() gives a Future, typed as an Awaitable.
                pong = asyncio.ensure_future(await conn.ping())
            except ConnectionClosed:
                continue  # closed meanwhile: its handler is ending, no ping due
            # If the connection drops first, the pong fails; mark that seen.
            pong.add_done_callback(_seen)
            if self.timeout:
                self._waiting.append((now + self.timeout, conn, pong))

    def _drop_late(self, now: float) -> None:
        waiting = self._waiting
        while waiting and waiting[0][0] <= now:
            _, conn, pong = waiting.popleft()
            if pong.done() or conn.protocol.state is not State.OPEN:
                continue
            log.debug("no pong within %.1f s: dropping the connection", self.timeout)
            task = asyncio.ensure_future(
                conn.close(CloseCode.INTERNAL_ERROR, "keepalive ping timeout")
            )
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)


def _seen(pong: asyncio.Future[float]) -> None:
    if not pong.cancelled():
        pong.exception()


class Drainable(Protocol):
    """What :class:`DrainWatch` needs of a peer (see :class:`ysyncd.peer.Peer`)."""

    @property
    def closing(self) -> bool: ...

    @property
    def written(self) -> int: ...

    @property
    def unsent(self) -> int: ...

    def abort(self) -> None: ...


# Control frames (pings, pongs) share the buffer but not ``written``.
_SLACK = 1024


class DrainWatch:
    """Drop peers that do not receive what waits for them within ``timeout``."""

    def __init__(
        self,
        timeout: float,
        *,
        backlog: int = 64 * 1024,
        on_drop: Callable[[], None] | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.timeout = timeout
        self.backlog = backlog
        self._on_drop = on_drop
        self._clock = clock
        # Peer -> (when marked, bytes written by then). Weak: a peer that is
        # gone must not stay in memory until its check.
        self._marks: weakref.WeakKeyDictionary[Drainable, tuple[float, int]] = (
            weakref.WeakKeyDictionary()
        )

    def watch(self, peer: Drainable) -> None:
        """Mark ``peer``, unless it is marked already."""
        if peer not in self._marks:
            self._marks[peer] = (self._now(), peer.written)

    def _now(self) -> float:
        if self._clock is not None:
            return self._clock()
        return asyncio.get_running_loop().time()

    async def run(self) -> None:
        """Check the marked peers a few times per timeout, forever."""
        dropped = False
        while True:
            await anyio.sleep(min(1.0, self.timeout / 4))
            if dropped:
                # The dropped peers' buffers were freed since the last round.
                trim_memory()
            dropped = self.check(self._now())

    def check(self, now: float) -> bool:
        """Drop the peers past their time; whether any was dropped."""
        dropped = False
        for peer, (marked, target) in list(self._marks.items()):
            if peer.closing:
                del self._marks[peer]
                continue
            unsent = peer.unsent
            if peer.written - unsent + _SLACK >= target:
                # What waited at the mark has gone out: watch the rest, if any.
                if unsent > self.backlog:
                    self._marks[peer] = (now, peer.written)
                else:
                    del self._marks[peer]
            elif now - marked >= self.timeout:
                del self._marks[peer]
                log.debug(
                    "a peer received nothing for %.1f s: dropping it", now - marked
                )
                if self._on_drop is not None:
                    self._on_drop()
                peer.abort()
                dropped = True
        return dropped


def trim_memory() -> None:
    """Hand free heap memory back to the system (glibc's ``malloc_trim``).

    A fixed mmap threshold would do it for every big block, but makes yrs,
    which reallocates big blocks often, 20 times slower; trimming now and
    then costs nothing on the hot path.
    """
    if sys.platform != "linux":
        return
    try:
        malloc_trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc
        log.debug("malloc_trim is not available")
        return
    malloc_trim(0)
