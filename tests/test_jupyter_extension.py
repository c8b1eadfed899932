"""The ysyncd Jupyter server extension (``ysyncd.jupyter``), end to end.

One real ``jupyter server`` (tests/jupyterproc.py) runs the extension with
jupyter_server_fileid and without jupyter_server_ydoc; one real
``ysyncd serve --auth glue`` keeps the documents, with the server's root as
``--fs-root`` and file ids from the server's REST API. Clients play
JupyterLab: they ask the *Jupyter server* for a session
(``PUT api/collaboration/session/{path}``) and open the room socket on the
*Jupyter server's* URL, which the extension pipes to ysyncd.

The two processes need each other's URL: ysyncd's port is chosen first and
handed to the Jupyter server's config; ysyncd is started on it once the
Jupyter server's URL is known. Restarts keep their ports (SamePortJupyter).

The test process never imports jupyter_server (see tests/jupyterproc.py).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import shutil
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import nbformat
import pytest
import pytest_asyncio
from jupyter_ydoc import YNotebook
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.jupyterclient import (
    ROOM_PREFIX,
    JupyterClient,
    append,
    cells_of,
    notebook_bytes,
    sha256,
    source_of,
    state_of,
)
from tests.jupyterproc import JupyterServer, file_args, viewer_config
from tests.jupyterstack import SamePortJupyter
from tests.serverproc import ServerProcess
from tests.subprocs import free_port
from tests.timing import scaled

pytestmark = pytest.mark.asyncio(loop_scope="module")

REPO = Path(__file__).parent.parent
FIXTURES = Path(__file__).parent / "fixtures" / "jupyter"
CONFIG_D = REPO / "ysyncd" / "jupyter" / "jupyter_server_config.d" / "ysyncd.json"
#: The extension's default namespace outside JupyterHub.
NAMESPACE = "user/local"
UNKNOWN_ID = "00000000-0000-0000-0000-00000000dead"
#: ysyncd's --poll-interval here.
POLL_S = 600

# A read-only user: VIEWER_TOKEN signs in as "viewer", who may only read;
# GUEST_TOKEN signs in as "guest", who may do what Stack.guest_file lists.
VIEWER_TOKEN = "viewer-" + "5" * 40
GUEST_TOKEN = "guest-" + "7" * 40
#: The extension's recheck_seconds here.
RECHECK_S = 0.3


# --- the two servers ------------------------------------------------------------------


@dataclass
class Stack:
    jupyter: SamePortJupyter
    ysyncd: ServerProcess
    secret: str
    guest_file: Path

    def let_guest(self, *actions: str) -> None:
        """What the guest may do with contents from now on."""
        self.guest_file.write_text(json.dumps(actions))

    @property
    def url(self) -> str:
        """The Jupyter server's WebSocket base URL: what the browser dials."""
        return f"ws://127.0.0.1:{self.jupyter.port}"

    @property
    def glue_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.secret}", "X-Ysyncd-Write": "1"}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    workdir = tmp_path_factory.mktemp("glue")
    secret = secrets.token_hex(32)
    secret_file = workdir / "glue.secret"
    secret_file.write_text(secret + "\n")
    secret_file.chmod(0o600)
    guest_file = workdir / "guest.json"
    guest_file.write_text("[]")
    port = free_port()
    config = (
        f"c.YsyncdExtension.ysyncd_url = 'ws://127.0.0.1:{port}'\n"
        f"c.YsyncdExtension.secret_file = {str(secret_file)!r}\n"
        f"c.YsyncdExtension.recheck_seconds = {RECHECK_S}\n"
        + viewer_config(VIEWER_TOKEN, guest=(GUEST_TOKEN, guest_file))
    )
    jupyter = SamePortJupyter(
        workdir / "jupyter",
        config=config,
        extensions=["ysyncd.jupyter", "jupyter_server_fileid"],
        # Deleted files go away, not into a trash under $HOME.
        args=["--FileContentsManager.delete_to_trash=False"],
    )
    await jupyter.start()
    ysyncd = ServerProcess(
        workdir / "ysyncd.db",
        "--auth",
        "glue",
        "--glue-secret-file",
        str(secret_file),
        # Saves only when a client asks, and follows files only when the
        # extension says they changed (POLL_S is longer than any test).
        *file_args(jupyter, save_delay=30, poll_interval=POLL_S),
    )
    ysyncd.port = port
    try:
        await ysyncd.start()
        yield Stack(jupyter, ysyncd, secret, guest_file)
    finally:
        await ysyncd.close()
        await jupyter.stop()


