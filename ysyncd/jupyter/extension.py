"""The ysyncd Jupyter server extension: JupyterLab's RTC endpoints, served by ysyncd.

It takes the place of jupyter-server-ydoc's server part (the frontend packages,
``jupyter-docprovider`` and ``jupyter-collaboration-ui``, stay as they are) and
keeps no document state itself. Two endpoints, under the server's base URL:

- ``PUT api/collaboration/session/{path}`` with ``{"format", "type"}``: the
  file's id from jupyter_server_fileid (**200** if it had one, **201** if it
  was just indexed, **404** if the ContentsManager has no such file, or
  hides it as the Contents API does, ``allow_hidden`` off: with fileid's
  default manager, jupyter-server-ydoc would index either) and, as the
  ``sessionId``, the epoch of ysyncd's store (``GET /_ysyncd/epoch``). Unlike
  jupyter-server-ydoc it needs ``read`` on ``contents``, not ``write``: an id
  is about reading a file, and read-only users must be able to open one.
- ``GET api/collaboration/room/{room}`` (WebSocket): the browser is
  authenticated by the Jupyter server (cookie, token) and needs ``read`` on
  ``contents``; the socket is then piped to ysyncd's
  ``{ysyncd_url}/{namespace}/api/collaboration/room/{room}?{query}``, with the
  shared secret of ``ysyncd serve --auth glue`` and the user's ``write``
  permission (``X-Ysyncd-Write``). Frames go both ways unchanged, and so do
  close codes and reasons (4404 for a file that is gone, 1003 to reload...).
  If ysyncd refuses or cannot be reached, the upgrade fails with an HTTP
  error (the browser then retries, as for any dropped socket). Every
  ``recheck_seconds`` the socket's credentials are checked again (see
  access.py): a user who may no longer read, or no longer write when they
  could, is closed with **4403**.

ysyncd resolves file ids itself (``--jupyter-url``, this server's
``api/fileid/path``) and polls the files of its rooms. With
``--jupyter-credentials glue`` it does so at this extension's
``api/ysyncd/...`` endpoints instead, presenting this server's own glue
secret rather than a token (see serverfiles.py). The extension listens
to the contents events (save, upload, rename, delete) and tells ysyncd at once
(``GET /_ysyncd/changed/{namespace}``), so a rename, a delete or a save made
outside JupyterLab shows up in the room without waiting for the next poll.

Configuration (``c.YsyncdExtension.*``; the environment gives defaults):

- ``ysyncd_url`` (``$YSYNCD_URL``, ``ws://127.0.0.1:1234``);
- ``secret_file`` (``$YSYNCD_GLUE_SECRET_FILE``) or ``secret``
  (``$YSYNCD_GLUE_SECRET``): the secret of ysyncd's ``--glue-secret-file``,
  or the namespace secret derived from it for this server alone (see
  ``ysyncd.auth.glue``);
- ``recheck_seconds`` (30): how often open room sockets' access is checked
  again; 0 checks at connection only;
- ``namespace``: the ``user/{owner}[/{server}]`` part of ysyncd's room paths,
  naming this Jupyter server (file ids are unique per server only); under
  JupyterHub it comes from ``$JUPYTERHUB_USER`` and
  ``$JUPYTERHUB_SERVER_NAME``, elsewhere it is ``user/local``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Coroutine
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from jupyter_server.auth.decorator import ws_authenticated
from jupyter_server.base.handlers import APIHandler, JupyterHandler
from jupyter_server.base.websocket import WebSocketMixin
from jupyter_server.extension.application import ExtensionApp
from jupyter_server.utils import ensure_async
from tornado import web
from tornado.websocket import (
    WebSocketClientConnection,
    WebSocketClosedError,
    WebSocketHandler,
)
from traitlets import Bool, Float, Int, TraitError, Unicode, default, validate

from ysyncd.auth.recheck import REVOKED
from ysyncd.config import MiB
from ysyncd.jupyter import forks, serverfiles
from ysyncd.jupyter.access import AccessCheck, credentials_of
from ysyncd.jupyter.collaboration import (
    Collaboration,
    stand_in_for_jupyter_server_ydoc,
)
from ysyncd.jupyter.glue import Glue, log_failure
from ysyncd.jupyter.live import LiveDocuments
from ysyncd.jupyter.serverfiles import allowed
from ysyncd.jupyter.sessions import Sessions

__all__ = ["Glue", "RoomHandler", "SessionHandler", "YsyncdExtension"]

log = logging.getLogger("ysyncd.jupyter.extension")

#: Close codes an endpoint may send (RFC 6455 7.4); others become 1011.
_SENDABLE = (range(1000, 1004), range(1007, 1015), range(3000, 5000))
#: Close code and reason when ysyncd's socket ends without a close frame.
LOST = (1011, "ysyncd connection lost")
#: jupyter_server's contents events, and those that change a file.
CONTENTS_EVENTS = "https://events.jupyter.org/jupyter_server/contents_service/v1"
_CHANGES = frozenset({"save", "upload", "rename", "delete"})


def relayable(code: int | None, reason: str | None) -> tuple[int | None, str | None]:
    """How to close the browser's socket after ysyncd closed ours.

    ``code`` is None when no close frame came (or one without a code); 1005
    and 1006 are never sent, so the browser gets 1011 then and reconnects.
    """
    if code is None or code in (1005, 1006):
        return LOST
    if any(code in codes for codes in _SENDABLE):
        return code, reason
    return 1011, reason


class SessionHandler(APIHandler):
    """``PUT api/collaboration/session/{path}``: a file id and the sessionId."""

    auth_resource = "contents"

    def initialize(self, glue: Glue) -> None:
        self.glue = glue

    @web.authenticated
    async def put(self, path: str) -> None:
        if not await allowed(self, "read"):
            raise web.HTTPError(403)
        try:
            body = json.loads(self.request.body)
            file_format, file_type = body["format"], body["type"]
        except (ValueError, KeyError, TypeError):
            raise web.HTTPError(400, "expected {'format': …, 'type': …}") from None
        if not isinstance(file_format, str) or not isinstance(file_type, str):
            raise web.HTTPError(400, "format and type must be strings")
        ids = self.settings.get("file_id_manager")
        if ids is None:
            raise web.HTTPError(500, "jupyter_server_fileid is not enabled")
        # jupyter_server_fileid's default manager indexes any path, even one
        # with no file behind it: ask the ContentsManager first.
        contents: Any = self.contents_manager  # sync or async: untyped
        # Hidden files are missing, as GET api/contents says (and first).
        if await serverfiles.is_hidden(contents, path) or not await ensure_async(
            contents.file_exists(path)
        ):
            raise web.HTTPError(404, f"File {path!r} does not exist")
        session = await self.glue.epoch()
        file_id, status = ids.get_id(path), 200
        if file_id is None:
            file_id, status = ids.index(path), 201
            if file_id is None:
                raise web.HTTPError(404, f"File {path!r} does not exist")
        self.set_status(status)
        self.finish(
            json.dumps(
                {
                    "format": file_format,
                    "type": file_type,
                    "fileId": file_id,
                    "sessionId": session,
                }
            )
        )


class RoomHandler(WebSocketMixin, WebSocketHandler, JupyterHandler):
    """``api/collaboration/room/{room}``: the browser's socket, piped to ysyncd."""

    auth_resource = "contents"

    def initialize(
        self, glue: Glue, access: AccessCheck, recheck: float, sessions: Sessions
    ) -> None:
        self.glue = glue
        self.access_check = access
        self.recheck_seconds = recheck
        self.sessions = sessions
        self._opened: str | None = None  # the room told to sessions as open
        self.upstream: WebSocketClientConnection | None = None
        self._write = False
        self._tasks: list[asyncio.Task[None]] = []

    def set_default_headers(self) -> None:
        """No JupyterHandler headers (CSP...) on an upgrade, as for kernels."""

    @property
    def max_message_size(self) -> int:
        return self.glue.max_message_bytes

    @ws_authenticated
    async def get(self, room: str) -> None:
        if not await allowed(self, "read"):
            raise web.HTTPError(403)
        if self.request.headers.get("Upgrade", "").lower() != "websocket":
            await super().get(room)  # tornado's answer to a plain GET
            return
        if not room or "/" in room:  # (%2F) ysyncd would see another room
            raise web.HTTPError(400, reason="Not a room id")
        # Tornado checks the origin in super().get(): too late, ysyncd would
        # have loaded the room for a cross-site page by then.
        headers = self.request.headers
        origin = headers.get("Origin") or headers.get("Sec-Websocket-Origin")
        if origin is not None and not self.check_origin(origin):
            raise web.HTTPError(403, reason="Cross origin websockets not allowed")
        self._write = await allowed(self, "write")
        self.upstream = await self.glue.connect(
            room, self.request.query, self.current_user.username, self._write
        )
        try:
            # Returns once the browser's socket is closed, or was never opened.
            await super().get(room)
        finally:
            self._close_upstream()

    async def open(self, room: str) -> None:
        super().open()  # WebSocketMixin: keepalive pings to the browser
        self._opened = room
        self.sessions.opened(room, self.current_user.username)
        self._start(self._pipe_downstream())
        if self.recheck_seconds > 0:
            self._start(self._recheck_access())

    def _start(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        task.add_done_callback(log_failure)
        self._tasks.append(task)

    async def on_message(self, message: str | bytes) -> None:
        """Browser → ysyncd. Tornado reads the next frame once this is sent."""
        upstream = self.upstream
        if upstream is None:
            return
        try:
            await upstream.write_message(message, binary=isinstance(message, bytes))
        except WebSocketClosedError:
            # ysyncd closed; _pipe_downstream relays how.
            log.debug("a frame for a closed ysyncd socket was dropped")

    async def _pipe_downstream(self) -> None:
        """ysyncd → browser, then ysyncd's close code and reason."""
        upstream = self.upstream
        assert upstream is not None
        while (message := await upstream.read_message()) is not None:
            try:
                await self.write_message(message, binary=isinstance(message, bytes))
            except WebSocketClosedError:
                return  # the browser went; get() closes ysyncd's socket
        code, reason = upstream.close_code, upstream.close_reason
        if code == 1003 and reason:
            self._check_session(reason)
        self.close(*relayable(code, reason))

    async def _recheck_access(self) -> None:
        """Close the socket once its user may no longer do what they could."""
        credentials = credentials_of(self.request)
        user = self.current_user.username
        while True:
            await asyncio.sleep(self.recheck_seconds)
            now = await self.access_check.access(credentials)
            if now is None:
                continue  # the server did not say: keep the socket
            if not now.read:
                reason = "access withdrawn"
            elif self._write and not now.write:
                reason = "write access withdrawn"
            else:
                continue
            log.info("closing %s's room socket: %s", user, reason)
            # Nothing more goes to ysyncd, not even frames the browser sends
            # before it answers the close.
            upstream, self.upstream = self.upstream, None
            if upstream is not None:
                upstream.close(REVOKED, reason)
            self.close(REVOKED, reason)
            return

    def _check_session(self, reason: str) -> None:
        try:
            verdict = json.loads(reason)
        except ValueError:
            return  # a plain-text reason: not the session verdict
        if isinstance(verdict, dict) and verdict.get("reason") == "unknown_session":
            self.glue.forget(self.get_query_argument("sessionId", ""))

    def _close_upstream(self) -> None:
        if self._opened is not None:
            self.sessions.closed(self._opened, self.current_user.username)
            self._opened = None
        for task in self._tasks:
            task.cancel()
        upstream, self.upstream = self.upstream, None
        if upstream is not None:
            # The browser's close code when it closed first.
            code, reason = relayable(self.close_code, self.close_reason)
            if (code, reason) == LOST:
                code, reason = 1001, "browser gone"
            upstream.close(code, reason)


class YsyncdExtension(ExtensionApp):
    """Serves JupyterLab's collaboration endpoints with a ysyncd sidecar."""

    name = "ysyncd"
    description = "JupyterLab real-time collaboration backed by ysyncd"

    ysyncd_url = Unicode(
        help="ysyncd's WebSocket URL (ws:// or wss://); $YSYNCD_URL by default.",
    ).tag(config=True)
    secret_file = Unicode(
        help="File holding ysyncd's --glue-secret-file secret; "
        "$YSYNCD_GLUE_SECRET_FILE by default.",
    ).tag(config=True)
    secret = Unicode(
        help="The secret itself, when there is no secret_file: the master "
        "secret or this server's namespace secret (ysyncd.auth.glue."
        "namespace_secret); $YSYNCD_GLUE_SECRET by default.",
    ).tag(config=True)
    namespace = Unicode(
        help="The user/{owner}[/{server}] path prefix naming this Jupyter "
        "server in ysyncd; from $JUPYTERHUB_USER and $JUPYTERHUB_SERVER_NAME "
        "under JupyterHub, else user/local.",
    ).tag(config=True)
    timeout = Float(
        10.0, help="Seconds to wait for ysyncd to answer a connection."
    ).tag(config=True)
    recheck_seconds = Float(
        30.0,
        help="Check an open room socket's access again this often (seconds): "
        "a user who lost read access, or write access they had, is closed "
        "with 4403. 0 checks at connection only.",
    ).tag(config=True)
    max_message_bytes = Int(
        32 * MiB,
        help="Largest WebSocket message piped either way (ysyncd's "
        "--max-message-bytes).",
    ).tag(config=True)
    server_side_execution = Bool(
        False,
        help="Have JupyterLab run cells through the server's REST API "
        "(jupyter-server-nbmodel), which writes their outputs into the "
        "shared notebook; as jupyter-server-ydoc's trait of that name.",
    ).tag(config=True)
    document_cleanup_delay = Float(
        60.0,
        help="Seconds after a document's last socket here closes before its "
        "room is told 'clean'; a live document (get_document) stays open at "
        "least this long after it was last asked for.",
    ).tag(config=True)

    collaboration: Collaboration | None = None

    @default("ysyncd_url")
    def _default_url(self) -> str:
        return os.environ.get("YSYNCD_URL") or "ws://127.0.0.1:1234"

    @default("secret_file")
    def _default_secret_file(self) -> str:
        return os.environ.get("YSYNCD_GLUE_SECRET_FILE", "")

    @default("secret")
    def _default_secret(self) -> str:
        return os.environ.get("YSYNCD_GLUE_SECRET", "")

    @default("namespace")
    def _default_namespace(self) -> str:
        user = os.environ.get("JUPYTERHUB_USER")
        if not user:
            return "user/local"
        # Path segments as JupyterHub escapes them in its URLs.
        namespace = f"user/{quote(user, safe='@~')}"
        server = os.environ.get("JUPYTERHUB_SERVER_NAME", "")
        return f"{namespace}/{quote(server, safe='@~')}" if server else namespace

    @validate("ysyncd_url")
    def _check_url(self, proposal: dict[str, Any]) -> str:
        url = str(proposal["value"])
        parts = urlsplit(url)
        if parts.scheme not in ("ws", "wss") or not parts.netloc:
            raise TraitError(f"ysyncd_url must be a ws:// or wss:// URL, not {url!r}")
        if parts.query or parts.fragment:
            raise TraitError("ysyncd_url has no query or fragment")
        return url

    @validate("namespace")
    def _check_namespace(self, proposal: dict[str, Any]) -> str:
        namespace = str(proposal["value"]).strip("/")
        # URL path segments, maybe %-escaped (as JupyterHub escapes names);
        # ysyncd reads them unescaped, so %2F would split one.
        segments = unquote(namespace).split("/")
        if (
            len(segments) != namespace.count("/") + 1
            or any(s in ("", ".", "..") or not s.isprintable() for s in segments)
            or set(namespace) & set("?# ")
        ):
            raise TraitError(f"not a namespace path: {namespace!r}")
        return namespace

    def _read_secret(self) -> str:
        secret = self.secret
        if not secret and self.secret_file:
            secret = Path(self.secret_file).read_text()
        secret = secret.strip()
        if not secret:
            raise ValueError(
                "ysyncd.jupyter needs ysyncd's glue secret: set "
                "c.YsyncdExtension.secret_file, $YSYNCD_GLUE_SECRET_FILE or "
                "$YSYNCD_GLUE_SECRET"
            )
        if len(secret.encode()) < 32:
            raise ValueError("the ysyncd glue secret must be at least 32 bytes")
        return secret

    def _link_jupyter_server_extension(self, serverapp: Any) -> None:
        super()._link_jupyter_server_extension(serverapp)
        # Now, before any extension loads: those that look collaboration up
        # at their load come first by name (see collaboration.py).
        self.collaboration = stand_in_for_jupyter_server_ydoc(serverapp)

    def initialize_settings(self) -> None:
        self.glue = Glue(
            self.ysyncd_url,
            self._read_secret(),
            self.namespace,
            timeout=self.timeout,
            max_message_bytes=self.max_message_bytes,
        )
        self.log.info(
            "ysyncd.jupyter: rooms go to %s/%s", self.ysyncd_url, self.namespace
        )
        assert self.serverapp is not None
        events = self.serverapp.event_logger
        assert events is not None  # set before extensions load
        events.add_listener(schema_id=CONTENTS_EVENTS, listener=self._on_contents_event)
        web_settings = self.serverapp.web_app.settings

        def path_of(file_id: str) -> str | None:
            ids = web_settings.get("file_id_manager")
            return None if ids is None else ids.get_path(file_id)

        self.sessions = Sessions(
            events, path_of, clean_seconds=self.document_cleanup_delay
        )
        self.live = LiveDocuments(self.glue, keep_seconds=self.document_cleanup_delay)
        self.forks = forks.Forks(self.glue, self.live, self.sessions)
        if self.collaboration is not None:
            self.collaboration.bind(self.live, self.sessions)
            self.collaboration.server_side_execution = self.server_side_execution
            self.settings["jupyter_server_ydoc"] = self.collaboration

    async def _on_contents_event(
        self, logger: Any, schema_id: str, data: dict[str, Any]
    ) -> None:
        """A jupyter_events listener (called with these keyword arguments)."""
        if data.get("action") == "save" and isinstance(data.get("path"), str):
            self.sessions.saved(data["path"])
        if data.get("action") in _CHANGES:
            # jupyter_server_fileid moves or drops its ids in a listener of
            # its own; let it run before ysyncd asks where a file id went.
            await asyncio.sleep(0)
            self.glue.files_changed()

    def initialize_handlers(self) -> None:
        assert self.serverapp is not None
        if self.serverapp.jpserver_extensions.get("jupyter_server_ydoc"):
            # Its handlers come first (extensions load by name) and win.
            self.log.warning(
                "ysyncd.jupyter: jupyter_server_ydoc is enabled too and serves "
                "api/collaboration itself; disable it"
            )
        page_config = self.serverapp.web_app.settings.setdefault("page_config_data", {})
        page_config.setdefault("disableRTC", False)
        page_config.setdefault("serverSideExecution", self.server_side_execution)
        serverapp = self.serverapp
        room_options = {
            "glue": self.glue,
            "access": AccessCheck(
                lambda: serverapp.connection_url, timeout=self.timeout
            ),
            "recheck": self.recheck_seconds,
            "sessions": self.sessions,
        }
        self.handlers.extend(
            [
                (r"/api/collaboration/room/(.*)", RoomHandler, room_options),
                (
                    r"/api/collaboration/session/(.*)",
                    SessionHandler,
                    {"glue": self.glue},
                ),
                *forks.handlers(self.forks),
                *serverfiles.handlers(self.glue.accepts),
            ]
        )

    async def stop_extension(self) -> None:
        """Close the live documents' sockets (the server stops)."""
        self.forks.close()
        self.live.close()
        self.sessions.close()
