"""Forks and the timeline: jupyter-server-ydoc's ``fork``, ``timeline`` and
``undo_redo`` endpoints, with the rooms in ysyncd.

A fork is a room of its own in ysyncd (a transient room: its id has no
``format:type:`` part), which this server joins as a live document
(live.py) and holds until the fork is deleted:

- ``PUT api/collaboration/fork/{root}`` with ``{"synchronize", "title",
  "description"}``: the root's content is copied into a new room (uuid4 hex)
  and, with ``synchronize``, every later change of the root follows, one way.
  **201** ``{"sessionId", "fork_roomid", "fork_info"}``; **404** if the root
  room is not open here.
- ``GET api/collaboration/fork/{root}``: ``{fork_roomid: fork_info}``.
- ``DELETE api/collaboration/fork/{fork}?merge=true|false``: with
  ``merge=true`` what the fork holds and the root lacks is applied to the
  root as one edit (one update, recorded once); **404** for an unknown fork.

The timeline replays the room's stored history (ysyncd's
``/_ysyncd/history/``, since its last compaction) into a new document whose
UndoManager records one step per stored update that changed it:

- ``GET api/collaboration/timeline/{path}?format=&type=``: ``{"roomId",
  "timestamps", "forkRoom", "sessionId"}``. JupyterLab's timeline slider
  connects the document to ``forkRoom``, a room holding that replay;
- ``PUT api/collaboration/undo_redo/{room}?action=undo|redo&steps=N&forkRoom=``
  moves the replay back or forward, and the page follows;
- ``action=restore`` ends it: the page reconnects to the document's room,
  taking the content it shows with it, as a forward edit everyone gets.

Forks and timelines live in this Jupyter server's memory, as in
jupyter-server-ydoc; fork rooms survive a ysyncd restart (this server joins
them again and gives them back their content).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

from jupyter_server.base.handlers import APIHandler
from jupyter_ydoc import ydocs
from jupyter_ydoc.ybasedoc import YBaseDoc
from pycrdt import Doc, Subscription, TransactionEvent
from tornado import web

from ysyncd.jupyter.glue import Glue
from ysyncd.jupyter.live import LiveDocuments, YsyncdUnavailable
from ysyncd.jupyter.serverfiles import allowed
from ysyncd.jupyter.sessions import Sessions, split_room_id

__all__ = ["Forks", "handlers"]

log = logging.getLogger("ysyncd.jupyter.extension")

#: Timelines kept at once; opening one more drops the oldest.
MAX_TIMELINES = 32
#: Most undo or redo steps one request takes.
MAX_STEPS = 10_000


@dataclass
class _Fork:
    info: dict[str, Any]
    root: YBaseDoc
    fork: YBaseDoc
    following: Subscription | None


class Forks:
    """This server's forks and timelines (see the module)."""

    def __init__(self, glue: Glue, live: LiveDocuments, sessions: Sessions) -> None:
        self.glue = glue
        self.live = live
        self.sessions = sessions
        self._forks: dict[str, _Fork] = {}
        self._timelines: dict[str, YBaseDoc] = {}

    def is_open(self, room_id: str) -> bool:
        return self.sessions.is_open(room_id) or room_id in self.live

    # -- forks ------------------------------------------------------------------

    def of(self, root_id: str) -> dict[str, dict[str, Any]]:
        return {
            k: f.info
            for k, f in self._forks.items()
            if f.info["root_roomid"] == root_id
        }

    async def create(
        self, root_id: str, synchronize: bool, title: str, description: str
    ) -> tuple[str, dict[str, Any]] | None:
        """A new fork of ``root_id``; None if that room is not open here."""
        parts = split_room_id(root_id)
        if parts is None or not self.is_open(root_id):
            return None
        root = await self.live.get(root_id, parts[1])
        fork_id = uuid.uuid4().hex
        fork = ydocs.get(parts[1], ydocs["file"])(_copy(root.ydoc))
        await self.live.attach(fork_id, parts[1], fork)
        following = None
        if synchronize:
            fork_doc = fork.ydoc

            def follow(event: TransactionEvent) -> None:
                fork_doc.apply_update(event.update)

            following = root.ydoc.observe(follow)
        info = {
            "root_roomid": root_id,
            "synchronize": synchronize,
            "title": title,
            "description": description,
        }
        self._forks[fork_id] = _Fork(info, root, fork, following)
        return fork_id, info

    def delete(self, fork_id: str, merge: bool) -> dict[str, Any] | None:
        """Drop a fork, merging it into its root first; None if unknown."""
        found = self._forks.pop(fork_id, None)
        if found is None:
            return None
        if found.following is not None:
            found.root.ydoc.unobserve(found.following)
        if merge:
            root_doc, fork_doc = found.root.ydoc, found.fork.ydoc
            # One update: what the fork has that the root lacks.
            root_doc.apply_update(fork_doc.get_update(root_doc.get_state()))
        self.live.close_room(fork_id)
        return found.info

    # -- timelines --------------------------------------------------------------

    async def timeline(self, room_id: str, file_type: str) -> tuple[str, list[float]]:
        """Replay ``room_id``'s history into a new room; its id and the
        times of its steps."""
        history = await self.glue.history(room_id)
        model = ydocs[file_type](Doc())
        undo = model.undo_manager
        stamps: list[float] = []
        for when, update in history:
            steps = len(undo.undo_stack)
            model.ydoc.apply_update(update)
            if len(undo.undo_stack) > steps:
                stamps.append(when if when is not None else _first_known(history))
        fork_id = uuid.uuid4().hex
        await self.live.attach(fork_id, file_type, model)
        while len(self._timelines) >= MAX_TIMELINES:
            oldest = next(iter(self._timelines))
            self.end_timeline(oldest)
        self._timelines[fork_id] = model
        return fork_id, stamps

    def timeline_model(self, fork_id: str) -> YBaseDoc | None:
        return self._timelines.get(fork_id)

    def end_timeline(self, fork_id: str) -> None:
        if self._timelines.pop(fork_id, None) is not None:
            self.live.close_room(fork_id)

    def close(self) -> None:
        for fork_id in list(self._forks):
            self.delete(fork_id, merge=False)
        for fork_id in list(self._timelines):
            self.end_timeline(fork_id)


