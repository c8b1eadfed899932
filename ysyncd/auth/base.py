"""What every auth provider shares: grants, credentials and a verdict cache.

A provider turns the upgrade request into a :class:`Grant`, or raises an
:class:`~ysyncd.errors.AuthError` that becomes the HTTP status of the refusal.
It runs in ``process_request``, so a refused request is never upgraded.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Generic, Protocol, TypeVar
from urllib.parse import parse_qs

from websockets.http11 import Request

from ysyncd.errors import Forbidden, Unauthorized

__all__ = [
    "ANYONE",
    "Authorizer",
    "Globs",
    "Grant",
    "LocalAuthorizer",
    "NoAuth",
    "Rooms",
    "VerdictCache",
    "cookie_of",
    "token_of",
]


class Rooms(Protocol):
    """The rooms a grant opens."""

    def __contains__(self, room: object) -> bool: ...


@dataclass(frozen=True, slots=True)
class Globs:
    """Rooms named by shell-style patterns; ``*`` spans slashes too."""

    patterns: tuple[str, ...]

    def __contains__(self, room: object) -> bool:
        return isinstance(room, str) and any(
            fnmatchcase(room, p) for p in self.patterns
        )


@dataclass(frozen=True, slots=True)
class Grant:
    """Who connects, which rooms they may open, and whether they may write."""

    user: str
    rooms: Rooms
    read_only: bool = False

    def check(self, room: str) -> Grant:
        """This grant, if it opens ``room``; else :class:`Forbidden`."""
        if room not in self.rooms:
            raise Forbidden(f"{self.user} may not open this room")
        return self


ANYONE = Grant("anonymous", Globs(("*",)))


class Authorizer(Protocol):
    """An auth provider (``--auth``)."""

    #: Whether open connections are presented again (see recheck.py): true
    #: where access can be withdrawn while a socket is open.
    rechecks: bool

    async def authorize(self, request: Request, room: str) -> Grant:
        """The grant for this request to open ``room``.

        Raises:
            Unauthorized: no usable credentials (401).
            Forbidden: the credentials do not open ``room`` (403).
            AuthUnavailable: the deciding server did not answer (503).
        """
        ...

    async def aclose(self) -> None:
        """Release what the provider holds (HTTP connections)."""
        ...


class LocalAuthorizer:
    """A provider that decides alone, holding nothing to release."""

    rechecks = True

    async def aclose(self) -> None:
        return None


class NoAuth(LocalAuthorizer):
    """``--auth none``: everyone may open and edit every room."""

    rechecks = False

    async def authorize(self, request: Request, room: str) -> Grant:
        return ANYONE


def token_of(request: Request) -> str | None:
    """The token of ``?token=`` or of ``Authorization: Bearer|token``.

    Browsers cannot set headers on a WebSocket, so y-websocket clients pass
    the token in the URL (the ``params`` option); other clients use the header.
    """
    query = request.path.partition("?")[2]
    if query:
        values = parse_qs(query).get("token")
        if values:
            return values[0]
    header = request.headers.get("Authorization")
    if header is None:
        return None
    scheme, _, credentials = header.strip().partition(" ")
    if scheme.lower() not in ("bearer", "token") or not credentials.strip():
        raise Unauthorized("the Authorization header is not 'Bearer <token>'")
    return credentials.strip()


def require_token(request: Request) -> str:
    token = token_of(request)
    if token is None:
        raise Unauthorized("a token is required (?token= or Authorization: Bearer)")
    return token


def cookie_of(request: Request) -> str | None:
    return request.headers.get("Cookie")


def digest(secret: str) -> str:
    """What caches and lookups key on, so no token is kept in memory as is."""
    return hashlib.sha256(secret.encode()).hexdigest()


T = TypeVar("T")


class VerdictCache(Generic[T]):
    """Remember a remote verdict for ``seconds``, keyed by a credential digest.

    A revoked token or a removed share therefore stops working within
    ``seconds``. Bounded, oldest first out, so a flood of bogus tokens cannot
    grow it without limit.
    """

    def __init__(
        self,
        seconds: float,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.seconds = seconds
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, T]] = OrderedDict()

    def get(self, key: str) -> T | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] <= self._clock():
            del self._entries[key]
            return None
        return entry[1]

    def put(self, key: str, value: T) -> None:
        if self.seconds <= 0:
            return
        self._entries[key] = (self._clock() + self.seconds, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
