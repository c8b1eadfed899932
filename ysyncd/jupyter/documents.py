"""Jupyter documents: room ids, jupyter_ydoc models, deterministic builds.

Pure: no I/O. The schemas are jupyter_ydoc's own (``jupyter_ydoc.ydocs``, the
``jupyter_ydoc`` entry points: ``notebook``, ``file``, ``unicode``, ``blob``
and whatever else is installed), so rooms hold exactly what JupyterLab's
``@jupyter/ydoc`` and jupyter_server_ydoc expect.

*Content* is what a Jupyter ContentsManager's model carries in ``content``:
a notebook dict for ``notebook``, a str for ``text`` formats, and for
``base64`` the base64 text itself (with the line breaks ``base64.encodebytes``
puts in). That last one is what jupyter_server_ydoc stores in a ``blob``
document's ``source["bytes"]``, so it is kept as is here too.

Building a room from a file (jupyter_server_ydoc's
``DocumentRoom._apply_deterministic_source_content``): the document is made in
a ``Doc(client_id=0)`` and its full update applied to the room, so the same
content always gives the same Yjs items, and a client that holds an earlier
build merges with a rebuilt room without duplicating anything.
:func:`deterministic_update` holds the same items as jupyter_server_ydoc 3.0.4
builds, and goes further in two ways:

- Same bytes. yrs encodes a JSON object stored as a value (cell metadata's
  nested dicts, output ``data``, ``kernelspec``...) in the order of a Rust
  HashMap, which differs from one doc to the next: two builds of one
  notebook hold identical items, but their updates differ in those key
  orders. :func:`canonical_update` sorts them, so ours are byte-identical.
- Same cell ids. jupyter_ydoc gives a ``uuid4`` id to every cell that has
  none (every cell of an nbformat 4.0-4.4 notebook, and the empty code cell
  it adds to a notebook without cells), so the reference's builds of such a
  file hold different items; here those ids are derived from the content.
  Ids are not saved for nbformat < 4.5, so files are unaffected.

The document's ``state`` map is left to the caller, as the reference does: it
sets ``state.path`` on the room's doc (with the room's own client id) outside
the deterministic build, because a rename changes it, and ``dirty``/``hash``
only after a save. The build holds no ``state`` entries at all.
"""

from __future__ import annotations

import hashlib
import json
import math
import uuid
from collections.abc import Mapping
from typing import Any

from jupyter_ydoc import ydocs
from jupyter_ydoc.ybasedoc import YBaseDoc
from jupyter_ydoc.ynotebook import (
    NBFORMAT_MAJOR_VERSION,
    NBFORMAT_MINOR_VERSION,
    YNotebook,
)
from pycrdt import Array, Doc, Map, write_var_uint

from ysyncd.jupyter.files import BadFile
from ysyncd.jupyter.roomids import FORMATS, DocumentType, parse_room_id

__all__ = [
    "FORMATS",
    "DocumentType",
    "canonical_update",
    "content",
    "content_digest",
    "deterministic_update",
    "model",
    "model_class",
    "normalize",
    "parse_room_id",
    "repair",
    "set_content",
]

#: Shared types nested deeper than this under a notebook's root are cut by
#: :func:`repair` (reading them recurses; 64 levels is far past any notebook).
MAX_DEPTH = 64

#: Document classes by type name, from the ``jupyter_ydoc`` entry points.
_CLASSES: Mapping[str, type[YBaseDoc]] = ydocs
#: What jupyter_server_ydoc falls back to for a type nobody registered.
_FALLBACK = "file"

# Cell ids made up for cells that have none: uuid5 names under this namespace.
_CELL_IDS = uuid.UUID("6b0c6f1e-3a52-5d7e-9a0f-2f1c5e0a7d41")
# The undo manager is narrowed to this origin, which no transaction uses.
_NO_UNDO = "ysyncd: no undo"


def model_class(file_type: str) -> type[YBaseDoc]:
    """jupyter_ydoc's class for ``file_type``; ``file``'s for unknown types."""
    return _CLASSES.get(file_type) or _CLASSES[_FALLBACK]


def model(file_type: str, doc: Doc[Any]) -> YBaseDoc:
    """A jupyter_ydoc document of ``file_type`` over ``doc`` (the room's).

    Creating it may edit the doc (YChat marks itself dirty): a room records
    its edits before making its model. jupyter_ydoc gives every document an
    UndoManager that records every transaction in its scope, remote ones
    included; a server never undoes, and the stack would grow for the room's
    whole life, so it is narrowed to an origin nothing uses.
    """
    document = model_class(file_type)(doc)
    document.undo_manager.include_origin(_NO_UNDO)
    return document


