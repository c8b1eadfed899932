"""Jupyter file storage (ysyncd.jupyter.files).

``FsFiles`` is checked against jupyter_server's own ``FileContentsManager``,
in this process (no server): the bytes it writes, the content it reads and
the hashes it reports. ``ContentsFiles`` and ``RestFileIds`` are checked
against a real ``jupyter server`` (tests/jupyterproc.py) with
jupyter_server_fileid, and jupyter_server_ydoc for its session endpoint, the
only way a client gets a file id.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import os
import shutil
import stat
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote

import anyio
import nbformat
import pytest
import pytest_asyncio
from jupyter_ydoc import YNotebook
from pycrdt import Array, Doc, Map, Text

from tests.jupyterproc import JupyterServer, collaborating_jupyter
from tests.test_jupyter_documents import contents_manager
from tests.timing import scaled
from ysyncd.auth.glue import namespace_secret
from ysyncd.commits import Committer
from ysyncd.jupyter import documents, fsfiles
from ysyncd.jupyter.files import (
    BadFile,
    ContentsFiles,
    FileGone,
    FileState,
    FilesUnavailable,
    FsFiles,
    GlueCredentials,
    Loaded,
    RestFileIds,
    StaticFileIds,
    UnsafePath,
)
from ysyncd.jupyter.rooms import FileBinding, Target
from ysyncd.namespaces import Namespace
from ysyncd.room import Room
from ysyncd.store.memory import MemoryStore

FIXTURES = Path(__file__).parent / "fixtures" / "jupyter"
NS = Namespace("alice")
NOTEBOOKS = ["nb40.ipynb", "nb41.ipynb", "nb44.ipynb", "nb45.ipynb", "empty45.ipynb"]
# (fixture, format, type) for reads
READS = [
    *((name, "json", "notebook") for name in NOTEBOOKS),
    ("crlf.txt", "text", "file"),
    ("crlf.txt", "text", "unicode"),
    ("unicode.md", "text", "file"),
    ("nb45.ipynb", "text", "file"),
    ("blob.bin", "base64", "blob"),
    ("blob.bin", "base64", "file"),
]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A directory holding every fixture file, and empty ``ref/``, ``ours/``."""
    root = tmp_path / "root"
    shutil.copytree(FIXTURES, root)
    (root / "ref").mkdir()
    (root / "ours").mkdir()
    return root


@pytest.fixture
def files(root: Path) -> FsFiles:
    return FsFiles(str(root), StaticFileIds())


def edited(content: dict[str, Any]) -> dict[str, Any]:
    """A notebook as a room would save it after some editing: built into a
    jupyter_ydoc document, changed there, and read back."""
    doc = documents.model("notebook", _doc(content))
    notebook = documents.content(doc)
    notebook["metadata"]["edited"] = {"by": "ysyncd ✓", "ratio": 0.25, "n": 3}
    cell: dict[str, Any] = {
        "cell_type": "markdown",
        "metadata": {},
        "source": "Added: 🎉 中文 שלום\nsecond line\n",
    }
    if notebook["nbformat_minor"] >= 5:
        cell["id"] = "added-cell"
    notebook["cells"].append(cell)
    notebook["cells"][0]["source"] += "\nand one more line"
    documents.set_content(doc, notebook)
    result: dict[str, Any] = documents.content(doc)
    return result


def _doc(content: Any) -> Doc[Any]:
    doc: Doc[Any] = Doc()
    doc.apply_update(documents.deterministic_update("notebook", content))
    return doc


# --- FsFiles against FileContentsManager ------------------------------------------


@pytest.mark.parametrize("name", NOTEBOOKS)
async def test_notebook_writes_are_byte_identical_to_file_contents_manager(
    root: Path, files: FsFiles, name: str
) -> None:
    cm = contents_manager(root)
    loaded = (await cm.get(name, type="notebook", content=True))["content"]
    for version, content in (("as loaded", loaded), ("edited", edited(loaded))):
        ref, ours = f"ref/{version}-{name}", f"ours/{version}-{name}"
        model = {
            "type": "notebook",
            "format": "json",
            "content": copy.deepcopy(content),
        }
        await cm.save(model, ref)
        state = await files.write(NS, ours, "json", "notebook", copy.deepcopy(content))
        written = (root / ours).read_bytes()
        assert written == (root / ref).read_bytes(), version
        assert written.endswith(b"}\n")
        reference = await cm.get(ours, content=False, require_hash=True)
        assert reference["hash_algorithm"] == "sha256"
        assert state == FileState(ours, reference["last_modified"], reference["hash"])
        assert state.hash == hashlib.sha256(written).hexdigest()


