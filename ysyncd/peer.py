"""Peer: one WebSocket connection in a room.

Sending never blocks. Frames go straight to the connection's transport
buffer; that buffer, in bytes, is the peer's send queue. A peer whose buffer
passes ``send_buffer_bytes`` has fallen behind and is closed with 1013 (try
again later): the client reconnects and resyncs, and nobody else waits for it.
This is websockets' own advice for fan-out (see its ``broadcast`` docs).

A peer whose buffer holds more than :data:`BACKLOG_BYTES` is handed to a
:class:`~ysyncd.keepalive.DrainWatch`, which drops it if what was waiting
does not get out within ``--drain-timeout``: a peer that stopped reading
would otherwise pin its buffer (a whole document, after a sync step 1) for
ever, as the send-buffer limit only acts on a later write.

Fan-out serialises each WebSocket frame once (with websockets' own ``Frame``)
and writes the same bytes to every peer's transport; the updates one commit
released go out as one write per peer. Server frames are not
masked, and ysyncd never fragments nor compresses, so the bytes are identical
for every peer; websockets' per-connection ``send`` path would rebuild them
for each one. Its control frames (ping, pong, close) still go through
websockets, which only ever writes whole frames, so the stream stays valid.

Errors from a peer are mapped to close codes here, in one place.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable, Iterable, Sequence

from websockets.asyncio.server import ServerConnection
from websockets.frames import CloseCode, Frame, Opcode
from websockets.protocol import State

from ysyncd.connection import Connection
from ysyncd.dialect import Dialect
from ysyncd.errors import (
    InvalidUpdate,
    PolicyViolation,
    ProtocolError,
    TooLarge,
    UnknownMessageType,
    UnsupportedFrame,
)
from ysyncd.turns import BIG_FRAME, Turns

__all__ = ["Peer", "close_code_for", "close_reason", "fan_out"]

log = logging.getLogger("ysyncd.peer")

_ids = itertools.count(1)

#: Unsent bytes past which a peer is watched for draining (websockets' own
#: high-water mark for pausing writes).
BACKLOG_BYTES = 64 * 1024


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


def close_reason(text: str) -> str:
    """``text`` cut to fit a close frame (123 bytes on the wire), whole characters."""
    return text.encode()[:120].decode(errors="ignore")


def wire_frame(message: bytes) -> bytes:
    """``message`` as one unmasked binary WebSocket frame, ready for a transport."""
    return Frame(Opcode.BINARY, message).serialize(mask=False)


def fan_out(peers: Iterable[Peer], messages: Sequence[bytes]) -> None:
    """Send ``messages`` to every peer: frames serialised once, one write each."""
    wire = b"".join(map(wire_frame, messages))
    for peer in peers:
        peer.write(wire)


class Peer:
    """A connected client, as a room sees it."""

    __slots__ = (
        "__weakref__",
        "_closing",
        "_held",
        "_limit",
        "_on_backlog",
        "_on_slow",
        "_turns",
        "conn",
        "dialect",
        "id",
        "read_only",
        "user",
        "written",
    )

    def __init__(
        self,
        conn: ServerConnection,
        dialect: Dialect,
        *,
        read_only: bool = False,
        user: str | None = None,
        send_buffer_bytes: int = 16 * 2**20,
        on_slow: Callable[[], None] | None = None,
        on_backlog: Callable[[Peer], None] | None = None,
        turns: Turns | None = None,
    ) -> None:
        self.id = next(_ids)
        self.conn = conn
        self.dialect = dialect
        self.read_only = read_only
        #: Whose grant this connection holds; stored with each of its updates.
        self.user = user
        self._limit = send_buffer_bytes
        self._on_slow = on_slow
        self._on_backlog = on_backlog
        self._closing: asyncio.Task[None] | None = None
        self._turns = turns
        # While waiting for a turn (see turns.py): its big frame, then the
        # frames sent after it.
        self._held: list[bytes] | None = None
        #: Bytes of frames written to the transport so far.
        self.written = 0

    def __repr__(self) -> str:
        return f"<Peer {self.id}>"

    @property
    def closing(self) -> bool:
        """True once the connection is closing: nothing more is sent to it,
        and nothing it sent is acted on."""
        return self._closing is not None or self.conn.protocol.state is not State.OPEN

    def send(self, message: bytes) -> None:
        """Send one message (the payload of one binary frame)."""
        self.write(wire_frame(message))

    def write(self, wire: bytes) -> None:
        """Write an already serialised frame, unless the peer is closing or
        slow; a big one when it is this peer's turn (see turns.py)."""
        if self._closing is not None or self.conn.protocol.state is not State.OPEN:
            return
        held, turns = self._held, self._turns
        if held is not None:
            held.append(wire)
            if sum(map(len, held)) - len(held[0]) > self._limit:
                self._too_slow()
            return
        if len(wire) < BIG_FRAME or turns is None or turns.holds(self):
            self._write(wire)
        elif turns.ask(self):
            self._write(wire)
            self._watch_turn()
        else:
            self._held = [wire]

    def take_turn(self) -> None:
        """Write what waited for this peer's turn, which has come."""
        held, self._held = self._held, None
        if self.closing or not held:
            self._turn_over()
            return
        for wire in held:
            self._write(wire)
        self._watch_turn()

    def _watch_turn(self) -> None:
        conn = self.conn
        if conn.transport.get_write_buffer_size() and isinstance(conn, Connection):
            conn.on_drained = self._turn_over
        else:  # sent already; later, as the next turn may be sent at once too
            asyncio.get_running_loop().call_soon(self._turn_over)

    def _turn_over(self) -> None:
        if self._turns is not None:
            self._turns.done(self)

    def _too_slow(self) -> None:
        if self._on_slow is not None:
            self._on_slow()
        self.close(CloseCode.TRY_AGAIN_LATER, "too slow: send buffer full")

    def _write(self, wire: bytes) -> None:
        transport = self.conn.transport
        buffered = transport.get_write_buffer_size()
        if buffered > self._limit:
            self._too_slow()
            return
        transport.write(wire)
        self.written += len(wire)
        if buffered + len(wire) > BACKLOG_BYTES and self._on_backlog is not None:
            self._on_backlog(self)

    @property
    def unsent(self) -> int:
        """Bytes waiting in the transport's buffer."""
        return self.conn.transport.get_write_buffer_size()

    def abort(self) -> None:
        """Drop the connection now, buffer and all (no close frame: it would
        wait behind what the peer does not read)."""
        self.conn.transport.abort()

    def refuse_write(self, reason: str) -> None:
        frame = self.dialect.refusal(reason)
        if frame is not None:
            self.send(frame)

    def close(self, code: int, reason: str) -> None:
        """Start the closing handshake; further sends are dropped."""
        if self._closing is None:
            self._closing = asyncio.ensure_future(
                self.conn.close(code, close_reason(reason))
            )