def deterministic_update(file_type: str, file_content: Any) -> bytes:
    """The full Yjs update of ``file_content`` built in ``Doc(client_id=0)``.

    Two calls with the same content give the same bytes ("the same" down to
    the order of keys in dicts, which decides the order Yjs items are made
    in, as in jupyter_server_ydoc; two reads of one file agree on it). Apply
    it to an empty room doc only: on a doc that holds another history it
    adds a second copy. CPU-bound for big notebooks; a worker thread may
    run it.
    """
    doc: Doc[Any] = Doc(client_id=0)
    _disposed(_build(file_type, doc, file_content))
    return canonical_update(doc.get_update())


def content(document: YBaseDoc) -> Any:
    """What saving ``document`` would write: jupyter_ydoc's ``get()``.

    For a notebook this renames cells whose ids are duplicated with different
    content (with a UserWarning, as jupyter_ydoc does), which changes the doc:
    the caller's observer sees it like any server-side edit.

    Raises:
        BadFile: the shared types do not have the shape jupyter_ydoc expects
            (any client can give them any shape: a string ``nbformat``, a
            cell without ``cell_type``...).
    """
    try:
        return document.get()
    except _SHAPE_ERRORS as exc:
        raise _bad_shape(document, exc) from exc


def set_content(document: YBaseDoc, new_content: Any) -> None:
    """Overwrite ``document`` with ``new_content`` as granular edits.

    jupyter_ydoc's ``set``: text is diffed, notebook cells are matched by id
    (a cell without an id, as in every nbformat < 4.5 file, is replaced).
    Nothing happens when the content is already there. A room records the
    edit (see :meth:`ysyncd.room.Room.record_edits`).

    Raises:
        BadFile: as :func:`content`, for a document of the wrong shape.
    """
    try:
        document.set(new_content)
    except _SHAPE_ERRORS as exc:
        raise _bad_shape(document, exc) from exc


def repair(document: YBaseDoc) -> None:
    """Edit away what keeps jupyter_ydoc from reading ``document``.

    NaN and infinities become None, and so do shared types nested deeper
    than :data:`MAX_DEPTH` (reading them would recurse past Python's limit;
    each update may nest only ``--max-nesting-depth`` levels, but several can
    nest further); a notebook whose ``nbformat`` or
    ``nbformat_minor`` is not a number gets the current version; a cell that
    still cannot be read (not a map, no ``cell_type``...) is deleted. The
    rest stays as it is. Other types hold one shared text or blob, which
    cannot go wrong this way. A room records the change, so every client
    sees the repair.
    """
    if not isinstance(document, YNotebook):
        return
    with document.ydoc.transaction():  # one edit to record and send
        _repair_notebook(document)


def _repair_notebook(document: YNotebook) -> None:
    meta = document.ydoc.get("meta", type=Map)
    cells = document.ydoc.get("cells", type=Array)
    _tidy(meta)
    _tidy(cells)
    versions = {"nbformat": NBFORMAT_MAJOR_VERSION}
    versions["nbformat_minor"] = NBFORMAT_MINOR_VERSION
    for key, current in versions.items():
        try:
            int(meta.get(key, current))
        except _SHAPE_ERRORS:
            meta[key] = current
    for index in reversed(range(len(cells))):
        try:
            document.get_cell(index)
        except _SHAPE_ERRORS:
            del cells[index]


def _tidy(root: Map[Any] | Array[Any]) -> None:
    """Under ``root``, in place: NaN and infinities become None (JSON has no
    such numbers, and jupyter_ydoc fails on them; Yjs numbers are float64, so
    a client can send them), and so do shared types deeper than MAX_DEPTH.
    Iterative: the document may be nested deeper than Python recurses."""
    stack: list[tuple[Map[Any] | Array[Any], int]] = [(root, 1)]
    while stack:
        shared, depth = stack.pop()
        entries: list[tuple[Any, Any]] = (
            list(shared.items())
            if isinstance(shared, Map)
            else list(enumerate(list(shared)))
        )
        for key, value in entries:
            if isinstance(value, Map | Array):
                if depth >= MAX_DEPTH:
                    shared[key] = None
                else:
                    stack.append((value, depth + 1))
            elif _has_non_finite(value):
                shared[key] = _finite(value)


def _has_non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_has_non_finite(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_non_finite(v) for v in value)
    return False


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


#: What jupyter_ydoc raises on shared types of a shape it does not expect
#: (OverflowError: an infinity made an int; RecursionError: nested too deep).
_SHAPE_ERRORS = (
    RecursionError,
    ValueError,
    KeyError,
    TypeError,
    AttributeError,
    IndexError,
    OverflowError,
)


