"""Room names: taken from the request path, validated before the upgrade."""

from __future__ import annotations

from urllib.parse import unquote

from ysyncd.errors import InvalidRoomName

__all__ = ["room_from_path"]


def room_from_path(path: str, *, max_bytes: int = 512) -> str:
    """The room a request path names, as y-websocket clients build it.

    The client appends the room to the server URL, so the name is the path
    without its leading ``/`` and without the query string, percent-decoded.
    Slashes and any printable Unicode are allowed, but not ``.`` or ``..``
    as a segment: proxies and browsers resolve those, so the same name could
    reach different rooms (or a grant another room) behind different fronts.

    Raises:
        InvalidRoomName: empty, too long, not UTF-8, holding control
            characters, or with a dot segment.
    """
    raw = path.partition("?")[0].partition("#")[0]
    if not raw.startswith("/"):
        raise InvalidRoomName("the path must start with /")
    try:
        name = unquote(raw[1:], errors="strict")
    except UnicodeDecodeError as exc:
        raise InvalidRoomName("the room name is not valid UTF-8") from exc
    if not name:
        raise InvalidRoomName("the path names no room")
    if len(name.encode()) > max_bytes:
        raise InvalidRoomName(f"the room name is longer than {max_bytes} bytes")
    if not name.isprintable():
        raise InvalidRoomName("the room name holds control or invisible characters")
    if any(segment in (".", "..") for segment in name.split("/")):
        raise InvalidRoomName("the room name has a . or .. segment")
    return name
