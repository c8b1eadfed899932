"""Which rooms this Jupyter server has open, told on its event bus.

jupyter-server-ydoc emits ``jupyter_collaboration`` events that JupyterLab
and other extensions act on. The extension emits the same, with the same
schemas, from what it sees pass through it:

- **session** (``…/session/v1``): ``initialize`` when a browser's socket to a
  document room opens (jupyterlab-chat, and so jupyter-ai, waits for it
  before it asks ``get_document`` for a chat); ``save`` when the Contents
  API saved a file an open room follows; ``clean`` once a room has had no
  socket here for ``clean_seconds``; and a ``WARNING`` when a room opens on
  a file that another room (another view: the notebook, the text editor)
  has open, which JupyterLab shows as "opened with two different views".
- **awareness** (``…/awareness/v1``): ``join`` and ``leave`` per socket.
- **fork** (``…/fork/v1``): see forks.py.

It also answers whether a room is open here (``get_document`` returns None
for a room that is not, as jupyter-server-ydoc does).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import Any

__all__ = [
    "AWARENESS_EVENTS",
    "FORK_EVENTS",
    "SESSION_EVENTS",
    "Sessions",
    "split_room_id",
]

log = logging.getLogger("ysyncd.jupyter.extension")

SESSION_EVENTS = "https://schema.jupyter.org/jupyter_collaboration/session/v1"
AWARENESS_EVENTS = "https://schema.jupyter.org/jupyter_collaboration/awareness/v1"
FORK_EVENTS = "https://schema.jupyter.org/jupyter_collaboration/fork/v1"
#: What JupyterLab shows (with the path) when one file has two views open.
TWO_VIEWS = (
    "There is another collaborative session accessing the same file.\n"
    "The synchronization between rooms is not supported and you might lose "
    "some of your changes."
)


def _schema(
    schema_id: str, title: str, required: list[str], **props: Any
) -> dict[str, Any]:
    return {
        "$id": schema_id,
        "version": "1",
        "title": title,
        "personal-data": True,
        "description": f"{title}, emitted during a collaborative session.",
        "type": "object",
        "required": required,
        "properties": props,
    }


_TEXT = {"type": "string"}
SCHEMAS = [
    _schema(
        SESSION_EVENTS,
        "Collaborative session events",
        ["level", "room", "path"],
        level={"enum": ["INFO", "DEBUG", "WARNING", "ERROR", "CRITICAL"]},
        room=_TEXT,
        path=_TEXT,
        store=_TEXT,
        action={"enum": ["initialize", "load", "save", "overwrite", "clean"]},
        msg=_TEXT,
    ),
    _schema(
        AWARENESS_EVENTS,
        "Collaborative awareness events",
        ["roomid", "username", "action"],
        roomid=_TEXT,
        username=_TEXT,
        action={"enum": ["join", "leave"]},
        msg=_TEXT,
    ),
    _schema(
        FORK_EVENTS,
        "Collaborative fork events",
        ["fork_roomid", "fork_info", "username", "action"],
        fork_roomid=_TEXT,
        fork_info={
            "type": "object",
            "required": ["root_roomid", "synchronize", "title", "description"],
            "properties": {
                "root_roomid": _TEXT,
                "synchronize": {"type": "boolean"},
                "title": _TEXT,
                "description": _TEXT,
            },
        },
        username=_TEXT,
        action={"enum": ["create", "delete"]},
    ),
]


def split_room_id(room_id: str) -> tuple[str, str, str] | None:
    """``(format, type, file id)`` of a document room's id, or None."""
    parts = room_id.split(":", 2)
    if len(parts) != 3 or not all(parts):
        return None
    return parts[0], parts[1], parts[2]


class Sessions:
    """The document rooms open through this server, and their events."""

    def __init__(
        self, events: Any, path_of: Any, *, clean_seconds: float = 60.0
    ) -> None:
        """``events``: the server's jupyter_events EventLogger; ``path_of``:
        a file id to its path (jupyter_server_fileid's ``get_path``), or None."""
        self._events = events
        self._path_of = path_of
        self.clean_seconds = clean_seconds
        self._sockets: Counter[str] = Counter()
        self._cleaners: dict[str, asyncio.TimerHandle] = {}
        for schema in SCHEMAS:
            # (Registered already if jupyter-server-ydoc is enabled too.)
            if schema["$id"] not in events.schemas.schema_ids:
                events.register_event_schema(schema)

    def is_open(self, room_id: str) -> bool:
        """Whether a socket to ``room_id`` is open here, or closed lately."""
        return room_id in self._sockets or room_id in self._cleaners

    def opened(self, room_id: str, username: str) -> None:
        """A browser's socket to ``room_id`` opened (ysyncd admitted it)."""
        if split_room_id(room_id) is None:
            return  # a transient room: JupyterLab's global awareness
        cleaner = self._cleaners.pop(room_id, None)
        if cleaner is not None:
            cleaner.cancel()
        elif room_id not in self._sockets and self._other_view(room_id):
            self._emit_session(room_id, "WARNING", None, TWO_VIEWS)
        self._sockets[room_id] += 1
        self._emit_session(room_id, "INFO", "initialize", "New client connected.")
        self._emit(AWARENESS_EVENTS, roomid=room_id, username=username, action="join")

    def closed(self, room_id: str, username: str) -> None:
        if room_id not in self._sockets:
            return
        self._emit(AWARENESS_EVENTS, roomid=room_id, username=username, action="leave")
        self._sockets[room_id] -= 1
        if self._sockets[room_id] <= 0:
            del self._sockets[room_id]
            self._cleaners[room_id] = asyncio.get_running_loop().call_later(
                self.clean_seconds, self._clean, room_id
            )

    def saved(self, path: str) -> None:
        """The Contents API saved ``path``: tell the rooms open on it."""
        for room_id in list(self._sockets):
            if self._path(room_id) == path:
                self._emit_session(room_id, "INFO", "save", "Content saved.")

    def close(self) -> None:
        for cleaner in self._cleaners.values():
            cleaner.cancel()
        self._cleaners.clear()

    def emit_fork(self, **data: Any) -> None:
        self._emit(FORK_EVENTS, **data)

    # -- helpers ------------------------------------------------------------------

    def _clean(self, room_id: str) -> None:
        self._cleaners.pop(room_id, None)
        self._emit_session(room_id, "INFO", "clean", "Room deleted.")

    def _other_view(self, room_id: str) -> bool:
        parts = split_room_id(room_id)
        assert parts is not None
        return any(
            other != room_id and (split_room_id(other) or ("", "", ""))[2] == parts[2]
            for other in self._sockets
        )

    def _path(self, room_id: str) -> str | None:
        parts = split_room_id(room_id)
        if parts is None:
            return None
        path = self._path_of(parts[2])
        return path if isinstance(path, str) else None

    def _emit_session(
        self, room_id: str, level: str, action: str | None, msg: str
    ) -> None:
        data: dict[str, Any] = {
            "level": level,
            "room": room_id,
            "path": self._path(room_id) or "",
            "msg": msg,
        }
        if action is not None:
            data["action"] = action
        self._emit(SESSION_EVENTS, **data)

    def _emit(self, schema_id: str, **data: Any) -> None:
        # Listeners run as tasks of the event logger; a failing one is
        # its own problem, logged by jupyter_events.
        self._events.emit(schema_id=schema_id, data=data)
