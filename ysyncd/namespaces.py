"""Namespaces: which Jupyter server a room belongs to.

JupyterLab's provider connects to ``…/user/{owner}/{server}/api/collaboration/
room/{room}`` behind JupyterHub. File ids are unique only per Jupyter server,
and JupyterHub grants access per server, so the owner and the server name are
read from the room name (the path) with one configurable pattern, for access
checks and for keying rooms.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["DEFAULT_PATTERN", "Located", "Namespace", "PathPattern"]

#: JupyterHub's URL layout, with any base URL or service prefix before it.
#: ``server`` is absent for a user's default server.
DEFAULT_PATTERN = (
    r"^(?:(?P<prefix>.*?)/)??user/(?P<owner>[^/]+)/(?:(?P<server>[^/]+)/)?"
    r"api/collaboration/room/(?P<room>[^/]+)$"
)


@dataclass(frozen=True, slots=True)
class Namespace:
    """One Jupyter server: ``owner``'s, named ``server`` ("" for the default)."""

    owner: str
    server: str = ""

    def __str__(self) -> str:
        return f"user/{self.owner}/{self.server}"


@dataclass(frozen=True, slots=True)
class Located:
    """A room name read with the pattern."""

    namespace: Namespace
    #: The name without the pattern's ``prefix`` (a base URL or a service
    #: prefix), so every route to one server's room names the same room.
    key: str
    #: The ``room`` group: JupyterLab's room id, e.g. ``json:notebook:<file id>``.
    room_id: str


class PathPattern:
    """A regular expression with ``owner`` and optional ``server`` groups."""

    def __init__(self, pattern: str = DEFAULT_PATTERN) -> None:
        self.regex = re.compile(pattern)
        missing = {"owner"} - set(self.regex.groupindex)
        if missing:
            raise ValueError(f"the room pattern needs a group named {missing.pop()!r}")

    def namespace(self, room: str) -> Namespace | None:
        """The namespace ``room`` is in, or None if it is in none."""
        located = self.locate(room)
        return None if located is None else located.namespace

    def locate(self, room: str) -> Located | None:
        """Where ``room`` is, or None if it is in no namespace."""
        match = self.regex.match(room)
        if match is None:
            return None
        groups = match.groupdict()
        key = room
        if groups.get("prefix") is not None:
            key = room[match.end("prefix") + 1 :]
        room_id = groups.get("room") or room.rpartition("/")[2]
        return Located(
            Namespace(groups["owner"], groups.get("server") or ""), key, room_id
        )
