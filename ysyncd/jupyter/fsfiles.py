"""Jupyter files on a volume ysyncd shares with the Jupyter servers.

:class:`FsFiles` keeps a directory per namespace (``--fs-root /home/{owner}``)
and reads and writes files as jupyter_server's ``FileContentsManager`` does,
byte for byte (see :mod:`ysyncd.jupyter.filecodec`). ``FileState.hash`` is
what that manager reports with ``require_hash``: the sha256 hex digest of the
file's bytes.

It has no Jupyter server's configuration, so it applies
``ContentsManager.allow_hidden``'s default itself (``--jupyter-allow-hidden``
turns it off): a path with a segment starting with ``.``, or a file or
directory on its way hidden by a file attribute (``UF_HIDDEN`` on macOS and
BSD, ``FILE_ATTRIBUTE_HIDDEN`` on Windows), is neither read, stat'ed nor
written, and is reported exactly as a missing file is.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import logging
import os
import secrets
import stat
import threading
from collections import OrderedDict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ysyncd.jupyter.filebase import (
    BadFile,
    FileError,
    FileGone,
    FileIds,
    FileState,
    FilesUnavailable,
    Loaded,
    StaticFileIds,
    UnsafePath,
    api_path,
    is_hidden_path,
)
from ysyncd.jupyter.filecodec import decode, encode
from ysyncd.jupyter.urls import check_placeholders
from ysyncd.namespaces import Namespace

__all__ = ["FsFiles"]

log = logging.getLogger("ysyncd.jupyter")

_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_HASH_CACHE_SIZE = 4096
#: What jupyter_core.paths.is_file_hidden reads, where the platform has it.
_UF_HIDDEN = getattr(stat, "UF_HIDDEN", 0x8000)
_FILE_ATTRIBUTE_HIDDEN = getattr(stat, "FILE_ATTRIBUTE_HIDDEN", 2)
_CAN_HIDE_BY_ATTRIBUTE = hasattr(os.stat_result, "st_flags") or hasattr(
    os.stat_result, "st_file_attributes"
)


def _segment(value: str, what: str, *, optional: bool = False) -> str:
    """A namespace part (owner or server, decoded once already with the
    room's path), checked to stay one segment of a directory path.

    It is not decoded again: ``%61lice`` is a user of that name, and must not
    reach ``alice``'s files.
    """
    if not value and not optional:
        raise UnsafePath(f"the {what} is empty")
    if value in (".", "..") or "/" in value or "\0" in value:
        raise UnsafePath(f"{what} {value[:64]!r} cannot be a path segment")
    return value


def _utc(timestamp: float) -> datetime:
    # What FileContentsManager reports: tz.utcfromtimestamp(st_mtime).
    return datetime.fromtimestamp(timestamp, UTC)


def _hidden_by_attribute(st: os.stat_result) -> bool:
    """Whether the platform marks the file hidden (macOS, BSD, Windows)."""
    flags = getattr(st, "st_flags", 0) & _UF_HIDDEN
    return bool(flags or getattr(st, "st_file_attributes", 0) & _FILE_ATTRIBUTE_HIDDEN)


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

    Hidden files (see the module docs) are gone to it unless ``allow_hidden``.
    """

    def __init__(
        self,
        root_template: str,
        ids: FileIds | None = None,
        *,
        allow_hidden: bool = False,
    ) -> None:
        check_placeholders(root_template, "--fs-root")
        self.root_template = root_template
        #: Where file ids are resolved; none by default.
        self.ids: FileIds = StaticFileIds() if ids is None else ids
        #: Serve hidden files too (``ContentsManager.allow_hidden``).
        self.allow_hidden = allow_hidden
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
        return Path(self.root_template.format_map({"owner": owner, "server": server}))

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

    def locate_visible(self, ns: Namespace, path: str) -> Path:
        """:meth:`locate`, for a file Jupyter does not hide (or allow_hidden).

        Raises:
            UnsafePath: the path leaves the root, or is the root.
            FileGone: the file is hidden; the message is a missing file's.
        """
        target = self.locate(ns, path)
        if not self.allow_hidden and self._hidden(ns, path):
            # The same error as a missing file: its room closes with 4404
            # and tells the client nothing more than that.
            log.debug("refusing the hidden file %r", path)
            raise FileGone(f"{path!r} does not exist")
        return target

    def _hidden(self, ns: Namespace, path: str) -> bool:
        """Jupyter's ``is_hidden`` for ``path`` under ``ns``'s root."""
        if is_hidden_path(path):
            return True
        if not _CAN_HIDE_BY_ATTRIBUTE:
            return False
        # The file and each directory on its way, as jupyter_core's
        # is_hidden: the file's own target, the directories themselves.
        where = self.root(ns)
        parts = path.split("/")
        for depth, part in enumerate(parts, 1):
            where = where / part
            try:
                st = os.stat(where, follow_symlinks=depth == len(parts))
            except OSError:
                return False  # missing or unreadable: the open says which
            if _hidden_by_attribute(st):
                return True
        return False

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
        raw, st = self._read_all(self.locate_visible(ns, path), path)
        digest = hashlib.sha256(raw).hexdigest()
        self._remember_hash(st, digest)
        content = decode(raw, file_format, file_type, repr(path))
        return Loaded(content, FileState(path, _utc(st.st_mtime), digest))

    def _stat(self, ns: Namespace, path: str) -> FileState | None:
        try:
            target = self.locate_visible(ns, path)
        except FileGone:
            return None  # hidden
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
        target = self.locate_visible(ns, path)
        data = encode(file_format, file_type, content)
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
