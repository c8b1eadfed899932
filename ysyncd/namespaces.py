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

__all__ = ["DEFAULT_PATTERN", "Namespace", "PathPattern"]

#: JupyterHub's URL layout, with any base URL or service prefix before it.
#: ``server`` is absent for a user's default server.
DEFAULT_PATTERN = (
    r"^(?:(?P<prefix>.*?)/)?user/(?P<owner>[^/]+)/(?:(?P<server>[^/]+)/)?"
    r"api/collaboration/room/(?P<room>[^/]+)$"
)


@dataclass(frozen=True, slots=True)
class Namespace:
    """One Jupyter server: ``owner``'s, named ``server`` ("" for the default)."""

    owner: str
    server: str = ""

    def __str__(self) -> str:
        return f"user/{self.owner}/{self.server}"


class PathPattern:
    """A regular expression with ``owner`` and optional ``server`` groups."""

    def __init__(self, pattern: str = DEFAULT_PATTERN) -> None:
        self.regex = re.compile(pattern)
        missing = {"owner"} - set(self.regex.groupindex)
        if missing:
            raise ValueError(f"the room pattern needs a group named {missing.pop()!r}")

    def namespace(self, room: str) -> Namespace | None:
        """The namespace ``room`` is in, or None if it is in none."""
        match = self.regex.match(room)
        if match is None:
            return None
        groups = match.groupdict()
        return Namespace(groups["owner"], groups.get("server") or "")