# --- helpers --------------------------------------------------------------------------


@dataclass(frozen=True)
class Shared:
    """A file in the Jupyter server's root, opened as JupyterLab opens it."""

    path: str
    disk: Path
    file_id: str
    session: str
    status: int

    @property
    def room_id(self) -> str:
        return f"json:notebook:{self.file_id}"


async def open_session(
    jupyter: JupyterServer, path: str, token: str | None = None
) -> httpx.Response:
    return await jupyter.request(
        "PUT",
        f"api/collaboration/session/{quote(path, safe='')}",
        token=token,
        json={"format": "json", "type": "notebook"},
    )


async def share(
    jupyter: JupyterServer, path: str, fixture: str = "nb45.ipynb"
) -> Shared:
    disk = jupyter.root_dir / path
    shutil.copy(FIXTURES / fixture, disk)
    resp = await open_session(jupyter, path)
    assert resp.status_code in (200, 201), resp.text
    body = resp.json()
    return Shared(path, disk, body["fileId"], body["sessionId"], resp.status_code)


def room(room_id: str, session: str | None = None, token: str | None = None) -> str:
    """A room path on the Jupyter server, as @jupyter/docprovider builds it."""
    query = {"sessionId": session, "token": token}
    kept = "&".join(f"{k}={v}" for k, v in query.items() if v is not None)
    return ROOM_PREFIX + room_id + (f"?{kept}" if kept else "")


def ysyncd_room(room_id: str, session: str | None = None) -> str:
    """The same room on ysyncd, as the extension names it."""
    return f"{NAMESPACE}/{room(room_id, session)}"


async def epoch_of(ysyncd: ServerProcess) -> str:
    async with httpx.AsyncClient(trust_env=False, timeout=scaled(10)) as http:
        resp = await http.get(ysyncd.http_url + "/_ysyncd/epoch")
    assert resp.status_code == 200, resp.text
    return str(resp.json()["epoch"])


async def ysyncd_metric(ysyncd: ServerProcess, name: str) -> int | None:
    """A gauge or counter (``ysyncd_{name}``) of ysyncd's /metrics, if shown."""
    async with httpx.AsyncClient(trust_env=False, timeout=scaled(10)) as http:
        resp = await http.get(ysyncd.http_url + "/metrics")
    for line in resp.text.splitlines():
        if line.startswith(f"ysyncd_{name} "):
            return int(float(line.split()[1]))
    return None


async def ysyncd_connections(ysyncd: ServerProcess) -> int:
    value = await ysyncd_metric(ysyncd, "connections")
    assert value is not None, "no ysyncd_connections gauge in /metrics"
    return value


async def ysyncd_counter(ysyncd: ServerProcess, name: str) -> int:
    """A counter: shown once it is not 0."""
    return await ysyncd_metric(ysyncd, f"{name}_total") or 0


async def wait_connections(ysyncd: ServerProcess, wanted: int, what: str) -> None:
    """Wait (up to 5 s) until ysyncd holds ``wanted`` connections."""
    seen = -1
    try:
        async with asyncio.timeout(scaled(5)):
            while True:
                seen = await ysyncd_connections(ysyncd)
                if seen == wanted:
                    return
                await asyncio.sleep(0.05)  # a gauge: nothing to await but time
    except TimeoutError:
        raise AssertionError(f"{what}: ysyncd holds {seen} connections") from None


class NotClosed(AssertionError):
    """A connection expected to be closed stayed open."""


