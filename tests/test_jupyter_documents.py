"""Jupyter documents (ysyncd.jupyter.documents) against jupyter_server_ydoc.

The reference is jupyter_server_ydoc 3.0.4's own loading code, run in this
process: a real ``DocumentRoom`` with a real ``FileLoader`` over a real
``AsyncFileContentsManager`` and an in-memory ``ArbitraryFileIdManager``,
initialized from a fixture file as a connecting client would trigger it. That
is the code path a jupyter server runs (contents ``get``, CRLF handling, the
``Doc(client_id=0)`` build, ``state.path``), minus websockets, and takes
milliseconds per file instead of a server start per case.

ysyncd's side reads the same file with :class:`FsFiles` and builds it with
:func:`deterministic_update`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from jupyter_events import EventLogger
from jupyter_server.services.contents.filemanager import AsyncFileContentsManager
from jupyter_server_fileid.manager import ArbitraryFileIdManager
from jupyter_server_ydoc.loaders import FileLoader
from jupyter_server_ydoc.rooms import DocumentRoom
from jupyter_ydoc import YBlob, YFile, YNotebook, YUnicode
from pycrdt import Array, Doc, Map, Text
from traitlets.config import Config

from ysyncd.errors import InvalidRoomName
from ysyncd.jupyter import documents
from ysyncd.jupyter.documents import DocumentType
from ysyncd.jupyter.files import BadFile, FsFiles, StaticFileIds
from ysyncd.namespaces import Namespace

FIXTURES = Path(__file__).parent / "fixtures" / "jupyter"
NS = Namespace("alice")

# (fixture, format, type, whether jupyter_server_ydoc builds it deterministically)
CASES = [
    ("nb40.ipynb", "json", "notebook", False),  # no cell ids: uuid4s
    ("nb41.ipynb", "json", "notebook", False),
    ("nb44.ipynb", "json", "notebook", False),
    ("nb45.ipynb", "json", "notebook", True),
    ("empty45.ipynb", "json", "notebook", False),  # a placeholder cell, uuid4
    ("crlf.txt", "text", "file", True),  # CRLF -> LF for "file"...
    ("crlf.txt", "text", "unicode", True),  # ...and for no other type
    ("unicode.md", "text", "file", True),
    ("nb45.ipynb", "text", "file", True),  # a notebook in the text editor
    ("unicode.md", "text", "mystery", True),  # unknown types are files
    ("blob.bin", "base64", "blob", True),
]
CASE_IDS = [f"{name}-{kind}" for name, _, kind, _ in CASES]

#: The root types of each document class, to compare docs item by item.
ROOTS: dict[type, dict[str, type]] = {
    YNotebook: {"meta": Map, "cells": Array, "state": Map},
    YUnicode: {"source": Text, "state": Map},
    YBlob: {"source": Map, "state": Map},
}


def contents_manager(root: Path) -> AsyncFileContentsManager:
    """jupyter_server's own ContentsManager over ``root``, with a notary that
    keeps its signatures in memory (nothing written under $HOME)."""
    config = Config(
        {
            "NotebookNotary": {
                "db_file": ":memory:",
                "secret": b"ysyncd tests",
                "data_dir": str(root.parent / "notary"),
            }
        }
    )
    return AsyncFileContentsManager(root_dir=str(root), config=config)


@contextlib.asynccontextmanager
async def reference_room(
    root: Path, path: str, file_format: str, file_type: str
) -> AsyncIterator[tuple[DocumentRoom, list[bytes]]]:
    """jupyter_server_ydoc's room for ``path``, initialized as on a first
    connection, and the updates its doc saw while initializing."""
    ids = ArbitraryFileIdManager(root_dir=str(root), db_path=":memory:")
    loader = FileLoader(
        ids.index(path), ids, contents_manager(root), poll_interval=None
    )
    room = DocumentRoom(
        f"{file_format}:{file_type}:{loader.file_id}",
        file_format,
        file_type,
        loader,
        EventLogger(),
        ystore=None,
        log=logging.getLogger("tests.reference"),
    )
    updates: list[bytes] = []
    subscription = room.ydoc.observe(lambda event: updates.append(event.update))
    try:
        await room.initialize()
        room.ydoc.unobserve(subscription)
        yield room, updates
    finally:
        await room.stop()
        await loader.clean()
        ids.con.close()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A contents root holding every fixture file."""
    root = tmp_path / "root"
    shutil.copytree(FIXTURES, root)
    return root


def tree(document: Any) -> dict[str, Any]:
    """Every root of a jupyter_ydoc document's doc, as Python values."""
    roots = next(r for cls, r in ROOTS.items() if isinstance(document, cls))
    return {
        name: document.ydoc.get(name, type=kind).to_py() for name, kind in roots.items()
    }