@pytest.mark.parametrize(("name", "file_format", "file_type"), READS)
async def test_reads_give_what_file_contents_manager_gives(
    root: Path, files: FsFiles, name: str, file_format: str, file_type: str
) -> None:
    cm = contents_manager(root)
    model = await cm.get(
        name, type=file_type, format=file_format, content=True, require_hash=True
    )
    content = model["content"]
    if file_type == "file" and model["format"] == "text":
        content = content.replace("\r\n", "\n")  # as jupyter_server_ydoc's loader
    loaded = await files.read(NS, name, file_format, file_type)
    assert loaded == Loaded(
        content, FileState(name, model["last_modified"], model["hash"])
    )
    assert await files.stat(NS, name) == loaded.state


async def test_text_files_round_trip_as_utf8_with_lf(
    root: Path, files: FsFiles
) -> None:
    cm = contents_manager(root)
    crlf = (root / "crlf.txt").read_bytes()
    assert b"\r\n" in crlf, "the fixture lost its CRLFs (git eol conversion?)"
    loaded = await files.read(NS, "crlf.txt", "text", "file")
    assert "\r" not in loaded.content
    assert loaded.state.hash == hashlib.sha256(crlf).hexdigest()
    # Other text types keep CRLF, as in jupyter_server_ydoc.
    assert (
        await files.read(NS, "crlf.txt", "text", "unicode")
    ).content == crlf.decode()

    text = loaded.content + "\nmore: 🎉 中文 العربية"
    state = await files.write(NS, "crlf.txt", "text", "file", text)
    await cm.save({"type": "file", "format": "text", "content": text}, "ref/crlf.txt")
    assert (root / "crlf.txt").read_bytes() == (root / "ref/crlf.txt").read_bytes()
    assert (root / "crlf.txt").read_bytes() == text.encode()
    assert (await files.read(NS, "crlf.txt", "text", "file")) == Loaded(text, state)


async def test_blobs_round_trip_as_base64(root: Path, files: FsFiles) -> None:
    cm = contents_manager(root)
    raw = (root / "blob.bin").read_bytes()
    loaded = await files.read(NS, "blob.bin", "base64", "blob")
    # What FileContentsManager gives: base64 text with a newline every 76.
    assert "\n" in loaded.content
    for i, content in enumerate((loaded.content, raw)):
        state = await files.write(NS, f"ours/{i}.bin", "base64", "blob", content)
        assert (root / f"ours/{i}.bin").read_bytes() == raw
        assert state.hash == loaded.state.hash
    await cm.save(
        {"type": "file", "format": "base64", "content": loaded.content}, "ref/b.bin"
    )
    assert (root / "ref/b.bin").read_bytes() == raw


# --- atomic writes ------------------------------------------------------------------


async def test_writes_replace_the_file_and_keep_its_mode(
    root: Path, files: FsFiles
) -> None:
    target = root / "ours" / "kept.txt"
    target.write_text("old")
    target.chmod(0o640)
    inode = target.stat().st_ino
    await files.write(NS, "ours/kept.txt", "text", "file", "new")
    assert target.read_text() == "new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    # A new file, renamed over the old one, which nothing else was done to.
    assert target.stat().st_ino != inode
    assert sorted(p.name for p in target.parent.iterdir()) == ["kept.txt"]
    # A new file gets what open() gives it: 0o666 minus the umask.
    umask = os.umask(0o022)
    os.umask(umask)
    await files.write(NS, "ours/new.txt", "text", "file", "x")
    assert stat.S_IMODE((root / "ours/new.txt").stat().st_mode) == 0o666 & ~umask