def _bad_shape(document: YBaseDoc, exc: Exception) -> BadFile:
    kind = type(document).__name__.removeprefix("Y").lower()
    return BadFile(f"the document is not a valid {kind}: {exc!r}")


def normalize(file_type: str, file_content: Any) -> Any:
    """``file_content`` as a document of ``file_type`` gives it back.

    jupyter_ydoc does not hold a file's content verbatim: a notebook gains
    empty ``kernelspec``/``language_info`` metadata, multi-line sources are
    joined, empty attachments of markdown and raw cells and ids of nbformat
    < 4.5 cells are dropped, integral floats come back as ints. So to ask
    "does this document hold this file?" compare ``content(document)`` with
    ``normalize(file_type, file)``, not with the file's content.
    """
    return _disposed(_build(file_type, Doc(), file_content)).get()


def content_digest(value: Any) -> str:
    """A sha256 hex digest of a content value.

    Equal for the same JSON value (key order aside), str or bytes; 1 and 1.0
    differ, as they would in the file. Keep it instead of the whole content
    to tell "changed since last save": take it of ``content(document)``
    right after a load or a save, and compare.
    """
    h = hashlib.sha256()
    if isinstance(value, bytes):
        h.update(b"bytes\0" + value)
    elif isinstance(value, str):
        h.update(b"str\0" + value.encode("utf-8", "surrogatepass"))
    else:
        text = json.dumps(
            value, sort_keys=True, separators=(",", ":"), default=_json_default
        )
        h.update(b"json\0" + text.encode("ascii"))
    return h.hexdigest()


def _json_default(value: object) -> object:
    # Yjs can hold binary values, which JSON has no type for.
    if isinstance(value, bytes):
        return {"$bytes": value.hex()}
    raise TypeError(f"{type(value).__name__} is not content")


def _build(file_type: str, doc: Doc[Any], file_content: Any) -> YBaseDoc:
    document = model(file_type, doc)
    if isinstance(document, YNotebook) and isinstance(file_content, Mapping):
        file_content = _with_cell_ids(file_content)
    document.set(file_content)
    return document


def _disposed(document: YBaseDoc) -> YBaseDoc:
    """``document`` without the observers its class set up (YChat's): a doc
    keeps its observers' owner alive, so a scratch model would never go."""
    document.unobserve()
    return document


def _with_cell_ids(notebook: Mapping[str, Any]) -> Mapping[str, Any]:
    """``notebook`` with an id, derived from its content, in every cell.

    jupyter_ydoc would give each cell without one a random ``uuid4``, and
    an empty notebook a random-id empty code cell; these are the same cells
    with ids that only change when the content does. The placeholder cell
    is jupyter_ydoc's own (trusted: it has no output).
    """
    cells = notebook.get("cells") or []
    if cells and all("id" in cell for cell in cells):
        return notebook
    seed = content_digest(dict(notebook))
    if not cells:
        cells = [
            {
                "cell_type": "code",
                "execution_count": None,
                "metadata": {"trusted": True},
                "outputs": [],
                "source": "",
            }
        ]
    with_ids = [
        cell
        if "id" in cell
        else {**cell, "id": str(uuid.uuid5(_CELL_IDS, f"{seed}:{index}"))}
        for index, cell in enumerate(cells)
    ]
    return {**notebook, "cells": with_ids}


# --- canonical updates -------------------------------------------------------------
#
# Yjs update format v1 (yjs/src/utils/encoding.js, lib0/encoding.js): a
# struct section (per client: count, client, clock, then structs) and a
# delete set. Only lengths are needed to walk it; Any values are re-encoded
# with object keys sorted, everything else is copied byte for byte.

_GC, _SKIP = 0, 10
_ORIGIN, _RIGHT_ORIGIN, _PARENT_SUB = 0x80, 0x40, 0x20
_XML_ELEMENT, _XML_HOOK = 3, 5  # type refs followed by a name
_LAST_TYPE_REF = 6  # YXmlText; Yjs has no more


class _Unsupported(ValueError):
    """Something in an update this walker does not know."""


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def byte(self) -> int:
        if self.pos >= len(self.data):
            raise _Unsupported("truncated")
        value = self.data[self.pos]
        self.pos += 1
        return value

    def uint(self) -> int:
        value, shift = 0, 0
        while True:
            byte = self.byte()
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                return value
            shift += 7

    def skip(self, n: int) -> None:
        self.pos += n
        if self.pos > len(self.data):
            raise _Unsupported("truncated")

    def skip_id(self) -> None:
        self.uint()  # client
        self.uint()  # clock

    def skip_bytes(self) -> None:
        """A length-prefixed string or buffer."""
        self.skip(self.uint())

    def since(self, start: int) -> bytes:
        return self.data[start : self.pos]


