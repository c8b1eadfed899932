"""``--auth glue``: trust the ysyncd Jupyter server extension.

The extension (``ysyncd.jupyter.extension``) authenticates the browser with
the Jupyter server's own auth, checks its contents permissions and opens the
room socket to ysyncd on its behalf, presenting a secret:

- ``Authorization: Bearer <secret>``;
- ``X-Ysyncd-User``: who the Jupyter server says the user is, for logs;
- ``X-Ysyncd-Write``: ``1`` if the user may write, else a read-only peer.

Two kinds of secret are accepted:

- **the master secret** (the file of ``--glue-secret-file``), for every room:
  for one Jupyter server next to ysyncd, or servers that all trust each other;
- **a namespace secret**, :func:`namespace_secret` of the master and one
  server's namespace, for that server's rooms only. Under JupyterHub each
  single-user server gets its own (the example config sets it), so code a
  user runs in their server, which can read what the extension reads, opens
  no one else's rooms.

Keep the master secret private to ysyncd (and whoever derives the namespace
secrets), and bind ysyncd to a private interface. Secrets are compared in
constant time.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from pathlib import Path

from websockets.http11 import Request

from ysyncd.auth.base import ANYONE, Grant, LocalAuthorizer, require_token
from ysyncd.errors import Unauthorized
from ysyncd.namespaces import Namespace, PathPattern

__all__ = ["GlueAuth", "namespace_secret"]


def namespace_secret(master: str | bytes, owner: str, server: str = "") -> str:
    """The secret that opens the rooms of ``owner``'s ``server`` only.

    ``owner`` and ``server`` are names as JupyterHub has them (unescaped);
    ``server`` is "" for a user's default server. It is the hex HMAC-SHA256,
    keyed with the master secret (stripped), of ``b"ysyncd glue namespace\0"``
    and ``user/{owner}`` or ``user/{owner}/{server}``.
    """
    key = master.strip() if isinstance(master, bytes) else master.strip().encode()
    namespace = f"user/{owner}/{server}" if server else f"user/{owner}"
    message = b"ysyncd glue namespace\0" + namespace.encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


@dataclass(frozen=True, slots=True)
class InNamespace:
    """The rooms of one Jupyter server."""

    pattern: PathPattern
    namespace: Namespace

    def __contains__(self, room: object) -> bool:
        return isinstance(room, str) and self.pattern.namespace(room) == self.namespace


class GlueAuth(LocalAuthorizer):
    # The extension decides per browser connection; a socket it opened ends
    # when the browser's does.
    rechecks = False

    def __init__(
        self, secret_file: Path | None, pattern: PathPattern | None = None
    ) -> None:
        if secret_file is None:
            raise ValueError("--auth glue needs --glue-secret-file")
        self.secret = secret_file.read_bytes().strip()
        if len(self.secret) < 32:
            raise ValueError("the glue secret must be at least 32 bytes")
        self.pattern = pattern or PathPattern()

    async def authorize(self, request: Request, room: str) -> Grant:
        presented = require_token(request).encode()
        user = request.headers.get("X-Ysyncd-User") or "jupyter"
        read_only = request.headers.get("X-Ysyncd-Write") != "1"
        if hmac.compare_digest(presented, self.secret):
            return Grant(user, ANYONE.rooms, read_only)
        namespace = self.pattern.namespace(room)
        if namespace is not None:
            expected = namespace_secret(self.secret, namespace.owner, namespace.server)
            if hmac.compare_digest(presented, expected.encode()):
                return Grant(user, InNamespace(self.pattern, namespace), read_only)
        raise Unauthorized("wrong glue secret")
