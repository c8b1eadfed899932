"""examples/jupyterhub, run for real: JupyterHub, its proxy, ysyncd, and alice's server.

The hub runs the example's ``jupyterhub_config.py`` as it stands, loaded from a
small overlay that only adds a service for the test's own API calls (creating
users and tokens, starting servers). Everything else is the example's:

- JupyterHub 6 with DummyAuthenticator and SimpleLocalProcessSpawner;
- configurable-http-proxy from npm (tests/js), on a free loopback port;
- ysyncd as a managed Hub service (``--auth glue``, ``--jupyter-files
  contents`` through the proxy, showing each server its own glue secret);
- alice's single-user server (``jupyterhub.singleuser``) with the ysyncd.jupyter
  extension, enabled by the installed ``jupyter_server_config.d/ysyncd.json``.

Clients act as browsers do: they use only the proxy's public URL
(``/user/alice/...``), with a hub token for alice or bob.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import nbformat
import pytest
import pytest_asyncio
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.hub import SERVICE_SCOPES, Hub
from tests.jupyterclient import JupyterClient, append, room_path, source_of
from tests.subprocs import free_port
from tests.timing import scaled, wait_until
from ysyncd.auth.glue import namespace_secret

pytestmark = pytest.mark.asyncio(loop_scope="module")

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "jupyterhub" / "jupyterhub_config.py"
NODE_BIN = REPO / "tests" / "js" / "node_modules" / ".bin"
#: The test's own service (the example's is "ysyncd").
TEST_SERVICE = "tests"

_OVERLAY = """\
# Written by tests/test_jupyterhub_example.py: the example, plus a test service.
c = get_config()  # noqa: F821
load_subconfig({example!r})  # noqa: F821
c.JupyterHub.services.append({{"name": {service!r}, "api_token": {token!r}}})
c.JupyterHub.load_roles.append(
    {{"name": "tests", "services": [{service!r}], "scopes": {scopes!r}}}
)
"""


#: mallory's own ~/.jupyter/jupyter_server_config.py: her code runs in her
#: server, and may record every request it gets, headers and all.
_RECORDER = """\
import json

def _record(handler):
    with open({path!r}, "a") as f:
        request = handler.request
        seen = {{"path": request.path, "headers": dict(request.headers)}}
        f.write(json.dumps(seen) + "\\n")

c.ServerApp.tornado_settings = {{"log_function": _record}}
"""
#: Request headers that carry credentials.
CREDENTIAL_HEADERS = ("Authorization", "Cookie", "X-Ysyncd-Glue")


class ExampleHub(Hub):
    """The example's hub: real proxy, ysyncd service and single-user servers."""

    name = "the example's jupyterhub"
    # Python's and Node's words for a port someone took first (the hub's, the
    # proxy's or ysyncd's): start again on new ports.
    port_taken = "ddress already in use"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.data = workdir / "data"
        self.public_port = self.proxy_api_port = self.ysyncd_port = 0

    @property
    def public_url(self) -> str:
        return f"http://127.0.0.1:{self.public_port}"

    def _write_config(self) -> None:
        self.config_path.write_text(
            _OVERLAY.format(
                example=str(EXAMPLE),
                service=TEST_SERVICE,
                token=self.service_token,
                scopes=SERVICE_SCOPES,
            )
        )

    async def _spawn(self) -> None:
        self.public_port = free_port()
        self.proxy_api_port = free_port()
        self.ysyncd_port = free_port()
        await super()._spawn()

    def _environment(self) -> dict[str, str]:
        env = super()._environment()
        env.update(
            EXAMPLE_DATA_DIR=str(self.data),
            EXAMPLE_BIND_URL=self.public_url,
            EXAMPLE_HUB_PORT=str(self.port),
            EXAMPLE_PROXY_API_PORT=str(self.proxy_api_port),
            EXAMPLE_YSYNCD_PORT=str(self.ysyncd_port),
            # A share reaches alice's running server within a second.
            EXAMPLE_AUTH_CACHE_SECONDS="1",
            PATH=os.pathsep.join([str(NODE_BIN), env.get("PATH", "")]),
        )
        return env

    async def _ready(self) -> bool:
        """The hub's API, through the proxy too, and ysyncd, all answer."""
        assert self._client is not None
        urls = [
            f"{self.api_url}/",
            f"{self.public_url}/hub/api/",
            f"http://127.0.0.1:{self.ysyncd_port}/healthz",
        ]
        for url in urls:
            try:
                resp = await self._client.get(url, timeout=scaled(1))
            except httpx.TransportError:
                return False  # not listening yet
            if resp.status_code != 200:
                return False
        return True

    async def kill(self) -> None:
        """Stop the hub as an operator would (SIGTERM): it stops the proxy,
        ysyncd and the single-user servers it started; SIGKILL if it hangs."""
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(scaled(30)):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            async with asyncio.timeout(scaled(10)):
                await proc.wait()
            raise AssertionError(
                "the hub did not stop on SIGTERM:\n" + self.log()
            ) from None


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def hub(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ExampleHub]:
    if not (NODE_BIN / "configurable-http-proxy").exists():
        pytest.fail("configurable-http-proxy is missing: npm ci --prefix tests/js")
    example = ExampleHub(tmp_path_factory.mktemp("example-hub"))
    try:
        await example.start(timeout=60)
        yield example
    finally:
        await example.stop()


