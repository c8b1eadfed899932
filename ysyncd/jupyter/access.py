"""Re-checking what the user of an open room socket may still do.

A Jupyter server checks a WebSocket's user once, at the upgrade; a kernel's
socket stays open after its user lost access (an unshared JupyterHub server,
a revoked token). For a shared document that would let the user go on
editing, so the ysyncd.jupyter extension asks its own server again, every
``recheck_seconds``, with the socket's own credentials:
``GET {server}/api/me?permissions={"contents": ["read", "write"]}``. That
runs the server's identity provider and authorizer as for any request (under
JupyterHub, a share withdrawn shows up once HubOAuth's cache expires).

A server that does not answer says nothing: the socket stays open.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.httputil import HTTPServerRequest, url_concat

__all__ = ["Access", "AccessCheck", "credentials_of"]

log = logging.getLogger("ysyncd.jupyter.extension")

_ASKED = json.dumps({"contents": ["read", "write"]})
#: What a request with credentials that no longer work gets from Jupyter
#: (an API handler answers 403 instead of redirecting to a login page).
_REFUSED = frozenset({401, 403})


@dataclass(frozen=True, slots=True)
class Access:
    """What credentials may do with files.

    Who they are is not compared: a token login without a user name gets a
    new anonymous name at every request.
    """

    read: bool
    write: bool


NO_ACCESS = Access(read=False, write=False)


def credentials_of(request: HTTPServerRequest) -> dict[str, str]:
    """The headers that authenticated ``request``: its cookie and token."""
    headers = {
        name: value
        for name in ("Authorization", "Cookie")
        if (value := request.headers.get(name))
    }
    token = request.query_arguments.get("token")
    if token and "Authorization" not in headers:
        headers["Authorization"] = f"token {token[0].decode(errors='replace')}"
    return headers


class AccessCheck:
    """Asks the Jupyter server at ``server_url()`` what credentials may do."""

    def __init__(self, server_url: Callable[[], str], *, timeout: float) -> None:
        self.server_url = server_url
        self.timeout = timeout

    async def access(self, credentials: dict[str, str]) -> Access | None:
        """What ``credentials`` may do now; None if the server did not say."""
        url = url_concat(
            self.server_url().rstrip("/") + "/api/me", {"permissions": _ASKED}
        )
        request = HTTPRequest(
            url,
            headers=credentials,
            connect_timeout=self.timeout,
            request_timeout=self.timeout,
            follow_redirects=False,
        )
        try:
            response = await AsyncHTTPClient().fetch(request, raise_error=False)
        except (OSError, HTTPClientError, ValueError) as exc:
            # ValueError: a URL tornado cannot fetch (a server on a Unix socket).
            log.warning("re-checking a room socket's access failed: %s", exc)
            return None
        if response.code in _REFUSED:
            return NO_ACCESS
        if response.code != 200:
            log.warning("re-checking a room socket's access: HTTP %d", response.code)
            return None
        try:
            actions = json.loads(response.body)["permissions"].get("contents", [])
        except (ValueError, KeyError, TypeError, AttributeError):
            log.warning("re-checking a room socket's access: not an identity model")
            return None
        return Access(read="read" in actions, write="write" in actions)