def without_cell_ids(value: dict[str, Any]) -> dict[str, Any]:
    """``value`` (a notebook or a tree) with cell ids replaced by positions."""
    cells = value.get("cells")
    if not cells:
        return value
    return {**value, "cells": [{**c, "id": i} for i, c in enumerate(cells)]}


def built(file_type: str, update: bytes) -> Any:
    doc: Doc[Any] = Doc()
    doc.apply_update(update)
    return documents.model(file_type, doc)


# --- room ids ----------------------------------------------------------------------


def test_room_ids_name_documents_or_transient_rooms() -> None:
    parsed = documents.parse_room_id("json:notebook:0b6a-41c2")
    assert parsed == DocumentType("json", "notebook", "0b6a-41c2")
    assert parsed.room_id == "json:notebook:0b6a-41c2"
    assert documents.model_class(parsed.file_type) is YNotebook
    # split(":", 2): a file id may hold colons.
    assert documents.parse_room_id("text:file:a:b:c") == DocumentType(
        "text", "file", "a:b:c"
    )
    # Fewer than two colons: transient rooms, as in jupyter_server_ydoc.
    for transient in ("JupyterLab:globalAwareness", "3f2a9c0d1e", ""):
        assert documents.parse_room_id(transient) is None
    # Unknown types are edited as files, like the reference does.
    mystery = documents.parse_room_id("text:jupytercad:1")
    assert mystery is not None and documents.model_class(mystery.file_type) is YFile
    assert documents.model_class("unicode") is YUnicode
    assert documents.model_class("blob") is YBlob
    for bad in ("yaml:file:1", ":file:1", "text::1", "text:file:", "JSON:notebook:1"):
        with pytest.raises(InvalidRoomName):
            documents.parse_room_id(bad)


