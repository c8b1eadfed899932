"""``--auth jupyterhub`` against a real JupyterHub 6 and a real ``ysyncd serve``.

One hub (tests/hub.py) serves the whole module; each test starts its own ysyncd
with a short verdict cache (``CACHE_S``), so a share, an unshare or a revoked
token shows up within about a second. Tests that change what a user may do
(share, unshare) do it to users of their own, so the module's tests do not
depend on their order.

The rule under test: a room in ``user/{owner}/{server}`` opens to a token with
``access:servers``, ``access:servers!user={owner}`` or
``access:servers!server={owner}/{server}``; no usable token is 401, a token
without the scope (or a room in no server's namespace) is 403, a hub that does
not answer is 503, and a refused request is never upgraded.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import pytest_asyncio
from websockets.asyncio.client import connect
from websockets.datastructures import HeadersLike
from websockets.exceptions import InvalidStatus
from websockets.http11 import Response

from tests.hub import ADMIN, SERVICE_NAME, Hub, running_hub
from tests.serverproc import ServerProcess, running_server
from tests.timing import scaled, wait_until
from tests.yclient import YClient

pytestmark = pytest.mark.asyncio(loop_scope="module")

#: ``--auth-cache-seconds`` of the ysyncd under test.
CACHE_S = 1


def room_of(owner: str, server: str = "", name: str = "doc") -> str:
    """The room JupyterLab names for ``name`` on ``owner``'s ``server``."""
    base = f"user/{owner}/{server}/" if server else f"user/{owner}/"
    return f"{base}api/collaboration/room/{name}"


ALICE_ROOM = room_of("alice")
BOB_ROOM = room_of("bob")
ALICE_SRV2_ROOM = room_of("alice", "srv2")


def empty_but(text: str) -> dict[str, Any]:
    return {"text": text, "map": {}, "array": []}


# --- fixtures ------------------------------------------------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def hub(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Hub]:
    async with running_hub(tmp_path_factory.mktemp("hub")) as h:
        yield h


def hub_auth_args(hub: Hub) -> tuple[str, ...]:
    return (
        *("--auth", "jupyterhub", "--hub-api-url", hub.api_url),
        *("--auth-cache-seconds", str(CACHE_S)),
    )


@pytest_asyncio.fixture(loop_scope="module")
async def ysyncd(hub: Hub, db_path: Path) -> AsyncIterator[ServerProcess]:
    async with running_server(db_path, *hub_auth_args(hub)) as server:
        yield server


_serial = itertools.count(1)


async def new_users(hub: Hub, *stems: str) -> list[str]:
    """Fresh hub users ``{stem}{n}``, for tests that share or unshare."""
    n = next(_serial)
    names = [f"{stem}{n}" for stem in stems]
    for name in names:
        await hub.create_user(name)
    return names


@pytest.fixture
def dead_port() -> Iterator[int]:
    """A loopback port that refuses connections: bound, never listening.

    Holding the socket keeps anyone else from taking the port meanwhile.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


# --- helpers ---------------------------------------------------------------------


def with_token(room: str, token: str | None) -> str:
    """``room`` with ``?token=``, as y-websocket's ``params`` option sends it."""
    return room if token is None else f"{room}?token={quote(token, safe='')}"


async def handshake(
    server: ServerProcess,
    room: str,
    token: str | None = None,
    headers: HeadersLike | None = None,
) -> int:
    """The HTTP status of one upgrade request: 101 when let in, else the refusal's."""
    url = f"{server.url}/{with_token(room, token)}"
    try:
        async with connect(
            url, additional_headers=headers, open_timeout=scaled(10)
        ) as ws:
            assert ws.response is not None
            return ws.response.status_code
    except InvalidStatus as exc:
        return exc.response.status_code


async def refusal(
    server: ServerProcess,
    room: str,
    token: str | None = None,
    headers: HeadersLike | None = None,
) -> Response:
    """The response that refused an upgrade request (which must be refused)."""
    url = f"{server.url}/{with_token(room, token)}"
    with pytest.raises(InvalidStatus) as caught:
        async with connect(url, additional_headers=headers, open_timeout=scaled(10)):
            pass
    return caught.value.response