async def test_readers_never_see_a_partial_file(root: Path, files: FsFiles) -> None:
    versions = ["a" * 300_000, "b" * 500_000]
    expected = {v.encode() for v in versions}
    target = root / "ours" / "big.txt"
    target.write_text(versions[0])
    reads: list[bool] = []
    done = threading.Event()

    def read_constantly() -> None:
        while not done.is_set():
            reads.append(target.read_bytes() in expected)

    reader = threading.Thread(target=read_constantly)
    reader.start()
    try:
        for i in range(30):
            await files.write(NS, "ours/big.txt", "text", "file", versions[i % 2])
    finally:
        done.set()
        reader.join(scaled(10))
    assert reads and all(reads), f"{reads.count(False)} of {len(reads)} reads torn"


# A write that fails half-way: the file size limit (RLIMIT_FSIZE) makes the
# kernel refuse the temporary file's bytes past 4 KiB (EFBIG).
FAILING_WRITE = """\
import asyncio, resource, signal, sys
from ysyncd.jupyter.files import FilesUnavailable, FsFiles, StaticFileIds
from ysyncd.namespaces import Namespace

async def main():
    files = FsFiles(sys.argv[1], StaticFileIds())
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))
    try:
        await files.write(Namespace("alice"), "ours/x.txt", "text", "file", "n" * 65536)
    except FilesUnavailable as exc:
        print("refused:", exc)
    else:
        print("written")

asyncio.run(main())
"""


