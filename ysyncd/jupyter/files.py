"""Where Jupyter document rooms read and write their files.

One interface, :class:`Files`, two backends:

- :class:`FsFiles`: a directory per namespace on a volume ysyncd shares with
  the Jupyter servers (``--fs-root /home/{owner}``). Files are read and
  written as jupyter_server's ``FileContentsManager`` does, byte for byte.
- :class:`ContentsFiles`: the namespace's Jupyter server's Contents REST API,
  so its ContentsManager (S3, jupytext hooks, the notary, file id events)
  stays in charge.

File ids are turned into paths by a :class:`FileIds`: :class:`RestFileIds`
asks the Jupyter server (jupyter_server_fileid's ``GET api/fileid/path``),
:class:`StaticFileIds` holds a dict.

Paths are Contents API paths: relative, ``/``-separated. Content is a
Contents model's ``content`` (see :mod:`ysyncd.jupyter.documents`): a notebook
dict, a str (``text``), or base64 text (``base64``; bytes are accepted when
writing). A text file of type ``file`` is read with CRLF turned into LF, as
jupyter_server_ydoc's loader does, so saving it writes LF.

``FileState.hash`` is what a ContentsManager reports with ``require_hash``:
FileContentsManager's default is the sha256 hex digest of the file's bytes.

Errors carry the close code jupyter_server_ydoc would close a room with:
:class:`FileGone` 4404, :class:`BadFile` 4400, :class:`FilesUnavailable` 4500.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import errno
import hashlib
import importlib
import importlib.util
import logging
import os
import re
import secrets
import stat
import threading
from collections import OrderedDict
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote, urlsplit, urlunsplit

import httpx

from ysyncd.errors import YsyncdError
from ysyncd.namespaces import Namespace

if TYPE_CHECKING:
    from ysyncd.config import Settings

__all__ = [
    "BadFile",
    "ContentsFiles",
    "FileError",
    "FileGone",
    "FileIds",
    "FileState",
    "Files",
    "FilesUnavailable",
    "FsFiles",
    "Loaded",
    "RestFileIds",
    "StaticFileIds",
    "UnsafePath",
    "open_files",
]

log = logging.getLogger("ysyncd.jupyter")

#: Seconds an HTTP request to a Jupyter server may take.
TIMEOUT_S = 10.0


# --- errors --------------------------------------------------------------------


class FileError(YsyncdError):
    """A file could not be read or written; :attr:`close_code` for the room."""

    close_code = 4500


class FileGone(FileError):
    """The file (or its id) does not exist, or no longer does."""

    close_code = 4404


class BadFile(FileError):
    """The file cannot be a document of this format and type, or the content
    cannot be written as one (undecodable, not a notebook, a directory...)."""

    close_code = 4400


class UnsafePath(BadFile):
    """The path would leave the namespace's root (``..``, absolute, a
    symlink pointing out) or names the root itself."""


class FilesUnavailable(FileError):
    """The storage could not be asked: I/O error, permission, server down,
    credentials refused, an answer we cannot read."""

    close_code = 4500


# --- the interface ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FileState:
    """A file as last seen: enough to tell whether someone else wrote it."""

    path: str
    #: The file's mtime, as an aware UTC datetime (what the Contents API says).
    last_modified: datetime
    #: The ContentsManager's hash of the file's bytes (sha256 hex for files on
    #: disk); "" when unknown, which matches no real hash.
    hash: str


@dataclass(frozen=True, slots=True)
class Loaded:
    """A file's content and the state it was read in."""

    content: Any
    state: FileState


class FileIds(Protocol):
    async def resolve(self, ns: Namespace, file_id: str) -> str | None:
        """The path of ``file_id`` in ``ns``; None when no file has that id."""
        ...

    async def aclose(self) -> None: ...


