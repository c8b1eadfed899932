"""A y-websocket client for tests: a pycrdt Doc kept in sync over a real socket.

It records what a test needs to assert on: whether every local update is
durable on the server, the awareness states it sees, and the close code it
got. A local update is confirmed (durable) once the server echoes it, or once
everything it holds has come from the server anyway: the server neither
stores nor echoes an update that adds nothing, such as a resync that repeats
what it has (tests/js/yclient.mjs does the same with Y.snapshotContainsUpdate).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from pycrdt import Array, Doc, Map, Text, TransactionEvent, write_var_uint
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.timing import scaled
from ysyncd import awareness, protocol
from ysyncd.updates import NO_LIMITS, delete_ends, shape_of


class YClient:
    """One connection with its own Doc (roots: Text text, Map map, Array array)."""

    def __init__(self, ws: ClientConnection, doc: Doc | None = None) -> None:
        self.ws = ws
        self.doc: Doc = doc if doc is not None else Doc()
        self.text = self.doc.get("text", type=Text)
        self.map = self.doc.get("map", type=Map)
        self.array = self.doc.get("array", type=Array)
        self.unconfirmed: set[bytes] = set()
        #: Everything the server has sent: what it is known to hold.
        self.server_view: Doc = Doc()
        self.sent_bytes = 0
        self.synced = asyncio.Event()
        self.awareness: dict[int, Any] = {}
        self.received: list[protocol.Message] = []
        self.close_code: int | None = None
        self.closed_by: ConnectionClosed | None = None
        self._changed = asyncio.Event()
        self._remote = False
        self._sub = self.doc.observe(self._on_local_change)
        self._reader: asyncio.Task[None] | None = None

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(
        cls,
        url: str,
        room: str,
        *,
        doc: Doc | None = None,
        sync: bool = True,
        sync_timeout: float = 10,
        **options: Any,
    ) -> AsyncIterator[YClient]:
        """Connect to ``url/room``, sync (within ``sync_timeout`` s, scaled),
        and close on exit.

        ``options`` go to websockets' ``connect`` (``ssl``, ``additional_headers``).
        """
        async with connect(
            f"{url}/{room}",
            max_size=None,
            compression=None,
            open_timeout=scaled(10),
            **options,
        ) as ws:
            client = cls(ws, doc)
            client._reader = asyncio.create_task(client._read())
            await ws.send(protocol.encode(protocol.SyncStep1(client.doc.get_state())))
            try:
                if sync:
                    await client.wait(
                        client.synced.is_set, "initial sync", sync_timeout
                    )
                yield client
            finally:
                client._reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await client._reader

    def content(self) -> dict[str, Any]:
        """The document as plain data."""
        return {
            "text": str(self.text),
            "map": self.map.to_py(),
            "array": self.array.to_py(),
        }

    def _on_local_change(self, event: TransactionEvent) -> None:
        if self._remote:
            return
        update = event.update
        self.unconfirmed.add(update)
        self.sent_bytes += len(update)
        frame = protocol.encode_update(update)
        asyncio.get_running_loop().create_task(self._send(frame))

    async def _send(self, frame: bytes) -> None:
        with contextlib.suppress(ConnectionClosed):
            await self.ws.send(frame)

    async def _read(self) -> None:
        try:
            async for frame in self.ws:
                assert isinstance(frame, bytes)
                for message in self._decode(frame):
                    self.received.append(message)
                    await self._handle(message)
                self._changed.set()
        except ConnectionClosed as exc:
            self.closed_by = exc
        finally:
            if self.ws.protocol.close_rcvd is not None:
                self.close_code = self.ws.protocol.close_rcvd.code
            self._changed.set()

    def _decode(self, frame: bytes) -> list[protocol.Message]:
        return protocol.decode(frame)

    async def _handle(self, message: protocol.Message) -> None:
        match message:
            case protocol.SyncStep1(state_vector):
                diff = self.doc.get_update(state_vector)
                await self._send(protocol.encode(protocol.SyncStep2(diff)))
                if diff != b"\x00\x00":
                    self.unconfirmed.add(diff)
                    # Ask for everything, after the diff: the answer fills
                    # server_view with all the server holds, so what the
                    # diff repeats (the server drops it) counts as confirmed.
                    await self._send(protocol.encode(protocol.SyncStep1(b"\x00")))
            case protocol.SyncStep2(update) | protocol.Update(update):
                self.unconfirmed.discard(update)
                self.server_view.apply_update(update)
                self.unconfirmed = {
                    u for u in self.unconfirmed if not _contains(self.server_view, u)
                }
                self._remote = True
                try:
                    self.doc.apply_update(update)
                finally:
                    self._remote = False
                if isinstance(message, protocol.SyncStep2):
                    self.synced.set()
            case protocol.Awareness(update):
                for client_id, _clock, state in awareness.decode_update(update):
                    if state == "null":
                        self.awareness.pop(client_id, None)
                    else:
                        self.awareness[client_id] = json.loads(state)

    async def set_awareness(self, client_id: int, clock: int, state: Any) -> None:
        """Send one awareness entry for ``client_id``."""
        body = json.dumps(state).encode()
        update = bytes([1]) + _uint(client_id) + _uint(clock) + _uint(len(body)) + body
        await self.ws.send(protocol.encode(protocol.Awareness(update)))

    async def wait(
        self, condition: Callable[[], bool], what: str, timeout: float = 10
    ) -> None:
        """Wait until ``condition()`` holds, re-checking after every frame."""
        try:
            async with asyncio.timeout(scaled(timeout)):
                while not condition():
                    self._changed.clear()
                    if (
                        self._reader is not None
                        and self._reader.done()
                        and not condition()
                    ):
                        raise AssertionError(
                            f"connection closed while waiting for {what}"
                        )
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(f"timed out waiting for {what}") from None

    async def wait_confirmed(self, timeout: float = 10) -> None:
        """Wait until the server has echoed every local update (so it is durable)."""
        await self.wait(lambda: not self.unconfirmed, "echo of local updates", timeout)

    async def wait_content(self, expected: dict[str, Any], timeout: float = 10) -> None:
        """Wait until the document equals ``expected``."""
        try:
            await self.wait(lambda: self.content() == expected, "content", timeout)
        except AssertionError:
            assert self.content() == expected
            raise

    async def wait_closed(self, timeout: float = 10) -> int | None:
        """Wait for the server to close the connection; return its close code."""
        assert self._reader is not None
        try:
            async with asyncio.timeout(scaled(timeout)):
                await asyncio.shield(self._reader)
        except TimeoutError:
            raise AssertionError("the server did not close the connection") from None
        return self.close_code


async def stored_content(url: str, room: str) -> dict[str, Any]:
    """The room's content as a fresh client sees it right now."""
    async with YClient.connect(url, room) as reader:
        return reader.content()


def _contains(view: Doc, update: bytes) -> bool:
    """Whether ``view`` holds every struct and deletion of ``update``."""
    shape = shape_of(update, NO_LIMITS)
    known = protocol.decode_state_vector(view.get_state())
    if any(end > known.get(c, 0) for c, (_, end) in shape.clocks.items()):
        return False
    ends = delete_ends(update, shape.delete_set_at)
    if any(end > known.get(c, 0) for c, end in ends.items()):
        return False
    if not shape.delete_ranges:
        return True
    copy: Doc = Doc()
    copy.apply_update(view.get_update())
    deleted: list[TransactionEvent] = []
    subscription = copy.observe(deleted.append)
    copy.apply_update(update)
    copy.unobserve(subscription)
    return not deleted


def _uint(value: int) -> bytes:
    return write_var_uint(value)
