"""The load generator: lean y-websocket clients on websockets' asyncio API.

It shares the machine's cores with the server under test, so while a scenario
measures, a client does as little as it can. It stamps each update or awareness
frame with ``time.perf_counter_ns()`` and keeps the bytes. It keeps no document
and decodes nothing on that path: both servers send one message per frame, so
the first bytes tell an update (0, 2) or an awareness message (1) from the rest.
Everything is decoded after the measured window (:meth:`Client.messages`, which
also refuses a data frame holding anything unexpected), and documents are built
then (see :mod:`benchmarks.convergence`).

A client never holds local content when it connects, so it answers the server's
sync step 1 with the empty update, like a fresh y-websocket client.

Compression is off and messages may be large; client-side pings are off, as in
a browser (the servers ping their peers).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from benchmarks.payloads import EMPTY_UPDATE, Framed, frame_client
from ysyncd.protocol import (
    Awareness,
    PermissionDenied,
    QueryAwareness,
    SyncStep1,
    SyncStep2,
    Update,
    decode,
    encode,
)

__all__ = [
    "Client",
    "LoadgenError",
    "abort_all",
    "connect_many",
    "wait_until",
]

EMPTY_STATE_VECTOR = b"\x00"
MAX_MESSAGE_BYTES = 1 << 30
# Frames a connection buffers before it stops reading its socket. Generous, so
# that a burst waits in our memory, not in the server's send buffers.
MAX_QUEUE = 1024
CONNECT_TIMEOUT_S = 60.0
CLOSE_TIMEOUT_S = 5.0
_UPDATE_PREFIX = b"\x00\x02"
_AWARENESS_PREFIX = b"\x01"

#: (arrival or send time in ns, bytes)
Stamped = tuple[int, bytes]
DataMessage = Update | Awareness


class LoadgenError(Exception):
    """The load generator could not do its part (connect, sync, keep up)."""


class Client:
    """One y-websocket connection. Create with :meth:`connect`."""

    def __init__(self, ws: ClientConnection, client_id: int, label: str) -> None:
        self.ws = ws
        #: The Yjs client id this connection writes (and sets awareness) as.
        self.client_id = client_id
        self.label = label
        #: Every sync step 2 received (the first answers our sync step 1).
        self.step2: list[bytes] = []
        self.synced = asyncio.Event()
        #: Update and awareness frames as received, with their arrival time.
        self.frames: list[Stamped] = []
        self.updates = 0
        self.awareness = 0
        #: Our own updates and awareness updates, with their send time.
        self.sent: list[Stamped] = []
        self.sent_awareness: list[Stamped] = []
        #: Our own updates relayed back to us (counted only with track_echo).
        self.echoes = 0
        self._track_echo = False
        self._echoed = asyncio.Event()
        self._decoded: list[tuple[int, DataMessage]] = []
        self._decoded_frames = 0
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def connect(
        cls,
        url: str,
        room: str,
        client_id: int,
        *,
        label: str | None = None,
        track_echo: bool = False,
        timeout: float = CONNECT_TIMEOUT_S,
    ) -> Client:
        """Open ``url/room``, ask for the document, and wait for it."""
        ws = await connect(
            f"{url}/{room}",
            compression=None,
            max_size=MAX_MESSAGE_BYTES,
            max_queue=MAX_QUEUE,
            ping_interval=None,
            open_timeout=timeout,
            close_timeout=CLOSE_TIMEOUT_S,
        )
        client = cls(ws, client_id, label or room)
        client._track_echo = track_echo
        try:
            # A y-websocket client asks for the document first thing.
            await ws.send(encode(SyncStep1(EMPTY_STATE_VECTOR)))
            synced = asyncio.create_task(client.synced.wait())
            try:
                await asyncio.wait(
                    (synced, client._reader),
                    timeout=timeout,
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                synced.cancel()
            if not client.synced.is_set():
                raise LoadgenError(
                    f"{client.label}: no sync step 2 within {timeout:.0f} s"
                    f" ({client.problem() or 'no reply'})"
                )
        except BaseException:
            client.abort()
            raise
        return client

    # ---- receiving -----------------------------------------------------------

    async def _read(self) -> None:
        frames = self.frames
        now = time.perf_counter_ns
        try:
            async for frame in self.ws:
                t = now()
                if not isinstance(frame, bytes):
                    raise LoadgenError(f"{self.label}: the server sent a text frame")
                if frame.startswith(_UPDATE_PREFIX):
                    frames.append((t, frame))
                    self.updates += 1
                    if self._track_echo and frame_client(frame) == self.client_id:
                        self.echoes += 1
                        self._echoed.set()
                elif frame.startswith(_AWARENESS_PREFIX):
                    frames.append((t, frame))
                    self.awareness += 1
                else:
                    await self._control(t, frame)
        except ConnectionClosed:
            return  # problem() reports the close code

    async def _control(self, t: int, frame: bytes) -> None:
        for message in decode(frame):
            match message:
                case SyncStep1():
                    await self.ws.send(encode(SyncStep2(EMPTY_UPDATE)))
                case SyncStep2(update):
                    self.step2.append(update)
                    self.synced.set()
                case Update() | Awareness():
                    self.frames.append((t, encode(message)))
                    if isinstance(message, Update):
                        self.updates += 1
                    else:
                        self.awareness += 1
                case QueryAwareness():
                    pass  # only servers are asked for awareness
                case PermissionDenied(reason):
                    raise LoadgenError(f"{self.label}: permission denied: {reason}")

    def messages(self) -> list[tuple[int, DataMessage]]:
        """Every update and awareness message received so far, decoded."""
        for t, frame in self.frames[self._decoded_frames :]:
            for message in decode(frame):
                if not isinstance(message, Update | Awareness):
                    raise LoadgenError(
                        f"{self.label}: a data frame also held a"
                        f" {type(message).__name__}, which was not handled"
                    )
                self._decoded.append((t, message))
        self._decoded_frames = len(self.frames)
        return self._decoded

    def problem(self) -> str | None:
        """Why this connection is no longer usable, if it is not."""
        if not self._reader.done() or self._reader.cancelled():
            return None
        exc = self._reader.exception()
        if exc is not None:
            return f"{self.label}: load generator failed: {exc!r}"
        return (
            f"{self.label}: the server closed the connection"
            f" (code {self.ws.close_code}, {self.ws.close_reason!r})"
        )

    # ---- sending -------------------------------------------------------------

    async def send_update(self, update: Framed) -> None:
        self.sent.append((time.perf_counter_ns(), update[0]))
        await self.ws.send(update[1])

    async def send_awareness(self, update: Framed) -> None:
        self.sent_awareness.append((time.perf_counter_ns(), update[0]))
        await self.ws.send(update[1])

    async def wait_unechoed_below(self, limit: int, timeout: float) -> None:
        """Wait until fewer than ``limit`` of our updates await their echo."""
        while len(self.sent) - self.echoes >= limit:
            if (problem := self.problem()) is not None:
                raise LoadgenError(problem)
            self._echoed.clear()
            try:
                await asyncio.wait_for(self._echoed.wait(), timeout)
            except TimeoutError:
                raise LoadgenError(
                    f"{self.label}: no echo within {timeout:.0f} s"
                    f" ({len(self.sent) - self.echoes} updates unechoed)"
                ) from None

    # ---- closing -------------------------------------------------------------

    async def close(self) -> None:
        """Close politely (the closing handshake), as a leaving user does."""
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        await self.ws.close()

    def abort(self) -> None:
        """Drop the connection at once; for tearing down many clients."""
        self._reader.cancel()
        self.ws.transport.abort()


async def abort_all(clients: Sequence[Client]) -> None:
    for client in clients:
        client.abort()
    await asyncio.gather(*(c._reader for c in clients), return_exceptions=True)


async def connect_many(
    url: str | Sequence[str],
    targets: Sequence[tuple[str, int]],
    *,
    concurrency: int,
    track_echo: bool = False,
) -> tuple[list[Client], list[int]]:
    """Connect one client per ``(room, client_id)``, at most ``concurrency`` at once.

    ``url`` is the server's, or one per target (a cluster's nodes). Returns the
    clients, in order, and how long each took (ns) from the start of its
    connect until it had the document. If any fails, all are closed.
    """
    gate = asyncio.Semaphore(concurrency)
    durations = [0] * len(targets)
    urls = [url] * len(targets) if isinstance(url, str) else list(url)

    async def one(i: int, room: str, client_id: int) -> Client:
        async with gate:
            started = time.perf_counter_ns()
            client = await Client.connect(
                urls[i], room, client_id, label=f"{room}#{i}", track_echo=track_echo
            )
            durations[i] = time.perf_counter_ns() - started
            return client

    results = await asyncio.gather(
        *(one(i, room, cid) for i, (room, cid) in enumerate(targets)),
        return_exceptions=True,
    )
    clients = [r for r in results if isinstance(r, Client)]
    errors = [r for r in results if not isinstance(r, Client)]
    if errors:
        await abort_all(clients)
        first = errors[0]
        raise LoadgenError(
            f"{len(errors)} of {len(targets)} connections failed; first: {first!r}"
        ) from first
    return clients, durations


async def wait_until(
    condition: Callable[[], bool], timeout: float, poll: float = 0.02
) -> bool:
    """Poll ``condition`` until it holds (True) or ``timeout`` passes (False)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(poll)
    return True
