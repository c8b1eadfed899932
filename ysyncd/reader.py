"""How one peer's messages reach its room, from the transport's callback."""

from __future__ import annotations

from collections.abc import Awaitable

from ysyncd.commits import Committer
from ysyncd.errors import UnsupportedFrame
from ysyncd.jupyter.service import JupyterRooms
from ysyncd.peer import Peer
from ysyncd.protocol import Message, coalesce
from ysyncd.room import Room

__all__ = ["Reader"]


class Reader:
    """How one peer's messages reach its room: at once where nothing must
    wait, else the rest of the work as an awaitable (see connection.py)."""

    __slots__ = ("committer", "jupyter", "peer", "room", "via_jupyter")

    def __init__(
        self,
        peer: Peer,
        room: Room,
        committer: Committer,
        jupyter: JupyterRooms,
        via_jupyter: bool,
    ) -> None:
        self.peer = peer
        self.room = room
        self.committer = committer
        self.jupyter = jupyter
        self.via_jupyter = via_jupyter

    def receive(self, frame: bytes | str) -> Awaitable[None] | None:
        if isinstance(frame, str):
            raise UnsupportedFrame("text frames are not part of the protocol")
        # One answer covers every sync step 1 of a frame, and so on.
        messages = coalesce(self.peer.dialect.decode(frame))
        if self.room.ready:
            return self._hand_over(messages, 0)
        return self._finish(self.room.settle(), messages, 0)

    def _hand_over(self, messages: list[Message], start: int) -> Awaitable[None] | None:
        peer, room = self.peer, self.room
        for i in range(start, len(messages)):
            if peer.closing:
                break  # a peer being closed costs nothing more
            if self.via_jupyter:
                pending = self.jupyter.receive(peer, room, messages[i])
            else:
                pending = room.receive(peer, messages[i])
            if pending is not None:  # a big update, a slice at a time
                return self._finish(pending, messages, i + 1)
        committer = self.committer
        return None if committer.has_room else committer.wait_for_room()

    async def _finish(
        self, first: Awaitable[None], messages: list[Message], start: int
    ) -> None:
        await first
        rest = self._hand_over(messages, start)
        if rest is not None:
            await rest
