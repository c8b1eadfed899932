"""Dialects: how the peers of a room speak the protocol.

Plain y-websocket peers use message type 2 for y-protocols' auth messages.
JupyterLab's provider reuses type 2 for JSON "save" requests and must never be
sent an auth frame, so the dialect is chosen per connection from its URL and
consulted wherever the two differ.
"""

from __future__ import annotations

from ysyncd import protocol
from ysyncd.protocol import Message, PermissionDenied

__all__ = ["Dialect", "Jupyter", "YWebsocket"]


class Dialect:
    """The plain y-websocket dialect; subclasses override where they differ."""

    name = "y-websocket"

    def decode(self, frame: bytes) -> list[Message]:
        """Decode one binary frame from a peer."""
        return protocol.decode(frame)

    def refusal(self, reason: str) -> bytes | None:
        """The frame telling a peer its write was not applied, or None to say
        nothing."""
        return protocol.encode(PermissionDenied(reason))


class JupyterDialect(Dialect):
    """JupyterLab's provider: type 2 carries save requests and JSON replies."""

    name = "jupyter"

    def decode(self, frame: bytes) -> list[Message]:
        return protocol.decode_jupyter(frame)

    def refusal(self, reason: str) -> bytes | None:
        # Its provider would misread an auth frame; jupyter_server_ydoc drops
        # a read-only client's updates without a word, and so do we.
        return None


YWebsocket = Dialect()
Jupyter = JupyterDialect()
