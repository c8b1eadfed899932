"""``--auth delegate``: let a Jupyter server decide, from its own credentials.

The upgrade request's token and cookie are forwarded to
``{delegate_url}/api/me?permissions={"contents":["read","write"]}``. Contents
``read`` lets the user in, ``write`` lets them edit; otherwise 403. This is the
only way to admit JupyterLab's cookie-only sockets without the server's
cookie secret.

``--delegate-url`` may hold ``{owner}`` and ``{server}``, filled from the
room's namespace (e.g. ``http://hub:8000/user/{owner}/{server}``), so each
room is checked by the server it belongs to, and the grant opens that
server's rooms only. They may stand in the URL's path only, and are filled
in as escaped path segments (:mod:`ysyncd.jupyter.urls`): a user's name
never picks the host the request, with its token or cookie, goes to.

Jupyter names its login cookie after the host and port the browser used, so
for cookie sign-in the delegate URL must use them too (or the Jupyter server
must fix ``IdentityProvider.cookie_name``).

A cookie is sent by the browser whatever page opened the socket, so a
cookie-only request must come from an ``--allowed-origins`` origin
(cross-site WebSocket hijacking).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from websockets.http11 import Request

from ysyncd.auth.base import ANYONE, Grant, cookie_of, digest, token_of
from ysyncd.auth.remote import Remote
from ysyncd.errors import AuthUnavailable, Forbidden, Unauthorized
from ysyncd.jupyter.urls import check_url_template, fill, has_placeholders
from ysyncd.namespaces import Namespace, PathPattern

__all__ = ["DelegateAuth"]

_PERMISSIONS = json.dumps({"contents": ["read", "write"]}, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class SameServer:
    """The rooms of one namespace."""

    pattern: PathPattern
    namespace: Namespace

    def __contains__(self, room: object) -> bool:
        return isinstance(room, str) and self.pattern.namespace(room) == self.namespace


class DelegateAuth(Remote):
    def __init__(
        self,
        url: str,
        pattern: PathPattern,
        cache_seconds: float,
        allowed_origins: frozenset[str],
    ) -> None:
        if not url:
            raise ValueError("--auth delegate needs --delegate-url")
        check_url_template(url, "--delegate-url")
        super().__init__(cache_seconds)
        self.url = url
        self.per_server = has_placeholders(url)
        self.pattern = pattern
        self.allowed_origins = allowed_origins

    def _me_url(self, room: str) -> tuple[str, Namespace | None]:
        if not self.per_server:
            return _join(self.url), None
        namespace = self.pattern.namespace(room)
        if namespace is None:
            raise Forbidden("the room is not in a Jupyter server's namespace")
        try:
            url = fill(self.url, namespace.owner, namespace.server)
        except ValueError as exc:
            raise Forbidden(str(exc)) from None
        return _join(url), namespace

    async def authorize(self, request: Request, room: str) -> Grant:
        token, cookie = token_of(request), cookie_of(request)
        if token is None and cookie is None:
            raise Unauthorized("a token or a Jupyter login cookie is required")
        if token is None and request.headers.get("Origin") not in self.allowed_origins:
            raise Forbidden("cookie sign-in is not accepted from this origin")
        url, namespace = self._me_url(room)
        headers = (
            {"Authorization": f"token {token}"} if token else {"Cookie": cookie or ""}
        )
        key = digest("\0".join((url, token or "", cookie or "")))
        me = await self.get_json(key, f"{url}?permissions={_PERMISSIONS}", headers)
        identity, permissions = me.get("identity"), me.get("permissions")
        if not isinstance(identity, dict) or not isinstance(permissions, dict):
            raise AuthUnavailable("the Jupyter server's /api/me answer is malformed")
        contents = permissions.get("contents") or []
        user = str(identity.get("username") or identity.get("name") or "unknown")
        if "read" not in contents:
            raise Forbidden(f"{user} may not read this server's files")
        rooms = (
            ANYONE.rooms if namespace is None else SameServer(self.pattern, namespace)
        )
        return Grant(user, rooms, read_only="write" not in contents)


def _join(base: str) -> str:
    """``base`` + ``api/me``, with one slash between path segments."""
    scheme, sep, rest = base.partition("://")
    return scheme + sep + re.sub("/{2,}", "/", rest.rstrip("/") + "/api/me")