class Browser:
    """One user's requests to one Jupyter server, through the public proxy."""

    def __init__(self, hub: ExampleHub, token: str, owner: str) -> None:
        self.hub, self.token, self.owner = hub, token, owner
        self.headers = {"Authorization": f"token {token}"}
        self.http = httpx.AsyncClient(
            base_url=f"{hub.public_url}/user/{owner}/",
            headers=self.headers,
            trust_env=False,
            timeout=scaled(20),
        )

    async def session(self, path: str) -> httpx.Response:
        """What JupyterLab asks before it opens a document's room."""
        return await self.http.put(
            f"api/collaboration/session/{path}",
            json={"format": "json", "type": "notebook"},
        )

    def room(self, body: dict[str, Any]) -> str:
        room_id = f"{body['format']}:{body['type']}:{body['fileId']}"
        return room_path(self.owner, room_id, sessionId=body["sessionId"])

    @property
    def ws_url(self) -> str:
        return self.hub.public_url.replace("http://", "ws://", 1)


async def test_bob_sees_alices_notebook_only_after_she_shares_it(
    hub: ExampleHub,
) -> None:
    """alice edits a notebook on her server, which keeps it in ysyncd; bob is
    refused until alice shares her server, then sees her unsaved edit, adds
    his own, and his save writes both into alice's file. When alice withdraws
    the share, bob's open socket is closed (4403) and he is refused again."""
    for user in ("alice", "bob"):
        await hub.create_user(user)
    async with contextlib.AsyncExitStack() as cleanup:
        alice = Browser(hub, (await hub.new_token("alice"))[0], "alice")
        bob = Browser(hub, (await hub.new_token("bob"))[0], "bob")
        bob_at_alice = Browser(hub, bob.token, "alice")
        for browser in (alice, bob, bob_at_alice):
            cleanup.push_async_callback(browser.http.aclose)
        await hub.start_server("alice", timeout=120)
        cleanup.push_async_callback(hub.stop_server, "alice")
        await _share_and_unshare(hub, alice, bob, bob_at_alice)


async def test_a_servers_glue_secret_opens_its_own_rooms_only(
    hub: ExampleHub,
) -> None:
    """Each single-user server gets a secret derived for its namespace: code
    alice runs in her server can read it, and it opens none of bob's rooms."""
    master = (hub.data / "ysyncd-glue.secret").read_bytes()
    alices = {"Authorization": f"Bearer {namespace_secret(master, 'alice')}"}
    ysyncd = f"ws://127.0.0.1:{hub.ysyncd_port}"
    room = "api/collaboration/room/JupyterLab:globalAwareness"
    async with connect(f"{ysyncd}/user/alice/{room}", additional_headers=alices):
        pass
    with pytest.raises(InvalidStatus) as refused:
        async with connect(f"{ysyncd}/user/bob/{room}", additional_headers=alices):
            pass
    assert refused.value.response.status_code == 401