def _copy(doc: Doc[Any]) -> Doc[Any]:
    copy: Doc[Any] = Doc()
    copy.apply_update(doc.get_update())
    return copy


def _first_known(history: list[tuple[float | None, bytes]]) -> float:
    """A time for the snapshot: the first row's after it, or now."""
    return next((when for when, _ in history if when is not None), time.time())


def _not_found(handler: APIHandler, error: str) -> None:
    handler.set_status(404)
    handler.finish({"code": 404, "error": error})


class _Handler(APIHandler):
    auth_resource = "contents"

    def initialize(self, forks: Forks) -> None:
        self.forks = forks

    async def _require(self, action: str) -> None:
        if not await allowed(self, action):
            raise web.HTTPError(403)


class ForkHandler(_Handler):
    """``api/collaboration/fork/{room}``."""

    @web.authenticated
    async def get(self, root_id: str) -> None:
        await self._require("read")
        self.finish(self.forks.of(root_id))

    @web.authenticated
    async def put(self, root_id: str) -> None:
        await self._require("write")
        body = self.get_json_body() or {}
        try:
            made = await self.forks.create(
                root_id,
                bool(body.get("synchronize", False)),
                str(body.get("title", "")),
                str(body.get("description", "")),
            )
        except YsyncdUnavailable as exc:
            raise web.HTTPError(503, reason="ysyncd not reachable") from exc
        if made is None:
            _not_found(self, "Root room not found")
            return
        fork_id, info = made
        self._emit(fork_id, info, "create")
        self.set_status(201)
        self.finish(
            json.dumps(
                {
                    "sessionId": await self.forks.glue.epoch(),
                    "fork_roomid": fork_id,
                    "fork_info": info,
                }
            )
        )

    @web.authenticated
    async def delete(self, fork_id: str) -> None:
        await self._require("write")
        merge = self.get_query_argument("merge") == "true"  # 400 if missing
        info = self.forks.delete(fork_id, merge)
        if info is None:
            _not_found(self, "Fork room not found")
            return
        self._emit(fork_id, info, "delete")
        self.set_status(200)
        self.finish()

    def _emit(self, fork_id: str, info: dict[str, Any], action: str) -> None:
        self.forks.sessions.emit_fork(
            username=self.current_user.username,
            fork_roomid=fork_id,
            fork_info=info,
            action=action,
        )


class TimelineHandler(_Handler):
    """``api/collaboration/timeline/{path}?format=&type=``."""

    @web.authenticated
    async def get(self, path: str) -> None:
        await self._require("read")
        file_format = self.get_query_argument("format")
        file_type = self.get_query_argument("type")
        ids = self.settings.get("file_id_manager")
        file_id = None if ids is None else ids.get_id(path)
        room_id = f"{file_format}:{file_type}:{file_id}"
        if file_id is None or not self.forks.is_open(room_id):
            _not_found(self, "Room not found")
            return
        if file_type not in ydocs:
            _not_found(self, f"No document factory found for content type: {file_type}")
            return
        try:
            fork_id, stamps = await self.forks.timeline(room_id, file_type)
        except YsyncdUnavailable as exc:
            raise web.HTTPError(503, reason="ysyncd not reachable") from exc
        self.finish(
            json.dumps(
                {
                    "roomId": room_id,
                    "timestamps": stamps,
                    "forkRoom": fork_id,
                    "sessionId": await self.forks.glue.epoch(),
                }
            )
        )


class UndoRedoHandler(_Handler):
    """``api/collaboration/undo_redo/{room}?action=&steps=&forkRoom=``."""

    @web.authenticated
    async def put(self, room_id: str) -> None:
        await self._require("write")
        action = self.get_query_argument("action")
        fork_id = self.get_query_argument("forkRoom")
        try:
            steps = min(int(self.get_query_argument("steps", "1")), MAX_STEPS)
        except ValueError:
            raise web.HTTPError(400, reason="steps is a number") from None
        model = self.forks.timeline_model(fork_id)
        if model is None:
            _not_found(self, "Fork document not found")
            return
        undo = model.undo_manager
        if action == "restore":
            self.forks.end_timeline(fork_id)
            self.finish({"code": 200, "status": "Document restored successfully"})
        elif action == "undo":
            if not undo.can_undo():
                self.finish({"error": "No more undo operations available"})
                return
            # The first step (the document's first state) stays.
            for _ in range(steps):
                if len(undo.undo_stack) <= 1:
                    break
                undo.undo()
            self.finish({"status": "undone"})
        elif action == "redo":
            if not undo.can_redo():
                self.finish({"error": "No more redo operations available"})
                return
            for _ in range(steps):
                if not undo.can_redo():
                    break
                undo.redo()
            self.finish({"status": "redone"})
        else:
            raise web.HTTPError(400, reason="action is undo, redo or restore")


def handlers(forks: Forks) -> list[tuple[str, type[_Handler], dict[str, Any]]]:
    """The endpoints, for the extension's handler list."""
    options = {"forks": forks}
    return [
        (r"/api/collaboration/fork/(.*)", ForkHandler, options),
        (r"/api/collaboration/timeline/(.*)", TimelineHandler, options),
        (r"/api/collaboration/undo_redo/(.*)", UndoRedoHandler, options),
    ]
