"""Exceptions raised by ysyncd.

The tree::

    YsyncdError
    ├── ProtocolError            a peer sent something we cannot accept
    │   ├── DecodeError          bytes that are not a y-websocket message
    │   ├── UnknownMessageType   a well-formed frame with a type we do not speak
    │   ├── UnsupportedFrame     a text frame (the protocol is binary)
    │   ├── InvalidUpdate        a Yjs update that pycrdt refuses to apply
    │   ├── TooLarge             a message or awareness state over its size limit
    │   └── PolicyViolation      a peer over a rate or count limit
    ├── BadRequest               an HTTP request we cannot act on (400)
    │   └── InvalidRoomName      a request path that does not name a room
    ├── AuthError                a connection was not let in (an HTTP status)
    │   ├── Unauthorized         no credentials, or bad ones (401)
    │   ├── Forbidden            good credentials, but not for this room (403)
    │   └── AuthUnavailable      the auth backend could not be asked (503)
    └── StoreError               the store failed or holds data we cannot read
        └── StoreOpenError       the store cannot be opened (one line: path, reason)
            ├── SchemaError      the database was written by a newer ysyncd
            ├── ForeignDatabase  a SQLite file that another program made
            └── StoreInUse       another ysyncd serves the same database
"""

from __future__ import annotations

__all__ = [
    "AuthError",
    "AuthUnavailable",
    "BadRequest",
    "DecodeError",
    "Forbidden",
    "ForeignDatabase",
    "InvalidRoomName",
    "InvalidUpdate",
    "PolicyViolation",
    "ProtocolError",
    "SchemaError",
    "StoreError",
    "StoreInUse",
    "StoreOpenError",
    "TooLarge",
    "Unauthorized",
    "UnknownMessageType",
    "UnsupportedFrame",
    "YsyncdError",
]


class YsyncdError(Exception):
    """Base class of every error ysyncd raises on purpose."""


class ProtocolError(YsyncdError):
    """A peer broke the protocol; its connection is closed, nothing else is."""

    #: The limit it passed, as /metrics counts it; None for plain bad input.
    limit: str | None = None


class DecodeError(ProtocolError):
    """A frame is truncated, oversized, or otherwise not a y-websocket message."""


class UnknownMessageType(ProtocolError):
    """A frame carries a message type this server does not implement."""


class UnsupportedFrame(ProtocolError):
    """A text frame; y-websocket frames are binary (close 1003)."""


class InvalidUpdate(ProtocolError):
    """pycrdt could not apply an update; it is never stored or relayed."""


class TooLarge(ProtocolError):
    """Something a peer sent is over its size limit (close 1009)."""


class PolicyViolation(ProtocolError):
    """A peer went over a rate or count limit (close 1008)."""


class BadRequest(YsyncdError):
    """An HTTP request that is malformed or ambiguous (HTTP 400)."""


class InvalidRoomName(BadRequest):
    """The request path does not name a valid room (HTTP 400)."""


class AuthError(YsyncdError):
    """The request is refused before the upgrade, with :attr:`status`.

    The message is sent to the client and logged, so it never holds a token.
    """

    status = 401


class Unauthorized(AuthError):
    """Missing, malformed, expired, revoked or wrongly signed credentials."""


class Forbidden(AuthError):
    """The credentials are good, but do not grant this room (or origin)."""

    status = 403


class AuthUnavailable(AuthError):
    """The JupyterHub or Jupyter server that decides could not be reached."""

    status = 503


class StoreError(YsyncdError):
    """The update store failed."""


class StoreOpenError(StoreError):
    """The store cannot be opened; :attr:`reason` says why, in a few words.

    The server cannot start without its store, so the CLI prints the path and
    the reason as one line rather than a traceback.
    """

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(path, reason)  # both, so that it pickles
        self.path = path
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


class SchemaError(StoreOpenError):
    """The database schema is newer than this version of ysyncd understands."""


class ForeignDatabase(StoreOpenError):
    """A SQLite database with tables that ysyncd did not create; left untouched."""


class StoreInUse(StoreOpenError):
    """Another ysyncd holds the database's lock: two would split every room."""


class BackplaneError(YsyncdError):
    """The backplane cannot be used; :attr:`reason` says why, in a few words."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(url, reason)
        self.url = url
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.url}: {self.reason}"