class Files(FileIds, Protocol):
    """Storage of one kind for every namespace. Methods raise FileError."""

    async def read(
        self, ns: Namespace, path: str, file_format: str, file_type: str
    ) -> Loaded: ...

    async def write(
        self,
        ns: Namespace,
        path: str,
        file_format: str,
        file_type: str,
        content: Any,
    ) -> FileState:
        """Write ``content`` (creating the file if needed, not its directory)."""
        ...

    async def stat(self, ns: Namespace, path: str) -> FileState | None:
        """The file's state; None when it is gone (or is now a directory)."""
        ...


def open_files(settings: Settings) -> Files | None:
    """The storage ``--jupyter-files`` asks for; None for ``none``."""
    kind = settings.jupyter_files
    if kind == "none":
        return None
    if not settings.jupyter_url:
        raise ValueError(f"--jupyter-files {kind} needs --jupyter-url (for file ids)")
    ids = RestFileIds(settings.jupyter_url, settings.jupyter_token)
    if kind == "fs":
        if not settings.fs_root:
            raise ValueError("--jupyter-files fs needs --fs-root")
        if importlib.util.find_spec("nbformat") is None:
            raise ValueError(
                "--jupyter-files fs needs nbformat: pip install 'ysyncd[jupyter]'"
            )
        return FsFiles(settings.fs_root, ids)
    if kind == "contents":
        return ContentsFiles(settings.jupyter_url, settings.jupyter_token, ids)
    raise ValueError(f"unknown --jupyter-files {kind!r}")


# --- paths -----------------------------------------------------------------------


def api_path(path: str) -> str:
    """``path`` checked to be a relative Contents API path to a file.

    Raises:
        UnsafePath: absolute, empty, or with an empty, ``.`` or ``..`` segment.
    """
    if not path or path.startswith("/") or "\0" in path:
        raise UnsafePath(f"not a relative path: {path[:200]!r}")
    if any(part in ("", ".", "..") for part in path.split("/")):
        raise UnsafePath(f"the path has an empty, . or .. segment: {path[:200]!r}")
    return path


def _segment(value: str, what: str, *, optional: bool = False) -> str:
    """A namespace part (owner or server, decoded once already with the
    room's path), checked to stay one segment of a directory or URL path.

    It is not decoded again: ``%61lice`` is a user of that name, and must not
    reach ``alice``'s files.
    """
    if not value and not optional:
        raise UnsafePath(f"the {what} is empty")
    if value in (".", "..") or "/" in value or "\0" in value:
        raise UnsafePath(f"{what} {value[:64]!r} cannot be a path segment")
    return value


def _fill(template: str, owner: str, server: str) -> str:
    return template.format_map({"owner": owner, "server": server})


def _check_template(template: str) -> None:
    try:
        _fill(template, "o", "s")
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(
            f"{template!r}: only {{owner}} and {{server}} may be filled in ({exc})"
        ) from None


def _text_content(text: str, file_type: str) -> str:
    # jupyter_server_ydoc's FileLoader.load_content does this for "file" only.
    if file_type == "file" and "\r\n" in text:
        return text.replace("\r\n", "\n")
    return text


def _utc(timestamp: float) -> datetime:
    # What FileContentsManager reports: tz.utcfromtimestamp(st_mtime).
    return datetime.fromtimestamp(timestamp, UTC)


# --- a shared volume ---------------------------------------------------------------

_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_HASH_CACHE_SIZE = 4096


def _nbformat() -> Any:
    """The nbformat module, imported on first use.

    Importing it takes about a second (jsonschema's format checkers), which
    only deployments with notebooks on a volume should pay. Its functions
    are untyped; Any keeps that here.
    """
    return importlib.import_module("nbformat")


