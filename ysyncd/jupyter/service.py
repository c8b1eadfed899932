"""Jupyter rooms as the server sees them: routing, session ids, file bindings.

A path matching ``--room-pattern`` is a Jupyter room and speaks the Jupyter
dialect. Its room id (the last segment) decides what it is:

- ``format:type:fileId`` (two colons or more): a *document room*, stored like
  any room and, with ``--jupyter-files``, bound to its file (see rooms.py);
- anything else (``JupyterLab:globalAwareness``, fork rooms): a *transient
  room*, kept in memory only, in its own registry.

Both are keyed by the name without the pattern's prefix, so the namespace is
part of the key: file ids are unique only per Jupyter server.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import parse_qs

from anyio.abc import TaskGroup

from ysyncd.cluster import Cluster, Lease
from ysyncd.config import Settings
from ysyncd.errors import InvalidUpdate
from ysyncd.jupyter.files import Files, open_files
from ysyncd.jupyter.roomids import Target, parse_room_id
from ysyncd.namespaces import Namespace, PathPattern
from ysyncd.peer import Peer
from ysyncd.protocol import JupyterSave, Message, encode_raw
from ysyncd.room import Room
from ysyncd.rooms import RoomRegistry, Setup
from ysyncd.spawn import start_soon

if TYPE_CHECKING:
    from ysyncd.jupyter.rooms import FileBinding

__all__ = ["JupyterRooms", "Route", "route", "unknown_session"]

log = logging.getLogger("ysyncd.jupyter")


@dataclass(frozen=True, slots=True)
class Route:
    """Where a Jupyter connection goes."""

    key: str
    #: The file of a document room; None for a transient room.
    target: Target | None
    #: The client's ``?sessionId=``, if it sent one.
    session: str | None


def unknown_session(session: str) -> str:
    """The 1003 close reason telling a JupyterLab client to reload."""
    return json.dumps(
        # Cut the client's id short, so the JSON fits in a close frame.
        {"reason": "unknown_session", "sessionId": session[:64], "reloadable": True}
    )


def route(pattern: PathPattern, room: str, query: str) -> Route | None:
    """Where a room name goes with ``pattern``; None for a plain y-websocket room.

    Raises:
        InvalidRoomName: a document room id of an unknown format.
    """
    located = pattern.locate(room)
    if located is None:
        return None
    session = parse_qs(query).get("sessionId", [""])[0] or None
    kind = parse_room_id(located.room_id)
    target = None
    if kind is not None:
        target = Target(
            located.namespace, kind.file_format, kind.file_type, kind.file_id
        )
    return Route(located.key, target, session)


def autosave_wanted(room: Room) -> bool:
    """jupyter_server_ydoc's rule: save unless every client set autosave off."""
    states = []
    for text in room.awareness.states().values():
        try:
            state = json.loads(text)
        except ValueError:
            continue  # validated on the way in; a removal reads as null
        if isinstance(state, dict):
            states.append(state)
    return not states or any(s.get("autosave", True) is not False for s in states)


class JupyterRooms:
    def __init__(
        self,
        settings: Settings,
        transient: RoomRegistry,
        task_group: TaskGroup,
        cluster: Cluster | None = None,
    ) -> None:
        self.settings = settings
        self._cluster = cluster
        self.pattern = PathPattern(settings.room_pattern)
        self.transient = transient
        self.files: Files | None = open_files(settings)
        self._tg = task_group
        if self.files is not None:
            # Now, not at a first room's load: importing the document models
            # takes seconds (see roomids.py), which would stall every room.
            from ysyncd.jupyter.rooms import FileBinding

            self._binding: type[FileBinding] | None = FileBinding
        else:
            self._binding = None

    def route(self, room: str, query: str) -> Route | None:
        """The route of a room name, or None for a plain y-websocket room."""
        return route(self.pattern, room, query)

    def files_changed(self, rooms: Iterable[Room], namespace: Namespace) -> int:
        """Files in ``namespace`` changed: check those of its rooms now.

        The Jupyter server extension says so on its contents events (save,
        rename, delete), so they show up at once rather than at the next poll.
        Returns how many rooms were told.
        """
        told = 0
        if self._binding is None:
            return told  # no room is bound to a file
        for room in rooms:
            binding = room.document
            if (
                isinstance(binding, self._binding)
                and binding.target.namespace == namespace
            ):
                binding.poke()
                told += 1
        return told

    def receive(
        self, peer: Peer, room: Room, message: Message
    ) -> Awaitable[None] | None:
        """:meth:`Room.receive`, plus what only Jupyter rooms do."""
        if isinstance(message, JupyterSave):
            start_soon(self._tg, self._save, peer, room, message.save_id)
            return None
        try:
            pending = room.receive(peer, message)
        except InvalidUpdate:
            self._conflict(peer, room)
            return None
        return None if pending is None else self._applying(peer, room, pending)

    async def _applying(self, peer: Peer, room: Room, pending: Awaitable[None]) -> None:
        try:
            await pending
        except InvalidUpdate:
            self._conflict(peer, room)

    @staticmethod
    def _conflict(peer: Peer, room: Room) -> None:
        # jupyter_server_ydoc's answer to an update that cannot be applied
        # (a stale client after its file changed): tell the client, which
        # offers to resolve it, and keep serving it. Nothing was stored.
        log.warning("room %r: an update could not be applied", room.key)
        peer.send(encode_raw(json.dumps({"type": "conflict"})))

    async def _save(self, peer: Peer, room: Room, save_id: int) -> None:
        binding = room.document
        if peer.read_only:
            status = "failed"  # a viewer must not write others' edits to disk
        elif binding is None:
            status = "skipped"
        else:
            try:
                status = await binding.save()
            except Exception:
                # Runs in the server's task group: a bug in one room's save
                # must fail that save, not stop the server.
                log.exception("room %r: the save failed", room.key)
                status = "failed"
        reply = {"type": "save", "responseTo": save_id, "status": status}
        peer.send(encode_raw(json.dumps(reply)))

    def setup(self, target: Target) -> Setup | None:
        """What binds a freshly loaded document room to its file, if anything."""
        files = self.files
        if files is None or self._binding is None:
            return None
        binding = self._binding(
            target,
            files,
            self._tg,
            save_delay=self.settings.save_delay,
            poll_interval=self.settings.poll_interval,
            autosave_wanted=autosave_wanted,
            lease_for=self._lease_for if self._cluster is not None else None,
        )
        return binding.setup

    def _lease_for(self, room: str) -> Lease:
        assert self._cluster is not None and self._cluster.backplane is not None
        return self._cluster.backplane.lease(room)