async def until_status(
    server: ServerProcess,
    room: str,
    token: str,
    expected: int,
    what: str,
    timeout: float = 10,
) -> list[int]:
    """Retry the handshake until it answers ``expected``; the statuses before it.

    For a change made at the hub, which ysyncd sees once its cached verdict on
    the token expires (``CACHE_S``). There is no event to await, so: poll.
    """
    seen: list[int] = []
    try:
        async with asyncio.timeout(scaled(timeout)):
            while (status := await handshake(server, room, token)) != expected:
                seen.append(status)
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(
            f"timed out waiting for {what}: last statuses {seen[-5:]}"
        ) from None
    return seen


async def write(server: ServerProcess, room: str, token: str, text: str) -> str:
    """Open ``room`` with ``token``, append ``text``; the text once it is durable.

    The server echoes an update only after committing it, so a confirmed write
    shows the connection was let in with write access.
    """
    async with YClient.connect(server.url, with_token(room, token)) as client:
        client.text += text
        await client.wait_confirmed()
        return str(client.text)


async def refusals(server: ServerProcess) -> dict[str, int]:
    """``ysyncd_auth_refusals_total`` from /metrics, by status."""
    async with httpx.AsyncClient(trust_env=False, timeout=scaled(10)) as client:
        resp = await client.get(f"{server.http_url}/metrics")
    assert resp.status_code == 200
    prefix = 'ysyncd_auth_refusals_total{status="'
    return {
        line[len(prefix) :].partition('"')[0]: int(float(line.rpartition(" ")[2]))
        for line in resp.text.splitlines()
        if line.startswith(prefix)
    }


async def scopes_of(hub: Hub, token: str) -> set[str]:
    resp = await hub.whoami(token)
    assert resp.status_code == 200, resp.text
    return set(resp.json()["scopes"])


# --- the tests -------------------------------------------------------------------


async def test_owner_token_opens_her_rooms_and_edits_sync(
    hub: Hub, ysyncd: ServerProcess
) -> None:
    # No scopes asked for: the token has alice's whole role, whose access
    # scope is filtered by user, so it covers every server of hers.
    token, _ = await hub.new_token("alice")
    assert "access:servers!user=alice" in await scopes_of(hub, token)

    async with (
        YClient.connect(ysyncd.url, with_token(ALICE_ROOM, token)) as writer,
        YClient.connect(ysyncd.url, with_token(ALICE_ROOM, token)) as reader,
    ):
        writer.text += "hello from alice"
        await writer.wait_confirmed()
        await reader.wait_content(empty_but("hello from alice"))

    # Any server of hers, even one the hub has never heard of, and rooms after
    # a prefix (JupyterHub's base URL, a service path).
    assert await handshake(ysyncd, room_of("alice", "srv9"), token) == 101
    assert await handshake(ysyncd, f"services/ysyncd/{ALICE_ROOM}", token) == 101
    # JupyterLab opens several sockets at once with one token.
    statuses = await asyncio.gather(
        *(handshake(ysyncd, room_of("alice", name=f"d{i}"), token) for i in range(8))
    )
    assert statuses == [101] * 8


async def test_other_users_token_is_forbidden_but_opens_his_own_rooms(
    hub: Hub, ysyncd: ServerProcess
) -> None:
    token, _ = await hub.new_token("bob")
    refused = await refusal(ysyncd, ALICE_ROOM, token)
    assert refused.status_code == 403
    assert b"may not open this room" in refused.body
    assert await handshake(ysyncd, ALICE_SRV2_ROOM, token) == 403
    # A prefix does not change whose room it is.
    assert await handshake(ysyncd, f"user/bob/x/{ALICE_ROOM}", token) == 403

    assert await write(ysyncd, BOB_ROOM, token, "bob's notes") == "bob's notes"

    # A room in no Jupyter server's namespace opens to nobody.
    outside = await refusal(ysyncd, "notes/doc", token)
    assert outside.status_code == 403
    assert b"namespace" in outside.body

    assert await refusals(ysyncd) == {"403": 4}


