"""``--auth jupyterhub``: JupyterHub tokens and its server-access scopes.

The token is checked with ``GET {hub_api}/user`` (no service credential is
needed for that), which answers with the token's expanded scopes. A room in
the namespace ``user/{owner}/{server}`` opens to a token holding any of:

- ``access:servers`` (unfiltered: admins),
- ``access:servers!user={owner}``,
- ``access:servers!server={owner}/{server}`` (``{owner}/`` for the default
  server; a share grants exactly this).

That is the rule the single-user server itself applies
(``Spawner.oauth_access_scopes``). Group filters (``!group=``) are not
expanded. JupyterHub has no read-only server access, so grants here write.
"""

from __future__ import annotations

from dataclasses import dataclass

from websockets.http11 import Request

from ysyncd.auth.base import Grant, digest, require_token
from ysyncd.auth.remote import Remote
from ysyncd.errors import AuthUnavailable, Forbidden
from ysyncd.namespaces import Namespace, PathPattern

__all__ = ["HubAuth", "ServerScopes"]


@dataclass(frozen=True, slots=True)
class ServerScopes:
    """The rooms of every Jupyter server a set of scopes gives access to."""

    pattern: PathPattern
    scopes: frozenset[str]

    def __contains__(self, room: object) -> bool:
        namespace = self.pattern.namespace(room) if isinstance(room, str) else None
        return namespace is not None and self.opens(namespace)

    def opens(self, ns: Namespace) -> bool:
        return not self.scopes.isdisjoint(
            (
                "access:servers",
                f"access:servers!user={ns.owner}",
                f"access:servers!server={ns.owner}/{ns.server}",
            )
        )


class HubAuth(Remote):
    def __init__(self, api_url: str, pattern: PathPattern, cache_seconds: float):
        if not api_url:
            raise ValueError(
                "--auth jupyterhub needs --hub-api-url (or $JUPYTERHUB_API_URL)"
            )
        super().__init__(cache_seconds)
        self.user_url = api_url.rstrip("/") + "/user"
        self.pattern = pattern

    async def authorize(self, request: Request, room: str) -> Grant:
        token = require_token(request)
        if self.pattern.namespace(room) is None:
            raise Forbidden("the room is not in a JupyterHub server's namespace")
        model = await self.get_json(
            digest(token), self.user_url, {"Authorization": f"token {token}"}
        )
        name, scopes = model.get("name"), model.get("scopes")
        if not isinstance(name, str) or not isinstance(scopes, list):
            raise AuthUnavailable("JupyterHub's /user answer has no name or scopes")
        return Grant(name, ServerScopes(self.pattern, frozenset(scopes))).check(room)
