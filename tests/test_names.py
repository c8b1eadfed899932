"""Room names from request paths."""

from __future__ import annotations

import pytest

from ysyncd.errors import InvalidRoomName
from ysyncd.names import room_from_path


@pytest.mark.parametrize(
    ("path", "room"),
    [
        ("/doc", "doc"),
        ("/doc?token=secret&x=1", "doc"),
        ("/a/b/c", "a/b/c"),
        ("/caf%C3%A9", "café"),
        ("/%E6%97%A5%E6%9C%AC", "日本"),
        ("/a%2Fb", "a/b"),
        ("/with space", "with space"),
        ("/json:notebook:1234", "json:notebook:1234"),
        ("/a/.../b.c/.d", "a/.../b.c/.d"),
    ],
)
def test_valid_paths(path: str, room: str) -> None:
    """The name is the percent-decoded path without its slash and query."""
    assert room_from_path(path) == room


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "",
        "doc",
        "/?x=1",
        "/%ff",
        "/a%00b",
        "/a\tb",
        "/a%0Ab",
        "/\u200b",
        "/" + "é" * 257,
        "/a/../b",
        "/a/%2E%2E/b",
        "/./a",
        "/a/.",
    ],
)
def test_invalid_paths(path: str) -> None:
    """Empty, non-UTF-8, control characters, dot segments and over-long names
    are refused."""
    with pytest.raises(InvalidRoomName):
        room_from_path(path)


def test_length_limit_counts_utf8_bytes() -> None:
    """The limit is in bytes, so non-ASCII names reach it sooner."""
    assert room_from_path("/" + "a" * 10, max_bytes=10) == "a" * 10
    with pytest.raises(InvalidRoomName):
        room_from_path("/" + "é" * 6, max_bytes=10)
