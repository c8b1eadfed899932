"""Where Jupyter document rooms read and write their files.

One interface, :class:`Files` (:mod:`ysyncd.jupyter.filebase`), two backends:

- :class:`FsFiles` (:mod:`ysyncd.jupyter.fsfiles`): a directory per namespace
  on a volume ysyncd shares with the Jupyter servers (``--fs-root
  /home/{owner}``). Files are read and written as jupyter_server's
  ``FileContentsManager`` does, byte for byte (:mod:`ysyncd.jupyter.filecodec`),
  and hidden files are refused as it refuses them.
- :class:`ContentsFiles` (:mod:`ysyncd.jupyter.restfiles`): the namespace's
  Jupyter server's Contents REST API, so its ContentsManager (S3, jupytext
  hooks, the notary, file id events, hidden files) stays in charge.

File ids are turned into paths by a :class:`FileIds`: :class:`RestFileIds`
asks the Jupyter server (jupyter_server_fileid's ``GET api/fileid/path``),
:class:`StaticFileIds` holds a dict. What ysyncd presents to Jupyter servers
(:class:`TokenCredentials`, :class:`GlueCredentials`) is explained in
:mod:`ysyncd.jupyter.restfiles`.

Errors carry the close code jupyter_server_ydoc would close a room with:
:class:`FileGone` 4404, :class:`BadFile` 4400, :class:`FilesUnavailable` 4500.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING

from ysyncd.jupyter.filebase import (
    BadFile,
    FileError,
    FileGone,
    FileIds,
    Files,
    FileState,
    FilesUnavailable,
    Loaded,
    StaticFileIds,
    UnsafePath,
    api_path,
)
from ysyncd.jupyter.fsfiles import FsFiles
from ysyncd.jupyter.restfiles import (
    ContentsFiles,
    Credentials,
    GlueCredentials,
    RestFileIds,
    TokenCredentials,
)

if TYPE_CHECKING:
    from ysyncd.config import Settings

__all__ = [
    "BadFile",
    "ContentsFiles",
    "Credentials",
    "FileError",
    "FileGone",
    "FileIds",
    "FileState",
    "Files",
    "FilesUnavailable",
    "FsFiles",
    "GlueCredentials",
    "Loaded",
    "RestFileIds",
    "StaticFileIds",
    "TokenCredentials",
    "UnsafePath",
    "api_path",
    "credentials",
    "open_files",
]


def credentials(settings: Settings) -> Credentials:
    """What ysyncd presents to Jupyter servers (``--jupyter-credentials``).

    Raises:
        ValueError: glue without a usable ``--glue-secret-file``.
        OSError: the secret file cannot be read.
    """
    kind = settings.jupyter_credentials
    if kind == "token":
        return TokenCredentials(settings.jupyter_token)
    if kind == "glue":
        return GlueCredentials.from_file(settings.glue_secret_file)
    raise ValueError(f"unknown --jupyter-credentials {kind!r}")


def open_files(settings: Settings) -> Files | None:
    """The storage ``--jupyter-files`` asks for; None for ``none``.

    Raises:
        ValueError: its settings are missing or unsafe (each message names
            the setting), or nbformat is missing for ``fs``.
        OSError: the glue secret file cannot be read.
    """
    kind = settings.jupyter_files
    if kind == "none":
        return None
    if not settings.jupyter_url:
        raise ValueError(f"--jupyter-files {kind} needs --jupyter-url (for file ids)")
    presented = credentials(settings)
    ids = RestFileIds(settings.jupyter_url, presented)
    if kind == "fs":
        if not settings.fs_root:
            raise ValueError("--jupyter-files fs needs --fs-root")
        if importlib.util.find_spec("nbformat") is None:
            raise ValueError(
                "--jupyter-files fs needs nbformat: pip install 'ysyncd[jupyter]'"
            )
        return FsFiles(
            settings.fs_root, ids, allow_hidden=settings.jupyter_allow_hidden
        )
    if kind == "contents":
        return ContentsFiles(settings.jupyter_url, presented, ids)
    raise ValueError(f"unknown --jupyter-files {kind!r}")
