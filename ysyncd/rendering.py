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

__all__ = ["document_json", "jupyter_json"]


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


def _root(state: bytes, name: str) -> Any:
    entries = _copy(state).get(name, type=Map).to_py() or {}
    if entries:
        return entries
    text = str(_copy(state).get(name, type=Text))
    if text:
        return text
    values = _copy(state).get(name, type=Array).to_py() or []
    return values if values else {}


def _copy(state: bytes) -> Doc[Any]:
    doc: Doc[Any] = Doc()
    doc.apply_update(state)
    return doc
