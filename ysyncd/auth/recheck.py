"""Re-check open connections, so revoking access also ends open sessions.

A grant is decided at the upgrade, but a token can be revoked, a share
removed or a token-file entry deleted while its sockets stay open. Every
``interval`` seconds each open connection's credentials are presented again
(remote answers come from the verdict cache, so one user's sockets cost one
request). A refusal closes the connection with 4403; y-websocket 3 does not
reconnect after 44xx codes. A grant turned read-only closes it too, so the
client reconnects as a viewer. A deciding server that does not answer
closes nobody.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections import deque

import anyio
from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request
from websockets.protocol import State

from ysyncd.auth.base import Authorizer, Grant
from ysyncd.errors import AuthError, AuthUnavailable

__all__ = ["REVOKED", "Rechecker", "credentials_only"]

log = logging.getLogger("ysyncd.auth")

#: Close code for a connection whose access was withdrawn.
REVOKED = 4403

_KEPT = ("Authorization", "Cookie", "Origin")


def credentials_only(request: Request) -> Request:
    """A copy of ``request`` keeping just what an authorizer reads."""
    headers = Headers((k, v) for k, v in request.headers.raw_items() if k in _KEPT)
    return Request(request.path, headers)


class Rechecker:
    def __init__(self, authorizer: Authorizer, interval: float) -> None:
        self.authorizer = authorizer
        self.interval = interval
        # Weak: a closed connection must not stay in memory until its turn.
        self._due: deque[
            tuple[float, weakref.ref[ServerConnection], Request, str, Grant]
        ] = deque()
        self._closing: set[asyncio.Future[None]] = set()

    def add(
        self, conn: ServerConnection, request: Request, room: str, grant: Grant
    ) -> None:
        due = conn.loop.time() + self.interval
        entry = (due, weakref.ref(conn), credentials_only(request), room, grant)
        self._due.append(entry)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        tick = min(1.0, self.interval)
        while True:
            await anyio.sleep(tick)
            now = loop.time()
            batch = []
            while self._due and self._due[0][0] <= now:
                batch.append(self._due.popleft())
            if batch:
                await asyncio.gather(*(self._check(now, *entry[1:]) for entry in batch))

    async def _check(
        self,
        now: float,
        ref: weakref.ref[ServerConnection],
        request: Request,
        room: str,
        grant: Grant,
    ) -> None:
        conn = ref()
        if conn is None or conn.protocol.state is not State.OPEN:
            return
        try:
            fresh = await self.authorizer.authorize(request, room)
        except AuthUnavailable:
            fresh = grant  # keep serving; try again next round
        except AuthError as exc:
            log.info("closing %s's connection to %r: %s", grant.user, room, exc)
            self._close(conn, "access revoked")
            return
        if fresh.read_only and not grant.read_only:
            log.info("closing %s's connection to %r: now read-only", grant.user, room)
            self._close(conn, "access is now read-only; reconnect")
            return
        self._due.append((now + self.interval, ref, request, room, grant))

    def _close(self, conn: ServerConnection, reason: str) -> None:
        # Not awaited here: the closing handshake may take --close-timeout.
        closing = asyncio.ensure_future(conn.close(REVOKED, reason))
        self._closing.add(closing)
        closing.add_done_callback(self._closing.discard)
