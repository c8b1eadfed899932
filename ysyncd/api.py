"""Documents over HTTP, under ``/api/``.

- ``GET /api/openapi.json``: this API, as OpenAPI 3.1.
- ``GET /api/rooms?limit=&after=``: the stored rooms and those in memory,
  by name, a page at a time (``next`` names where the next page starts).
  Needs the admin token: a listing names every room.
- ``GET /api/rooms/{room}``: one room's rows, bytes, last change and peers.
- ``GET /api/rooms/{room}/update?sv=``: the document as one Yjs update (v1),
  or, with a state vector (base64url), what a peer holding it lacks.
- ``GET /api/rooms/{room}/json``: the document as JSON (see rendering.py;
  a Jupyter room as its file's content).
- ``POST /api/rooms/{room}/update``: apply the body, a Yjs update (v1);
  200 once durable and sent to the peers; 400 when it cannot be applied
  (nothing stored), 413 over --max-message-bytes, 422 over a shape limit.
- ``POST /api/rooms/{room}/restore?at=``, ``DELETE /api/rooms/{room}``.

``{room}`` is one path segment: a room name with ``/`` in it is sent with
``%2F``. Access: the admin token (``--admin-token-file``, as ``Authorization:
Bearer``) opens everything; any other request's credentials go through the
same authorizer as a WebSocket's, on the same room key, and reading is
enough. Documents are read from the store, so nothing that is not durable
yet is ever shown. Errors are JSON: ``{"error": "..."}``.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hmac
import json
import re
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import anyio
from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request, Response

from ysyncd.admission import Admitter, Located
from ysyncd.bodies import request_body
from ysyncd.commits import Committer
from ysyncd.errors import (
    AuthError,
    BadRequest,
    Forbidden,
    InvalidUpdate,
    PolicyViolation,
    StoreError,
    TooLarge,
    Unauthorized,
)
from ysyncd.jupyter.files import FileError
from ysyncd.jupyter.service import JupyterRooms
from ysyncd.openapi import OPENAPI
from ysyncd.rendering import document_json, jupyter_json
from ysyncd.restore import RestoreFailed, restoring_update
from ysyncd.room import Room
from ysyncd.rooms import RoomRegistry, Setup
from ysyncd.roomtypes import ROOM_DELETED, RoomFailed
from ysyncd.routes import respond
from ysyncd.stats import Stats
from ysyncd.store.base import History, RoomSummary
from ysyncd.store.snapshot import doc_from_updates

__all__ = [
    "API",
    "ROOM_DELETED",
    "DocumentsApi",
    "Gone",
    "is_admin",
    "read_admin_token",
]

#: Where the API lives.
API = "/api/"
#: The author stored with what the admin token writes.
ADMIN_USER = "admin"
_ROOMS = "/api/rooms"
_PAGE = 100
_SECONDS = re.compile(r"\d{1,12}(\.\d{1,9})?")
_MAX_PAGE = 1000


def read_admin_token(path: Path | None) -> bytes | None:
    """The admin token in ``path`` (whitespace around it dropped), or None.

    Raises:
        ValueError: the token is shorter than 32 bytes.
        OSError: the file cannot be read.
    """
    if path is None:
        return None
    token = path.read_bytes().strip()
    if len(token) < 32:
        raise ValueError(f"--admin-token-file {path}: the token needs 32 bytes or more")
    return token


def is_admin(token: bytes | None, request: Request) -> bool:
    """Whether ``request`` presents ``token`` (compared in constant time)."""
    given = request.headers.get("Authorization", "")
    scheme, _, value = given.partition(" ")
    return (
        token is not None
        and scheme.lower() == "bearer"
        and hmac.compare_digest(value.strip().encode(), token)
    )


class Gone(Exception):
    """What was asked for is no longer kept (410)."""


#: What each refusal is answered with, and the words before its message;
#: the first that matches decides (TooLarge and PolicyViolation are kinds of
#: ProtocolError, as InvalidUpdate is).
_STATUSES: tuple[tuple[type[Exception], int, str], ...] = (
    (BadRequest, 400, ""),
    (InvalidUpdate, 400, ""),
    (PolicyViolation, 422, ""),
    (TooLarge, 413, ""),
    (RoomFailed, 503, ""),
    (Gone, 410, ""),
    (RestoreFailed, 409, ""),
    (FileError, 409, "the room's file: "),
    (StoreError, 503, "the store failed: "),
)
_ANSWERED = tuple(kind for kind, _, _ in _STATUSES)


class DocumentsApi:
    """The ``/api/`` endpoints; mixed into the server's application."""

    admitter: Admitter
    committer: Committer
    jupyter: JupyterRooms
    registry: RoomRegistry
    stats: Stats
    #: The admin token (--admin-token-file), or None.
    admin_token: bytes | None

    async def _api(self, conn: ServerConnection, request: Request) -> Response:
        path, _, query = request.path.partition("?")
        params = parse_qs(query, keep_blank_values=True)
        allowed = _methods(path)
        if allowed is None:
            return _json(conn, 404, {"error": "no such endpoint"})
        if request.method not in allowed:
            refused = _json(conn, 405, {"error": f"{request.method} is not served"})
            refused.headers["Allow"] = ", ".join(allowed)
            return refused
        segment, _, what = path[len(_ROOMS) + 1 :].partition("/")
        try:
            match request.method, what:
                case "POST", "restore":
                    return await self._restore(conn, request, segment, params)
                case "POST", "update":
                    return await self._post_update(conn, request, segment)
                case "DELETE", "":
                    return await self._delete(conn, request, segment)
            if path == "/api/openapi.json":
                return _json(conn, 200, OPENAPI)
            if path == _ROOMS:
                return await self._list(conn, request, params)
            return await self._room(conn, request, segment, what, params)
        except AuthError as exc:
            self.stats.refused(exc.status, f"api {path!r}: {exc}")
            return _json(conn, exc.status, {"error": str(exc)})
        except _ANSWERED as exc:
            status, prefix = next(
                (status, prefix)
                for kind, status, prefix in _STATUSES
                if isinstance(exc, kind)
            )
            return _json(conn, status, {"error": f"{prefix}{exc}"})
        return _json(conn, 404, {"error": "no such endpoint"})

    def _is_admin(self, request: Request) -> bool:
        return is_admin(self.admin_token, request)

    async def _list(
        self, conn: ServerConnection, request: Request, params: dict[str, list[str]]
    ) -> Response:
        if not self._is_admin(request):
            raise Unauthorized("listing the rooms needs the admin token")
        try:
            limit = int(params.get("limit", [str(_PAGE)])[0])
        except ValueError:
            raise BadRequest("limit is a number") from None
        if not 1 <= limit <= _MAX_PAGE:
            raise BadRequest(f"limit is between 1 and {_MAX_PAGE}")
        after = params.get("after", [""])[0]
        stored = {s.name: s for s in await self.committer.store.rooms()}
        names = sorted(set(stored) | set(self.registry.rooms))
        page = [n for n in names if n > after][: limit + 1]
        more = len(page) > limit
        page = page[:limit]
        return _json(
            conn,
            200,
            {
                "rooms": [self._summary(n, stored.get(n)) for n in page],
                "next": page[-1] if more else None,
            },
        )

    async def _writer(self, request: Request, located: Located, what: str) -> str:
        """Who writes, unless ``request`` may not change the room (admin, or
        a grant to write, may)."""
        if self._is_admin(request):
            return ADMIN_USER
        grant = await self.admitter.authorize(request, located.key)
        if grant.read_only:
            raise Forbidden(f"{what} needs write access")
        return grant.user

    async def _delete(
        self, conn: ServerConnection, request: Request, segment: str
    ) -> Response:
        """``DELETE /api/rooms/{room}``: its peers are closed with 4410, then
        its history is removed from the store."""
        located = self.admitter.locate("/" + segment)
        await self._writer(request, located, "deleting a room")
        room = self.registry.remove(located.key)
        if room is not None:
            room.fail(ROOM_DELETED, "room deleted")
            await _durable(room)  # nothing left to commit after the delete
        existed = await self.committer.store.delete(located.key)
        self.registry.deleted(located.key)  # the other nodes drop it too
        if not existed and room is None:
            return _json(conn, 404, {"error": f"no room {located.name!r}"})
        return _json(conn, 200, {"deleted": located.key})

    async def _post_update(
        self, conn: ServerConnection, request: Request, segment: str
    ) -> Response:
        """``POST /api/rooms/{room}/update``: the body, a Yjs update (v1), is
        applied like a client's; 200 once it is durable, and so sent to every
        peer. One that cannot be applied gets 400, and nothing is stored."""
        located = self.admitter.locate("/" + segment)
        author = await self._writer(request, located, "writing")
        update = request_body(conn)
        registry, setup = self._registry_for(located)
        room = await registry.acquire(located.key, setup)
        try:
            await room.settle()
            before = room.doc.get_state()
            pending = room.apply(update, author=author)
            if pending is not None:
                await pending
            await _durable(room)
            changed = room.doc.get_state() != before
        finally:
            registry.release(room)
        return _json(conn, 200, {"room": located.key, "changed": changed})

    def _registry_for(self, located: Located) -> tuple[RoomRegistry, Setup | None]:
        """Where ``located``'s room lives, and how a Jupyter one is set up."""
        route = located.route
        if route is None:
            return self.registry, None
        if route.target is None:
            raise BadRequest("a transient room is not served over HTTP")
        return self.registry, self.jupyter.setup(route.target)

    async def _restore(
        self,
        conn: ServerConnection,
        request: Request,
        segment: str,
        params: dict[str, list[str]],
    ) -> Response:
        """``POST /api/rooms/{room}/restore?at=``: the room as it was then, as
        a forward edit (restore.py), applied like a client's update; 200 once
        it is durable (and so sent to every peer)."""
        located = self.admitter.locate("/" + segment)
        author = await self._writer(request, located, "restoring")
        if "at" not in params:
            raise BadRequest("restore needs ?at=TIME")
        moment = _moment(params["at"][0])
        registry, setup = self._registry_for(located)
        # A Jupyter room's state (path, hash, dirty) is the file binding's.
        skip = frozenset({"state"}) if located.route else frozenset[str]()
        store = self.committer.store
        if not (await store.history(located.key, moment)).updates:
            return _json(conn, 404, {"error": f"no room {located.name!r}"})
        room = await registry.acquire(located.key, setup)
        try:
            await room.settle()
            # Read now that the room is loaded: nothing committed before is
            # missed. From the checkpoint before the moment on: the document
            # then, and every row since, to undo.
            history = await store.history(located.key, moment)
            _as_of(history, moment)  # 410 if thinned away
            update = await anyio.to_thread.run_sync(
                partial(
                    restoring_update,
                    history.updates,
                    history.times,
                    moment,
                    skip=skip,
                )
            )
            if update is not None:
                pending = room.apply(update, author=author)
                if pending is not None:
                    await pending
                await _durable(room)
        finally:
            registry.release(room)
        return _json(conn, 200, {"restored": update is not None, "at": moment})

    def _summary(self, name: str, stored: RoomSummary | None) -> dict[str, Any]:
        room = self.registry.rooms.get(name)
        return {
            "name": name,
            "rows": stored.rows if stored else 0,
            "bytes": stored.bytes if stored else 0,
            "last_change": stored.last_change if stored else None,
            "peers": len(room.peers) if room is not None else 0,
        }

    async def _room(
        self,
        conn: ServerConnection,
        request: Request,
        segment: str,
        what: str,
        params: dict[str, list[str]],
    ) -> Response:
        if what not in ("", "update", "json", "history"):
            return _json(conn, 404, {"error": "no such endpoint"})
        located = self.admitter.locate("/" + segment)
        if not self._is_admin(request):
            await self.admitter.authorize(request, located.key)
        stored = await self.committer.store.load(located.key)
        if not stored.updates and located.key not in self.registry.rooms:
            return _json(conn, 404, {"error": f"no room {located.name!r}"})
        if what == "":
            listed = {s.name: s for s in await self.committer.store.rooms()}
            return _json(conn, 200, self._summary(located.key, listed.get(located.key)))
        if what == "history":
            return _json(
                conn, 200, _history(await self.committer.store.history(located.key))
            )
        updates = stored.updates
        if "at" in params:
            moment = _moment(params["at"][0])
            history = await self.committer.store.history(located.key, moment)
            updates = _as_of(history, moment)
        # CPU-bound, and the first Jupyter rendering imports jupyter_ydoc:
        # in a thread, so other rooms are served meanwhile.
        if what == "json":
            body = await anyio.to_thread.run_sync(_rendered, located, updates)
            return _json(conn, 200, body)
        vector = b"\x00"
        if "sv" in params:
            try:
                vector = base64.urlsafe_b64decode(params["sv"][0] + "==")
            except (binascii.Error, ValueError):
                raise BadRequest("sv is a base64url state vector") from None
        update = await anyio.to_thread.run_sync(_difference, updates, vector)
        return respond(200, "application/octet-stream", update)