def _encode(file_format: str, file_type: str, content: Any) -> bytes:
    """The bytes FileContentsManager.save writes for a model's content."""
    text: str
    if file_type == "notebook":
        if not isinstance(content, Mapping) or not isinstance(
            content.get("nbformat"), int
        ):
            # nbformat would write anything, even with no version (as v1).
            raise BadFile("a notebook's content must be a JSON object with nbformat")
        nbformat = _nbformat()
        try:
            text = nbformat.writes(
                nbformat.from_dict(content), version=nbformat.NO_CONVERT
            )
        except Exception as exc:
            # nbformat raises whatever its converters meet; it only logs
            # schema errors (and jupyter_server writes such notebooks anyway).
            raise BadFile(f"not a notebook: {exc}") from exc
        if not text.endswith("\n"):
            text += "\n"  # nbformat.write adds it; writes does not
    elif file_format == "text":
        if not isinstance(content, str):
            raise BadFile("text content must be a string")
        text = content
    elif file_format == "base64":
        if isinstance(content, bytes):
            return content
        if not isinstance(content, str):
            raise BadFile("base64 content must be a string or bytes")
        try:
            return base64.decodebytes(content.encode("ascii"))
        except (UnicodeError, binascii.Error) as exc:
            raise BadFile(f"not base64: {exc}") from None
    else:
        raise BadFile(f"format {file_format!r} is for notebooks only")
    try:
        return text.encode("utf-8")
    except UnicodeError as exc:
        raise BadFile(f"not encodable as UTF-8: {exc}") from None


def _decode(raw: bytes, file_format: str, file_type: str, where: str) -> Any:
    """A model's content for the file's bytes, as FileContentsManager.get."""
    if file_type == "notebook":
        nbformat = _nbformat()
        try:
            text = raw.decode("utf-8")
            # Schema errors are logged, not raised, as by jupyter_server.
            nb = nbformat.reads(text, as_version=4, capture_validation_error={})
        except Exception as exc:
            raise BadFile(f"unreadable notebook {where}: {exc}") from exc
        # The notary marks code cells of a notebook whose signature it cannot
        # check as untrusted; ysyncd has no notary, so all are.
        for cell in nb.get("cells", ()):
            if cell.get("cell_type") == "code":
                cell.setdefault("metadata", {})["trusted"] = False
        return nb
    if file_format == "text":
        try:
            return _text_content(raw.decode("utf-8"), file_type)
        except UnicodeError:
            raise BadFile(f"{where} is not UTF-8 encoded") from None
    if file_format == "base64":
        return base64.encodebytes(raw).decode("ascii")
    raise BadFile(f"format {file_format!r} is for notebooks only")


def _os_error(exc: OSError, where: str) -> FileError:
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        return FileGone(f"{where} does not exist")
    if exc.errno == errno.ELOOP:
        return UnsafePath(f"{where} became a symlink while it was opened")
    if exc.errno == errno.EISDIR:
        return BadFile(f"{where} is a directory")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return FilesUnavailable(f"{where}: permission denied")
    return FilesUnavailable(f"{where}: {exc.strerror or exc}")


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