async def first_close(
    url: str, timeout: float = 5, **options: Any
) -> tuple[int | None, str]:
    """How a new connection to ``url`` is closed (code None: without a frame)."""
    async with connect(url, open_timeout=scaled(10), **options) as ws:
        try:
            async with asyncio.timeout(scaled(timeout)):
                while True:
                    await ws.recv()
        except ConnectionClosed:
            rcvd = ws.protocol.close_rcvd
            return (None, "") if rcvd is None else (rcvd.code, rcvd.reason)
        except TimeoutError:
            raise NotClosed(f"{url} was not closed") from None


async def closed_within(url: str, seconds: float) -> tuple[int | None, str] | None:
    """How a new connection to ``url`` is closed, or None if it stays open
    for ``seconds``."""
    try:
        return await first_close(url, timeout=seconds)
    except NotClosed:
        return None


async def refusal(url: str, **options: Any) -> int:
    """The HTTP status refusing a WebSocket upgrade."""
    with pytest.raises(InvalidStatus) as info:
        async with connect(url, open_timeout=scaled(10), **options):
            pass
    return info.value.response.status_code


# --- 1. the session endpoint ----------------------------------------------------------


async def test_the_session_endpoint_hands_out_file_ids_and_the_ysyncd_epoch(
    stack: Stack,
) -> None:
    """201 when a file is first indexed, 200 then, 404 without a file; the
    sessionId is ysyncd's epoch. Reading is enough; credentials are needed."""
    jupyter = stack.jupyter
    first = await share(jupyter, "session ü.ipynb")
    assert first.status == 201
    assert first.session == await epoch_of(stack.ysyncd)
    again = await open_session(jupyter, "session ü.ipynb")
    assert again.status_code == 200
    assert again.json() == {
        "format": "json",
        "type": "notebook",
        "fileId": first.file_id,
        "sessionId": first.session,
    }
    # The same id as jupyter_server_fileid's own API gives.
    by_path = await jupyter.request(
        "GET", "api/fileid/id", params={"path": "session ü.ipynb"}, expect=200
    )
    assert by_path.json()["id"] == first.file_id

    viewer = await open_session(jupyter, "session ü.ipynb", token=VIEWER_TOKEN)
    assert viewer.status_code == 200, viewer.text
    assert (await open_session(jupyter, "missing.ipynb")).status_code == 404
    assert (await open_session(jupyter, "session ü.ipynb", token="")).status_code == 403
    assert (await open_session(jupyter, "x", token="wrong-token")).status_code == 403
    bad = await jupyter.request(
        "PUT", "api/collaboration/session/session%20%C3%BC.ipynb", json={"type": "x"}
    )
    assert bad.status_code == 400


# --- 2. two clients, a save, a restart of the Jupyter server --------------------------


