"""The plain HTTP endpoints, beside the WebSocket rooms.

* ``/healthz``: 200, or 503 with the reason while the store or the backplane
  cannot be relied on (see :mod:`ysyncd.health`);
* ``/metrics``: Prometheus counters and gauges;
* ``/_ysyncd/epoch``: the store's epoch (a Jupyter session id);
* ``/_ysyncd/changed/{namespace}``: the Jupyter server extension's word that
  files changed;
* ``/_ysyncd/history/{room}``: a room's stored history, for the Jupyter
  timeline (see :meth:`Routes._history`).

Only requests without an upgrade reach these, so rooms may have any name.
"""

from __future__ import annotations

import base64
import http
import json

from prometheus_client import CONTENT_TYPE_LATEST
from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from ysyncd.admission import Admitter
from ysyncd.commits import Committer
from ysyncd.config import Settings
from ysyncd.errors import AuthError, Forbidden, StoreError
from ysyncd.health import Health
from ysyncd.jupyter.service import JupyterRooms
from ysyncd.names import room_from_path
from ysyncd.rooms import RoomRegistry
from ysyncd.stats import Stats

__all__ = ["FILES_CHANGED", "HISTORY", "Routes", "respond"]

#: Where the Jupyter server extension says its files changed.
FILES_CHANGED = "/_ysyncd/changed/"
#: Where a room's stored history is read.
HISTORY = "/_ysyncd/history/"


class Routes:
    """The server's HTTP side; mixed into the server's application."""

    settings: Settings
    admitter: Admitter
    jupyter: JupyterRooms
    registry: RoomRegistry
    committer: Committer
    stats: Stats
    health: Health

    def _refuse(self, conn: ServerConnection, room: str, exc: AuthError) -> Response:
        # The reason goes to the client and the log; it never holds a token.
        self.stats.refused(exc.status, f"room {room!r}: {exc}")
        response = conn.respond(exc.status, f"{exc}\n")
        if exc.status == http.HTTPStatus.UNAUTHORIZED:
            response.headers["WWW-Authenticate"] = 'Bearer realm="ysyncd"'
        return response

    async def _files_changed(
        self, conn: ServerConnection, request: Request, path: str
    ) -> Response:
        """``GET /_ysyncd/changed/{namespace}``: a Jupyter server's files changed.

        Asked as a writer of that namespace's rooms would be (the extension
        with its glue secret); the answer says how many rooms were told.
        """
        prefix = room_from_path(
            "/" + path[len(FILES_CHANGED) :],
            max_bytes=self.settings.max_room_name_bytes,
        )
        # Any room of the namespace stands for it, as the extension names them.
        located = self.admitter.locate_name(
            f"{prefix.rstrip('/')}/api/collaboration/room/-"
        )
        namespace = self.jupyter.pattern.namespace(located.key)
        if located.route is None or namespace is None:
            return conn.respond(http.HTTPStatus.NOT_FOUND, "not a Jupyter namespace\n")
        try:
            grant = await self.admitter.authorize(request, located.key)
        except AuthError as exc:
            return self._refuse(conn, located.key, exc)
        if grant.read_only:
            return self._refuse(conn, located.key, Forbidden("read-only"))
        told = self.jupyter.files_changed(self.registry.rooms.values(), namespace)
        return conn.respond(http.HTTPStatus.OK, json.dumps({"rooms": told}) + "\n")

    async def _history(
        self, conn: ServerConnection, request: Request, path: str
    ) -> Response:
        """``GET /_ysyncd/history/{room}``: what the store holds of a room.

        JSON ``{"updates": [{"time": seconds or null, "update": base64}]}``,
        in commit order: the oldest checkpoint kept first (no time), then
        every update committed since, with its time (see
        :meth:`UpdateStore.history`). Replayed
        in order they give the document as it was after each. Asked with
        the credentials that would open the room (read access).
        """
        located = self.admitter.locate("/" + path[len(HISTORY) :])
        try:
            await self.admitter.authorize(request, located.key)
        except AuthError as exc:
            return self._refuse(conn, located.key, exc)
        try:
            stored = await self.committer.store.history(located.key)
        except StoreError as exc:
            self.stats.refused(503, f"history of {located.key!r}: {exc}")
            return conn.respond(
                http.HTTPStatus.SERVICE_UNAVAILABLE, "store unavailable\n"
            )
        body = {
            "updates": [
                {"time": when, "update": base64.b64encode(update).decode()}
                for when, update in zip(stored.times, stored.updates, strict=True)
            ]
        }
        response = conn.respond(http.HTTPStatus.OK, json.dumps(body))
        response.headers["Content-Type"] = "application/json"
        return response

    def _plain_http(self, conn: ServerConnection, path: str) -> Response:
        # Only requests without an upgrade reach these, so rooms may have any name.
        if path == "/healthz":
            problem = self.health.problem()
            if problem is None:
                return conn.respond(http.HTTPStatus.OK, "ok\n")
            return conn.respond(http.HTTPStatus.SERVICE_UNAVAILABLE, f"{problem}\n")
        if path == "/metrics":
            return respond(200, CONTENT_TYPE_LATEST, self.stats.render())
        if path == "/_ysyncd/epoch":
            # What a Jupyter session endpoint hands out as the sessionId.
            epoch = json.dumps({"epoch": self.committer.store.epoch})
            return conn.respond(http.HTTPStatus.OK, epoch + "\n")
        return conn.respond(
            http.HTTPStatus.UPGRADE_REQUIRED, "a y-websocket client is expected here\n"
        )


def respond(status: int, content_type: str, body: bytes) -> Response:
    """A whole HTTP response; the connection closes after it."""
    headers = Headers(
        [
            ("Connection", "close"),
            ("Content-Length", str(len(body))),
            ("Content-Type", content_type),
        ]
    )
    return Response(status, http.HTTPStatus(status).phrase, headers, body)
