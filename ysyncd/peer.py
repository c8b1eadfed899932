"""Peer: one WebSocket connection in a room.

Sending never blocks. Frames go straight to the connection's transport buffer
(websockets' ``broadcast`` does the write); that buffer, in bytes, is the
peer's send queue. A peer whose buffer passes ``send_buffer_bytes`` has fallen
behind and is closed with 1013 (try again later): the client reconnects and
resyncs, and nobody else waits for it. This is websockets' own advice for
fan-out (see its ``broadcast`` documentation).

Errors from a peer are mapped to close codes here, in one place.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable

from websockets.asyncio.server import ServerConnection, broadcast
from websockets.frames import CloseCode

from ysyncd.dialect import Dialect
from ysyncd.errors import (
    InvalidUpdate,
    PolicyViolation,
    ProtocolError,
    TooLarge,
    UnknownMessageType,
    UnsupportedFrame,
)

__all__ = ["Peer", "close_code_for"]

log = logging.getLogger("ysyncd.peer")

_ids = itertools.count(1)


def close_code_for(exc: ProtocolError) -> CloseCode:
    """The close code documented for each kind of bad input."""
    if isinstance(exc, UnknownMessageType | UnsupportedFrame):
        return CloseCode.UNSUPPORTED_DATA  # 1003
    if isinstance(exc, InvalidUpdate):
        return CloseCode.INVALID_DATA  # 1007
    if isinstance(exc, TooLarge):
        return CloseCode.MESSAGE_TOO_BIG  # 1009
    if isinstance(exc, PolicyViolation):
        return CloseCode.POLICY_VIOLATION  # 1008
    return CloseCode.PROTOCOL_ERROR  # 1002: malformed frame


class Peer:
    """A connected client, as a room sees it."""

    __slots__ = ("_closing", "_limit", "_on_slow", "conn", "dialect", "id", "read_only")

    def __init__(
        self,
        conn: ServerConnection,
        dialect: Dialect,
        *,
        read_only: bool = False,
        send_buffer_bytes: int = 16 * 2**20,
        on_slow: Callable[[], None] | None = None,
    ) -> None:
        self.id = next(_ids)
        self.conn = conn
        self.dialect = dialect
        self.read_only = read_only
        self._limit = send_buffer_bytes
        self._on_slow = on_slow
        self._closing: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<Peer {self.id}>"

    def send(self, frame: bytes) -> None:
        if self._closing is not None:
            return
        if self.conn.transport.get_write_buffer_size() > self._limit:
            if self._on_slow is not None:
                self._on_slow()
            self.close(CloseCode.TRY_AGAIN_LATER, "too slow: send buffer full")
            return
        broadcast((self.conn,), frame)

    def refuse_write(self, reason: str) -> None:
        frame = self.dialect.refusal(reason)
        if frame is None:
            self.close(CloseCode.POLICY_VIOLATION, reason)
        else:
            self.send(frame)

    def close(self, code: int, reason: str) -> None:
        """Start the closing handshake; further sends are dropped."""
        if self._closing is None:
            # Close reasons are limited to 123 bytes on the wire.
            text = reason.encode()[:120].decode(errors="ignore")
            self._closing = asyncio.ensure_future(self.conn.close(code, text))