def _methods(path: str) -> tuple[str, ...] | None:
    """The methods ``path`` serves; None for no endpoint."""
    if path in ("/api/openapi.json", _ROOMS):
        return ("GET",)
    if not path.startswith(_ROOMS + "/"):
        return None
    what = path[len(_ROOMS) + 1 :].partition("/")[2]
    return _ROOM_METHODS.get(what)


_ROOM_METHODS = {
    "": ("GET", "DELETE"),
    "update": ("GET", "POST"),
    "restore": ("POST",),
    "json": ("GET",),
    "history": ("GET",),
}


def _history(history: History) -> dict[str, Any]:
    """The versions the store keeps: one per row, in commit order, after the
    oldest checkpoint kept (if any)."""
    rows = zip(history.times, history.authors, history.updates, strict=True)
    versions = list(rows)[1 if history.based else 0 :]
    return {
        "versions": [
            {"time": when, "user": author, "bytes": len(update)}
            for when, author, update in versions
        ],
        "snapshot": history.based,
        "since": history.since,
    }


def _moment(value: str) -> float:
    """``?at=``: Unix seconds, or an ISO 8601 time (UTC unless it says)."""
    if _SECONDS.fullmatch(value):
        return float(value)
    try:
        when = datetime.datetime.fromisoformat(value)
    except ValueError:
        raise BadRequest("at is Unix seconds or an ISO 8601 time") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return when.timestamp()


