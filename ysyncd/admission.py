"""Admission: which room an upgrade request opens, and whether it may.

Every decision is made on one canonical room key. The request path is parsed
once into the room name (:func:`~ysyncd.names.room_from_path`), the name into
the key the registry and the store use (for a Jupyter room, the name without
the pattern's prefix, see :mod:`ysyncd.namespaces`), and the authorizer
decides on that very key. A grant is therefore never checked on one string
while the connection opens another (a prefix dropped, escapes decoded).

Headers an authorizer reads must appear once: two ``Origin`` or two
``Authorization`` headers are ambiguous (a proxy may read the first, we the
last), so such a request gets 400 before anything is decided.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from websockets.http11 import Request

from ysyncd.auth import ANYONE, Authorizer, Grant
from ysyncd.auth.recheck import credentials_only
from ysyncd.dialect import Dialect, Jupyter, YWebsocket
from ysyncd.errors import Forbidden, InvalidRoomName
from ysyncd.jupyter.service import Route
from ysyncd.names import room_from_path

__all__ = ["SINGLE_HEADERS", "Admission", "Admitter", "Located", "duplicate_header"]

#: Headers that must not repeat: each decides who connects or from where.
SINGLE_HEADERS = (
    "Host",
    "Origin",
    "Authorization",
    "Cookie",
    "Upgrade",
    "X-Ysyncd-User",
    "X-Ysyncd-Write",
)

#: Reads a room name (and the query string) as a Jupyter room, or None.
Router = Callable[[str, str], Route | None]


@dataclass(frozen=True, slots=True)
class Admission:
    """What the pre-upgrade checks decided about one connection."""

    #: The canonical room key: what was authorized, and what is opened.
    room: str
    dialect: Dialect = YWebsocket
    grant: Grant = ANYONE
    #: Where a Jupyter room connection goes; None for plain y-websocket rooms.
    jupyter: Route | None = None
    #: What the Rechecker presents again later, when the provider rechecks.
    credentials: Request | None = None


@dataclass(frozen=True, slots=True)
class Located:
    """A request path read as a room."""

    #: The room name as the path gives it (percent-decoded).
    name: str
    #: The canonical key (see the module docs).
    key: str
    route: Route | None


def duplicate_header(request: Request) -> str | None:
    """The first of :data:`SINGLE_HEADERS` that ``request`` repeats, if any."""
    headers = request.headers
    for name in SINGLE_HEADERS:
        if len(headers.get_all(name)) > 1:
            return name
    return None


class Admitter:
    """Turns upgrade requests into admissions (or refusals)."""

    def __init__(
        self,
        authorizer: Authorizer,
        router: Router,
        *,
        max_room_name_bytes: int = 512,
        origins: frozenset[str] = frozenset(),
        keep_credentials: bool = False,
    ) -> None:
        self.authorizer = authorizer
        self.router = router
        self.max_room_name_bytes = max_room_name_bytes
        self.origins = origins
        self.keep_credentials = keep_credentials

    def locate(self, path: str) -> Located:
        """The room a request path (with its query string) names.

        Raises:
            InvalidRoomName: no valid room name, or a Jupyter room id of an
                unknown format (400).
        """
        name = room_from_path(path, max_bytes=self.max_room_name_bytes)
        return self.locate_name(name, path.partition("?")[2])

    def locate_name(self, name: str, query: str = "") -> Located:
        """The room a room name (already decoded) names; see :meth:`locate`."""
        route = self.router(name, query)
        if route is None:
            return Located(name, name, None)
        # The key alone must read as the same room: what a provider reads
        # from the key (its namespace) is then what the connection opens.
        if self.router(route.key, query) != route:
            raise InvalidRoomName("the room path is ambiguous")
        return Located(name, route.key, route)

    async def authorize(self, request: Request, key: str) -> Grant:
        """The grant for ``request`` to open the room ``key``.

        Raises:
            AuthError: refused (401, 403 or 503).
        """
        origin = request.headers.get("Origin")
        if self.origins and origin is not None and origin not in self.origins:
            raise Forbidden("this origin may not connect")
        return await self.authorizer.authorize(request, key)

    def admission(self, request: Request, located: Located, grant: Grant) -> Admission:
        """What the handler needs of an admitted request."""
        return Admission(
            located.key,
            dialect=YWebsocket if located.route is None else Jupyter,
            jupyter=located.route,
            grant=grant,
            credentials=credentials_only(request) if self.keep_credentials else None,
        )
