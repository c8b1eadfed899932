"""The pure pieces of access control: namespaces, scope rules, caching, redaction."""

from __future__ import annotations

import logging
import sys

import pytest

from ysyncd.auth.base import Globs, VerdictCache
from ysyncd.auth.delegate import SameServer, _join
from ysyncd.auth.hub import ServerScopes
from ysyncd.logs import RedactingFormatter, redact
from ysyncd.namespaces import Namespace, PathPattern

ROOM = "api/collaboration/room/json:notebook:1234"


@pytest.mark.parametrize(
    ("room", "namespace"),
    [
        (f"user/alice/{ROOM}", Namespace("alice", "")),
        (f"user/alice/srv2/{ROOM}", Namespace("alice", "srv2")),
        (f"hub/base/user/alice/{ROOM}", Namespace("alice", "")),
        (f"services/ysyncd/user/bob/lab/{ROOM}", Namespace("bob", "lab")),
        # A server literally named "api" is still a server.
        (f"user/alice/api/{ROOM}", Namespace("alice", "api")),
        # A user named "user": the reading without a prefix comes first.
        (f"user/user/bob/{ROOM}", Namespace("user", "bob")),
        (f"user/user/{ROOM}", Namespace("user", "")),
        (f"services/ysyncd/user/user/bob/{ROOM}", Namespace("user", "bob")),
        ("user/alice/notes", None),
        ("plain-room", None),
        (f"user/alice/{ROOM}/extra", None),
    ],
)
def test_the_default_pattern_reads_jupyterhub_urls(
    room: str, namespace: Namespace | None
) -> None:
    assert PathPattern().namespace(room) == namespace


def test_a_pattern_must_name_the_owner() -> None:
    with pytest.raises(ValueError, match="owner"):
        PathPattern(r"^(?P<user>[^/]+)/")
    assert PathPattern(r"^(?P<owner>[^/]+)/").namespace("x/doc") == Namespace("x")


@pytest.mark.parametrize(
    ("scopes", "opens"),
    [
        ({"access:servers!server=alice/"}, {"alice/"}),
        ({"access:servers!server=alice/srv2"}, {"alice/srv2"}),
        ({"access:servers!user=alice"}, {"alice/", "alice/srv2"}),
        ({"access:servers"}, {"alice/", "alice/srv2", "bob/"}),
        ({"read:users!user=alice", "access:servers!server=bob/"}, {"bob/"}),
        ({"access:servers!group=staff"}, set()),  # groups are not expanded
        (set(), set()),
    ],
)
def test_hub_scope_rule(scopes: set[str], opens: set[str]) -> None:
    grant = ServerScopes(PathPattern(), frozenset(scopes))
    rooms = {
        "alice/": f"user/alice/{ROOM}",
        "alice/srv2": f"user/alice/srv2/{ROOM}",
        "bob/": f"user/bob/{ROOM}",
    }
    assert {name for name, room in rooms.items() if room in grant} == opens
    assert "not-a-jupyter-room" not in grant


def test_globs_and_same_server() -> None:
    globs = Globs(("notes/*", "board"))
    assert "notes/a/b" in globs and "board" in globs
    assert "boards" not in globs and "Notes/a" not in globs
    same = SameServer(PathPattern(), Namespace("alice"))
    assert f"user/alice/{ROOM}" in same
    assert f"user/alice/srv2/{ROOM}" not in same
    assert f"user/bob/{ROOM}" not in same


def test_delegate_urls_join_with_single_slashes() -> None:
    assert _join("http://h:8888/") == "http://h:8888/api/me"
    assert _join("http://h/user/alice//") == "http://h/user/alice/api/me"
    assert _join("http://h/user/alice/srv") == "http://h/user/alice/srv/api/me"


def test_verdict_cache_expires_and_stays_bounded() -> None:
    now = [0.0]
    cache: VerdictCache[str] = VerdictCache(10, max_entries=2, clock=lambda: now[0])
    cache.put("a", "A")
    now[0] = 9.9
    assert cache.get("a") == "A"
    now[0] = 10.0
    assert cache.get("a") is None
    for key in "xyz":
        cache.put(key, key.upper())
    assert cache.get("x") is None and cache.get("z") == "Z"
    off: VerdictCache[str] = VerdictCache(0)
    off.put("a", "A")
    assert off.get("a") is None


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("< GET /room?token=s3cr3t-value HTTP/1.1", "s3cr3t-value"),
        ("< GET /r?x=1&token=s3cr3t-value&y=2 HTTP/1.1", "s3cr3t-value"),
        ("< Authorization: Bearer abc.def.ghi", "abc.def.ghi"),
        ("< authorization: token s3cr3t-value", "s3cr3t-value"),
        ("< Cookie: session=s3cr3t-value; other=1", "s3cr3t-value"),
        (
            "sent Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.sig",
            "eyJhbGciOiJIUzI1NiJ9",
        ),
    ],
)
def test_redaction_removes_credentials(text: str, secret: str) -> None:
    cleaned = redact(text)
    assert secret not in cleaned
    assert "[redacted]" in cleaned


def test_redaction_keeps_ordinary_text_and_covers_tracebacks() -> None:
    plain = "refused a connection with HTTP 401: room 'notes': unknown token"
    assert redact(plain) == plain
    try:
        raise RuntimeError("GET http://hub/api?token=s3cr3t-value failed")
    except RuntimeError:
        record = logging.LogRecord(
            "x", logging.ERROR, __file__, 1, "oops", None, sys.exc_info()
        )
    formatted = RedactingFormatter().format(record)
    assert "Traceback" in formatted and "s3cr3t-value" not in formatted
