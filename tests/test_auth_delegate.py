"""``--auth delegate`` against a real Jupyter server (tests/jupyterproc.py).

ysyncd forwards the upgrade request's token, or else its cookie, to the
server's ``/api/me`` and admits, admits read-only or refuses from its answer.
Every test runs a real ``jupyter server`` and a real ``ysyncd serve``.
"""

from __future__ import annotations

import contextlib
import json
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.jupyterproc import JupyterServer, running_jupyter, viewer_config
from tests.serverproc import ServerProcess, running_server
from tests.timing import scaled
from tests.yclient import YClient, stored_content
from ysyncd import protocol

ROOM = "api/collaboration/room/json:notebook:1234"
ALLOWED = "http://allowed.example"
EVIL = "http://evil.example"
PERMISSIONS = json.dumps({"contents": ["read", "write"]})

# A second user for the read-only test: VIEWER_TOKEN signs in as "viewer",
# who may read but do nothing else; the server's own token works as usual.
VIEWER_TOKEN = secrets.token_hex(24)
VIEWER_CONFIG = viewer_config(VIEWER_TOKEN)


def empty_doc(text: str = "") -> dict[str, object]:
    return {"text": text, "map": {}, "array": []}


@contextlib.asynccontextmanager
async def ysyncd(
    db_path: Path, jupyter: JupyterServer, *args: str
) -> AsyncIterator[ServerProcess]:
    """ysyncd deciding by ``jupyter``, accepting cookies from ``ALLOWED``."""
    async with running_server(
        db_path,
        "--auth",
        "delegate",
        "--delegate-url",
        jupyter.url,
        "--allowed-origins",
        ALLOWED,
        *args,
    ) as server:
        yield server


def yclient(
    url: str, path: str, headers: dict[str, str] | None = None
) -> contextlib.AbstractAsyncContextManager[YClient]:
    """``YClient.connect`` with extra request headers; synced on entry."""
    return YClient.connect(url, path, additional_headers=headers or {})


async def refusal(url: str, headers: dict[str, str] | None = None) -> int:
    """The HTTP status ysyncd refuses the upgrade with (fails if admitted)."""
    with pytest.raises(InvalidStatus) as refused:
        async with connect(
            url, additional_headers=headers or {}, open_timeout=scaled(10)
        ):
            raise AssertionError(f"admitted with {sorted(headers or {})}")
    if refused.value.response.status_code == 401:
        assert refused.value.response.headers["WWW-Authenticate"].startswith("Bearer")
    return refused.value.response.status_code


async def contents_permissions(
    jupyter: JupyterServer,
    token: str | None = None,
    headers: dict[str, str] | None = None,
) -> list[str]:
    """What the Jupyter server's /api/me grants on contents, as ysyncd asks it."""
    resp = await jupyter.request(
        "GET",
        "api/me",
        token=token,
        headers=headers,
        params={"permissions": PERMISSIONS},
        expect=200,
    )
    permissions: list[str] = resp.json()["permissions"]["contents"]
    return permissions


@pytest.fixture
async def jupyter(tmp_path: Path) -> AsyncIterator[JupyterServer]:
    async with running_jupyter(tmp_path / "jupyter") as server:
        yield server


async def test_token_in_query_opens_the_room_and_edits_sync(
    db_path: Path, jupyter: JupyterServer
) -> None:
    path = f"{ROOM}?token={jupyter.token}"
    async with (
        ysyncd(db_path, jupyter) as server,
        yclient(server.url, path) as alice,
        yclient(server.url, path) as bob,
    ):
        alice.text += "hello from alice"
        await alice.wait_confirmed()
        await bob.wait_content(empty_doc("hello from alice"))
        bob.map["by"] = "bob"
        await alice.wait_content(
            {"text": "hello from alice", "map": {"by": "bob"}, "array": []}
        )
        assert not any(
            isinstance(m, protocol.PermissionDenied)
            for m in alice.received + bob.received
        )
        # Stored, not only relayed.
        stored = await stored_content(server.url, path)
        assert stored == {"text": "hello from alice", "map": {"by": "bob"}, "array": []}


async def test_token_in_authorization_header(
    db_path: Path, jupyter: JupyterServer
) -> None:
    async with (
        ysyncd(db_path, jupyter) as server,
        yclient(server.url, ROOM, {"Authorization": f"token {jupyter.token}"}) as a,
        yclient(server.url, ROOM, {"Authorization": f"Bearer {jupyter.token}"}) as b,
    ):
        a.text += "via header"
        await b.wait_content(empty_doc("via header"))
        b.text += "!"
        await a.wait_content(empty_doc("via header!"))