async def test_two_clients_converge_save_and_outlive_a_jupyter_restart(
    stack: Stack,
) -> None:
    """Two clients on the Jupyter server's URL edit one notebook and converge;
    a save writes the .ipynb as jupyter_server would. The Jupyter server is
    then killed and restarted: the clients reconnect with the same sessionId
    and their own docs, are not told to reload, and nothing is duplicated."""
    jupyter = stack.jupyter
    shared = await share(jupyter, "converge.ipynb")
    original = nbformat.reads(shared.disk.read_text(), as_version=4)
    path = room(shared.room_id, shared.session, jupyter.token)
    async with (
        JupyterClient.connect(stack.url, path) as alice,
        JupyterClient.connect(stack.url, path) as bob,
    ):
        nb_alice, nb_bob = YNotebook(ydoc=alice.doc), YNotebook(ydoc=bob.doc)
        assert [c["id"] for c in nb_alice.get()["cells"]] == [
            c.id for c in original.cells
        ]
        assert nb_bob.get() == nb_alice.get()
        assert state_of(alice)["path"] == "converge.ipynb"

        append(source_of(alice, 0), "\nfrom alice ✓")
        nb_bob.append_cell(
            {"cell_type": "markdown", "id": "from-bob", "metadata": {}, "source": "🎉"}
        )
        await alice.wait_confirmed()
        await bob.wait_confirmed()
        await alice.wait(lambda: nb_alice.get() == nb_bob.get(), "alice converging")
        await bob.wait(lambda: nb_bob.get() == nb_alice.get(), "bob converging")
        assert len(nb_alice.get()["cells"]) == len(original.cells) + 1

        assert await bob.save(1) == "success"
        expected = notebook_bytes(nb_alice.get())
        saved = shared.disk.read_bytes()
        assert saved == expected
        nbformat.validate(nbformat.reads(saved.decode(), as_version=4))
        await alice.wait(
            lambda: state_of(alice).get("hash") == sha256(expected), "state.hash"
        )
        assert state_of(alice)["dirty"] is False
        model = (
            await jupyter.request(
                "GET", "api/contents/converge.ipynb", params={"hash": "1"}, expect=200
            )
        ).json()
        assert model["hash"] == sha256(expected)
        assert model["content"]["cells"][-1]["id"] == "from-bob"

        # The Jupyter server dies under the clients and comes back.
        await jupyter.restart()
        await alice.wait_closed()
        await bob.wait_closed()
        docs, before = (alice.doc, bob.doc), nb_alice.get()
    await wait_connections(stack.ysyncd, 0, "after the Jupyter server died")

    again = await open_session(jupyter, "converge.ipynb")
    assert again.status_code == 200
    assert again.json()["fileId"] == shared.file_id
    assert again.json()["sessionId"] == shared.session
    async with (
        JupyterClient.connect(stack.url, path, doc=docs[0]) as alice,
        JupyterClient.connect(stack.url, path, doc=docs[1]) as bob,
    ):
        nb_alice, nb_bob = YNotebook(ydoc=alice.doc), YNotebook(ydoc=bob.doc)
        append(source_of(bob, 1), " after the restart")
        await bob.wait_confirmed()
        await alice.wait(
            lambda: str(source_of(alice, 1)).endswith(" after the restart"),
            "an edit after the restart",
        )
        assert alice.close_code is None and bob.close_code is None
        assert [c["id"] for c in cells_of(alice)] == [c["id"] for c in before["cells"]]
        assert nb_alice.get() == nb_bob.get()
        assert await alice.save(2) == "success"
        assert shared.disk.read_bytes() == notebook_bytes(nb_bob.get())


# --- 3. permissions -------------------------------------------------------------------


async def test_a_user_who_may_only_read_is_read_only_through_the_proxy(
    stack: Stack,
) -> None:
    """The viewer sees the writer's edits; its own reach nobody."""
    jupyter = stack.jupyter
    shared = await share(jupyter, "viewer.ipynb")
    async with (
        JupyterClient.connect(
            stack.url, room(shared.room_id, shared.session, jupyter.token)
        ) as writer,
        JupyterClient.connect(
            stack.url, room(shared.room_id, shared.session, VIEWER_TOKEN)
        ) as viewer,
    ):
        append(source_of(viewer, 0), " (the viewer's edit)")
        append(source_of(writer, 1), " (the writer's edit)")
        await writer.wait_confirmed()
        await viewer.wait(
            lambda: str(source_of(viewer, 1)).endswith(" (the writer's edit)"),
            "the writer's edit",
        )
        assert viewer.unconfirmed, "ysyncd echoed a read-only peer's update"
        assert "viewer's edit" not in json.dumps(cells_of(writer))
        assert viewer.frames_of_type_2 == 0  # no y-websocket auth frames
    async with JupyterClient.connect(
        stack.url, room(shared.room_id, shared.session, jupyter.token)
    ) as fresh:
        assert "viewer's edit" not in json.dumps(cells_of(fresh))
        assert str(source_of(fresh, 1)).endswith(" (the writer's edit)")


