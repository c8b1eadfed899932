"""What a JupyterLab room id names, without jupyter_ydoc.

Routing needs this for every connection; the document models (documents.py)
need jupyter_ydoc, whose import loads every ``jupyter_ydoc`` entry point
(jupyterlab-chat's pulls in jupyter_server: 2 s). So a server without
``--jupyter-files``, which never builds a model, never imports it.
"""

from __future__ import annotations

from dataclasses import dataclass

from ysyncd.errors import InvalidRoomName
from ysyncd.namespaces import Namespace

__all__ = ["FORMATS", "DocumentType", "Target", "parse_room_id"]

#: The file formats of the Contents API a room id may name.
FORMATS = frozenset({"json", "text", "base64"})


@dataclass(frozen=True, slots=True)
class DocumentType:
    """What a document room id (``format:type:fileId``) names."""

    file_format: str
    file_type: str
    file_id: str

    @property
    def room_id(self) -> str:
        return f"{self.file_format}:{self.file_type}:{self.file_id}"


@dataclass(frozen=True, slots=True)
class Target:
    """Which file a Jupyter document room is about."""

    namespace: Namespace
    file_format: str
    file_type: str
    file_id: str


def parse_room_id(room_id: str) -> DocumentType | None:
    """The document a JupyterLab room id names; None for a transient room.

    As in jupyter_server_ydoc, an id with two colons or more is a document
    room, split with ``split(":", 2)`` (so the file id may hold colons);
    anything else (``JupyterLab:globalAwareness``, fork rooms) is transient.
    An unknown type is not an error: it is edited as a ``file``.

    Raises:
        InvalidRoomName: an unknown format, or an empty type or file id.
    """
    if room_id.count(":") < 2:
        return None
    file_format, file_type, file_id = room_id.split(":", 2)
    if file_format not in FORMATS:
        raise InvalidRoomName(
            f"unknown file format {file_format[:32]!r} (json, text or base64)"
        )
    if not file_type:
        raise InvalidRoomName("the room id names no document type")
    if not file_id:
        raise InvalidRoomName("the room id names no file id")
    return DocumentType(file_format, file_type, file_id)