async def test_wrong_token_or_no_credentials_is_401(
    db_path: Path, jupyter: JupyterServer
) -> None:
    wrong = secrets.token_hex(24)
    # What ysyncd relies on: the Jupyter server refuses the wrong token (403).
    refused = await jupyter.request("GET", "api/me", token=wrong)
    assert refused.status_code == 403
    async with ysyncd(db_path, jupyter) as server:
        room = f"{server.url}/{ROOM}"
        assert await refusal(f"{room}?token={wrong}") == 401
        assert await refusal(room, {"Authorization": f"token {wrong}"}) == 401
        assert await refusal(room) == 401
        # Not even a bogus cookie gets in.
        bogus = {"Cookie": f"{jupyter.cookie_name}=forged", "Origin": ALLOWED}
        assert await refusal(room, bogus) == 401
        # The right token still opens it: the refusals were about the tokens.
        async with yclient(server.url, f"{ROOM}?token={jupyter.token}") as ok:
            assert ok.content() == empty_doc()
    log = "".join(server.log)
    assert wrong not in log and jupyter.token not in log


async def test_cookie_sign_in_needs_an_allowed_origin(
    db_path: Path, jupyter: JupyterServer
) -> None:
    cookie = await jupyter.login_cookie()
    # The login cookie alone signs in at the Jupyter server itself.
    granted = await contents_permissions(jupyter, token="", headers={"Cookie": cookie})
    assert granted == ["read", "write"]
    async with ysyncd(db_path, jupyter) as server:
        room = f"{server.url}/{ROOM}"
        async with yclient(
            server.url, ROOM, {"Cookie": cookie, "Origin": ALLOWED}
        ) as browser:
            browser.text += "signed in by cookie"
            await browser.wait_confirmed()
        # A page on another site sends the same cookie along: refused.
        assert await refusal(room, {"Cookie": cookie, "Origin": EVIL}) == 403
        assert await refusal(room, {"Cookie": cookie}) == 403
        stored = await stored_content(server.url, f"{ROOM}?token={jupyter.token}")
        assert stored == empty_doc("signed in by cookie")


async def test_contents_read_without_write_is_a_read_only_peer(
    db_path: Path, tmp_path: Path
) -> None:
    async with running_jupyter(tmp_path / "jupyter", config=VIEWER_CONFIG) as jupyter:
        # What ysyncd relies on: /api/me grants the viewer read, not write.
        assert await contents_permissions(jupyter, token=VIEWER_TOKEN) == ["read"]
        assert await contents_permissions(jupyter) == ["read", "write"]
        editor_auth = {"Authorization": f"token {jupyter.token}"}
        viewer_auth = {"Authorization": f"token {VIEWER_TOKEN}"}
        async with (
            ysyncd(db_path, jupyter) as server,
            yclient(server.url, ROOM, editor_auth) as editor,
            yclient(server.url, ROOM, viewer_auth) as viewer,
        ):
            editor.text += "shared "
            await editor.wait_confirmed()
            await viewer.wait_content(empty_doc("shared "))

            viewer.text += "VIEWER-EDIT "
            await viewer.wait(
                lambda: any(
                    isinstance(m, protocol.PermissionDenied) for m in viewer.received
                ),
                "the refusal of the viewer's edit",
            )
            # The server handles a connection's frames in order and echoes the
            # editor's update to everyone after anything it had applied before;
            # so once the editor's next edit is back at both, the viewer's edit
            # would have arrived first had it been applied.
            editor.text += "after"
            await editor.wait_confirmed()
            await viewer.wait(
                lambda: "after" in str(viewer.text), "the editor's next edit"
            )
            assert editor.content() == empty_doc("shared after")
            # The viewer keeps its own edit locally and still follows the editor
            # (the two inserts were concurrent: their order is the CRDT's).
            assert str(viewer.text) in (
                "shared VIEWER-EDIT after",
                "shared afterVIEWER-EDIT ",
            )
            assert viewer.close_code is None
            fresh = await stored_content(server.url, f"{ROOM}?token={jupyter.token}")
            assert fresh == empty_doc("shared after")


async def test_jupyter_server_down_is_503(
    db_path: Path, jupyter: JupyterServer
) -> None:
    # No cache: every connection asks the Jupyter server.
    async with ysyncd(db_path, jupyter, "--auth-cache-seconds", "0") as server:
        path = f"{ROOM}?token={jupyter.token}"
        async with yclient(server.url, path) as before:
            assert before.content() == empty_doc()
        await jupyter.kill()
        assert await refusal(f"{server.url}/{path}") == 503
        cookie = {"Cookie": f"{jupyter.cookie_name}=x", "Origin": ALLOWED}
        assert await refusal(f"{server.url}/{ROOM}", cookie) == 503
        # Still no credentials at all: 401 without asking anyone.
        assert await refusal(f"{server.url}/{ROOM}") == 401
    assert jupyter.token not in "".join(server.log)
