"""``--auth glue``: trust the ysyncd Jupyter server extension.

The extension (``ysyncd.jupyter.extension``) authenticates the browser with
the Jupyter server's own auth, checks its contents permissions and opens the
room socket to ysyncd on its behalf, presenting a shared secret:

- ``Authorization: Bearer <secret>`` (the file of ``--glue-secret-file``);
- ``X-Ysyncd-User``: who the Jupyter server says the user is, for logs;
- ``X-Ysyncd-Write``: ``1`` if the user may write, else a read-only peer.

Anyone who knows the secret is trusted for every room, so bind ysyncd to a
private interface and keep the secret file private. Secrets are compared in
constant time.
"""

from __future__ import annotations

import hmac
from pathlib import Path

from websockets.http11 import Request

from ysyncd.auth.base import ANYONE, Grant, LocalAuthorizer, require_token
from ysyncd.errors import Unauthorized

__all__ = ["GlueAuth"]


class GlueAuth(LocalAuthorizer):
    # The extension decides per browser connection; a socket it opened ends
    # when the browser's does.
    rechecks = False

    def __init__(self, secret_file: Path | None) -> None:
        if secret_file is None:
            raise ValueError("--auth glue needs --glue-secret-file")
        self.secret = secret_file.read_bytes().strip()
        if len(self.secret) < 32:
            raise ValueError("the glue secret must be at least 32 bytes")

    async def authorize(self, request: Request, room: str) -> Grant:
        if not hmac.compare_digest(require_token(request).encode(), self.secret):
            raise Unauthorized("wrong glue secret")
        user = request.headers.get("X-Ysyncd-User") or "jupyter"
        read_only = request.headers.get("X-Ysyncd-Write") != "1"
        return Grant(user, ANYONE.rooms, read_only)
