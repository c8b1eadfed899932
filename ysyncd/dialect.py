"""Dialects: how the peers of a room speak the protocol.

Plain y-websocket peers use message type 2 for y-protocols' auth messages.
JupyterLab's provider reuses type 2 for JSON "save" requests and must never be
sent an auth frame, so the dialect is chosen per connection from its URL and
consulted wherever the two differ.
"""

from __future__ import annotations

from ysyncd import protocol
from ysyncd.protocol import Message, PermissionDenied

__all__ = ["Dialect", "YWebsocket"]


class Dialect:
    """The plain y-websocket dialect; subclasses override where they differ."""

    name = "y-websocket"

    def decode(self, frame: bytes) -> list[Message]:
        """Decode one binary frame from a peer."""
        return protocol.decode(frame)

    def refusal(self, reason: str) -> bytes | None:
        """The frame telling a peer its write was refused, or None to close it."""
        return protocol.encode(PermissionDenied(reason))


YWebsocket = Dialect()