def canonical_update(update: bytes) -> bytes:
    """``update`` with JSON object keys sorted and clients in Yjs's order.

    The same items, encoded one way: two updates holding the same items give
    the same bytes. An update with content this does not know (none that
    jupyter_ydoc makes) is returned unchanged.
    """
    try:
        canonical = _canonical(_Reader(update))
    except _Unsupported:
        return update
    # Only orders change: a different length means a misreading.
    return canonical if len(canonical) == len(update) else update


def _canonical(r: _Reader) -> bytes:
    clients: list[tuple[int, bytes]] = []
    for _ in range(r.uint()):
        start = r.pos
        structs = r.uint()
        client = r.uint()
        r.uint()  # first clock
        parts = [r.since(start)]
        parts.extend(_struct(r) for _ in range(structs))
        clients.append((client, b"".join(parts)))
    deletes: list[tuple[int, bytes]] = []
    count_start = r.pos
    count = r.uint()
    counts = [r.since(count_start)]
    for _ in range(count):
        start = r.pos
        client = r.uint()
        for _ in range(r.uint()):
            r.uint()  # clock
            r.uint()  # length
        deletes.append((client, r.since(start)))
    if r.pos != len(r.data):
        raise _Unsupported("trailing bytes")
    # Yjs writes both sections' clients in descending order.
    clients.sort(key=lambda c: -c[0])
    deletes.sort(key=lambda d: -d[0])
    return b"".join(
        [
            write_var_uint(len(clients)),
            *(c for _, c in clients),
            *counts,
            *(d for _, d in deletes),
        ]
    )


def _struct(r: _Reader) -> bytes:
    start = r.pos
    info = r.byte()
    ref = info & 0x1F
    if ref in (_GC, _SKIP):
        r.uint()  # length
        return r.since(start)
    if info & _ORIGIN:
        r.skip_id()
    if info & _RIGHT_ORIGIN:
        r.skip_id()
    if not info & (_ORIGIN | _RIGHT_ORIGIN):
        if r.uint() == 1:
            r.skip_bytes()  # a root type's name
        else:
            r.skip_id()  # the parent's
        if info & _PARENT_SUB:
            r.skip_bytes()
    head = r.since(start)
    start = r.pos
    if ref == 1:  # deleted
        r.uint()
    elif ref == 2:  # JSON strings
        for _ in range(r.uint()):
            r.skip_bytes()
    elif ref in (3, 4, 5):  # binary, string, embed
        r.skip_bytes()
    elif ref == 6:  # format: key, JSON value
        r.skip_bytes()
        r.skip_bytes()
    elif ref == 7:  # a shared type
        type_ref = r.uint()
        if type_ref > _LAST_TYPE_REF:  # e.g. yrs's weak links
            raise _Unsupported(f"type {type_ref}")
        if type_ref in (_XML_ELEMENT, _XML_HOOK):
            r.skip_bytes()
    elif ref == 8:  # Any values
        count = r.uint()
        values = [_any(r) for _ in range(count)]
        return head + write_var_uint(count) + b"".join(values)
    elif ref == 9:  # a subdocument: guid, options
        r.skip_bytes()
        return head + r.since(start) + _any(r)
    else:
        raise _Unsupported(f"content type {ref}")
    return head + r.since(start)


def _any(r: _Reader) -> bytes:
    start = r.pos
    tag = r.byte()
    if tag in (127, 126, 121, 120):  # undefined, null, false, true
        pass
    elif tag == 125:  # varint
        while r.byte() >= 0x80:
            pass
    elif tag == 124:  # float32
        r.skip(4)
    elif tag in (123, 122):  # float64, bigint
        r.skip(8)
    elif tag in (119, 116):  # string, bytes
        r.skip_bytes()
    elif tag == 118:  # object
        count = r.uint()
        entries = []
        for _ in range(count):
            key_start = r.pos
            r.skip_bytes()
            key = r.since(key_start)
            entries.append((key, _any(r)))
        entries.sort(key=lambda e: e[0])
        return b"\x76" + write_var_uint(count) + b"".join(k + v for k, v in entries)
    elif tag == 117:  # array
        count = r.uint()
        return b"\x75" + write_var_uint(count) + b"".join(_any(r) for _ in range(count))
    else:
        raise _Unsupported(f"Any tag {tag}")
    return r.since(start)