async def test_share_lets_the_guest_in_and_unshare_out_within_the_cache_time(
    hub: Hub, ysyncd: ServerProcess
) -> None:
    owner, guest = await new_users(hub, "alice", "bob")
    room = room_of(owner)
    owner_token, _ = await hub.new_token(owner)
    # A scope-less token follows the guest's role, so later shares show up in it.
    guest_token, _ = await hub.new_token(guest)
    assert await write(ysyncd, room, owner_token, "draft") == "draft"
    # Refused, and ysyncd now caches that the token lacks the scope.
    assert await handshake(ysyncd, room, guest_token) == 403

    share = await hub.share(owner, "", guest)
    assert share["scopes"] == [f"access:servers!server={owner}/"]
    before = await until_status(ysyncd, room, guest_token, 101, "the share")
    assert set(before) <= {403}

    async with (
        YClient.connect(ysyncd.url, with_token(room, guest_token)) as guest_client,
        YClient.connect(ysyncd.url, with_token(room, owner_token)) as owner_client,
    ):
        assert str(guest_client.text) == "draft"
        guest_client.text += " + guest"
        await guest_client.wait_confirmed()
        await owner_client.wait_content(empty_but("draft + guest"))
    # The share is of the default server only.
    assert await handshake(ysyncd, room_of(owner, "other"), guest_token) == 403

    # An open socket does not outlive the unshare: it is closed with 4403,
    # and its later edits reach no one.
    async with (
        YClient.connect(ysyncd.url, with_token(room, guest_token)) as guest_client,
        YClient.connect(ysyncd.url, with_token(room, owner_token)) as owner_client,
    ):
        await hub.unshare(owner, "", guest)
        assert await guest_client.wait_closed(timeout=CACHE_S * 5 + 5) == 4403
        guest_client.text += " after"
        owner_client.text += "!"
        await owner_client.wait_confirmed()
        assert str(owner_client.text) == "draft + guest!"
    before = await until_status(ysyncd, room, guest_token, 403, "the unshare")
    assert set(before) <= {101}
    assert await handshake(ysyncd, room, owner_token) == 101


async def test_missing_bogus_malformed_and_revoked_tokens_get_401(
    hub: Hub, ysyncd: ServerProcess
) -> None:
    missing = await refusal(ysyncd, ALICE_ROOM)
    assert missing.status_code == 401
    assert missing.headers["WWW-Authenticate"] == 'Bearer realm="ysyncd"'

    bogus = secrets.token_hex(32)
    assert (await hub.whoami(bogus)).status_code == 403  # the hub's word for it
    refused = await refusal(ysyncd, ALICE_ROOM, bogus)
    assert refused.status_code == 401
    assert refused.headers["WWW-Authenticate"] == 'Bearer realm="ysyncd"'
    # The same bogus token again, now from the cache.
    assert await handshake(ysyncd, ALICE_ROOM, bogus) == 401
    basic = {"Authorization": "Basic YWxpY2U6cHc="}
    assert await handshake(ysyncd, ALICE_ROOM, headers=basic) == 401

    token, token_id = await hub.new_token("alice", ["access:servers!server=alice/"])
    assert await write(ysyncd, ALICE_ROOM, token, "before revocation") == (
        "before revocation"
    )
    await hub.revoke_token("alice", token_id)
    assert (await hub.whoami(token)).status_code == 403
    before = await until_status(ysyncd, ALICE_ROOM, token, 401, "the revocation")
    assert set(before) <= {101}


async def test_named_server_needs_its_own_scope(
    hub: Hub, ysyncd: ServerProcess
) -> None:
    await hub.add_named_server("alice", "srv2")  # created, never started
    default_only, _ = await hub.new_token("alice", ["access:servers!server=alice/"])
    srv2_only, _ = await hub.new_token("alice", ["access:servers!server=alice/srv2"])

    assert await handshake(ysyncd, ALICE_ROOM, default_only) == 101
    assert (await refusal(ysyncd, ALICE_SRV2_ROOM, default_only)).status_code == 403

    assert await write(ysyncd, ALICE_SRV2_ROOM, srv2_only, "on srv2") == "on srv2"
    assert (await refusal(ysyncd, ALICE_ROOM, srv2_only)).status_code == 403
    # Server names are compared whole, not by prefix.
    assert await handshake(ysyncd, room_of("alice", "srv22"), srv2_only) == 403
    assert await handshake(ysyncd, room_of("alice", "srv"), srv2_only) == 403


