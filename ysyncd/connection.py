"""A peer's connection: websockets' protocol, with its messages read inline.

websockets' asyncio connection puts every data frame on a queue, and the
connection's handler task takes them off one by one: a task switch per
message, which cost more than applying a small update. Here each whole
message is handed to the room from ``data_received`` itself, in the
transport's callback, once the peer has joined (:meth:`Connection.read`).
Everything else is websockets' own: the handshake, frame parsing and its size
limit, UTF-8, control frames, the closing handshake, TLS.

A message whose handling must wait (a room loading or resetting, a big update
applied a slice at a time, a full commit queue) hands the rest of its work to
the handler task as an awaitable, and the messages after it queue behind it,
in order. So does everything once one callback has spent
:data:`TURN_SECONDS`, so that a peer sending fast cannot keep the loop from
the others. Reading pauses past ``max_queue`` queued messages and resumes
once they are down to a quarter of that, as websockets' own queue does.

An exception raised while handling a message in the callback is raised again
in the handler task, where the server maps it to a close code; the messages
after it are dropped unread.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Protocol

from websockets.asyncio.messages import Assembler
from websockets.exceptions import ConnectionClosedError
from websockets.frames import Frame, Opcode
from websockets.protocol import Event

from ysyncd.bodies import BodyConnection
from ysyncd.integrate import is_panic

__all__ = ["TURN_SECONDS", "Connection", "Receive", "counted"]

#: CPU one connection's messages may take before the others get a turn.
TURN_SECONDS = 0.01

Data = bytes | str
#: Handles one message; returns the rest of its work when that must wait.
Receive = Callable[[Data], Awaitable[None] | None]

_DATA = (Opcode.TEXT, Opcode.BINARY, Opcode.CONT)
#: Every connection's queue until it needs one of its own; always empty.
_NO_QUEUE: deque[Data] = deque(maxlen=0)


class Connection(BodyConnection):
    """websockets' server connection, whose messages :meth:`read` hands on
    from the transport's callback."""

    #: Called once, when the transport's buffer next drains (or the
    #: connection is lost); see turns.py.
    on_drained: Callable[[], None] | None = None

    # Class-level defaults, set on an instance only once they change: an
    # idle connection should cost little memory (a room may hold thousands).
    _receive: Receive | None = None
    _parts: list[bytes] | None = None  # of a fragmented message
    _text = False
    # Messages the handler task takes, in order, and the awaitable it must
    # finish first; while either is there, or the handler is busy with one,
    # new messages queue too.
    _queue: deque[Data] = _NO_QUEUE
    _later: Awaitable[None] | None = None
    _busy = True  # until read() starts
    _failure: BaseException | None = None
    _discarding = False
    _paused = False
    _waiter: asyncio.Future[None] | None = None
    _turn_ends = 0.0
    # websockets' message queue, which this class does not use, shared by
    # every connection (made with the first, as it needs a running loop).
    _unused: Assembler | None = None

    async def read(self, receive: Receive) -> None:
        """Hand every message to ``receive`` until the connection closes.

        Raises:
            ConnectionClosedError: it closed without a closing handshake.
            Exception: whatever ``receive``, or the work it handed back, raised.
        """
        self._receive = receive
        try:
            await self._read(receive)
        finally:
            # Nothing more is handed on. Dropping the receiver also breaks a
            # cycle (it holds the peer, which holds this connection).
            self._receive = None
            self.discard()
        exc = self.close_exc
        if isinstance(exc, ConnectionClosedError):
            raise exc

    async def _read(self, receive: Receive) -> None:
        turn = 0.0
        while True:
            if self._failure is not None:
                failure, self._failure = self._failure, None
                raise failure
            if self._later is not None:
                later, self._later = self._later, None
                await later
                continue
            if self._queue:
                message = self._queue.popleft()
                if self._paused and len(self._queue) <= (self.max_queue_low or 0):
                    self._paused = False
                    self.transport.resume_reading()
                started = time.perf_counter()
                pending = receive(message)
                if pending is not None:
                    await pending
                turn += time.perf_counter() - started
                if turn > TURN_SECONDS:
                    turn = 0.0
                    await asyncio.sleep(0)
                continue
            self._busy = False
            if self.connection_lost_waiter.done():
                return
            self._waiter = self.loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
                self._busy = True

    def discard(self) -> None:
        """Drop every message from now on, so that reading never pauses
        while the connection is being closed."""
        self._discarding = True
        self._queue = _NO_QUEUE
        self._later = None
        if self._paused:
            self._paused = False
            self.transport.resume_reading()

    # websockets' callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if Connection._unused is None:
            Connection._unused = Assembler()
        self.recv_messages = Connection._unused  # about 1 KiB saved

    def data_received(self, data: bytes) -> None:
        self._turn_ends = time.perf_counter() + TURN_SECONDS
        super().data_received(data)

    def process_event(self, event: Event) -> None:
        if self.request is None or not (
            isinstance(event, Frame) and event.opcode in _DATA
        ):
            super().process_event(event)  # the handshake, pongs
            return
        if event.opcode is not Opcode.CONT:
            self._text = event.opcode is Opcode.TEXT
        if not event.fin:  # websockets bounds the whole message by max_size
            if self._parts is None:
                self._parts = []
            self._parts.append(bytes(event.data))
            return
        if self._parts is None:
            data = bytes(event.data)
        else:
            self._parts.append(bytes(event.data))
            data, self._parts = b"".join(self._parts), None
        if self._discarding:
            return
        # A text frame is refused by the room: only its type matters.
        message: Data = data.decode(errors="replace") if self._text else data
        if self._busy or time.perf_counter() > self._turn_ends:
            if self._queue is _NO_QUEUE:
                self._queue = deque()
            self._queue.append(message)
            high = self.max_queue_high
            if not self._paused and high is not None and len(self._queue) > high:
                self._paused = True
                self.transport.pause_reading()
            self._wake()
            return
        assert self._receive is not None  # not busy: read() is running
        try:
            later = self._receive(message)
        except BaseException as exc:
            if not (isinstance(exc, Exception) or is_panic(exc)):
                raise
            self._failure = exc
            self.discard()
            self._busy = True
            self._wake()
            return
        if later is not None:
            self._later = later
            self._busy = True
            self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._wake()
        self._drained()

    def resume_writing(self) -> None:
        super().resume_writing()
        self._drained()

    def _drained(self) -> None:
        drained, self.on_drained = self.on_drained, None
        if drained is not None:
            drained()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class Handshakes(Protocol):
    """Told when a TCP connection arrives and when its handshake is over."""

    def handshake_started(self, conn: Connection) -> None: ...

    def handshake_ended(self, conn: Connection) -> None: ...


def counted(app: Handshakes, max_body: int) -> type[Connection]:
    """The connection class for a server, telling ``app`` of handshakes, so
    that half-open ones cannot pile up (each may hold a request's headers),
    and taking the HTTP API's request bodies of up to ``max_body`` bytes
    (see bodies.py)."""

    class Counted(Connection):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            app.handshake_started(self)

        def connection_lost(self, exc: Exception | None) -> None:
            app.handshake_ended(self)
            super().connection_lost(exc)

    Counted.max_body = max_body
    return Counted
