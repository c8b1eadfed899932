"""The file endpoints the ysyncd.jupyter extension serves to ysyncd itself.

With ``ysyncd serve --jupyter-credentials glue``, ysyncd resolves file ids and
reads and saves files here, instead of at jupyter_server_fileid's and the
Contents API's own endpoints, under the server's base URL:

- ``GET api/ysyncd/fileid/path?id=<id>``: ``{"id", "path"}``, or 404;
- ``GET api/ysyncd/contents/{path}?type=&format=&content=&hash=``: the
  Contents model, as ``GET api/contents/{path}`` gives it;
- ``PUT api/ysyncd/contents/{path}`` with ``{"type", "format", "content"}``:
  saves a file or notebook (200, or 201 if it is new), as ``PUT
  api/contents/{path}`` does.

They take one credential: this server's own glue secret, in
``X-Ysyncd-Glue`` (see :meth:`ysyncd.jupyter.glue.Glue.accepts`), which
the server already holds to reach ysyncd. So the server, and the user code it
runs, learns nothing from ysyncd's requests, and ysyncd needs no token that
would open anyone's server. Without it: **401**. The ContentsManager decides
the rest as for any request, ``allow_hidden`` included: a hidden file is 404
to read and 400 to save, as in the Contents API.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from jupyter_client.jsonutil import json_default
from jupyter_server.auth.decorator import allow_unauthenticated
from jupyter_server.base.handlers import APIHandler, JupyterHandler
from jupyter_server.utils import ensure_async
from tornado import web

from ysyncd.jupyter.restfiles import GLUE_API, GLUE_HEADER

__all__ = ["ContentsEndpoint", "FileIdEndpoint", "handlers", "is_hidden"]

_TYPES = frozenset({"file", "notebook", "directory"})
_FORMATS = frozenset({"text", "base64"})


async def allowed(handler: JupyterHandler, action: str) -> bool:
    """Whether the Jupyter server's authorizer lets the user ``action`` contents."""
    verdict = await ensure_async(
        handler.authorizer.is_authorized(
            handler, handler.current_user, action, "contents"
        )
    )
    return bool(verdict)


async def is_hidden(contents: Any, path: str) -> bool:
    """Whether the ContentsManager refuses ``path`` as hidden: the check
    jupyter_server's own contents handlers make, ``allow_hidden`` first."""
    if contents.allow_hidden:
        return False
    return bool(await ensure_async(contents.is_hidden(path)))


class _GlueHandler(APIHandler):
    """A request from ysyncd, authenticated by this server's glue secret.

    Not by the Jupyter server's identity provider: ysyncd is none of its
    users, and must not need a token that opens their servers.
    """

    def initialize(self, accepts: Callable[[str], bool]) -> None:
        self.accepts = accepts
        self._glued = False

    # As APIHandler's own: no _redirect_to_login, an API never redirects.
    async def prepare(self) -> None:  # type: ignore[override]
        if not self.accepts(self.request.headers.get(GLUE_HEADER, "")):
            self.current_user = self._jupyter_current_user = None
            raise web.HTTPError(401, reason="Not ysyncd")
        self._glued = True
        await super().prepare()

    def check_xsrf_cookie(self) -> None:
        # No cookie authenticates these requests, only a header that no other
        # site can make a browser send.
        if not self._glued:
            super().check_xsrf_cookie()

    def _finish_model(self, model: dict[str, Any]) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(model, default=json_default))


class FileIdEndpoint(_GlueHandler):
    """``GET api/ysyncd/fileid/path?id=``: jupyter_server_fileid's answer."""

    @allow_unauthenticated
    async def get(self) -> None:
        ids = self.settings.get("file_id_manager")
        if ids is None:
            raise web.HTTPError(500, "jupyter_server_fileid is not enabled")
        file_id = self.get_query_argument("id")
        path = ids.get_path(file_id)
        if path is None:
            raise web.HTTPError(404, f"no file has the id {file_id[:64]!r}")
        self._finish_model({"id": file_id, "path": path})


class ContentsEndpoint(_GlueHandler):
    """``GET`` and ``PUT api/ysyncd/contents/{path}``: the Contents API's answers."""

    @allow_unauthenticated
    async def get(self, path: str) -> None:
        contents: Any = self.contents_manager  # sync or async: untyped
        file_type = self.get_query_argument("type", None)
        file_format = self.get_query_argument("format", None)
        if file_type is not None and file_type not in _TYPES:
            raise web.HTTPError(400, f"type {file_type[:32]!r} is invalid")
        if file_format is not None and file_format not in _FORMATS:
            raise web.HTTPError(400, f"format {file_format[:32]!r} is invalid")
        if await is_hidden(contents, path):
            raise web.HTTPError(404, f"file or directory {path!r} does not exist")
        model = await ensure_async(
            contents.get(
                path=path,
                type=file_type,
                format=file_format,
                content=self._flag("content", "1"),
                require_hash=self._flag("hash", "0"),
            )
        )
        self._finish_model(model)

    @allow_unauthenticated
    async def put(self, path: str) -> None:
        contents: Any = self.contents_manager
        body = self.get_json_body()
        if (
            not isinstance(body, dict)
            or body.get("type") not in ("file", "notebook")
            or "content" not in body
        ):
            raise web.HTTPError(400, "expected {'type', 'format', 'content'}")
        if await is_hidden(contents, path):
            raise web.HTTPError(400, f"Cannot create file or directory {path!r}")
        model = {key: body[key] for key in ("type", "format", "content") if key in body}
        existed = await ensure_async(contents.file_exists(path))
        saved = await ensure_async(contents.save(model, path))
        self.set_status(200 if existed else 201)
        self._finish_model(saved)

    def _flag(self, name: str, default: str) -> bool:
        value = self.get_query_argument(name, default)
        if value not in ("0", "1"):
            raise web.HTTPError(400, f"{name} must be 0 or 1")
        return value == "1"


def handlers(accepts: Callable[[str], bool]) -> list[tuple[str, Any, dict[str, Any]]]:
    """The endpoints, for ``ExtensionApp.handlers``."""
    options = {"accepts": accepts}
    return [
        (f"/{GLUE_API}fileid/path", FileIdEndpoint, options),
        (f"/{GLUE_API}contents/(.*)", ContentsEndpoint, options),
    ]