async def test_unfiltered_access_servers_opens_every_users_rooms(
    hub: Hub, ysyncd: ServerProcess
) -> None:
    # Only a hub admin holds unfiltered access:servers (the admin role has it);
    # any other user asking for it is refused by the hub.
    not_held = await hub.request(
        "POST", "/users/alice/tokens", json={"scopes": ["access:servers"]}
    )
    assert not_held.status_code == 400
    token, _ = await hub.new_token(ADMIN, ["access:servers"])
    assert "access:servers" in await scopes_of(hub, token)

    alice_token, _ = await hub.new_token("alice")
    assert await write(ysyncd, ALICE_ROOM, token, "from the admin") == "from the admin"
    async with YClient.connect(ysyncd.url, with_token(ALICE_ROOM, alice_token)) as a:
        assert a.content() == empty_but("from the admin")
    for room in (BOB_ROOM, ALICE_SRV2_ROOM, room_of("nobody", "anything")):
        assert await handshake(ysyncd, room, token) == 101, room
    # Still only rooms in a server's namespace.
    assert (await refusal(ysyncd, "notes/doc", token)).status_code == 403


async def test_token_in_authorization_header(hub: Hub, ysyncd: ServerProcess) -> None:
    token, _ = await hub.new_token("alice")
    bearer = {"Authorization": f"Bearer {token}"}
    # JupyterHub's own scheme works too.
    hub_style = {"Authorization": f"token {token}"}
    async with (
        YClient.connect(ysyncd.url, ALICE_ROOM, additional_headers=bearer) as a,
        YClient.connect(ysyncd.url, ALICE_ROOM, additional_headers=hub_style) as b,
    ):
        a.text += "sent with a header"
        await a.wait_confirmed()
        await b.wait_content(empty_but("sent with a header"))

    bob_token, _ = await hub.new_token("bob")
    bob_bearer = {"Authorization": f"Bearer {bob_token}"}
    refused = await refusal(ysyncd, ALICE_ROOM, headers=bob_bearer)
    assert refused.status_code == 403
    assert await handshake(ysyncd, BOB_ROOM, headers=bob_bearer) == 101


async def test_hub_url_from_the_environment(hub: Hub, db_path: Path) -> None:
    """Without --hub-api-url, $JUPYTERHUB_API_URL (set for hub services) is used."""
    args = ("--auth", "jupyterhub", "--auth-cache-seconds", str(CACHE_S))
    env = {"JUPYTERHUB_API_URL": hub.api_url}
    async with running_server(db_path, *args, env=env) as server:
        alice_token, _ = await hub.new_token("alice")
        bob_token, _ = await hub.new_token("bob")
        assert await handshake(server, ALICE_ROOM, alice_token) == 101
        assert await handshake(server, ALICE_ROOM, bob_token) == 403


async def test_unreachable_hub_gives_503_every_time(
    db_path: Path, dead_port: int
) -> None:
    api_url = f"http://127.0.0.1:{dead_port}/hub/api"
    args = ("--auth", "jupyterhub", "--hub-api-url", api_url)
    async with running_server(db_path, *args) as server:
        token = secrets.token_hex(32)
        first = await refusal(server, ALICE_ROOM, token)
        assert first.status_code == 503
        # Not cached: the hub is asked (and fails) again.
        assert await handshake(server, ALICE_ROOM, token) == 503
        # Refusals decided before asking the hub keep their own status.
        assert await handshake(server, ALICE_ROOM) == 401
        assert await handshake(server, "notes/doc", token) == 403


