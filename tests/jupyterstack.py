"""A Jupyter server with ysyncd.jupyter next to a real ``ysyncd serve``, and
the extensions that build on collaboration, for the ecosystem tests.

``ecosystem(workdir, extensions=…)`` starts both (ysyncd on a port chosen
first, handed to the Jupyter server's config) and yields a :class:`Stack`:
clients play JupyterLab, asking the Jupyter server for a session and
opening room sockets on its URL, which the extension pipes to ysyncd.
``tests.jupyter_probe``, an extension of the tests' own, is importable by
the Jupyter server (the repository is put on its ``sys.path``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from websockets.asyncio.client import connect

from tests.jupyterclient import ROOM_PREFIX, JupyterClient
from tests.jupyterproc import JupyterServer, file_args
from tests.serverproc import ServerProcess
from tests.subprocs import free_port
from tests.timing import scaled

__all__ = ["EventStream", "SamePortJupyter", "Session", "Stack", "ecosystem"]

REPO = Path(__file__).parent.parent


class SamePortJupyter(JupyterServer):
    """A JupyterServer whose restart keeps its port, config, data and token:
    ysyncd's ``--jupyter-url`` points at it."""

    async def restart(self, timeout: float = 30) -> None:
        await self.kill()
        await self._spawn()
        try:
            await self._wait_ready(timeout)
        except BaseException:
            await self.kill()
            raise


@dataclass
class Session:
    """A file opened as JupyterLab opens it: its room and session ids."""

    path: str
    file_format: str
    file_type: str
    file_id: str
    session: str

    @property
    def room_id(self) -> str:
        return f"{self.file_format}:{self.file_type}:{self.file_id}"


@dataclass
class Stack:
    jupyter: SamePortJupyter
    ysyncd: ServerProcess
    #: The glue secret both share.
    secret: str

    @property
    def url(self) -> str:
        """The Jupyter server's WebSocket base URL: what the browser dials."""
        return f"ws://127.0.0.1:{self.jupyter.port}"

    async def open(
        self, path: str, file_type: str = "notebook", file_format: str = "json"
    ) -> Session:
        """``PUT api/collaboration/session/{path}``, as JupyterLab does."""
        resp = await self.jupyter.request(
            "PUT",
            f"api/collaboration/session/{quote(path, safe='')}",
            json={"format": file_format, "type": file_type},
            expect=(200, 201),
        )
        body = resp.json()
        return Session(path, file_format, file_type, body["fileId"], body["sessionId"])

    def client(
        self, session: Session, *, room_id: str | None = None
    ) -> contextlib.AbstractAsyncContextManager[JupyterClient]:
        """A JupyterLab-like client of ``session``'s room (or ``room_id``)."""
        room = room_id or session.room_id
        query = f"sessionId={session.session}&token={self.jupyter.token}"
        return JupyterClient.connect(self.url, f"{ROOM_PREFIX}{room}?{query}")

    async def get_json(self, endpoint: str, **params: str) -> Any:
        resp = await self.jupyter.request("GET", endpoint, params=params, expect=200)
        return resp.json()

    async def post_json(self, endpoint: str, body: Any = None, **params: str) -> Any:
        resp = await self.jupyter.request(
            "POST", endpoint, params=params, json=body or {}, expect=(200, 201, 202)
        )
        return resp.json()

    def events(self) -> contextlib.AbstractAsyncContextManager[EventStream]:
        return EventStream.subscribe(self)


class EventStream:
    """The Jupyter server's event bus, as JupyterLab reads it
    (``api/events/subscribe``)."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self._changed = asyncio.Event()

    @classmethod
    @contextlib.asynccontextmanager
    async def subscribe(cls, stack: Stack) -> AsyncIterator[EventStream]:
        stream = cls()
        url = f"{stack.url}/api/events/subscribe?token={stack.jupyter.token}"
        async with connect(url, open_timeout=scaled(10)) as ws:

            async def read() -> None:
                async for message in ws:
                    stream.events.append(json.loads(message))
                    stream._changed.set()

            reader = asyncio.create_task(read())
            try:
                yield stream
            finally:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader

    def of(self, schema: str, **fields: Any) -> list[dict[str, Any]]:
        """The events of ``schema`` (its last path segments) with ``fields``."""
        return [
            e
            for e in self.events
            if e.get("schema_id", "").endswith(schema)
            and all(e.get(k) == v for k, v in fields.items())
        ]

    async def wait_for(
        self, schema: str, timeout: float = 10, **fields: Any
    ) -> dict[str, Any]:
        try:
            async with asyncio.timeout(scaled(timeout)):
                while not (found := self.of(schema, **fields)):
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(
                f"no {schema} event with {fields}; saw {self.events}"
            ) from None
        return found[0]


@contextlib.asynccontextmanager
async def ecosystem(
    workdir: Path,
    *,
    extensions: Iterable[str] = (),
    config: str = "",
    save_delay: float = 30,
    poll_interval: float = 600,
) -> AsyncIterator[Stack]:
    """ysyncd (glue auth, fs files) and a Jupyter server with ysyncd.jupyter,
    jupyter_server_fileid and ``extensions``."""
    secret = secrets.token_hex(32)
    secret_file = workdir / "glue.secret"
    secret_file.write_text(secret + "\n")
    secret_file.chmod(0o600)
    port = free_port()
    jupyter = SamePortJupyter(
        workdir / "jupyter",
        config=(
            f"import sys; sys.path.insert(0, {str(REPO)!r})\n"
            f"c.YsyncdExtension.ysyncd_url = 'ws://127.0.0.1:{port}'\n"
            f"c.YsyncdExtension.secret_file = {str(secret_file)!r}\n" + config
        ),
        extensions=["ysyncd.jupyter", "jupyter_server_fileid", *extensions],
        args=["--FileContentsManager.delete_to_trash=False"],
    )
    await jupyter.start()
    ysyncd = ServerProcess(
        workdir / "ysyncd.db",
        "--auth",
        "glue",
        "--glue-secret-file",
        str(secret_file),
        *file_args(jupyter, save_delay=save_delay, poll_interval=poll_interval),
    )
    ysyncd.port = port
    try:
        await ysyncd.start()
        yield Stack(jupyter, ysyncd, secret)
    finally:
        await ysyncd.close()
        await jupyter.stop()