async def test_open_sockets_lose_what_their_user_loses(stack: Stack) -> None:
    """The extension checks open sockets again every RECHECK_S: a guest who
    may no longer write is closed with 4403 (and comes back read-only), then
    closed again once they may not even read. Users who keep their access,
    by token or by login cookie, stay connected all along."""
    jupyter = stack.jupyter
    shared = await share(jupyter, "rechecked.ipynb")
    path = room(shared.room_id, shared.session)
    as_guest = {"Authorization": f"token {GUEST_TOKEN}"}
    stack.let_guest("read", "write")
    async with (
        JupyterClient.connect(
            stack.url, path, additional_headers={"Cookie": await jupyter.login_cookie()}
        ) as by_cookie,
        JupyterClient.connect(
            stack.url, room(shared.room_id, shared.session, jupyter.token)
        ) as by_token,
    ):
        async with JupyterClient.connect(
            stack.url, path, additional_headers=as_guest
        ) as guest:
            append(source_of(guest, 0), " (the guest, writing)")
            await by_token.wait(
                lambda: "the guest, writing" in str(source_of(by_token, 0)),
                "the guest's edit",
            )
            stack.let_guest("read")
            assert await guest.wait_closed() == 4403
        async with JupyterClient.connect(
            stack.url, path, additional_headers=as_guest
        ) as guest:
            append(source_of(guest, 0), " (the guest, read-only)")
            stack.let_guest()
            assert await guest.wait_closed() == 4403
        assert await refusal(f"{stack.url}/{path}", additional_headers=as_guest) == 403
        # Rechecked several times meanwhile, and still there.
        assert by_cookie.close_code is None and by_token.close_code is None
        append(source_of(by_cookie, 0), " (by cookie)")
        await by_token.wait(
            lambda: str(source_of(by_token, 0)).endswith(" (by cookie)"),
            "the cookie user's edit",
        )
        assert "read-only" not in str(source_of(by_token, 0))


async def test_the_room_socket_needs_the_jupyter_servers_credentials(
    stack: Stack,
) -> None:
    """A bad or missing token is refused by the Jupyter server (403) before
    any upgrade; the login cookie works, as for the token-less global
    awareness room the frontend opens."""
    shared = await share(stack.jupyter, "guarded.ipynb")
    url = f"{stack.url}/{room(shared.room_id, shared.session, 'not-the-token')}"
    assert await refusal(url) == 403
    assert await refusal(f"{stack.url}/{room(shared.room_id, shared.session)}") == 403
    assert (
        await refusal(
            f"{stack.url}/{room(shared.room_id, shared.session)}",
            additional_headers={"Authorization": "token not-the-token"},
        )
        == 403
    )

    cookie = {"Cookie": await stack.jupyter.login_cookie()}
    # A page of another site, with the user's cookie: refused before ysyncd
    # is asked for anything.
    opened = await ysyncd_counter(stack.ysyncd, "connections")
    cross_site = {**cookie, "Origin": "http://elsewhere.example"}
    url = f"{stack.url}/{room(shared.room_id, shared.session)}"
    assert await refusal(url, additional_headers=cross_site) == 403
    assert await ysyncd_counter(stack.ysyncd, "connections") == opened

    awareness = room("JupyterLab:globalAwareness")
    async with (
        JupyterClient.connect(stack.url, awareness, additional_headers=cookie) as one,
        JupyterClient.connect(stack.url, awareness, additional_headers=cookie) as two,
    ):
        await one.set_awareness(4242, 1, {"user": {"name": "one"}})
        await two.wait(lambda: 4242 in two.awareness, "one's awareness")
        assert two.awareness[4242] == {"user": {"name": "one"}}


async def test_ysyncd_refuses_connections_without_the_glue_secret(
    stack: Stack,
) -> None:
    """Straight to ysyncd: no secret or a wrong one is 401, never upgraded."""
    url = f"{stack.ysyncd.url}/{ysyncd_room('JupyterLab:globalAwareness')}"
    assert await refusal(url) == 401
    wrong = {"Authorization": "Bearer " + "x" * 64}
    assert await refusal(url, additional_headers=wrong) == 401
    # The Jupyter server's own token is not the secret either.
    jupyter_token = {"Authorization": f"Bearer {stack.jupyter.token}"}
    assert await refusal(url, additional_headers=jupyter_token) == 401
    async with connect(url, additional_headers=stack.glue_headers):
        pass