async def test_what_ysyncd_shows_a_users_server_opens_no_other_server(
    hub: ExampleHub,
) -> None:
    """mallory records what her server receives. What ysyncd presents there
    to resolve and save her notebook opens neither carol's server nor the
    Hub's API: it is mallory's own glue secret, which she had already."""
    for user in ("mallory", "carol"):
        await hub.create_user(user)
    home = hub.data / "home" / "mallory"
    (home / ".jupyter").mkdir(parents=True)
    seen_file = home / "seen.jsonl"
    (home / ".jupyter" / "jupyter_server_config.py").write_text(
        _RECORDER.format(path=str(seen_file))
    )
    async with contextlib.AsyncExitStack() as cleanup:
        mallory = Browser(hub, (await hub.new_token("mallory"))[0], "mallory")
        cleanup.push_async_callback(mallory.http.aclose)
        for user in ("mallory", "carol"):
            await hub.start_server(user, timeout=120)
            cleanup.push_async_callback(hub.stop_server, user)

        notebook = nbformat.v4.new_notebook()
        notebook.cells.append(nbformat.v4.new_markdown_cell("mine", id="mine"))
        resp = await mallory.http.put(
            "api/contents/m.ipynb", json={"type": "notebook", "content": notebook}
        )
        assert resp.status_code == 201, resp.text
        opened = await mallory.session("m.ipynb")
        assert opened.status_code in (200, 201), opened.text
        async with JupyterClient.connect(
            mallory.ws_url,
            mallory.room(opened.json()),
            additional_headers=mallory.headers,
        ) as client:
            append(source_of(client, 0), "!")
            await client.wait_confirmed()
            assert await client.save(1) == "success"

        def from_ysyncd() -> list[dict[str, Any]]:
            """What mallory's server got that her browser did not send."""
            if not seen_file.exists():
                return []
            entries = [json.loads(line) for line in seen_file.read_text().splitlines()]
            return [
                e
                for e in entries
                if ("fileid" in e["path"] or "/contents/" in e["path"])
                and e["headers"].get("Authorization")
                != mallory.headers["Authorization"]
            ]

        await wait_until(
            lambda: (
                any("fileid" in e["path"] for e in from_ysyncd())
                and any("/contents/" in e["path"] for e in from_ysyncd())
            ),
            "ysyncd's file id and contents requests at mallory's server",
            timeout=10,
        )
        presented = {
            value.split(" ", 1)[-1]
            for entry in from_ysyncd()
            for name, value in entry["headers"].items()
            if name.title() in CREDENTIAL_HEADERS
        }
        assert presented, "ysyncd presented no credential at all"
        await _assert_opens_nothing_else(hub, presented)
        master = (hub.data / "ysyncd-glue.secret").read_bytes()
        assert presented == {namespace_secret(master, "mallory")}


async def _assert_opens_nothing_else(hub: ExampleHub, credentials: set[str]) -> None:
    """Each of ``credentials``, presented every way ysyncd could, is refused
    by carol's server and by the Hub's API."""
    async with httpx.AsyncClient(
        base_url=hub.public_url, trust_env=False, timeout=scaled(20)
    ) as http:
        for credential in credentials:
            attempts = {
                "/user/carol/api/contents/": {"Authorization": f"token {credential}"},
                "/hub/api/user": {"Authorization": f"token {credential}"},
                "/user/carol/api/ysyncd/contents/": {"X-Ysyncd-Glue": credential},
            }
            for path, headers in attempts.items():
                resp = await http.get(path, headers=headers)
                assert resp.status_code in (401, 403), (path, resp.status_code)