class FsFiles:
    """Files on a volume, one root directory per namespace.

    ``root_template`` names the root, with ``{owner}`` and ``{server}`` taken
    from the namespace (percent-decoded: they are URL path segments); e.g.
    ``/home/{owner}`` or ``/srv/{owner}/{server}``.

    A path must stay in its root: ``..``, absolute paths and symlinks whose
    target is outside are refused with :class:`UnsafePath`, also when a
    symlink is swapped in while the file is being opened (every open is
    checked afterwards against what it resolved to). Symlinks inside the
    root are followed; a symlinked file is written at its target.

    Writes are atomic: the bytes go to a hidden temporary file in the same
    directory, which is fsynced, given the old file's mode (and owner, when
    ysyncd may change it), and renamed over the file; readers see the old or
    the new file, never a mix, and a failure leaves the old one. Unlike
    FileContentsManager, no ``.ipynb_checkpoints`` are made.
    """

    def __init__(self, root_template: str, ids: FileIds | None = None) -> None:
        _check_template(root_template)
        self.root_template = root_template
        #: Where file ids are resolved; none by default.
        self.ids: FileIds = StaticFileIds() if ids is None else ids
        # st_mtime alone cannot tell writes within one clock tick apart;
        # inode, size and ctime (a rename sets it) narrow that down.
        self._hashes: OrderedDict[tuple[int, ...], str] = OrderedDict()
        self._hashes_lock = threading.Lock()

    async def resolve(self, ns: Namespace, file_id: str) -> str | None:
        return await self.ids.resolve(ns, file_id)

    async def aclose(self) -> None:
        await self.ids.aclose()

    def root(self, ns: Namespace) -> Path:
        """The directory ``ns``'s files are in."""
        owner = _segment(ns.owner, "owner")
        server = _segment(ns.server, "server", optional=True)
        return Path(_fill(self.root_template, owner, server))

    def locate(self, ns: Namespace, path: str) -> Path:
        """The file ``path`` names in ``ns``, with symlinks resolved.

        Raises:
            UnsafePath: the path leaves the root, or is the root.
        """
        root = os.path.realpath(self.root(ns))
        target = os.path.realpath(os.path.join(root, *api_path(path).split("/")))
        if target == root or os.path.commonpath([root, target]) != root:
            raise UnsafePath(f"{path[:200]!r} is outside its root directory")
        return Path(target)

    # realpath() is I/O too (an lstat per segment, on what may be NFS), so
    # locating runs in the worker thread with the rest.

    async def read(
        self, ns: Namespace, path: str, file_format: str, file_type: str
    ) -> Loaded:
        return await asyncio.to_thread(self._read, ns, path, file_format, file_type)

    async def write(
        self,
        ns: Namespace,
        path: str,
        file_format: str,
        file_type: str,
        content: Any,
    ) -> FileState:
        return await asyncio.to_thread(
            self._write, ns, path, file_format, file_type, content
        )

    async def stat(self, ns: Namespace, path: str) -> FileState | None:
        return await asyncio.to_thread(self._stat, ns, path)

    # -- in a worker thread ------------------------------------------------------

    def _open(self, target: Path, path: str) -> tuple[int, os.stat_result]:
        """A read-only fd on the regular file ``target`` and its stat."""
        try:
            fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW | _O_CLOEXEC)
        except OSError as exc:
            raise _os_error(exc, repr(path)) from None
        try:
            st = os.fstat(fd)
            self._check_opened(target, st, path)
            if not stat.S_ISREG(st.st_mode):
                raise BadFile(f"{path!r} is not a regular file")
        except BaseException:
            os.close(fd)
            raise
        return fd, st

    @staticmethod
    def _check_opened(target: Path, opened: os.stat_result, path: str) -> None:
        # Checked after opening, so a symlink swapped in for a directory on
        # the way is caught: then ``target`` no longer resolves to itself, or
        # is not what we hold open.
        try:
            same = os.path.realpath(target) == str(target) and _same_file(
                os.stat(target, follow_symlinks=False), opened
            )
        except OSError as exc:
            raise _os_error(exc, repr(path)) from None
        if not same:
            raise UnsafePath(f"{path!r} changed while it was opened")

    def _read_all(self, target: Path, path: str) -> tuple[bytes, os.stat_result]:
        fd, st = self._open(target, path)
        try:
            with os.fdopen(fd, "rb", closefd=False) as f:
                raw = f.read()
        except OSError as exc:
            raise _os_error(exc, repr(path)) from None
        finally:
            os.close(fd)
        return raw, st

    def _read(
        self, ns: Namespace, path: str, file_format: str, file_type: str
    ) -> Loaded:
        raw, st = self._read_all(self.locate(ns, path), path)
        digest = hashlib.sha256(raw).hexdigest()
        self._remember_hash(st, digest)
        content = _decode(raw, file_format, file_type, repr(path))
        return Loaded(content, FileState(path, _utc(st.st_mtime), digest))

    def _stat(self, ns: Namespace, path: str) -> FileState | None:
        target = self.locate(ns, path)
        try:
            st = os.stat(target, follow_symlinks=False)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _os_error(exc, repr(path)) from None
        if not stat.S_ISREG(st.st_mode):
            return None
        digest = self._known_hash(st)
        if digest is None:
            try:
                raw, st = self._read_all(target, path)
            except FileGone:
                return None
            digest = hashlib.sha256(raw).hexdigest()
            self._remember_hash(st, digest)
        return FileState(path, _utc(st.st_mtime), digest)

    def _write(
        self,
        ns: Namespace,
        path: str,
        file_format: str,
        file_type: str,
        content: Any,
    ) -> FileState:
        target = self.locate(ns, path)
        data = _encode(file_format, file_type, content)
        where = repr(path)
        try:
            dir_fd = os.open(
                target.parent, os.O_RDONLY | _O_DIRECTORY | os.O_NOFOLLOW | _O_CLOEXEC
            )
        except OSError as exc:
            raise _os_error(exc, f"the directory of {where}") from None
        try:
            self._check_opened(target.parent, os.fstat(dir_fd), path)
            written = self._replace(dir_fd, target.name, data, where)
        finally:
            os.close(dir_fd)
        digest = hashlib.sha256(data).hexdigest()
        self._remember_hash(written, digest)
        return FileState(path, _utc(written.st_mtime), digest)

    def _replace(
        self, dir_fd: int, name: str, data: bytes, where: str
    ) -> os.stat_result:
        """Atomically replace ``name`` in ``dir_fd`` with ``data``; its stat."""
        try:
            old: os.stat_result | None = os.stat(
                name, dir_fd=dir_fd, follow_symlinks=False
            )
        except FileNotFoundError:
            old = None
        except OSError as exc:
            raise _os_error(exc, where) from None
        if old is not None and not stat.S_ISREG(old.st_mode):
            raise BadFile(f"{where} is not a regular file")
        # Hidden, and short enough for any name; ".~" as jupyter_server's own.
        tmp = f".~ysyncd-{secrets.token_hex(8)}.tmp"
        try:
            fd = os.open(
                tmp,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | _O_CLOEXEC,
                # A new file gets what open() would give it (umask applies).
                0o600 if old is not None else 0o666,
                dir_fd=dir_fd,
            )
        except OSError as exc:
            raise _os_error(exc, f"a temporary file next to {where}") from None
        try:
            try:
                if old is not None:
                    self._keep_owner_and_mode(fd, old, where)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
                mine = os.fstat(fd)
            finally:
                os.close(fd)
            os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException as exc:
            try:
                os.unlink(tmp, dir_fd=dir_fd)
            except OSError as cleanup:
                log.warning("could not remove %s: %s", tmp, cleanup)
            if isinstance(exc, OSError):
                raise _os_error(exc, f"writing {where}") from None
            raise
        try:
            # The rename itself must survive a crash too.
            os.fsync(dir_fd)
        except OSError as exc:  # some network file systems refuse it
            log.warning("%s written, but its directory not synced: %s", where, exc)
        try:
            # With the ctime the rename gave it, for the hash cache; unless
            # someone else's file has replaced ours already.
            now = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return mine
        except OSError as exc:
            raise _os_error(exc, where) from None
        return now if _same_file(now, mine) else mine

    @staticmethod
    def _keep_owner_and_mode(fd: int, old: os.stat_result, where: str) -> None:
        new = os.fstat(fd)
        if (new.st_uid, new.st_gid) != (old.st_uid, old.st_gid):
            try:
                os.fchown(fd, old.st_uid, old.st_gid)
            except PermissionError:
                log.warning(
                    "%s is now owned by uid %d gid %d (was %d %d): ysyncd may "
                    "not change owners",
                    where,
                    new.st_uid,
                    new.st_gid,
                    old.st_uid,
                    old.st_gid,
                )
        # After fchown, which clears set-id bits.
        os.fchmod(fd, stat.S_IMODE(old.st_mode))

    def _key(self, st: os.stat_result) -> tuple[int, ...]:
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def _known_hash(self, st: os.stat_result) -> str | None:
        with self._hashes_lock:
            return self._hashes.get(self._key(st))

    def _remember_hash(self, st: os.stat_result, digest: str) -> None:
        with self._hashes_lock:
            self._hashes[self._key(st)] = digest
            self._hashes.move_to_end(self._key(st))
            while len(self._hashes) > _HASH_CACHE_SIZE:
                self._hashes.popitem(last=False)


