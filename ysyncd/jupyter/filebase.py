"""The file storage interface of Jupyter document rooms, and its errors.

Backends implement :class:`Files` (see :mod:`ysyncd.jupyter.files`). Paths
are Contents API paths: relative, ``/``-separated. Content is a Contents
model's ``content``: a notebook dict, a str (``text``), or base64 text
(``base64``; bytes are accepted when writing).

Errors carry the close code jupyter_server_ydoc would close a room with:
:class:`FileGone` 4404, :class:`BadFile` 4400, :class:`FilesUnavailable` 4500.
A file Jupyter hides (``allow_hidden``) is gone: it gets the same error, and
the same message, as a file that does not exist.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from ysyncd.errors import YsyncdError
from ysyncd.namespaces import Namespace

__all__ = [
    "BadFile",
    "FileError",
    "FileGone",
    "FileIds",
    "FileState",
    "Files",
    "FilesUnavailable",
    "Loaded",
    "StaticFileIds",
    "UnsafePath",
    "api_path",
    "is_hidden_path",
    "text_content",
]


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
        """The file's state; None when it is gone (or is now a directory, or
        hidden)."""
        ...


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


# --- paths and content -----------------------------------------------------------


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


def is_hidden_path(path: str) -> bool:
    """Whether a segment of the API path starts with ``.``: Jupyter's
    ``is_hidden`` hides it (and what is in it) unless ``allow_hidden``."""
    return any(part.startswith(".") for part in path.split("/"))


def text_content(text: str, file_type: str) -> str:
    """A text file's content as a room holds it."""
    # jupyter_server_ydoc's FileLoader.load_content does this for "file" only.
    if file_type == "file" and "\r\n" in text:
        return text.replace("\r\n", "\n")
    return text
