"""What ysyncd and its Jupyter extension trust, and what they refuse to serve.

Every test runs the real thing: ``ysyncd serve`` subprocesses on free
loopback ports, and a real ``jupyter server`` (tests/jupyterproc.py) with the
ysyncd.jupyter extension and jupyter_server_fileid where Jupyter is involved.

- **Hidden files.** Jupyter refuses files and directories whose names start
  with a dot (``ContentsManager.allow_hidden`` is off by default): the session
  endpoint gives them no file id, and ysyncd neither reads nor writes them,
  not even after a room's file was moved to such a path.
- **URL templates.** ``{owner}`` and ``{server}`` are percent-encoded as path
  segments, and a template that puts one before its path (in the scheme,
  user, host or port) is refused at start.
- **The extension's file endpoints** take the server's own glue secret, and
  nothing else.

What a user's server receives from ysyncd under JupyterHub is checked in
tests/test_jupyterhub_example.py, which runs a real JupyterHub.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import nbformat
import pytest
import pytest_asyncio
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.jupyterclient import ROOM_PREFIX, JupyterClient, append, source_of, state_of
from tests.jupyterproc import JupyterServer, file_args
from tests.serverproc import ServerProcess, running_server
from tests.subprocs import free_port
from tests.timing import scaled, wait_until
from ysyncd.auth.glue import namespace_secret
from ysyncd.jupyter.restfiles import GLUE_HEADER

REPO = Path(__file__).resolve().parents[1]
#: The extension's namespace outside JupyterHub.
NAMESPACE = "user/local"
#: A user name that is also a URL's authority, query and fragment.
HOSTILE_OWNER = "x@127.0.0.1:1?b#c"
HOSTILE_SERVER = "s:1"
#: Both, escaped as path segments, as JupyterHub escapes names (``@`` stays:
#: the placeholders are in the path, after the host).
ESCAPED = "x@127.0.0.1%3A1%3Fb%23c/s%3A1"
CONTENTS = ["--jupyter-files", "contents"]


def notebook(source: str) -> bytes:
    nb = nbformat.v4.new_notebook()
    nb.cells.append(nbformat.v4.new_markdown_cell(source, id="only"))
    return nbformat.writes(nb).encode()


# --- a Jupyter server with the extension, and ysyncd on its files --------------


@dataclass
class Stack:
    jupyter: JupyterServer
    ysyncd: ServerProcess
    secret: str
    secret_file: Path

    @property
    def glue_headers(self) -> dict[str, str]:
        """What the extension presents to ysyncd for a user who may write."""
        return {"Authorization": f"Bearer {self.secret}", "X-Ysyncd-Write": "1"}

    async def session(
        self, path: str, file_format: str = "json", file_type: str = "notebook"
    ) -> httpx.Response:
        """``PUT api/collaboration/session/{path}``, as JupyterLab asks it."""
        return await self.jupyter.request(
            "PUT",
            f"api/collaboration/session/{quote(path)}",
            json={"format": file_format, "type": file_type},
        )


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    workdir = tmp_path_factory.mktemp("trust")
    secret = secrets.token_hex(32)
    secret_file = workdir / "glue.secret"
    secret_file.write_text(secret + "\n")
    port = free_port()
    jupyter = JupyterServer(
        workdir / "jupyter",
        config=(
            f"c.YsyncdExtension.ysyncd_url = 'ws://127.0.0.1:{port}'\n"
            f"c.YsyncdExtension.secret_file = {str(secret_file)!r}\n"
            # Follows files moved on disk (by inode), as a user's `mv` does.
            "c.FileIdExtension.file_id_manager_class = "
            "'jupyter_server_fileid.manager.LocalFileIdManager'\n"
        ),
        extensions=["ysyncd.jupyter", "jupyter_server_fileid"],
    )
    await jupyter.start()
    ysyncd = ServerProcess(
        workdir / "ysyncd.db",
        *("--auth", "glue", "--glue-secret-file", str(secret_file)),
        # Saves only when asked and never polls: files are checked on a save.
        *file_args(jupyter, save_delay=600, poll_interval=600),
    )
    ysyncd.port = port
    try:
        await ysyncd.start()
        yield Stack(jupyter, ysyncd, secret, secret_file)
    finally:
        await ysyncd.close()
        await jupyter.stop()


async def epoch_of(ysyncd: ServerProcess) -> str:
    async with httpx.AsyncClient(trust_env=False, timeout=scaled(10)) as http:
        resp = await http.get(ysyncd.http_url + "/_ysyncd/epoch")
    assert resp.status_code == 200, resp.text
    return str(resp.json()["epoch"])


async def first_close(url: str, headers: dict[str, str]) -> int | None:
    """The close code a new connection to ``url`` gets (None: no close frame)."""
    async with connect(url, additional_headers=headers, open_timeout=scaled(10)) as ws:
        try:
            async with asyncio.timeout(scaled(10)):
                while True:
                    await ws.recv()
        except ConnectionClosed:
            received = ws.protocol.close_rcvd
            return None if received is None else received.code
        except TimeoutError:
            raise AssertionError(f"{url} stayed open") from None


# --- 11. hidden files ----------------------------------------------------------


@pytest.mark.asyncio(loop_scope="module")
async def test_hidden_files_get_no_file_id_from_the_session_endpoint(
    stack: Stack,
) -> None:
    """A file Jupyter's Contents API hides (a dot in any segment) gets 404
    from the session endpoint too, so no room is ever bound to it."""
    root = stack.jupyter.root_dir
    (root / ".hidden_secret.txt").write_text("secret")
    (root / ".ssh").mkdir()
    (root / ".ssh" / "notes.txt").write_text("secret")
    (root / "visible.txt").write_text("fine")
    for path in (".hidden_secret.txt", ".ssh/notes.txt"):
        contents = await stack.jupyter.request("GET", f"api/contents/{path}")
        assert contents.status_code == 404, (path, contents.text)
        session = await stack.session(path, "text", "file")
        assert session.status_code == 404, (path, session.status_code, session.text)
    visible = await stack.session("visible.txt", "text", "file")
    assert visible.status_code in (200, 201), visible.text


@pytest.mark.parametrize("files", ["fs", "contents", "contents-glue"])
@pytest.mark.asyncio(loop_scope="module")
async def test_a_file_moved_to_a_hidden_path_is_gone_for_its_room(
    stack: Stack, tmp_path: Path, files: str
) -> None:
    """A room's notebook is moved into a hidden directory outside Jupyter
    (a shell's ``mv``) and a secret written there. ysyncd follows the file id
    no further: the save fails, the hidden file keeps its bytes, the room
    never shows its content or its path, and new connections get 4404."""
    root = stack.jupyter.root_dir
    name = f"moved-{files}.ipynb"
    (root / name).write_bytes(notebook("visible"))
    opened = await stack.session(name)
    assert opened.status_code in (200, 201), opened.text
    file_id = opened.json()["fileId"]
    async with _ysyncd_for(stack, tmp_path, files) as ysyncd:
        room = (
            f"{NAMESPACE}/{ROOM_PREFIX}json:notebook:{file_id}"
            f"?sessionId={await epoch_of(ysyncd)}"
        )
        async with JupyterClient.connect(
            ysyncd.url, room, additional_headers=stack.glue_headers
        ) as client:
            assert str(source_of(client, 0)) == "visible"
            hidden = root / f".private-{files}" / name
            hidden.parent.mkdir()
            os.rename(root / name, hidden)
            hidden.write_bytes(notebook("SECRET"))
            append(source_of(client, 0), " and edited")
            await client.wait_confirmed()
            assert await client.save(1) == "failed"
            assert hidden.read_bytes() == notebook("SECRET")
            assert "SECRET" not in str(source_of(client, 0))
            assert state_of(client)["path"] == name
        code = await first_close(f"{ysyncd.url}/{room}", stack.glue_headers)
        assert code == 4404, code


def _ysyncd_for(
    stack: Stack, tmp_path: Path, files: str
) -> contextlib.AbstractAsyncContextManager[ServerProcess]:
    """The stack's ysyncd (``fs``), or one reading through the Contents API
    with the server's token, or through the extension with its glue secret."""
    if files == "fs":
        return contextlib.nullcontext(stack.ysyncd)
    presented = (
        ["--jupyter-credentials", "glue"]
        if files == "contents-glue"
        else ["--jupyter-token", stack.jupyter.token]
    )
    return running_server(
        tmp_path / "contents.db",
        *("--auth", "glue", "--glue-secret-file", str(stack.secret_file)),
        *("--jupyter-files", "contents", "--jupyter-url", stack.jupyter.url),
        *presented,
        *("--save-delay", "600", "--poll-interval", "600"),
    )


# --- 12. URL templates ---------------------------------------------------------


async def _start_outcome(tmp_path: Path, *args: str) -> tuple[int | None, str]:
    """Start ``ysyncd serve``: (its exit code, or None if it started; its log)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "ysyncd", "serve", "--host", "127.0.0.1", "--port", "0"),
        *("--db", str(tmp_path / "ysyncd.db"), *args),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stderr is not None
    lines: list[str] = []
    try:
        async with asyncio.timeout(scaled(20)):
            while line := (await proc.stderr.readline()).decode():
                lines.append(line)
                if "listening on" in line:
                    proc.kill()
                    await proc.wait()
                    return None, "".join(lines)
            return await proc.wait(), "".join(lines)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.mark.parametrize(
    ("flag", "args"),
    [
        ("--jupyter-url", [*CONTENTS, "--jupyter-url", "http://jupyter-{owner}:1/"]),
        ("--jupyter-url", [*CONTENTS, "--jupyter-url", "http://{owner}@127.0.0.1/"]),
        (
            "--delegate-url",
            ["--auth", "delegate", "--delegate-url", "http://127.0.0.1:{server}/x/"],
        ),
    ],
    ids=["jupyter-host", "jupyter-userinfo", "delegate-port"],
)
async def test_a_placeholder_before_the_path_is_refused_at_start(
    tmp_path: Path, flag: str, args: list[str]
) -> None:
    """A name must never pick the host ysyncd sends its requests to."""
    code, output = await _start_outcome(tmp_path, *args)
    assert code is not None, f"ysyncd started with {args}:\n{output}"
    assert code != 0
    assert flag in output and "path" in output, output


class _Recorder(BaseHTTPRequestHandler):
    """Records each request's target; answers like a Jupyter server would."""

    seen: list[str]

    def do_GET(self) -> None:
        self.seen.append(self.path)
        if "/api/me" in self.path:
            body = {"identity": {"username": "u"}, "permissions": {"contents": []}}
            self._answer(200, body)
        else:
            self._answer(404, {"message": "not found"})

    def _answer(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the tests read :attr:`seen` instead."""


@contextlib.contextmanager
def recorder() -> Iterator[tuple[int, list[str]]]:
    """A loopback HTTP server in a thread: its port and the targets it got."""
    seen: list[str] = []
    handler = type("Recorder", (_Recorder,), {"seen": seen})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=scaled(10))


async def test_names_fill_url_templates_as_escaped_path_segments(
    tmp_path: Path,
) -> None:
    """An owner and a server name holding ``@ : ? #`` reach the Jupyter
    server (file ids) and the delegate (``api/me``) as one path segment each,
    every character but RFC 3986's unreserved ones percent-encoded."""
    room = (
        f"user/{quote(HOSTILE_OWNER, safe='')}/{quote(HOSTILE_SERVER, safe='')}/"
        f"{ROOM_PREFIX}json:notebook:abc"
    )
    with recorder() as (port, seen):
        base = f"http://127.0.0.1:{port}/base"
        async with running_server(
            tmp_path / "files.db",
            *("--jupyter-files", "contents"),
            *("--jupyter-url", base + "/user/{owner}/{server}/"),
        ) as files:
            assert await first_close(f"{files.url}/{room}", {}) == 4404
        assert seen == [f"/base/user/{ESCAPED}/api/fileid/path?id=abc"], seen
        seen.clear()
        async with running_server(
            tmp_path / "delegate.db",
            *("--auth", "delegate", "--delegate-url", base + "/user/{owner}/{server}"),
        ) as delegate:
            with pytest.raises(InvalidStatus) as refused:
                async with connect(
                    f"{delegate.url}/{room}",
                    additional_headers={"Authorization": "Bearer t"},
                    open_timeout=scaled(10),
                ):
                    pass
        await wait_until(lambda: len(seen) == 1, "the delegate's request")
        assert seen[0].startswith(f"/base/user/{ESCAPED}/api/me?permissions="), seen
        # Its answer gives no read access: refused, as it says.
        assert refused.value.response.status_code == 403


# --- 13. the extension's file endpoints ----------------------------------------


@pytest.mark.asyncio(loop_scope="module")
async def test_the_extensions_file_endpoints_take_only_the_servers_own_secret(
    stack: Stack,
) -> None:
    """``api/ysyncd/...`` answers ysyncd, which presents this server's own
    namespace secret, and nobody else: not the Jupyter server's token, not
    another server's secret. It keeps Jupyter's hidden-file rule."""
    jupyter = stack.jupyter
    (jupyter.root_dir / "endpoint.txt").write_text("endpoint")
    opened = await stack.session("endpoint.txt", "text", "file")
    assert opened.status_code in (200, 201), opened.text
    file_id = opened.json()["fileId"]
    own = {GLUE_HEADER: namespace_secret(stack.secret, "local")}
    refused: list[dict[str, str]] = [
        {},
        {GLUE_HEADER: namespace_secret(stack.secret, "bob")},
        {GLUE_HEADER: "x" * 64},
        {"Authorization": f"token {jupyter.token}"},
    ]
    path = "api/ysyncd/fileid/path"
    for headers in refused:
        resp = await jupyter.request(
            "GET", path, token="", headers=headers, params={"id": file_id}
        )
        assert resp.status_code == 401, (sorted(headers), resp.status_code)
    resp = await jupyter.request(
        "GET", path, token="", headers=own, params={"id": file_id}
    )
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"id": file_id, "path": "endpoint.txt"}

    contents = "api/ysyncd/contents/"
    params = {"type": "file", "format": "text", "content": "1", "hash": "1"}
    got = await jupyter.request(
        "GET", contents + "endpoint.txt", token="", headers=own, params=params
    )
    assert got.status_code == 200, got.text
    assert got.json()["content"] == "endpoint"
    body = {"type": "file", "format": "text", "content": "saved"}
    for name, status in [("new.txt", 201), ("new.txt", 200), (".new.txt", 400)]:
        put = await jupyter.request(
            "PUT", contents + name, token="", headers=own, json=body
        )
        assert put.status_code == status, (name, put.text)
    assert (jupyter.root_dir / "new.txt").read_text() == "saved"
    assert not (jupyter.root_dir / ".new.txt").exists()
    (jupyter.root_dir / ".hidden.txt").write_text("secret")
    hidden = await jupyter.request(
        "GET", contents + ".hidden.txt", token="", headers=own, params=params
    )
    assert hidden.status_code == 404, hidden.text
    wrong = await jupyter.request(
        "PUT", contents + "new.txt", token="", headers=refused[1], json=body
    )
    assert wrong.status_code == 401