async def test_tokens_never_reach_the_log(hub: Hub, db_path: Path) -> None:
    """Even at debug level, where websockets logs request lines and headers."""
    async with running_server(
        db_path, *hub_auth_args(hub), "--log-level", "debug"
    ) as server:
        alice_token, alice_id = await hub.new_token("alice")
        bob_token, _ = await hub.new_token("bob")
        assert await handshake(server, ALICE_ROOM, alice_token) == 101
        bearer = {"Authorization": f"Bearer {alice_token}"}
        assert await handshake(server, ALICE_ROOM, headers=bearer) == 101
        assert await handshake(server, ALICE_ROOM, bob_token) == 403
        await hub.revoke_token("alice", alice_id)
        await until_status(server, ALICE_ROOM, alice_token, 401, "the revocation")
        await wait_until(
            lambda: "HTTP 401" in "".join(server.log), "the 401 in the log", 10
        )
    log = "".join(server.log)  # complete: the server has exited
    # The lines that held them are there, masked.
    assert "?token=[redacted] HTTP/1.1" in log
    assert "Authorization: [redacted]" in log
    assert alice_token not in log
    assert bob_token not in log


# --- what the hub itself says (the facts the provider relies on) ---------------


async def test_hub_token_scopes_and_shares(hub: Hub) -> None:
    resp = await hub.whoami(hub.service_token)
    assert resp.status_code == 200
    assert (resp.json()["kind"], resp.json()["name"]) == ("service", SERVICE_NAME)

    default_scope = "access:servers!server=alice/"
    token, token_id = await hub.new_token("alice", [default_scope])
    model = (await hub.whoami(token)).json()
    assert (model["kind"], model["name"], model["token_id"]) == (
        "user",
        "alice",
        token_id,
    )
    # Explicit scopes come back with the two read scopes every token gets.
    assert set(model["scopes"]) == {
        default_scope,
        "read:users:groups!user=alice",
        "read:users:name!user=alice",
    }
    assert (await hub.whoami(None)).status_code == 403

    owner, guest = await new_users(hub, "alice", "bob")
    owner_default = f"access:servers!server={owner}/"
    guest_inherit, _ = await hub.new_token(guest)
    guest_own, _ = await hub.new_token(guest, [f"access:servers!server={guest}/"])
    # A user cannot be issued a scope he does not hold: 400, not 403.
    refused = await hub.request(
        "POST", f"/users/{guest}/tokens", json={"scopes": [owner_default]}
    )
    assert refused.status_code == 400
    assert f"not held by User {guest}" in refused.json()["message"]

    await hub.share(owner, "", guest)
    # Scopes are evaluated at each request: the scope-less token gains the
    # share at once, the one with explicit scopes does not.
    assert owner_default in await scopes_of(hub, guest_inherit)
    assert owner_default not in await scopes_of(hub, guest_own)
    explicit, _ = await hub.new_token(guest, [owner_default])
    assert owner_default in await scopes_of(hub, explicit)
    # Unsharing takes the scope from every token, even one issued with it.
    await hub.unshare(owner, "", guest)
    assert owner_default not in await scopes_of(hub, guest_inherit)
    assert owner_default not in await scopes_of(hub, explicit)

    # Sharing a named server needs its row: 404 until it is created.
    missing = await hub.request(
        "POST", f"/shares/{owner}/lab", json={"user": guest}, expect=404
    )
    assert "No such server" in missing.json()["message"]
    model = await hub.add_named_server(owner, "lab")
    assert (model["name"], model["ready"], model["stopped"]) == ("lab", False, True)
    await hub.share(owner, "lab", guest)
    guest_lab, _ = await hub.new_token(guest, [f"access:servers!server={owner}/lab"])
    assert owner_default not in await scopes_of(hub, guest_lab)  # per server


async def test_hub_in_process_spawner(hub: Hub) -> None:
    (owner,) = await new_users(hub, "spawn")
    model = await hub.start_server(owner)
    assert model["ready"] and model["url"] == f"/user/{owner}/"
    await hub.add_named_server(owner, "srv2")
    model = await hub.start_server(owner, "srv2")
    assert model["ready"] and model["url"] == f"/user/{owner}/srv2/"
    await hub.stop_server(owner, "srv2")
    resp = await hub.request("GET", f"/users/{owner}/servers/srv2", expect=200)
    assert resp.json()["stopped"]
