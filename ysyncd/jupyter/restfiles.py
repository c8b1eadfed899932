"""Jupyter files and file ids through each namespace's Jupyter server's REST API.

- :class:`RestFileIds`: file ids from jupyter_server_fileid
  (``GET api/fileid/path?id=``);
- :class:`ContentsFiles`: files through the Contents API, so the server's
  ContentsManager (S3, jupytext hooks, the notary, file id events, its
  ``allow_hidden`` rule) stays in charge.

**What ysyncd presents** (:class:`Credentials`). A Jupyter server runs its
user's code, which can read every request the server gets; so ysyncd never
shows a server a credential that opens more than that server's own files:

- :class:`TokenCredentials`: one token (``Authorization: token``) at
  jupyter_server's own endpoints, for a URL without placeholders: one
  server, and that server's own token. A URL template with ``{owner}`` or
  ``{server}`` would show every server the same token, which would then open
  the others: that is refused.
- :class:`GlueCredentials`: each server's own namespace glue secret
  (:func:`ysyncd.auth.glue.namespace_secret`), which the server already holds
  to reach ysyncd, in ``X-Ysyncd-Glue``, at the ysyncd.jupyter extension's
  endpoints (``api/ysyncd/fileid/path``, ``api/ysyncd/contents/{path}``).
  They answer as the endpoints above do, for that secret only.
"""

from __future__ import annotations

import base64
import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar, Protocol
from urllib.parse import quote

import httpx

from ysyncd.auth.glue import namespace_secret
from ysyncd.jupyter.filebase import (
    BadFile,
    FileError,
    FileGone,
    FileIds,
    FileState,
    FilesUnavailable,
    Loaded,
    UnsafePath,
    api_path,
    text_content,
)
from ysyncd.jupyter.urls import check_url_template, fill, has_placeholders
from ysyncd.namespaces import Namespace

__all__ = [
    "GLUE_API",
    "GLUE_HEADER",
    "ContentsFiles",
    "Credentials",
    "GlueCredentials",
    "RestFileIds",
    "TokenCredentials",
]

log = logging.getLogger("ysyncd.jupyter")

#: Seconds an HTTP request to a Jupyter server may take.
TIMEOUT_S = 10.0
#: The header that carries a namespace glue secret to a Jupyter server.
GLUE_HEADER = "X-Ysyncd-Glue"
#: Where the ysyncd.jupyter extension serves ysyncd, under a server's base URL.
GLUE_API = "api/ysyncd/"


# --- what ysyncd presents ----------------------------------------------------------


class Credentials(Protocol):
    """What ysyncd presents to a namespace's Jupyter server, and where."""

    #: The endpoints' prefix under the server's base URL (``api/`` for
    #: jupyter_server's own).
    api: ClassVar[str]

    def headers(self, ns: Namespace) -> dict[str, str]:
        """The request headers that authenticate ysyncd to ``ns``'s server."""
        ...


@dataclass(frozen=True, slots=True)
class TokenCredentials:
    """One Jupyter server's own token, at its own endpoints; "" sends none."""

    token: str
    api: ClassVar[str] = "api/"

    def headers(self, ns: Namespace) -> dict[str, str]:
        return {"Authorization": f"token {self.token}"} if self.token else {}


@dataclass(frozen=True, slots=True)
class GlueCredentials:
    """Each server's namespace glue secret, derived from the master secret,
    at the ysyncd.jupyter extension's endpoints."""

    master: bytes
    api: ClassVar[str] = GLUE_API

    def __post_init__(self) -> None:
        if len(self.master.strip()) < 32:
            raise ValueError("the glue secret must be at least 32 bytes")

    @classmethod
    def from_file(cls, path: Path | None) -> GlueCredentials:
        """The master secret of ``--glue-secret-file``.

        Raises:
            ValueError: no file, or a secret shorter than 32 bytes.
            OSError: the file cannot be read.
        """
        if path is None:
            raise ValueError("--jupyter-credentials glue needs --glue-secret-file")
        return cls(path.read_bytes().strip())

    def headers(self, ns: Namespace) -> dict[str, str]:
        return {GLUE_HEADER: namespace_secret(self.master, ns.owner, ns.server)}


# --- a Jupyter server's REST API ---------------------------------------------------


def _credentials(credentials: Credentials | str) -> Credentials:
    return (
        TokenCredentials(credentials) if isinstance(credentials, str) else credentials
    )