# --- a Jupyter server's REST API ---------------------------------------------------


class _JupyterApi:
    """Requests to the Jupyter server of a namespace, with a token."""

    def __init__(
        self,
        url_template: str,
        token: str,
        *,
        timeout: float = TIMEOUT_S,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        _check_template(url_template)
        self.url_template = url_template
        self._headers = {"Authorization": f"token {token}"} if token else {}
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

        ``{owner}`` and ``{server}`` are escaped as JupyterHub escapes names
        in its URLs. An empty ``{server}`` (the default server) leaves no
        empty segment behind.
        """
        _segment(ns.owner, "owner")
        _segment(ns.server, "server", optional=True)
        owner, server = (quote(name, safe="@~") for name in (ns.owner, ns.server))
        url = urlsplit(_fill(self.url_template, owner, server))
        path = re.sub("/{2,}", "/", url.path.rstrip("/") + "/")
        return urlunsplit(url._replace(path=path))

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
                method, url, headers=self._headers, **kwargs
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
    """

    def __init__(
        self,
        url_template: str,
        token: str,
        *,
        timeout: float = TIMEOUT_S,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.api = _JupyterApi(url_template, token, timeout=timeout, client=client)

    async def aclose(self) -> None:
        await self.api.aclose()

    async def resolve(self, ns: Namespace, file_id: str) -> str | None:
        what = f"file id {file_id[:64]!r}"
        response = await self.api.get(ns, "api/fileid/path", {"id": file_id}, what)
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise self.api.refusal(response, what)
        path = self.api.json(response, what).get("path")
        if not isinstance(path, str):
            raise FilesUnavailable(f"{what}: the answer has no path")
        return path


class StaticFileIds:
    """File ids from a dict ``{file_id: path}``, the same in every namespace.

    The dict is used as is: change it to rename or delete a file.
    """

    def __init__(self, paths: MutableMapping[str, str] | None = None) -> None:
        self.paths: MutableMapping[str, str] = {} if paths is None else paths

    async def resolve(self, ns: Namespace, file_id: str) -> str | None:
        return self.paths.get(file_id)

    async def aclose(self) -> None:
        return None


def _is_directory(model: dict[str, Any]) -> bool:
    return model.get("type") == "directory"


def _rest_type(file_type: str) -> str:
    # The Contents API knows these; jupyter_server_ydoc saves others as files.
    return file_type if file_type in ("notebook", "file") else "file"


class ContentsFiles:
    """Files through each namespace's Jupyter server's Contents API.

    ``url_template`` is the server's base URL with ``{owner}`` and ``{server}``
    (e.g. ``http://hub:8000/user/{owner}/{server}/``); ``token`` goes in an
    ``Authorization: token`` header (a JupyterHub service token with
    ``access:servers``, or the server's own token). File ids are resolved by
    ``ids``, by default that server's fileid API.

    A write is a ``PUT`` and then a ``GET ...?content=0&hash=1`` for the hash,
    as jupyter_server_ydoc does (the PUT answer carries none). If the file was
    modified between the two, the state has the PUT's time and hash "".
    """

    def __init__(
        self,
        url_template: str,
        token: str,
        ids: FileIds | None = None,
        *,
        timeout: float = TIMEOUT_S,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.api = _JupyterApi(url_template, token, timeout=timeout, client=client)
        self.ids = ids or RestFileIds(url_template, token, client=self.api.client)

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
            content = _text_content(content, file_type)
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
        return "api/contents/" + quote(api_path(path), safe="/")

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