async def _share_and_unshare(
    hub: ExampleHub, alice: Browser, bob: Browser, bob_at_alice: Browser
) -> None:
    """The test above, once alice's server runs."""

    def saved_sources() -> list[str] | None:
        """The cells' sources in alice's file; None while it is being written
        (jupyter_server writes in place, after a backup copy)."""
        saved = hub.data / "home" / "alice" / "plan.ipynb"
        try:
            on_disk = nbformat.reads(saved.read_text(), as_version=4)
        except nbformat.reader.NotJSONError:
            return None
        nbformat.validate(on_disk)
        return [cell.source for cell in on_disk.cells]

    notebook = nbformat.v4.new_notebook()
    notebook.cells.append(nbformat.v4.new_markdown_cell("# Plan", id="plan"))
    resp = await alice.http.put(
        "api/contents/plan.ipynb", json={"type": "notebook", "content": notebook}
    )
    assert resp.status_code == 201, resp.text

    opened = await alice.session("plan.ipynb")
    assert opened.status_code in (200, 201), opened.text
    body = opened.json()
    # The session id is ysyncd's store epoch: the rooms live in ysyncd.
    epoch = await hub._client.get(  # type: ignore[union-attr]
        f"http://127.0.0.1:{hub.ysyncd_port}/_ysyncd/epoch"
    )
    assert body["sessionId"] == epoch.json()["epoch"]

    async with JupyterClient.connect(
        alice.ws_url, alice.room(body), additional_headers=alice.headers
    ) as at_alice:
        assert str(source_of(at_alice, 0)) == "# Plan"
        append(source_of(at_alice, 0), " by alice")
        await at_alice.wait_confirmed()

        # Not shared yet: bob may not open alice's files or her rooms.
        assert (await bob_at_alice.session("plan.ipynb")).status_code == 403
        with pytest.raises(InvalidStatus) as refused:
            async with connect(
                f"{bob.ws_url}/{alice.room(body)}",
                additional_headers=bob.headers,
                open_timeout=scaled(10),
            ):
                pass
        assert refused.value.response.status_code == 403

        await hub.share("alice", "", "bob", token=alice.token)
        await _wait_until_admitted(bob_at_alice, "plan.ipynb")

        async with JupyterClient.connect(
            bob.ws_url, alice.room(body), additional_headers=bob.headers
        ) as at_bob:
            await at_bob.wait(
                lambda: str(source_of(at_bob, 0)) == "# Plan by alice",
                "alice's unsaved edit at bob's",
            )
            append(source_of(at_bob, 0), " and bob")
            await at_bob.wait_confirmed()
            await at_alice.wait(
                lambda: str(source_of(at_alice, 0)) == "# Plan by alice and bob",
                "bob's edit at alice's",
            )
            assert await at_bob.save(1) == "success"
            await wait_until(
                lambda: saved_sources() == ["# Plan by alice and bob"],
                "bob's save",
            )

            # alice withdraws the share: bob's open socket is closed.
            await hub.unshare("alice", "", "bob", token=alice.token)
            await at_bob.wait_closed(timeout=15)
            assert at_bob.close_code == 4403, at_bob.close_code
        assert (await bob_at_alice.session("plan.ipynb")).status_code == 403
        # alice goes on editing, alone, and ysyncd autosaves it.
        append(source_of(at_alice, 0), "!")
        await at_alice.wait_confirmed()
        await wait_until(
            lambda: saved_sources() == ["# Plan by alice and bob!"],
            "the autosave of alice's edit",
        )
        assert at_alice.close_code is None


async def _wait_until_admitted(
    browser: Browser, path: str, timeout: float = 15
) -> None:
    """Until alice's server admits ``browser`` (it trusts its cached word from
    the hub for EXAMPLE_AUTH_CACHE_SECONDS)."""
    status = 0
    try:
        async with asyncio.timeout(scaled(timeout)):
            while status != 200:
                status = (await browser.session(path)).status_code
                if status != 200:
                    await asyncio.sleep(0.2)  # the cache expires with time only
    except TimeoutError:
        raise AssertionError(f"still refused with {status} after sharing") from None