class _JupyterApi:
    """Requests to the Jupyter server of a namespace, with credentials."""

    def __init__(
        self,
        url_template: str,
        credentials: Credentials | str,
        *,
        timeout: float = TIMEOUT_S,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        check_url_template(url_template, "--jupyter-url")
        self.credentials = _credentials(credentials)
        token = (
            isinstance(self.credentials, TokenCredentials) and self.credentials.token
        )
        if token and has_placeholders(url_template):
            # Every server would see a token that opens the others.
            raise ValueError(
                f"--jupyter-url {url_template!r} names a Jupyter server per "
                "namespace: --jupyter-token would be shown to each of them, "
                "and any could use it on the others. Use "
                "--jupyter-credentials glue (each server gets its own glue "
                "secret), or a URL naming one server with its own token"
            )
        self.url_template = url_template
        # The Jupyter servers are internal: no proxies from the environment.
        self.client = client or httpx.AsyncClient(
            timeout=timeout, trust_env=False, follow_redirects=False
        )
        self._owns_client = client is None

    async def aclose(self) -> None:
        if self._owns_client:
            await self.client.aclose()

    def server_url(self, ns: Namespace) -> str:
        """The base URL of ``ns``'s server, ending in ``/``.

        ``{owner}`` and ``{server}`` are filled in as escaped path segments
        (:func:`ysyncd.jupyter.urls.fill`).

        Raises:
            UnsafePath: a name cannot be a path segment.
        """
        try:
            url = fill(self.url_template, ns.owner, ns.server)
        except ValueError as exc:
            raise UnsafePath(str(exc)) from None
        return url if url.endswith("/") else url + "/"

    def endpoint(self, name: str) -> str:
        """Where ``name`` (``contents/``, ``fileid/path``) is under a server."""
        return self.credentials.api + name

    async def get(
        self, ns: Namespace, endpoint: str, params: dict[str, str], what: str
    ) -> httpx.Response:
        return await self.request("GET", ns, endpoint, what, params=params)

    async def request(
        self, method: str, ns: Namespace, endpoint: str, what: str, **kwargs: Any
    ) -> httpx.Response:
        url = self.server_url(ns) + endpoint
        try:
            response = await self.client.request(
                method, url, headers=self.credentials.headers(ns), **kwargs
            )
        except httpx.HTTPError as exc:
            # Rooms poll every second and log what they get: debug here.
            log.debug("%s %s: %s", method, self.server_url(ns), exc)
            raise FilesUnavailable(
                f"{what}: the Jupyter server did not answer ({type(exc).__name__})"
            ) from None
        return response

    @staticmethod
    def refusal(response: httpx.Response, what: str) -> FileError:
        """The error for a response that is not a success."""
        status = response.status_code
        reason = _message(response)
        if status == 404:
            return FileGone(f"{what}: not found")
        if status == 400:
            return BadFile(f"{what}: {reason}")
        if status in (401, 403):
            # A bad token, or a file the server will not let anyone write.
            return FilesUnavailable(f"{what}: the Jupyter server refused: {reason}")
        return FilesUnavailable(
            f"{what}: the Jupyter server answered {status} {reason}"
        )

    @staticmethod
    def json(response: httpx.Response, what: str) -> dict[str, Any]:
        try:
            body = response.json()
        except ValueError:  # not JSON, or not even UTF-8
            body = None
        if not isinstance(body, dict):
            raise FilesUnavailable(f"{what}: the answer is not a JSON object")
        return body


def _message(response: httpx.Response) -> str:
    # jupyter_server's error bodies: {"message": ..., "reason": ...}
    try:
        body = response.json()
    except ValueError:
        return response.reason_phrase
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return str(body["message"])[:300]
    return response.reason_phrase


class RestFileIds:
    """File ids from the Jupyter server's jupyter_server_fileid REST API.

    ``GET {server}api/fileid/path?id=<id>`` answers ``{"id", "path"}``, the
    path relative to the server's root_dir, or 404 for an unknown id (also
    once the file is deleted). It needs ``read`` on ``contents``. Ids cannot
    be made this way: the server makes them (``PUT api/collaboration/session``).
    With :class:`GlueCredentials`, the extension's ``api/ysyncd/fileid/path``
    answers instead. ``credentials`` may be a token (a str).
    """

    def __init__(
        self,
        url_template: str,
        credentials: Credentials | str,
        *,
        timeout: float = TIMEOUT_S,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.api = _JupyterApi(
            url_template, credentials, timeout=timeout, client=client
        )

    async def aclose(self) -> None:
        await self.api.aclose()

    async def resolve(self, ns: Namespace, file_id: str) -> str | None:
        what = f"file id {file_id[:64]!r}"
        endpoint = self.api.endpoint("fileid/path")
        response = await self.api.get(ns, endpoint, {"id": file_id}, what)
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise self.api.refusal(response, what)
        path = self.api.json(response, what).get("path")
        if not isinstance(path, str):
            raise FilesUnavailable(f"{what}: the answer has no path")
        return path


def _is_directory(model: dict[str, Any]) -> bool:
    return model.get("type") == "directory"


def _rest_type(file_type: str) -> str:
    # The Contents API knows these; jupyter_server_ydoc saves others as files.
    return file_type if file_type in ("notebook", "file") else "file"


class ContentsFiles:
    """Files through each namespace's Jupyter server's Contents API.

    ``url_template`` is the server's base URL, with ``{owner}`` and
    ``{server}`` in its path (e.g. ``http://hub:8000/user/{owner}/{server}/``);
    ``credentials`` say what is presented there (see the module docs; a str
    is one server's own token). File ids are resolved by ``ids``, by default
    that server's fileid API with the same credentials.

    A write is a ``PUT`` and then a ``GET ...?content=0&hash=1`` for the hash,
    as jupyter_server_ydoc does (the PUT answer carries none). If the file was
    modified between the two, the state has the PUT's time and hash "".
    """

    def __init__(
        self,
        url_template: str,
        credentials: Credentials | str,
        ids: FileIds | None = None,
        *,
        timeout: float = TIMEOUT_S,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.api = _JupyterApi(
            url_template, credentials, timeout=timeout, client=client
        )
        self.ids = ids or RestFileIds(
            url_template, self.api.credentials, client=self.api.client
        )

    async def aclose(self) -> None:
        await self.ids.aclose()
        await self.api.aclose()

    async def resolve(self, ns: Namespace, file_id: str) -> str | None:
        return await self.ids.resolve(ns, file_id)

    async def read(
        self, ns: Namespace, path: str, file_format: str, file_type: str
    ) -> Loaded:
        params = {"type": _rest_type(file_type), "content": "1", "hash": "1"}
        if file_type != "notebook":
            if file_format == "json":
                raise BadFile(f"format {file_format!r} is for notebooks only")
            params["format"] = file_format
        model = await self._model(ns, path, params)
        if model is None:
            raise BadFile(f"{path!r} is a directory")
        content = model.get("content")
        if file_type == "notebook" and not isinstance(content, dict):
            raise BadFile(f"{path!r} is not a notebook")
        if file_type != "notebook" and not isinstance(content, str):
            raise FilesUnavailable(f"{path!r}: the answer has no content")
        if isinstance(content, str) and model.get("format") == "text":
            content = text_content(content, file_type)
        return Loaded(content, self._state(path, model))

    async def write(
        self,
        ns: Namespace,
        path: str,
        file_format: str,
        file_type: str,
        content: Any,
    ) -> FileState:
        rest_type = _rest_type(file_type)
        if rest_type == "file" and file_format == "json":
            raise BadFile(f"format {file_format!r} is for notebooks only")
        if isinstance(content, bytes):
            content = base64.b64encode(content).decode("ascii")
        body = {"type": rest_type, "format": file_format, "content": content}
        what = f"saving {path!r}"
        response = await self.api.request(
            "PUT", ns, self._endpoint(path), what, json=body
        )
        if response.status_code not in (200, 201):
            raise self.api.refusal(response, what)
        saved = self._state(path, self.api.json(response, what), need_hash=False)
        now = await self.stat(ns, path)
        if now is None:
            raise FileGone(f"{path!r} was deleted as it was saved")
        if now.last_modified != saved.last_modified:
            return saved  # someone wrote it since: their hash is not ours
        return now

    async def stat(self, ns: Namespace, path: str) -> FileState | None:
        what = repr(path)
        endpoint = self._endpoint(path)
        response = await self.api.get(ns, endpoint, {"content": "0", "hash": "1"}, what)
        if response.status_code == 500:
            # jupyter_server's answer to hash=1 on a directory: ask without.
            again = await self.api.get(ns, endpoint, {"content": "0"}, what)
            if again.status_code == 200 and _is_directory(self.api.json(again, what)):
                return None
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise self.api.refusal(response, what)
        model = self.api.json(response, what)
        return None if _is_directory(model) else self._state(path, model)

    def _endpoint(self, path: str) -> str:
        return self.api.endpoint("contents/") + quote(api_path(path), safe="/")

    async def _model(
        self, ns: Namespace, path: str, params: dict[str, str]
    ) -> dict[str, Any] | None:
        """The Contents model of ``path``; None for a directory."""
        what = repr(path)
        response = await self.api.get(ns, self._endpoint(path), params, what)
        if response.status_code != 200:
            raise self.api.refusal(response, what)
        model = self.api.json(response, what)
        return None if _is_directory(model) else model

    @staticmethod
    def _state(
        path: str, model: dict[str, Any], *, need_hash: bool = True
    ) -> FileState:
        try:
            last_modified = datetime.fromisoformat(model["last_modified"])
        except (KeyError, TypeError, ValueError):
            raise FilesUnavailable(
                f"{path!r}: the answer has no last_modified"
            ) from None
        digest = model.get("hash")
        if not isinstance(digest, str):
            if need_hash:
                # A ContentsManager without require_hash (jupyter_server < 2.11).
                raise FilesUnavailable(f"{path!r}: the Jupyter server gives no hash")
            digest = ""
        return FileState(path, last_modified, digest)