def test_a_model_adds_nothing_to_the_doc_and_records_no_undo() -> None:
    doc: Doc[Any] = Doc()
    notebook = documents.model("notebook", doc)
    assert isinstance(notebook, YNotebook)
    assert doc.get_update() == Doc().get_update()
    # jupyter_ydoc's UndoManager would record every transaction, remote ones
    # too, for the room's lifetime.
    remote: Doc[Any] = Doc()
    documents.model("notebook", remote).set(
        {"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    )
    for i in range(20):
        doc.apply_update(remote.get_update())
        documents.set_content(notebook, {**notebook.get(), "metadata": {"n": i}})
    assert notebook.undo_manager.undo_stack == []


# --- loading, against jupyter_server_ydoc ------------------------------------------


@pytest.mark.parametrize(
    ("name", "file_format", "file_type", "exact"), CASES, ids=CASE_IDS
)
async def test_loading_a_file_gives_what_jupyter_server_ydoc_gives(
    root: Path, name: str, file_format: str, file_type: str, exact: bool
) -> None:
    loaded = await FsFiles(str(root), StaticFileIds()).read(
        NS, name, file_format, file_type
    )
    update = documents.deterministic_update(file_type, loaded.content)
    ours = built(file_type, update)
    async with reference_room(root, name, file_format, file_type) as (room, updates):
        reference = room._document
        assert type(ours) is type(reference)
        # The reference sets state.path (with the room's client id) before
        # the build; the build itself is one update, with no state in it.
        assert reference.ystate.to_py() == {"path": name}
        assert ours.ystate.to_py() in ({}, None)
        assert len(updates) == 1
        # The same items: the same bytes, once yrs's random order of keys in
        # JSON objects is taken out (see test_builds_differ_in_key_order).
        if exact:
            assert update == documents.canonical_update(updates[0])
        else:  # the reference's random cell ids
            assert update != documents.canonical_update(updates[0])
        ours_tree, reference_tree = tree(ours), tree(reference)
        del reference_tree["state"], ours_tree["state"]
        if file_type == "notebook":
            # Same items, bar the ids the reference draws at random.
            assert without_cell_ids(ours_tree) == without_cell_ids(reference_tree)
            got, expected = ours.get(), reference.get()
            if name == "empty45.ipynb":  # nbformat 4.5 keeps the made-up id
                got, expected = without_cell_ids(got), without_cell_ids(expected)
            assert got == expected
        else:
            assert ours_tree == reference_tree
            assert ours.get() == reference.get()
    # What the reference's loader had, and what content() would save.
    assert documents.normalize(file_type, loaded.content) == ours.get()


@pytest.mark.parametrize(
    ("name", "file_format", "file_type", "exact"), CASES, ids=CASE_IDS
)
async def test_two_builds_of_a_file_are_identical(
    root: Path, name: str, file_format: str, file_type: str, exact: bool
) -> None:
    files = FsFiles(str(root), StaticFileIds())
    first = await files.read(NS, name, file_format, file_type)
    second = await files.read(NS, name, file_format, file_type)
    update = documents.deterministic_update(file_type, first.content)
    assert documents.deterministic_update(file_type, second.content) == update
    assert documents.deterministic_update(file_type, first.content) == update


def test_made_up_cell_ids_follow_the_content() -> None:
    notebook = {
        "cells": [
            {"cell_type": "markdown", "metadata": {}, "source": "same"},
            {"cell_type": "markdown", "metadata": {}, "source": "same"},
        ],
        "metadata": {},
        "nbformat": 4,
        "nbformat_minor": 4,
    }
    ids = [c["id"] for c in tree(built("notebook", _update(notebook)))["cells"]]
    assert len(set(ids)) == 2 and all(uuid.UUID(i) for i in ids)
    again = [c["id"] for c in tree(built("notebook", _update(notebook)))["cells"]]
    assert again == ids
    edited = {**notebook, "metadata": {"edited": True}}
    other = [c["id"] for c in tree(built("notebook", _update(edited)))["cells"]]
    assert set(other).isdisjoint(ids)
    # Cells that have ids keep them.
    with_ids = {**notebook, "nbformat_minor": 5}
    with_ids["cells"] = [{**c, "id": f"c{i}"} for i, c in enumerate(notebook["cells"])]
    assert [c["id"] for c in tree(built("notebook", _update(with_ids)))["cells"]] == [
        "c0",
        "c1",
    ]


def _update(content: Any) -> bytes:
    return documents.deterministic_update("notebook", content)


def test_jupyter_ydoc_alone_is_not_deterministic_without_cell_ids() -> None:
    """Why cell ids are made up: the reference's builds of one nbformat 4.4
    file differ, so a client holding an earlier build duplicates every cell."""
    notebook = {
        "cells": [{"cell_type": "markdown", "metadata": {}, "source": "x"}],
        "metadata": {},
        "nbformat": 4,
        "nbformat_minor": 4,
    }
    builds = []
    for _ in range(2):
        doc: Doc[Any] = Doc(client_id=0)
        YNotebook(doc).set(notebook)
        builds.append(doc.get_update())
    assert builds[0] != builds[1]


def test_builds_differ_in_key_order_until_made_canonical() -> None:
    """yrs encodes a JSON object stored as a value (output data, kernelspec...)
    in a Rust HashMap's order, which changes from doc to doc: jupyter_ydoc's
    builds of one file differ in bytes though they hold the same items."""
    notebook = json.loads((FIXTURES / "nb45.ipynb").read_text())
    raw, canonical = set(), set()
    for _ in range(5):
        doc: Doc[Any] = Doc(client_id=0)
        YNotebook(doc).set(notebook)
        update = doc.get_update()
        raw.add(update)
        canonical.add(documents.canonical_update(update))
        # The canonical form holds the same document.
        again: Doc[Any] = Doc()
        again.apply_update(documents.canonical_update(update))
        assert again.get_state() == doc.get_state()
        assert YNotebook(again).get() == YNotebook(doc).get()
    assert len(raw) > 1
    assert len(canonical) == 1
    (update,) = canonical
    assert documents.canonical_update(update) == update


def test_canonical_updates_keep_edits_deletions_and_clients() -> None:
    alice: Doc[Any] = Doc()
    text = alice.get("text", type=Text)
    text += "hello world"
    alice.get("map", type=Map)["obj"] = {"b": 1, "a": [1, {"z": None, "y": 2.5}]}
    bob: Doc[Any] = Doc()
    bob.apply_update(alice.get_update())
    bob_text = bob.get("text", type=Text)
    del bob_text[0:6]
    bob_text += "!"
    alice.apply_update(bob.get_update())
    copy: Doc[Any] = Doc()
    copy.apply_update(documents.canonical_update(alice.get_update()))
    assert copy.get_state() == alice.get_state()
    assert str(copy.get("text", type=Text)) == "world!"
    assert copy.get("map", type=Map).to_py() == alice.get("map", type=Map).to_py()
    # Not an update: given back as is.
    assert documents.canonical_update(b"\x05\x01") == b"\x05\x01"


@pytest.mark.parametrize("name", ["nb40.ipynb", "nb44.ipynb", "nb45.ipynb"])
async def test_a_client_of_an_earlier_build_merges_without_duplicates(
    root: Path, name: str
) -> None:
    loaded = await FsFiles(str(root), StaticFileIds()).read(
        NS, name, "json", "notebook"
    )
    # A client synced with a room, which was then dropped and rebuilt.
    client: Doc[Any] = Doc()
    client.apply_update(documents.deterministic_update("notebook", loaded.content))
    rebuilt: Doc[Any] = Doc()
    rebuilt.apply_update(documents.deterministic_update("notebook", loaded.content))
    expected = documents.model("notebook", rebuilt).get()
    rebuilt.apply_update(client.get_update())
    assert documents.model("notebook", rebuilt).get() == expected
    assert rebuilt.get_state() == client.get_state()


# --- content and edits -------------------------------------------------------------


async def test_set_content_edits_granularly_and_only_when_changed(root: Path) -> None:
    loaded = await FsFiles(str(root), StaticFileIds()).read(
        NS, "nb45.ipynb", "json", "notebook"
    )
    doc: Doc[Any] = Doc()
    doc.apply_update(documents.deterministic_update("notebook", loaded.content))
    notebook = documents.model("notebook", doc)
    before = doc.get_state()
    documents.set_content(notebook, documents.content(notebook))
    assert doc.get_state() == before, "setting the same content changed the doc"

    edited = documents.content(notebook)
    edited["cells"][2]["source"] = "x = 6\nx * 7  # edited ✓"
    documents.set_content(notebook, edited)
    update = doc.get_update(before)
    assert documents.content(notebook) == edited
    # One cell's text was replaced; every other item stayed (a rebuild of
    # the notebook takes kilobytes).
    assert len(update) < 100 < len(doc.get_update())


async def test_normalize_and_digests_tell_content_changes(root: Path) -> None:
    loaded = await FsFiles(str(root), StaticFileIds()).read(
        NS, "empty45.ipynb", "json", "notebook"
    )
    doc: Doc[Any] = Doc()
    doc.apply_update(documents.deterministic_update("notebook", loaded.content))
    notebook = documents.model("notebook", doc)
    content = documents.content(notebook)
    # jupyter_ydoc does not give a file's content back verbatim...
    assert content != loaded.content
    assert content["metadata"]["kernelspec"] == {"name": "", "display_name": ""}
    # ...normalize() says what it gives back.
    assert documents.normalize("notebook", loaded.content) == content

    digest = documents.content_digest(content)
    assert documents.content_digest(documents.content(notebook)) == digest
    notebook.set_cell(0, source="print(1)")
    assert documents.content_digest(documents.content(notebook)) != digest
    # Key order does not matter; types and values do.
    assert documents.content_digest({"a": 1, "b": 2}) == documents.content_digest(
        {"b": 2, "a": 1}
    )
    assert documents.content_digest({"a": 1}) != documents.content_digest({"a": 1.5})
    assert documents.content_digest("abc") != documents.content_digest(b"abc")
    assert documents.content_digest({"b": b"\x00"}) != documents.content_digest(
        {"b": b"\x01"}
    )


# --- documents of the wrong shape ---------------------------------------------------


def _poison_version(doc: Doc) -> None:
    doc.get("meta", type=Map)["nbformat"] = "four"


def _poison_minor(doc: Doc) -> None:
    doc.get("meta", type=Map)["nbformat_minor"] = Map({"not": "a number"})


def _cell_without_type(doc: Doc) -> None:
    doc.get("cells", type=Array).insert(0, Map({"attachments": {}, "source": "x"}))


def _cell_of_text(doc: Doc) -> None:
    doc.get("cells", type=Array).append(Text("not a cell"))


def _nan_in_metadata(doc: Doc) -> None:
    doc.get("meta", type=Map)["metadata"] = {"kernelspec": {"x": float("nan")}}


def _infinity_in_a_cell(doc: Doc) -> None:
    cell = doc.get("cells", type=Array)[1]
    cell["execution_count"] = float("inf")
    cell["metadata"] = Map({"scrolled": float("-inf")})


@pytest.mark.parametrize(
    "poison",
    [
        _poison_version,
        _poison_minor,
        _cell_without_type,
        _cell_of_text,
        _nan_in_metadata,
        _infinity_in_a_cell,
    ],
)
def test_a_document_of_the_wrong_shape_is_refused_then_repaired(poison: Any) -> None:
    """What a client can do to the shared types that jupyter_ydoc cannot read
    back: content() says BadFile, and repair() edits only that away (NaN and
    infinities become None)."""
    notebook = YNotebook()
    notebook.set(
        {
            "cells": [
                {"cell_type": "markdown", "id": "kept", "metadata": {}, "source": "A"},
                {
                    "cell_type": "code",
                    "id": "kept-too",
                    "metadata": {},
                    "source": "1",
                    "outputs": [],
                    "execution_count": None,
                },
            ],
            "metadata": {},
            "nbformat": 4,
            "nbformat_minor": 5,
        }
    )
    before = notebook.get()
    poison(notebook.ydoc)
    with pytest.raises(BadFile, match="not a valid notebook"):
        documents.content(notebook)
    documents.repair(notebook)
    after = documents.content(notebook)
    assert after["nbformat"] == 4 and after["nbformat_minor"] == 5
    # Every readable cell stays, with its source: a NaN costs a value, not
    # the cell.
    assert [(c["id"], c["source"]) for c in after["cells"]] == [
        (c["id"], c["source"]) for c in before["cells"]
    ]
