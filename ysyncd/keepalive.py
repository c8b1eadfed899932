"""Keepalive: one task pings every connection.

websockets' own keepalive runs a task per connection, which costs about
1.6 KiB and a timer wake-up per idle connection. All connections share the
same interval, so connections queue in FIFO order of their next ping, and
one loop sends the pings that are due and drops the peers whose pong is late
(close 1011, as websockets does).
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections import deque

import anyio
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode
from websockets.protocol import State

__all__ = ["Keepalive"]

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