# --- 4. closing -----------------------------------------------------------------------


async def test_close_codes_and_reasons_are_relayed_unchanged(stack: Stack) -> None:
    """What ysyncd closes a room with reaches the browser as it is: 4404 for
    an unknown file id or a deleted file, 1003 for a stale sessionId."""
    jupyter = stack.jupyter
    token = jupyter.token
    shared = await share(jupyter, "doomed.ipynb")
    session = shared.session
    cases = {
        "unknown file id": (f"json:notebook:{UNKNOWN_ID}", session, 4404),
        "stale session": (shared.room_id, "not-a-session", 1003),
    }
    for what, (room_id, sent, code) in cases.items():
        through = await first_close(f"{stack.url}/{room(room_id, sent, token)}")
        direct = await first_close(
            f"{stack.ysyncd.url}/{ysyncd_room(room_id, sent)}",
            additional_headers=stack.glue_headers,
        )
        assert through == direct, what
        assert through[0] == code, (what, through)
    assert json.loads(through[1]) == {
        "reason": "unknown_session",
        "sessionId": "not-a-session",
        "reloadable": True,
    }

    await jupyter.request("DELETE", "api/contents/doomed.ipynb", expect=204)
    closed = await first_close(f"{stack.url}/{room(shared.room_id, session, token)}")
    assert closed[0] == 4404, closed
    assert closed[1].startswith("Error initializing")


async def test_contents_events_reach_open_rooms_without_polling(stack: Stack) -> None:
    """ysyncd polls files every 10 minutes here, so only the extension's
    contents events can bring a save made outside JupyterLab, a rename and a
    delete into an open room within seconds."""
    jupyter, token = stack.jupyter, stack.jupyter.token
    shared = await share(jupyter, "pushed.ipynb")
    path = room(shared.room_id, shared.session, token)
    async with JupyterClient.connect(stack.url, path) as client:
        model = (await jupyter.request("GET", "api/contents/pushed.ipynb")).json()
        content = model["content"]
        content["cells"][0]["source"] = "saved through the contents API"
        await jupyter.request(
            "PUT",
            "api/contents/pushed.ipynb",
            json={"type": "notebook", "format": "json", "content": content},
            expect=200,
        )
        await client.wait(
            lambda: str(source_of(client, 0)) == "saved through the contents API",
            "the outside save",
        )

        await jupyter.request(
            "PATCH", "api/contents/pushed.ipynb", json={"path": "moved.ipynb"}
        )
        await client.wait(
            lambda: state_of(client)["path"] == "moved.ipynb", "the rename"
        )
        # The room follows the file under its new name: a save lands there.
        append(source_of(client, 0), " and renamed")
        await client.wait_confirmed()
        assert await client.save(1) == "success"
        saved = nbformat.reads(
            (jupyter.root_dir / "moved.ipynb").read_text(), as_version=4
        )
        assert saved.cells[0].source == "saved through the contents API and renamed"

        await jupyter.request("DELETE", "api/contents/moved.ipynb", expect=204)
        async with asyncio.timeout(scaled(5)):
            # Until ysyncd has heard of the delete, new sockets stay open.
            while (closed := await closed_within(f"{stack.url}/{path}", 0.5)) is None:
                continue
        assert closed[0] == 4404, closed
        assert closed[1].startswith("Error initializing")
        assert client.close_code is None  # the open socket stays


async def test_only_the_extension_may_say_files_changed(stack: Stack) -> None:
    """``/_ysyncd/changed/{namespace}`` needs the glue secret and write."""
    url = f"{stack.ysyncd.http_url}/_ysyncd/changed/{NAMESPACE}"
    cases = {
        "no secret": ({}, 401),
        "a wrong secret": ({"Authorization": "Bearer " + "0" * 64}, 401),
        "no write": ({"Authorization": f"Bearer {stack.secret}"}, 403),
        "the extension": (stack.glue_headers, 200),
    }
    async with httpx.AsyncClient(trust_env=False, timeout=scaled(10)) as http:
        for what, (headers, status) in cases.items():
            resp = await http.get(url, headers=headers)
            assert resp.status_code == status, (what, resp.text)
        assert set(resp.json()) == {"rooms"}
        elsewhere = await http.get(
            f"{stack.ysyncd.http_url}/_ysyncd/changed/not/a/namespace",
            headers=stack.glue_headers,
        )
        assert elsewhere.status_code == 404


