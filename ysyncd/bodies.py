"""Request bodies, which websockets' handshake parser turns away.

websockets reads an HTTP request only as far as its headers, and refuses one
that declares a body. The HTTP API's ``POST /api/rooms/{room}/update``
carries one: an update. So, before websockets' parser sees a request for
``/api/`` (whatever its method: one not served is answered 405, not cut
off), the body is taken out of the stream and its ``Content-Length`` out
of the request's head; the body is then the connection's (``BodyConnection``),
and websockets parses what is left as a request without one. Every other
request reaches websockets untouched.

A body must come with ``Content-Length`` (chunked transfer coding is left to
websockets, which closes the connection). One larger than the limit is not
kept: it is dropped as it arrives, and the request answered with 413.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.streams import StreamReader

from ysyncd.errors import BadRequest, TooLarge

__all__ = ["BodyConnection", "request_body"]

_API = b"/api/"
#: How much of a request's head is looked through for its Content-Length;
#: a longer head is left to websockets' own limits.
_HEAD_MAX = 64 * 1024


class BodyConnection(ServerConnection):
    """websockets' server connection, which also takes an ``/api/``
    request's body, of at most ``max_body`` bytes."""

    #: Set on the subclass the server makes; 0 takes no bodies.
    max_body = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: The request's body; None when it had none, or too large a one.
        self.body: bytes | None = None
        #: The declared length of a body over ``max_body``, or 0.
        self.body_too_large = 0
        protocol = self.protocol
        parser = protocol.parser  # websockets' own, waiting for the request

        def parse() -> Generator[None]:
            yield from self._take_body(protocol.reader)
            yield from parser

        protocol.parser = parse()
        next(protocol.parser)

    def _take_body(self, reader: StreamReader) -> Generator[None]:
        buffer = reader.buffer
        while (line_end := buffer.find(b"\r\n")) < 0:
            if reader.eof or len(buffer) > _HEAD_MAX:
                return
            yield
        target = buffer[:line_end].partition(b" ")[2]
        if not target.startswith(_API):
            return
        while (end := buffer.find(b"\r\n\r\n")) < 0:
            if reader.eof or len(buffer) > _HEAD_MAX:
                return
            yield
        request_line, *fields = bytes(buffer[:end]).split(b"\r\n")
        kept = [request_line]
        lengths = set()
        for field in fields:
            name, colon, value = field.partition(b":")
            if colon and name.strip().lower() == b"content-length":
                lengths.add(value.strip())
            else:
                kept.append(field)
        if len(lengths) != 1:
            return  # none, or conflicting ones: websockets decides
        (declared,) = lengths
        if not declared.isdigit() or len(declared) > 12:
            return
        length = int(declared)
        head = b"\r\n".join(kept)
        buffer[:end] = head
        start = len(head) + 4
        if length <= self.max_body:
            while len(buffer) < start + length:
                if reader.eof:
                    return  # cut short: websockets sees a request without it
                yield
            self.body = bytes(buffer[start : start + length])
            del buffer[start : start + length]
            return
        # Too large: dropped as it comes, so that the client, which sends it
        # all before it reads, gets the 413 (the handshake timeout bounds it).
        self.body_too_large = length
        while length:
            dropped = min(length, len(buffer) - start)
            del buffer[start : start + dropped]
            length -= dropped
            if length and reader.eof:
                return
            if length:
                yield


def request_body(conn: ServerConnection) -> bytes:
    """The body of ``conn``'s request (see above).

    Raises:
        TooLarge: it was over the limit, and dropped.
        BadRequest: the request had none, or not with a Content-Length.
    """
    if isinstance(conn, BodyConnection):
        if conn.body is not None:
            return conn.body
        if conn.body_too_large:
            raise TooLarge(
                f"a body of {conn.body_too_large} bytes is over {conn.max_body}"
            )
    raise BadRequest("the request needs a body, sent with Content-Length")
