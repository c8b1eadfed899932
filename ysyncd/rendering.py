"""A stored document as JSON, for people and tools outside Yjs.

A Yjs update does not say what type each root is: a client decides that
when it asks for ``doc.getMap("m")``. So the types are read off the content:
a root is rendered as a map if it has entries, else as text if it holds
characters, else as an array if it holds values, else as an empty map.
Each guess is made on a copy of the document (asking pycrdt for a root as
one type fixes it for that document).

A Jupyter document room is rendered as its file's content instead (a
notebook's JSON, a text file's text), through its jupyter_ydoc model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pycrdt import Array, Doc, Map, Text

from ysyncd.store.snapshot import doc_from_updates

__all__ = ["document_json", "jupyter_json", "root_types"]


def document_json(updates: Sequence[bytes]) -> dict[str, Any]:
    """Every root of the document ``updates`` make, as plain data."""
    state = doc_from_updates(updates).get_update()
    names = sorted(_copy(state).keys())
    return {name: _root(state, name) for name in names}


def jupyter_json(updates: Sequence[bytes], file_type: str) -> Any:
    """What saving the Jupyter document would write (documents.content)."""
    from ysyncd.jupyter import documents  # imports jupyter_ydoc: only here

    model = documents.model(file_type, doc_from_updates(updates))
    return documents.content(model)


def root_types(state: bytes) -> dict[str, type[Map[Any] | Text | Array[Any]]]:
    """Each root of the document ``state`` (a full update) and the type its
    content shows (see the module docs); an empty root is a Map."""
    return {name: _root_type(state, name) for name in sorted(_copy(state).keys())}


def _root_type(state: bytes, name: str) -> type[Map[Any] | Text | Array[Any]]:
    if _copy(state).get(name, type=Map).to_py():
        return Map
    if str(_copy(state).get(name, type=Text)):
        return Text
    if _copy(state).get(name, type=Array).to_py():
        return Array
    return Map


def _root(state: bytes, name: str) -> Any:
    kind = _root_type(state, name)
    root = _copy(state).get(name, type=kind)
    if isinstance(root, Text):
        return str(root)
    return root.to_py() or ({} if kind is Map else [])


def _copy(state: bytes) -> Doc[Any]:
    doc: Doc[Any] = Doc()
    doc.apply_update(state)
    return doc
