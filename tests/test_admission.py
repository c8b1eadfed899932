"""Every access decision is made on the room key the connection then opens.

A grant names room keys: for a Jupyter room, the name without the prefix
``--room-pattern`` allows in front (a hub base URL, a service path). The
live tests attack a real server with paths whose prefix names another room;
the property test generates grants, patterns and paths and checks, for every
admitted request, that the key it opens is one its grant names.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import sqlite3
import string
from fnmatch import fnmatchcase
from pathlib import Path
from urllib.parse import quote, unquote

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pycrdt import Map
from websockets.datastructures import Headers
from websockets.http11 import Request

from tests.jupyterclient import JupyterClient, room_path, state_of
from tests.serverproc import running_server
from tests.test_auth import refusal, write_tokens
from ysyncd.admission import Admitter
from ysyncd.auth.glue import GlueAuth, namespace_secret
from ysyncd.auth.tokenfile import TokenFile
from ysyncd.errors import AuthError, BadRequest
from ysyncd.jupyter.service import route
from ysyncd.namespaces import DEFAULT_PATTERN, PathPattern

ALICE = "alice-token-0123456789abcdefghijk"
BOB = "bob-token-0123456789abcdefghijklm"
CAROL = "carol-token-0123456789abcdefghij"
NOTEBOOK = "json:notebook:6f1c0a4e-1111-4c2b-9d7e-00000000000b"

TOKENS = f"""
[[tokens]]
user = "alice"
token = "{ALICE}"
rooms = ["user/alice/*"]

[[tokens]]
user = "bob"
token = "{BOB}"
rooms = ["user/bob/*"]

[[tokens]]
user = "carol"
token = "{CAROL}"
rooms = ["notes/*"]
"""


def stored_room_names(db: Path, marker: str) -> set[str]:
    """Names of the stored rooms whose updates hold ``marker``."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        rows = conn.execute(
            "SELECT DISTINCT r.name FROM updates AS u JOIN rooms AS r "
            "ON r.id = u.room_id WHERE instr(u.data, ?) > 0",
            (marker.encode(),),
        ).fetchall()
    return {name for (name,) in rows}


async def test_a_prefix_cannot_reach_another_users_room(
    db_path: Path, tmp_path: Path
) -> None:
    """A grant for alice's rooms, or for notes/*, does not open bob's room
    through a path whose prefix the grant names (403, nothing read or written)."""
    tokens = tmp_path / "tokens.toml"
    write_tokens(tokens, TOKENS)
    args = ("--auth", "token", "--token-file", str(tokens))
    bobs = room_path("bob", NOTEBOOK)
    async with running_server(db_path, *args) as server:
        as_bob = {"Authorization": f"Bearer {BOB}"}
        async with JupyterClient.connect(
            server.url, bobs, additional_headers=as_bob
        ) as bob:
            bob.doc.get("state", type=Map)["secret"] = "bob's draft"
            await bob.wait_confirmed()
        for token, path in [
            (ALICE, f"user/alice/x/{bobs}"),
            (ALICE, f"user/alice/{bobs}"),
            (ALICE, f"user/%61lice/x/{bobs}"),
            (CAROL, f"notes/{bobs}"),
            (CAROL, f"notes/x/{bobs}"),
        ]:
            url = f"{server.url}/{path}"
            headers = {"Authorization": f"Bearer {token}"}
            assert await refusal(url, additional_headers=headers) == 403, path
        # The grants still open what they name, with or without a prefix.
        as_alice = {"Authorization": f"Bearer {ALICE}"}
        for path in (
            room_path("alice", NOTEBOOK),
            f"hub/{room_path('alice', NOTEBOOK)}",
        ):
            async with JupyterClient.connect(
                server.url, path, additional_headers=as_alice
            ) as alice:
                alice.doc.get("state", type=Map)["mine"] = "alice-was-here"
                await alice.wait_confirmed()
        async with JupyterClient.connect(
            server.url, bobs, additional_headers=as_bob
        ) as bob:
            assert state_of(bob) == {"secret": "bob's draft"}
    assert stored_room_names(db_path, "alice-was-here") == {
        room_path("alice", NOTEBOOK).partition("?")[0]
    }


async def test_a_repeated_credential_header_gets_400(db_path: Path) -> None:
    """Two Origin or two Authorization headers are refused with 400 and a
    reason, logged once; nothing is logged as a traceback."""
    async with running_server(db_path) as server:
        for name in ("Origin", "Authorization", "Cookie"):
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            try:
                writer.write(
                    (
                        "GET /room HTTP/1.1\r\n"
                        f"Host: 127.0.0.1:{server.port}\r\n"
                        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                        "Sec-WebSocket-Version: 13\r\n"
                        f"{name}: one\r\n{name}: two\r\n\r\n"
                    ).encode()
                )
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                body = await asyncio.wait_for(reader.read(200), 10)
            finally:
                writer.close()
            assert head.startswith(b"HTTP/1.1 400 "), head
            assert f"the {name} header appears more than once".encode() in body
    log = "".join(server.log)
    assert "Traceback" not in log and "ERROR" not in log
    assert log.count("limit bad_request hit") == 1


async def test_an_unknown_jupyter_room_id_format_gets_400(db_path: Path) -> None:
    """A Jupyter room id of an unknown file format is a 400 with a reason."""
    async with running_server(db_path) as server:
        url = f"{server.url}/user/alice/api/collaboration/room/xml:notebook:1"
        assert await refusal(url) == 400
        for _ in range(20):
            assert await refusal(url) == 400
    log = "".join(server.log)
    assert "Traceback" not in log and "ERROR" not in log
    assert log.count("unknown file format") == 1