def test_a_write_failing_half_way_leaves_the_old_file(root: Path) -> None:
    target = root / "ours" / "x.txt"
    target.write_text("old content")
    result = subprocess.run(
        [sys.executable, "-c", FAILING_WRITE, str(root)],
        capture_output=True,
        text=True,
        timeout=scaled(60),
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("refused: "), result.stdout + result.stderr
    assert "too large" in result.stdout.lower(), result.stdout
    assert target.read_text() == "old content"
    assert sorted(p.name for p in target.parent.iterdir()) == ["x.txt"]


async def test_content_that_cannot_be_written_leaves_the_old_file(
    root: Path, files: FsFiles
) -> None:
    target = root / "ours" / "x.txt"
    target.write_text("old content")
    for file_format, file_type, content in [
        ("text", "file", "lone surrogate \ud800"),
        ("text", "file", {"not": "text"}),
        ("base64", "blob", "not base64 ✗"),
        ("json", "notebook", "not a notebook"),
        ("json", "notebook", {"cells": "nonsense"}),
        ("json", "file", "json is for notebooks"),
    ]:
        with pytest.raises(BadFile):
            await files.write(NS, "ours/x.txt", file_format, file_type, content)
    assert target.read_text() == "old content"
    assert sorted(p.name for p in target.parent.iterdir()) == ["x.txt"]


# --- paths -------------------------------------------------------------------------


async def test_paths_may_not_leave_the_root(tmp_path: Path, root: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    (root / "out").symlink_to(outside)
    (root / "secret.txt").symlink_to(outside / "secret.txt")
    (root / "inside.md").symlink_to(root / "unicode.md")
    (root / "linked-dir").symlink_to(root / "ours")
    files = FsFiles(str(root), StaticFileIds())

    for path in [
        "../outside/secret.txt",
        "ours/../../outside/secret.txt",
        "/etc/passwd",
        str(outside / "secret.txt"),
        "out/secret.txt",
        "secret.txt",
        "",
        ".",
        "ours/",
        "ours//x.txt",
        "ours/./x.txt",
        "nul\0.txt",
    ]:
        with pytest.raises(UnsafePath):
            await files.read(NS, path, "text", "file")
        with pytest.raises(UnsafePath):
            await files.write(NS, path, "text", "file", "pwned")
        with pytest.raises(UnsafePath):
            await files.stat(NS, path)
    assert (outside / "secret.txt").read_text() == "secret"
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]

    # Symlinks that stay inside are followed; a symlinked file is written at
    # its target and stays a symlink.
    md = (root / "unicode.md").read_text()
    assert (await files.read(NS, "inside.md", "text", "file")).content == md
    await files.write(NS, "inside.md", "text", "file", "through the link")
    assert (root / "inside.md").is_symlink()
    assert (root / "unicode.md").read_text() == "through the link"
    await files.write(NS, "linked-dir/y.txt", "text", "file", "y")
    assert (root / "ours" / "y.txt").read_text() == "y"


async def test_each_namespace_has_its_root(tmp_path: Path) -> None:
    files = FsFiles(str(tmp_path / "{owner}" / "{server}"), StaticFileIds())
    for ns, directory in [
        (Namespace("alice"), tmp_path / "alice"),
        (Namespace("alice", "srv2"), tmp_path / "alice" / "srv2"),
        (Namespace("b@c"), tmp_path / "b@c"),
        # Names come decoded from the room's path and are not decoded again:
        # "%61lice" is not alice.
        (Namespace("%61lice"), tmp_path / "%61lice"),
    ]:
        assert files.root(ns) == directory
        directory.mkdir(parents=True, exist_ok=True)
        await files.write(ns, "f.txt", "text", "file", str(ns))
        assert (directory / "f.txt").read_text() == str(ns)
    for bad in [
        Namespace(".."),
        Namespace("a/b"),
        Namespace(""),
        Namespace("a", ".."),
    ]:
        with pytest.raises(UnsafePath):
            await files.stat(bad, "f.txt")
    with pytest.raises(ValueError, match="owner"):
        FsFiles("/home/{user}", StaticFileIds())


# --- missing and bad files ----------------------------------------------------------


async def test_missing_and_unreadable_files(root: Path, files: FsFiles) -> None:
    with pytest.raises(FileGone):
        await files.read(NS, "missing.ipynb", "json", "notebook")
    assert await files.stat(NS, "missing.ipynb") is None
    with pytest.raises(FileGone):
        await files.write(NS, "no/such/dir.txt", "text", "file", "x")
    with pytest.raises(BadFile):
        await files.read(NS, "ours", "text", "file")  # a directory
    assert await files.stat(NS, "ours") is None
    with pytest.raises(BadFile, match="UTF-8"):
        await files.read(NS, "blob.bin", "text", "file")
    with pytest.raises(BadFile, match="notebook"):
        await files.read(NS, "unicode.md", "json", "notebook")
    with pytest.raises(BadFile):
        await files.read(NS, "unicode.md", "json", "file")
    (root / "ours" / "list.ipynb").write_text("[]")
    with pytest.raises(BadFile):
        await files.read(NS, "ours/list.ipynb", "json", "notebook")
    with pytest.raises(BadFile):
        await files.write(NS, "ours", "text", "file", "over a directory")


async def test_hidden_files_are_missing_unless_allowed(
    root: Path, files: FsFiles
) -> None:
    """As FileContentsManager with allow_hidden off: a dot starting any
    segment makes a file missing to reads, stats and writes, with a missing
    file's very message; --jupyter-allow-hidden serves them."""
    (root / ".bashrc").write_text("rc")
    (root / ".ssh").mkdir()
    (root / ".ssh" / "config").write_text("cfg")
    (root / "ours" / ".env").write_text("env")
    for path in [".bashrc", ".ssh/config", "ours/.env", ".ssh/new"]:
        with pytest.raises(FileGone) as read:
            await files.read(NS, path, "text", "file")
        assert str(read.value) == f"{path!r} does not exist"
        assert await files.stat(NS, path) is None
        with pytest.raises(FileGone):
            await files.write(NS, path, "text", "file", "pwned")
    assert (root / ".bashrc").read_text() == "rc"
    assert sorted(p.name for p in (root / ".ssh").iterdir()) == ["config"]
    assert (root / "ours" / ".env").read_text() == "env"

    allowed = FsFiles(str(root), StaticFileIds(), allow_hidden=True)
    assert (await allowed.read(NS, ".ssh/config", "text", "file")).content == "cfg"
    await allowed.write(NS, ".bashrc", "text", "file", "new rc")
    assert (root / ".bashrc").read_text() == "new rc"


async def test_files_hidden_by_an_attribute_are_missing(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where a platform marks files hidden (UF_HIDDEN on macOS and BSD,
    FILE_ATTRIBUTE_HIDDEN on Windows), a marked file, or a file in a marked
    directory, is hidden too, as jupyter_core's is_hidden says."""
    assert fsfiles._hidden_by_attribute(SimpleNamespace(st_flags=0x8000))
    assert fsfiles._hidden_by_attribute(SimpleNamespace(st_file_attributes=2))
    assert not fsfiles._hidden_by_attribute(SimpleNamespace(st_flags=0))
    # Linux has neither: mark the "ours" directory by its inode instead.
    marked = (root / "ours").stat().st_ino
    monkeypatch.setattr(fsfiles, "_CAN_HIDE_BY_ATTRIBUTE", True)
    monkeypatch.setattr(fsfiles, "_hidden_by_attribute", lambda st: st.st_ino == marked)
    (root / "ours" / "x.txt").write_text("x")
    files = FsFiles(str(root), StaticFileIds())
    assert await files.stat(NS, "ours/x.txt") is None
    with pytest.raises(FileGone):
        await files.write(NS, "ours/x.txt", "text", "file", "pwned")
    assert (root / "ours" / "x.txt").read_text() == "x"
    assert await files.stat(NS, "unicode.md") is not None


async def test_stat_sees_every_outside_write(root: Path, files: FsFiles) -> None:
    target = root / "ours" / "s.txt"
    target.write_text("one")
    first = await files.stat(NS, "ours/s.txt")
    assert first is not None
    assert first.hash == hashlib.sha256(b"one").hexdigest()
    # Same size, same mtime, same inode: only the ctime tells (and the hash).
    mtime = target.stat().st_mtime_ns
    with target.open("r+") as f:
        f.write("two")
    os.utime(target, ns=(mtime, mtime))
    second = await files.stat(NS, "ours/s.txt")
    assert second is not None
    assert second.last_modified == first.last_modified
    assert second.hash == hashlib.sha256(b"two").hexdigest()


# --- against a real Jupyter server -------------------------------------------------

server_test = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def jupyter(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[JupyterServer]:
    async with collaborating_jupyter(tmp_path_factory.mktemp("jupyter")) as server:
        shutil.copytree(FIXTURES, server.root_dir, dirs_exist_ok=True)
        yield server


@pytest_asyncio.fixture(loop_scope="module")
async def contents(jupyter: JupyterServer) -> AsyncIterator[ContentsFiles]:
    files = ContentsFiles(jupyter.url, jupyter.token)
    try:
        yield files
    finally:
        await files.aclose()


async def file_id(jupyter: JupyterServer, path: str, file_type: str = "file") -> str:
    """The id JupyterLab gets for ``path``: the session endpoint makes it."""
    resp = await jupyter.request(
        "PUT",
        f"api/collaboration/session/{quote(path, safe='')}",
        json={"format": "text", "type": file_type},
        expect=(200, 201),
    )
    fid: str = resp.json()["fileId"]
    return fid


@server_test
async def test_contents_reads_like_the_volume(
    jupyter: JupyterServer, contents: ContentsFiles
) -> None:
    volume = FsFiles(str(jupyter.root_dir), StaticFileIds())
    for name, file_format, file_type in READS:
        over_rest = await contents.read(NS, name, file_format, file_type)
        on_disk = await volume.read(NS, name, file_format, file_type)
        assert over_rest == on_disk, (name, file_type)
        assert await contents.stat(NS, name) == on_disk.state


@server_test
async def test_contents_writes_like_the_volume(
    jupyter: JupyterServer, contents: ContentsFiles
) -> None:
    root = jupyter.root_dir
    volume = FsFiles(str(root), StaticFileIds())
    (root / "saved").mkdir()
    for name in NOTEBOOKS:
        content = edited((await volume.read(NS, name, "json", "notebook")).content)
        rest, fs = f"saved/rest-{name}", f"saved/fs-{name}"
        shutil.copy(root / name, root / rest)  # saving an existing file
        state = await contents.write(NS, rest, "json", "notebook", content)
        await volume.write(NS, fs, "json", "notebook", content)
        assert (root / rest).read_bytes() == (root / fs).read_bytes(), name
        assert state == await volume.stat(NS, rest)
        assert state.hash == hashlib.sha256((root / rest).read_bytes()).hexdigest()
    # Text (CRLF comes back as LF) and a blob, given as base64 or bytes.
    text = (await contents.read(NS, "crlf.txt", "text", "file")).content + "✓"
    state = await contents.write(NS, "saved/new.txt", "text", "file", text)
    assert (root / "saved/new.txt").read_bytes() == text.encode()
    assert state == await volume.stat(NS, "saved/new.txt")
    blob = await contents.read(NS, "blob.bin", "base64", "blob")
    for content in (blob.content, (root / "blob.bin").read_bytes()):
        state = await contents.write(NS, "saved/b.bin", "base64", "blob", content)
        assert (root / "saved/b.bin").read_bytes() == (root / "blob.bin").read_bytes()
        assert state.hash == blob.state.hash


@server_test
async def test_contents_errors(jupyter: JupyterServer, contents: ContentsFiles) -> None:
    with pytest.raises(FileGone):
        await contents.read(NS, "missing.ipynb", "json", "notebook")
    assert await contents.stat(NS, "missing.txt") is None
    (jupyter.root_dir / "a-dir").mkdir()
    assert await contents.stat(NS, "a-dir") is None
    with pytest.raises(BadFile):
        await contents.read(NS, "blob.bin", "text", "file")  # not UTF-8
    with pytest.raises(BadFile):
        await contents.read(NS, "unicode.md", "json", "notebook")
    with pytest.raises(BadFile):
        await contents.read(NS, "unicode.md", "json", "file")
    with pytest.raises(UnsafePath):
        await contents.read(NS, "../etc/passwd", "text", "file")
    wrong = ContentsFiles(jupyter.url, "wrong-token")
    try:
        with pytest.raises(FilesUnavailable, match="refused"):
            await wrong.read(NS, "unicode.md", "text", "file")
        with pytest.raises(FilesUnavailable, match="refused"):
            await wrong.write(NS, "unicode.md", "text", "file", "x")
    finally:
        await wrong.aclose()
    # Nothing listens on port 9 of the loopback.
    down = ContentsFiles("http://127.0.0.1:9/", jupyter.token, timeout=scaled(5))
    try:
        with pytest.raises(FilesUnavailable, match="did not answer"):
            await down.stat(NS, "unicode.md")
    finally:
        await down.aclose()


@server_test
async def test_file_ids_resolve_through_the_jupyter_server(
    jupyter: JupyterServer, contents: ContentsFiles
) -> None:
    root = jupyter.root_dir
    (root / "sub dir").mkdir()
    shutil.copy(root / "nb45.ipynb", root / "sub dir" / "ü 1.ipynb")
    fid = await file_id(jupyter, "sub dir/ü 1.ipynb", "notebook")
    assert fid == await file_id(jupyter, "sub dir/ü 1.ipynb", "notebook")
    # The REST answer: the id and the path relative to the server's root.
    answer = await jupyter.request(
        "GET", "api/fileid/path", params={"id": fid}, expect=200
    )
    assert answer.json() == {"id": fid, "path": "sub dir/ü 1.ipynb"}
    ids = RestFileIds(jupyter.url, jupyter.token)
    try:
        assert await ids.resolve(NS, fid) == "sub dir/ü 1.ipynb"
        assert await contents.resolve(NS, fid) == "sub dir/ü 1.ipynb"
        # Renames are followed.
        await jupyter.request(
            "PATCH",
            "api/contents/" + quote("sub dir/ü 1.ipynb"),
            json={"path": "sub dir/renamed.ipynb"},
            expect=200,
        )
        assert await ids.resolve(NS, fid) == "sub dir/renamed.ipynb"
        # Deleted: the id is gone with the file.
        await jupyter.request(
            "DELETE", "api/contents/sub%20dir/renamed.ipynb", expect=204
        )
        assert await ids.resolve(NS, fid) is None
        assert await ids.resolve(NS, "not-an-id") is None
    finally:
        await ids.aclose()

    # jupyter_server_fileid 0.10.0 moves the ids of a renamed directory's
    # files only if the directory has an id itself. JupyterLab makes none for
    # directories, so a file in a renamed directory keeps its old path, where
    # it no longer is: to a room it looks deleted.
    (root / "dir1").mkdir()
    shutil.copy(root / "unicode.md", root / "dir1" / "f.md")
    fid = await file_id(jupyter, "dir1/f.md")
    await jupyter.request(
        "PATCH", "api/contents/dir1", json={"path": "dir2"}, expect=200
    )
    assert await contents.resolve(NS, fid) == "dir1/f.md"
    assert await contents.stat(NS, "dir1/f.md") is None
    assert await contents.stat(NS, "dir2/f.md") is not None

    wrong = RestFileIds(jupyter.url, "wrong-token")
    try:
        with pytest.raises(FilesUnavailable, match="refused"):
            await wrong.resolve(NS, fid)
    finally:
        await wrong.aclose()


async def test_server_urls_fill_the_template() -> None:
    """Names are path segments, escaped as JupyterHub escapes them."""
    files = ContentsFiles("http://hub:8000/prefix/user/{owner}/{server}", "")
    try:
        url = files.api.server_url
        assert url(Namespace("alice")) == "http://hub:8000/prefix/user/alice/"
        assert (
            url(Namespace("alice", "srv2")) == "http://hub:8000/prefix/user/alice/srv2/"
        )
        # Room paths are read unescaped, and the names escaped once here.
        assert url(Namespace("a@b")) == "http://hub:8000/prefix/user/a@b/"
        assert url(Namespace("a b#c")) == "http://hub:8000/prefix/user/a%20b%23c/"
        assert url(Namespace("%61lice")) == "http://hub:8000/prefix/user/%2561lice/"
        assert (
            url(Namespace("a/b?", "x:y~"))
            == "http://hub:8000/prefix/user/a%2Fb%3F/x%3Ay~/"
        )
        for bad in [Namespace(".."), Namespace("."), Namespace("a", "..")]:
            with pytest.raises(UnsafePath):
                url(bad)
    finally:
        await files.aclose()
    with pytest.raises(ValueError, match="owner"):
        ContentsFiles("http://hub/user/{name}/", "")
    # One token shown to every server would open the others: refused.
    with pytest.raises(ValueError, match="--jupyter-credentials glue"):
        ContentsFiles("http://hub/user/{owner}/", "a-token")
    for template in ["http://{owner}.hub/", "http://hub:{server}/", "hub/{owner}/"]:
        with pytest.raises(ValueError, match="--jupyter-url"):
            ContentsFiles(template, "")


async def test_glue_credentials_are_each_servers_own_secret() -> None:
    """With glue credentials, each server is shown its namespace secret, at
    the extension's endpoints, and never a token."""
    master = "m" * 64
    glue = GlueCredentials(master.encode())
    files = ContentsFiles("http://hub/user/{owner}/{server}/", glue)
    try:
        assert files.api.endpoint("contents/") == "api/ysyncd/contents/"
        for ns in (Namespace("alice"), Namespace("bob", "gpu")):
            assert glue.headers(ns) == {
                "X-Ysyncd-Glue": namespace_secret(master, ns.owner, ns.server)
            }
    finally:
        await files.aclose()
    with pytest.raises(ValueError, match="32 bytes"):
        GlueCredentials(b"short")
    ids = StaticFileIds({"abc": "a.ipynb"})
    assert await ids.resolve(NS, "abc") == "a.ipynb"
    assert await ids.resolve(NS, "other") is None


# --- a room bound to its file, in process -----------------------------------------


class PausedWrites(FsFiles):
    """FsFiles whose writes wait at a gate, so a test can edit during one."""

    def __init__(self, root: str, ids: StaticFileIds) -> None:
        super().__init__(root, ids)
        self.writing = asyncio.Event()
        self.go = asyncio.Event()

    async def write(self, *args: Any, **kwargs: Any) -> FileState:
        self.writing.set()
        await self.go.wait()
        return await super().write(*args, **kwargs)


@dataclass
class Bound:
    """A room bound to ``nb.ipynb`` in process, over a memory store."""

    room: Room
    binding: FileBinding
    committer: Committer
    store: MemoryStore


@contextlib.asynccontextmanager
async def bound_room(files: FsFiles) -> AsyncIterator[Bound]:
    """A room bound to the notebook with id ``nb-id`` in ``files``; the
    binding neither autosaves nor polls unless a test asks."""
    store = MemoryStore()
    committer = Committer(store)
    target = Target(Namespace("alice"), "json", "notebook", "nb-id")
    async with anyio.create_task_group() as tg:
        await tg.start(committer.run)
        room = Room("a-room", Doc(), committer)
        binding = FileBinding(
            target,
            files,
            tg,
            save_delay=600,
            poll_interval=600,
            autosave_wanted=lambda _room: True,
        )
        await binding.setup(room)
        try:
            yield Bound(room, binding, committer, store)
        finally:
            binding.stop()
            committer.stop()


async def test_an_edit_made_during_a_save_is_not_taken_for_saved(
    tmp_path: Path,
) -> None:
    """The file holds the doc as it was when the save began; an edit made
    while it was written keeps the room dirty and the next save writes it
    (it must not count as saved because the doc had it once the write ended)."""
    shutil.copy(FIXTURES / "nb45.ipynb", tmp_path / "nb.ipynb")
    files = PausedWrites(str(tmp_path), StaticFileIds({"nb-id": "nb.ipynb"}))
    async with bound_room(files) as bound:
        room, binding = bound.room, bound.binding
        notebook = YNotebook(ydoc=room.doc)
        source = room.doc.get("cells", type=Array)[0]["source"]
        source += " first"
        saving = asyncio.create_task(binding.save())
        async with asyncio.timeout(scaled(10)):
            await files.writing.wait()
        source += " second"
        files.go.set()
        async with asyncio.timeout(scaled(10)):
            assert await saving == "success"
        on_disk = nbformat.read(tmp_path / "nb.ipynb", as_version=4)
        assert on_disk.cells[0].source.endswith(" first")
        assert notebook.ystate["dirty"] is True

        async with asyncio.timeout(scaled(10)):
            assert await binding.save() == "success"
        on_disk = nbformat.read(tmp_path / "nb.ipynb", as_version=4)
        assert on_disk.cells[0].source.endswith(" first second")
        assert notebook.ystate["dirty"] is False


async def test_what_reading_and_repairing_a_document_change_is_stored(
    tmp_path: Path,
) -> None:
    """Reading a notebook renames a cell that copies another's id, in place;
    a repair then drops a cell that cannot be read. Both are server edits:
    the store's log must replay to the very doc the room holds, or the repair
    (and every later server edit) would depend on a change nobody has."""
    shutil.copy(FIXTURES / "nb45.ipynb", tmp_path / "nb.ipynb")
    files = FsFiles(str(tmp_path), StaticFileIds({"nb-id": "nb.ipynb"}))
    async with bound_room(files) as bound:
        room, binding = bound.room, bound.binding
        client: Doc = Doc()
        client.apply_update(room.doc.get_update())
        first = YNotebook(ydoc=client).get()["cells"][0]
        cells = client.get("cells", type=Array)
        cells.insert(1, Map({k: v for k, v in first.items() if k != "source"}))
        cells[1]["source"] = Text("a twin of the first cell")
        cells.append(Map({"attachments": {}, "source": "no cell_type"}))
        room.apply(client.get_update(room.doc.get_state()))

        with pytest.warns(UserWarning, match="Non-unique cell ID"):
            async with asyncio.timeout(scaled(10)):
                assert await binding.save() == "success"
                await bound.committer.flush()
        replay: Doc = Doc()
        for update in (await bound.store.load("a-room")).updates:
            replay.apply_update(update)
        assert replay.get_state() == room.doc.get_state()
        cells_after = YNotebook(ydoc=replay).get()["cells"]
        assert cells_after == YNotebook(ydoc=room.doc).get()["cells"]
        assert len({cell["id"] for cell in cells_after}) == len(cells_after)
