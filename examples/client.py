"""Minimal ysyncd client: sync a room, print its text, optionally append a line.

Usage:
    python examples/client.py ws://127.0.0.1:1234/my-room
    python examples/client.py ws://127.0.0.1:1234/my-room --append "hello"

The document has one root, a Text named ``text``. The sync protocol itself is
pycrdt's ``Provider``; this file only adapts a websockets connection to the
``Channel`` interface the provider expects, and watches what the server sends
so it can tell when an appended line has been stored.

ysyncd echoes every update back to its sender only after it is durable on
disk, so "the server has sent back everything this client wrote" means "this
client's writes are durable". To check that, every update the server sends is
also applied to a second ``Doc`` (a view of what the server has confirmed) and
its state vector entry for this client is compared with the local one.
Comparing state vectors, not message bytes, keeps this correct if the server
merges or re-encodes updates before echoing them.

pycrdt's provider forwards every change to the local document, including the
ones that came from the server, so the server gets its own content sent back
once; that is a no-op there, and it is not sent on again.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from urllib.parse import unquote, urlsplit

import anyio
from pycrdt import (
    Decoder,
    Doc,
    Provider,
    Text,
    YMessageType,
    YSyncMessageType,
    read_message,
)
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, WebSocketException

# An update with no content; pycrdt's own sync handler skips it too.
EMPTY_UPDATE = b"\x00\x00"
# Sync message subtypes that carry document content: the server's reply to
# our step 1, and live updates. Step 1 itself only carries a state vector.
CONTENT_MESSAGES = (YSyncMessageType.SYNC_STEP2, YSyncMessageType.SYNC_UPDATE)
# websockets' default 1 MiB frame limit is too small for a large first sync.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def state_vector(doc: Doc[Text]) -> dict[int, int]:
    """Decode ``doc``'s state vector into {client id: next clock}."""
    decoder = Decoder(doc.get_state())
    entries = decoder.read_var_uint()
    result: dict[int, int] = {}
    for _ in range(entries):
        client = decoder.read_var_uint()
        result[client] = decoder.read_var_uint()
    return result


class WebsocketChannel:
    """pycrdt ``Channel`` over a websockets client connection.

    It also mirrors every document update the server sends into
    ``server_view``, which is how the caller detects its own echoed updates.
    """

    def __init__(self, websocket: ClientConnection, path: str) -> None:
        self._websocket = websocket
        self._path = path
        self.server_view: Doc[Text] = Doc()
        self.closed = False
        # Replaced after each message, so waiters re-check their condition.
        self._activity = anyio.Event()

    @property
    def path(self) -> str:
        return self._path

    def __aiter__(self) -> WebsocketChannel:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self.recv()
        except ConnectionClosed:
            # Ends the provider's receive loop instead of crashing its task group;
            # waiters notice through ``closed``.
            raise StopAsyncIteration from None

    async def send(self, message: bytes) -> None:
        await self._websocket.send(message)

    async def recv(self) -> bytes:
        while True:
            try:
                message = await self._websocket.recv()
            except ConnectionClosed:
                self.closed = True
                self._wake()
                raise
            # The y-websocket protocol is binary only; a text frame is not ours.
            if isinstance(message, bytes):
                break
        self._observe(message)
        self._wake()
        return message

    def _observe(self, message: bytes) -> None:
        if len(message) < 3 or message[0] != YMessageType.SYNC:
            return
        if message[1] not in CONTENT_MESSAGES:
            return
        update = read_message(message[2:])
        if update != EMPTY_UPDATE:
            self.server_view.apply_update(update)

    def _wake(self) -> None:
        self._activity.set()
        self._activity = anyio.Event()

    async def wait_until(self, condition: Callable[[], bool]) -> None:
        """Wait until ``condition()`` holds after some received message."""
        while not condition():
            if self.closed:
                raise ConnectionError("server closed the connection")
            await self._activity.wait()


def room_name(url: str) -> str:
    # Same rule as the server: path without its leading slash, percent-decoded.
    return unquote(urlsplit(url).path.lstrip("/"))


def append_line(text: Text, line: str) -> None:
    current = str(text)
    # Start on a fresh line so appended lines never run together.
    prefix = "\n" if current and not current.endswith("\n") else ""
    text += prefix + line + "\n"


async def run(url: str, line: str | None, wait_seconds: float) -> None:
    doc: Doc[Text] = Doc()
    doc["text"] = text = Text()
    stage = "connecting"
    try:
        # One deadline for the whole session bounds every wait, including the
        # provider flushing its queue and the websocket closing handshake.
        with anyio.fail_after(wait_seconds):
            async with connect(url, max_size=MAX_MESSAGE_BYTES) as websocket:
                channel = WebsocketChannel(websocket, room_name(url))
                async with Provider(doc, channel) as provider:
                    stage = "waiting for the initial sync"
                    await provider.synced.wait()
                    sys.stdout.write(str(text))
                    if str(text) and not str(text).endswith("\n"):
                        sys.stdout.write("\n")
                    sys.stdout.flush()

                    if line is not None:
                        stage = "waiting for the server to store the line"
                        append_line(text, line)
                        me = doc.client_id
                        wanted = state_vector(doc)[me]

                        def stored() -> bool:
                            view = state_vector(channel.server_view)
                            return view.get(me, 0) >= wanted

                        await channel.wait_until(stored)
                        print(f"stored {line!r}", file=sys.stderr)
                    stage = "closing"
    except TimeoutError:
        raise TimeoutError(f"timed out {stage}") from None


def leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    found: list[BaseException] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            found.extend(leaves(exc))
        else:
            found.append(exc)
    return found


def session(url: str, line: str | None, wait_seconds: float) -> str | None:
    """Run the client; return an error message for expected failures."""
    error: str | None = None
    # The provider runs in a task group, so failures can arrive as exception
    # groups. TimeoutError and ConnectionError are OSErrors.
    try:
        asyncio.run(run(url, line, wait_seconds))
    except* (OSError, WebSocketException) as group:
        error = "; ".join(str(exc) or type(exc).__name__ for exc in leaves(group))
    return error


def main() -> int:
    parser = argparse.ArgumentParser(
        description="Print a ysyncd room's text and optionally append a line."
    )
    parser.add_argument("url", help="room URL, e.g. ws://127.0.0.1:1234/my-room")
    parser.add_argument("--append", metavar="LINE", help="line to append")
    parser.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        help="seconds allowed for the whole run (default 10)",
    )
    args = parser.parse_args()
    try:
        error = session(args.url, args.append, args.timeout)
    except KeyboardInterrupt:
        return 130
    if error is not None:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