def _as_of(history: History, moment: float) -> list[bytes]:
    """The rows of ``history`` (read for ``moment``) that make the document
    as it was at ``moment``: its base, and the rows committed by then.

    Raises:
        Gone: ``moment`` is older than what the store keeps (thinned past
            --history-retention, or compacted without a history).
    """
    if history.since is not None and moment < history.since:
        since = datetime.datetime.fromtimestamp(history.since, datetime.UTC)
        raise Gone(f"the room's history before {since:%Y-%m-%dT%H:%M:%SZ} is not kept")
    return [
        u
        for t, u in zip(history.times, history.updates, strict=True)
        if t is None or t <= moment
    ]


async def _durable(room: Room, timeout: float = 30.0) -> None:
    """Wait until every update applied to ``room`` is durable (and echoed).

    The committer tells the room, not its callers; commits take milliseconds,
    so a short poll, bounded, is enough here.
    """
    with anyio.fail_after(timeout):
        while not room.settled:  # noqa: ASYNC110 - the room has no event for it
            await anyio.sleep(0.005)


def _difference(updates: list[bytes], vector: bytes) -> bytes:
    try:
        return bytes(doc_from_updates(updates).get_update(vector))
    except ValueError:
        raise BadRequest("sv is not a Yjs state vector") from None


def _rendered(located: Located, updates: list[bytes]) -> Any:
    route = located.route
    if route is None or route.target is None:
        return document_json(updates)
    return jupyter_json(updates, route.target.file_type)


def _json(conn: ServerConnection, status: int, body: Any) -> Response:
    return respond(status, "application/json", json.dumps(body).encode())
