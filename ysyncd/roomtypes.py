"""What a room works with, apart from itself: its peers (any connection with
``send``, ``refuse_write``, ``read_only`` and ``close``), the companion that
keeps a Jupyter room in step with its file, and how messages fan out.

Kept apart from room.py so that the room's own logic reads on its own, and
so that peers and bindings can be written against these without the room.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from pycrdt import Doc

__all__ = [
    "ROOM_DELETED",
    "FanOut",
    "PeerLike",
    "RoomDocument",
    "RoomFailed",
    "send_each",
]

#: The close code of a deleted room's peers (DELETE /api/rooms/{room}), on
#: every node.
ROOM_DELETED = 4410


class RoomFailed(Exception):
    """The room gave up (see ``Room.fail``); its peers must reconnect."""


class RoomDocument(Protocol):
    """A room's companion that keeps it in step with a file (Jupyter rooms)."""

    #: True once the file is gone; new connections are turned away.
    gone: bool

    async def save(self) -> str:
        """Save now; "success", "skipped" or "failed" (Jupyter's statuses)."""
        ...

    async def save_if_changed(self) -> None:
        """Save the document if it differs from the file (before eviction)."""
        ...

    def stop(self) -> None:
        """Stop watching the file; the room has been evicted."""
        ...

    def rebind(self, doc: Doc[Any]) -> None:
        """Follow the room to a rebuilt doc."""
        ...


class PeerLike(Protocol):
    """What a room needs from a connection."""

    @property
    def read_only(self) -> bool: ...

    @property
    def user(self) -> str | None:
        """Whose grant the peer holds, stored with its updates."""
        ...

    def send(self, frame: bytes) -> None:
        """Queue a frame without blocking (a slow peer is closed, not waited on)."""
        ...

    def write(self, wire: bytes) -> None:
        """Like :meth:`send`, for a frame already serialised (one shared by
        many peers)."""
        ...

    def refuse_write(self, reason: str) -> None:
        """Tell the peer, in its dialect, that its write was not applied."""
        ...

    def close(self, code: int, reason: str) -> None:
        """Start closing the connection; further sends are dropped."""
        ...


#: Sends messages, in order, to many peers; transports can serialise them once
#: and write them together.
FanOut = Callable[[Iterable[Any], Sequence[bytes]], None]


def send_each(peers: Iterable[PeerLike], messages: Sequence[bytes]) -> None:
    """The plain fan-out: one ``send`` per peer and message."""
    for peer in peers:
        for message in messages:
            peer.send(message)
