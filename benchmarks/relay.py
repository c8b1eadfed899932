"""``python -m benchmarks.relay``: the floor under ysyncd in the benchmark.

The same Python stack and framing as ysyncd (websockets' asyncio server, the
same event loop choice, frames serialised once and written straight to each
transport), doing the least a y-websocket server can: each frame is
forwarded to the room's peers, its sender included, as the Node server and
ysyncd both do (the load generator paces its senders on that echo). No
CRDT, no store, no awareness state: a sync step 1 gets an empty sync step 2,
so that clients count as synced.
What ysyncd costs beyond this relay is what its own work costs.

Not a server to use: it keeps nothing, and a late joiner sees nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Coroutine
from typing import Any

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from ysyncd.peer import wire_frame
from ysyncd.protocol import MessageType, SyncStep2, SyncType, encode

__all__ = ["main"]

log = logging.getLogger("relay")

_SYNC = MessageType.SYNC
_STEP1 = SyncType.STEP1
_EMPTY_STEP2 = wire_frame(encode(SyncStep2(b"\x00\x00")))


class Relay:
    """Rooms by path: the connections in each."""

    def __init__(self) -> None:
        self.rooms: dict[str, set[ServerConnection]] = {}

    async def handler(self, conn: ServerConnection) -> None:
        path = conn.request.path if conn.request is not None else "/"
        peers = self.rooms.setdefault(path, set())
        peers.add(conn)
        try:
            await self._relay(conn, peers)
        except ConnectionClosed:
            return  # the load generator aborts its clients at the end of a run
        finally:
            peers.discard(conn)
            if not peers:
                del self.rooms[path]

    @staticmethod
    async def _relay(conn: ServerConnection, peers: set[ServerConnection]) -> None:
        async for frame in conn:
            if not isinstance(frame, bytes):
                continue
            if len(frame) > 1 and frame[0] == _SYNC and frame[1] == _STEP1:
                conn.transport.write(_EMPTY_STEP2)
                continue
            wire = wire_frame(frame)
            for peer in peers:
                peer.transport.write(wire)


async def _serve(port: int) -> int:
    relay = Relay()
    async with serve(
        relay.handler,
        "127.0.0.1",
        port,
        compression=None,
        max_size=2**28,
        max_queue=4,
        ping_interval=None,
        server_header=None,
    ) as server:
        host, bound = server.sockets[0].getsockname()[:2]
        print(f"relay listening on ws://{host}:{bound}", file=sys.stderr, flush=True)
        await asyncio.Future()  # until SIGTERM ends the process
    return 0


def _run(main: Coroutine[Any, Any, int]) -> int:
    """On uvloop when it is installed, as ysyncd's ``--loop auto`` does."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.relay")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    try:
        return _run(_serve(args.port))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