# --- the property test ------------------------------------------------------------

NOTES_PATTERN = r"^(?P<owner>notes)/(?P<room>.+)$"
TEAM_PATTERN = r"^(?:(?P<prefix>.*?)/)??team/(?P<owner>[^/]+)/(?P<room>[^/]+)$"
PATTERNS = [DEFAULT_PATTERN, NOTES_PATTERN, TEAM_PATTERN]


def namespace_keys(pattern: str, owner: str) -> str:
    """How every room key in ``owner``'s default namespace starts, by pattern
    (written out here, not read with the pattern code under test)."""
    return {
        DEFAULT_PATTERN: f"user/{owner}/api/collaboration/room/",
        NOTES_PATTERN: "notes/",
        TEAM_PATTERN: f"team/{owner}/",
    }[pattern]


NAMES = ["alice", "bob", "user", "notes", "team", "x", "Alice", "al ice", "日本", "a%b"]


def _escape(draw: st.DrawFn, text: str) -> str:
    """``text`` as a path, with some characters percent-escaped."""
    out = []
    for char in text:
        if char == "/" or draw(st.booleans()):
            out.append(quote(char, safe="/") if char != "/" else "/")
        else:
            out.append(quote(char, safe=""))
    return "".join(out)


@st.composite
def request_paths(draw: st.DrawFn, owner: str | None = None) -> str:
    """Paths that mix prefixes, namespaces, escapes, case and dot segments;
    ``owner`` (else any name) is the namespace they name, if any."""
    segments: list[str] = []
    for _ in range(draw(st.integers(0, 3))):
        prefix = [*NAMES, ".", "..", "services", "", "user", "team"]
        if owner is not None:
            prefix += [owner, f"user/{owner}", f"team/{owner}"]
        segments.append(draw(st.sampled_from(prefix)))
    shape = draw(st.sampled_from(["jupyter", "team", "notes", "plain"]))
    owner = owner if owner is not None and draw(st.booleans()) else None
    owner = owner or draw(st.sampled_from(NAMES))
    if shape == "jupyter":
        segments += ["user", owner]
        if draw(st.booleans()):
            segments.append(draw(st.sampled_from(NAMES)))
        segments += ["api", "collaboration", "room"]
        segments.append(
            draw(st.sampled_from([NOTEBOOK, "JupyterLab:globalAwareness", "r"]))
        )
    elif shape == "team":
        segments += ["team", owner, draw(st.sampled_from(NAMES))]
    elif shape == "notes":
        segments += ["notes", draw(st.sampled_from(NAMES))]
    else:
        segments.append(draw(st.text(string.ascii_letters + "é/", max_size=8)))
    return "/" + _escape(draw, "/".join(segments))


@st.composite
def grants(draw: st.DrawFn, owner: str, path: str) -> list[str]:
    """A token file entry's room globs, about ``owner``'s rooms, the start of
    ``path`` (a grant naming what an attacker puts in front) and others."""
    first = unquote(path[1:]).partition("/")[0]
    choices = [
        f"{first}/*",
        f"user/{owner}/*",
        "notes/*",
        f"team/{owner}/*",
        f"*/user/{owner}/*",
        "*",
        f"user/{owner}/api/collaboration/room/{NOTEBOOK}",
    ]
    return draw(st.lists(st.sampled_from(choices), min_size=1, max_size=3))


def _request(path: str, token: str) -> Request:
    return Request(path, Headers({"Authorization": f"Bearer {token}"}))


@settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(pattern=st.sampled_from(PATTERNS), data=st.data())
def test_an_admitted_request_opens_only_a_room_its_grant_names(
    tmp_path: Path, pattern: str, data: st.DataObject
) -> None:
    """Generated grants, patterns and paths: whatever is admitted opens a key
    the grant names, and that key reads as itself (the same room)."""
    glue_owner = data.draw(st.sampled_from(NAMES), "owner")
    path = data.draw(request_paths(glue_owner), "path")
    globs = data.draw(grants(glue_owner, path), "globs")
    tokens = tmp_path / "tokens.toml"
    write_tokens(
        tokens,
        f'[[tokens]]\nuser = "u"\ntoken = "{ALICE}"\nrooms = {json.dumps(globs)}\n',
    )
    secret_file = tmp_path / "glue"
    master = "m" * 40
    secret_file.write_text(master)
    router = functools.partial(route, PathPattern(pattern))
    token_admitter = Admitter(TokenFile(tokens), router)
    glue_admitter = Admitter(GlueAuth(secret_file, PathPattern(pattern)), router)
    glue_token = namespace_secret(master, glue_owner)

    async def admitted(admitter: Admitter, token: str) -> str | None:
        try:
            located = admitter.locate(path)
            await admitter.authorize(_request(path, token), located.key)
        except (BadRequest, AuthError):
            return None
        return located.key

    key = asyncio.run(admitted(token_admitter, ALICE))
    if key is not None:
        assert any(fnmatchcase(key, glob) for glob in globs), (path, key, globs)
        assert token_admitter.locate_name(key).key == key
    key = asyncio.run(admitted(glue_admitter, glue_token))
    if key is not None:
        # A namespace secret opens its own server's rooms, and only by key.
        assert key.startswith(namespace_keys(pattern, glue_owner)), (path, key)
        assert pattern != NOTES_PATTERN or glue_owner == "notes"
        assert glue_admitter.locate_name(key).key == key
