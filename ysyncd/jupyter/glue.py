"""How a Jupyter server's ysyncd.jupyter extension reaches ysyncd, and knows it.

:class:`Glue` holds ysyncd's URLs and this server's glue secret: it fetches
ysyncd's epoch (the session id), tells ysyncd when files changed, opens
ysyncd's side of room sockets, and recognises ysyncd's own requests to this
server (:meth:`Glue.accepts`, for serverfiles.py).
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import logging
from urllib.parse import parse_qsl, quote, unquote, urlencode

from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.websocket import (
    WebSocketClientConnection,
    WebSocketError,
    websocket_connect,
)

from ysyncd.auth.glue import namespace_secret
from ysyncd.config import MiB

__all__ = ["Glue", "log_failure"]

log = logging.getLogger("ysyncd.jupyter.extension")

#: ysyncd's HTTP refusals that say something about the request, passed on;
#: any other (401: a wrong secret) is this server's problem: 502.
_RELAYED_STATUSES = frozenset({400, 403, 404, 503})


class Glue:
    """How this Jupyter server reaches ysyncd: URLs, the secret, the epoch."""

    def __init__(
        self,
        ysyncd_url: str,
        secret: str,
        namespace: str,
        *,
        timeout: float = 10.0,
        max_message_bytes: int = 32 * MiB,
    ) -> None:
        self.ysyncd_url = ysyncd_url.rstrip("/")
        self.secret = secret
        self.namespace = namespace
        self.timeout = timeout
        self.max_message_bytes = max_message_bytes
        scheme, _, rest = self.ysyncd_url.partition(":")
        http = "https" if scheme == "wss" else "http"
        self._http_url = f"{http}:{rest}"
        self.epoch_url = f"{http}:{rest}/_ysyncd/epoch"
        self.changed_url = f"{http}:{rest}/_ysyncd/changed/{namespace}"
        self._epoch: str | None = None
        self._epoch_lock = asyncio.Lock()
        self._notifier: asyncio.Task[None] | None = None
        self._changed_again = False
        self._accepted = _own_secrets(secret, namespace)

    def accepts(self, presented: str) -> bool:
        """Whether ysyncd presented this server's own glue secret.

        ysyncd presents the namespace secret of this server's namespace: the
        secret itself when this server holds a namespace secret, or derived
        here from it when this server holds the master secret.
        """
        given = presented.encode()
        return bool(given) and any(
            hmac.compare_digest(given, s) for s in self._accepted
        )

    # --- the session id ---------------------------------------------------------

    async def epoch(self) -> str:
        """ysyncd's store epoch: fetched once, then cached until :meth:`forget`."""
        if self._epoch is None:
            async with self._epoch_lock:
                if self._epoch is None:
                    self._epoch = await self._fetch_epoch()
        return self._epoch

    def forget(self, epoch: str) -> None:
        """ysyncd told a client ``epoch`` is unknown: fetch it again next time.

        Its store was wiped and has a new epoch; handing out the old one would
        send every browser into a reload loop.
        """
        if epoch and epoch == self._epoch:
            log.info("ysyncd's epoch changed; fetching it again")
            self._epoch = None

    async def _fetch_epoch(self) -> str:
        request = HTTPRequest(
            self.epoch_url,
            connect_timeout=self.timeout,
            request_timeout=self.timeout,
            follow_redirects=False,
        )
        try:
            response = await AsyncHTTPClient().fetch(request, raise_error=False)
        except (OSError, HTTPClientError) as exc:  # refused, reset, timed out
            log.warning("GET %s: %s", self.epoch_url, exc)
            raise web.HTTPError(503, "ysyncd is not reachable") from None
        epoch = None
        if response.code == 200:
            try:
                epoch = json.loads(response.body).get("epoch")
            except (ValueError, AttributeError):
                epoch = None
        if not isinstance(epoch, str) or not epoch:
            log.warning("GET %s: HTTP %d, no epoch", self.epoch_url, response.code)
            raise web.HTTPError(503, "ysyncd did not give its epoch")
        return epoch

    # --- files changed -----------------------------------------------------------

    def files_changed(self) -> None:
        """Tell ysyncd that files changed; events that come meanwhile share
        the next request, so a burst of them costs two requests at most."""
        self._changed_again = True
        if self._notifier is None or self._notifier.done():
            self._notifier = asyncio.create_task(self._notify())
            self._notifier.add_done_callback(log_failure)

    async def _notify(self) -> None:
        while self._changed_again:
            self._changed_again = False
            request = HTTPRequest(
                self.changed_url,
                headers={
                    "Authorization": f"Bearer {self.secret}",
                    "X-Ysyncd-Write": "1",  # asked as the rooms' writer
                },
                connect_timeout=self.timeout,
                request_timeout=self.timeout,
                follow_redirects=False,
            )
            try:
                response = await AsyncHTTPClient().fetch(request, raise_error=False)
            except (OSError, HTTPClientError) as exc:
                # ysyncd's own poll finds the change a little later.
                log.warning("GET %s: %s", self.changed_url, exc)
                continue
            if response.code != 200:
                log.warning("GET %s: HTTP %d", self.changed_url, response.code)

    # --- a room's history --------------------------------------------------------

    async def history(self, room: str) -> list[tuple[float | None, bytes]]:
        """The room's stored updates and their commit times, in order (see
        ysyncd's ``/_ysyncd/history/``); raises an :class:`HTTPError`."""
        path = f"{self.namespace}/api/collaboration/room/{quote(room, safe=':@')}"
        request = HTTPRequest(
            f"{self._http_url}/_ysyncd/history/{path}",
            headers={"Authorization": f"Bearer {self.secret}"},
            connect_timeout=self.timeout,
            request_timeout=self.timeout,
            follow_redirects=False,
        )
        try:
            response = await AsyncHTTPClient().fetch(request, raise_error=False)
        except (OSError, HTTPClientError) as exc:
            log.warning("history of %r: %s", room, exc)
            raise web.HTTPError(503, reason="ysyncd not reachable") from None
        if response.code != 200:
            log.warning("history of %r: HTTP %d", room, response.code)
            raise web.HTTPError(502, reason="ysyncd gave no history")
        try:
            rows = json.loads(response.body)["updates"]
            return [(row["time"], base64.b64decode(row["update"])) for row in rows]
        except (ValueError, KeyError, TypeError) as exc:
            raise web.HTTPError(502, reason="ysyncd's history is unreadable") from exc

    # --- the room socket --------------------------------------------------------

    def room_url(self, room: str, query: str) -> str:
        """ysyncd's URL for ``room``; the browser's query without its token."""
        params = parse_qsl(query, keep_blank_values=True)
        kept = urlencode([(k, v) for k, v in params if k != "token"])
        path = f"{self.namespace}/api/collaboration/room/{quote(room, safe=':@')}"
        return f"{self.ysyncd_url}/{path}" + (f"?{kept}" if kept else "")

    async def connect(
        self, room: str, query: str, user: str, write: bool
    ) -> WebSocketClientConnection:
        """Open ysyncd's side of a room socket, or raise an :class:`HTTPError`.

        The errors carry a reason but no log message: tornado would log the
        request's URL with it, and the browser's ``?token=`` in it.
        """
        request = HTTPRequest(
            self.room_url(room, query),
            headers={
                "Authorization": f"Bearer {self.secret}",
                # For ysyncd's logs only; ASCII, whatever the user name.
                "X-Ysyncd-User": quote(user, safe="@~+"),
                "X-Ysyncd-Write": "1" if write else "0",
            },
            connect_timeout=self.timeout,
            request_timeout=self.timeout,
        )
        try:
            return await websocket_connect(
                request, max_message_size=self.max_message_bytes
            )
        except HTTPClientError as exc:
            # ysyncd answered without upgrading (or 599: timed out).
            log.warning("ysyncd refused room %r: %s", room, exc)
            if exc.code in _RELAYED_STATUSES:
                raise web.HTTPError(exc.code, reason="Refused by ysyncd") from None
            raise web.HTTPError(502, reason="Refused by ysyncd") from None
        except (OSError, WebSocketError) as exc:  # refused, reset; not a socket
            log.warning("ysyncd is not reachable for room %r: %s", room, exc)
            raise web.HTTPError(502, reason="ysyncd not reachable") from None


def _own_secrets(secret: str, namespace: str) -> list[bytes]:
    """``secret``, and the namespace secret it derives for ``namespace``
    (``user/{owner}[/{server}]``, escaped as in URLs), if it has that shape."""
    own = [secret.encode()]
    kind, *names = [unquote(part) for part in namespace.split("/")]
    if kind == "user" and len(names) in (1, 2):
        own.append(namespace_secret(secret, *names).encode())
    return own


def log_failure(task: asyncio.Task[None]) -> None:
    """A task's done callback: log what it failed with (it runs on its own)."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("piping a room socket failed", exc_info=exc)