async def test_ysyncd_sockets_end_with_the_browsers(stack: Stack) -> None:
    """A browser that closes, or just vanishes, takes its ysyncd socket along."""
    shared = await share(stack.jupyter, "lifetime.ipynb")
    path = room(shared.room_id, shared.session, stack.jupyter.token)
    await wait_connections(stack.ysyncd, 0, "before")
    async with JupyterClient.connect(stack.url, path):
        await wait_connections(stack.ysyncd, 1, "while connected")
    await wait_connections(stack.ysyncd, 0, "after a close")

    async with JupyterClient.connect(stack.url, path) as client:
        await wait_connections(stack.ysyncd, 1, "while connected")
        transport = client.ws.transport
        transport.abort()  # no close frame, no FIN: a browser tab killed
        await wait_connections(stack.ysyncd, 0, "after the browser vanished")


# --- 5. ysyncd down, and wiped --------------------------------------------------------


async def test_ysyncd_down_then_wiped(stack: Stack, tmp_path: Path) -> None:
    """While ysyncd is down the upgrade fails with 502 (the browser retries);
    after its store is wiped, a client of the old epoch is told to reload and
    the session endpoint hands out the new epoch, not the cached one."""
    jupyter, ysyncd = stack.jupyter, stack.ysyncd
    shared = await share(jupyter, "wiped.ipynb")
    old = shared.session
    await ysyncd.stop()
    assert await refusal(f"{stack.url}/{room(shared.room_id, old, jupyter.token)}") == (
        502
    )
    for name in ("", "-wal", "-shm", "-journal"):
        ysyncd.db.with_name(ysyncd.db.name + name).unlink(missing_ok=True)
    await ysyncd.start()
    new = await epoch_of(ysyncd)
    assert new != old

    closed = await first_close(
        f"{stack.url}/{room(shared.room_id, old, jupyter.token)}"
    )
    assert closed[0] == 1003
    assert json.loads(closed[1])["reason"] == "unknown_session"
    resp = await open_session(jupyter, "wiped.ipynb")
    assert resp.status_code == 200
    assert resp.json()["sessionId"] == new
    async with JupyterClient.connect(
        stack.url, room(shared.room_id, new, jupyter.token)
    ) as client:
        assert state_of(client)["path"] == "wiped.ipynb"


# --- 6. installation ------------------------------------------------------------------


async def test_the_config_d_file_enables_the_extension_over_jupyter_collaboration(
    tmp_path: Path,
) -> None:
    """Installed next to jupyter-server-ydoc's jupyter_collaboration.json in
    etc/jupyter/jupyter_server_config.d, ours is read later and wins."""
    config_d = tmp_path / "jupyter_server_config.d"
    config_d.mkdir()
    (config_d / "jupyter_collaboration.json").write_text(
        json.dumps(
            {"ServerApp": {"jpserver_extensions": {"jupyter_server_ydoc": True}}}
        )
    )
    shutil.copy(CONFIG_D, config_d / "ysyncd.json")
    # In a subprocess: importing jupyter_server here would warn.
    code = (
        "import json, sys\n"
        "from jupyter_server.extension.config import ExtensionConfigManager\n"
        "manager = ExtensionConfigManager(read_config_path=[sys.argv[1]])\n"
        "print(json.dumps(manager.get_jpserver_extensions()))\n"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        str(tmp_path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(scaled(60)):
        out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert json.loads(out) == {
        "jupyter_server_ydoc": False,
        "jupyter_server_fileid": True,
        "ysyncd.jupyter": True,
    }
