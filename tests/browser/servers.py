"""The servers a browser test's JupyterLab talks to.

Each backend is an async context manager yielding a :class:`Lab`: a running
``jupyter server`` with JupyterLab (tests/jupyterproc.py: isolated HOME and
Jupyter dirs; the environment's prebuilt labextensions, under
``sys.prefix/share/jupyter/labextensions``, are still found), serving a
collaboration backend:

- ``reference``: jupyter_server_ydoc (+ jupyter_server_fileid), the
  implementation JupyterLab's collaboration frontend is written for.
- ``ysyncd``: the ``ysyncd.jupyter`` server extension (+ jupyter_server_fileid)
  in front of a real ``ysyncd serve`` sidecar.

Neither saves on its own (no autosave): the file on disk changes only when a
user saves.
"""

from __future__ import annotations

import contextlib
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import httpx

from tests.browser.lab import (
    LAB_EXTENSIONS,
    lab_config,
    write_page_config,
    write_user_settings,
)
from tests.jupyterproc import JupyterServer, file_args, running_jupyter
from tests.serverproc import ServerProcess
from tests.subprocs import free_port
from tests.timing import scaled


@dataclass
class Lab:
    """What a browser test needs from a backend."""

    name: str
    jupyter: JupyterServer
    #: Logs of every process involved, for failure messages.
    logs: Callable[[], str]
    #: How many room sockets the collaboration backend has open, when it can
    #: tell (to prove the browsers' rooms really went there).
    room_sockets: Callable[[], Awaitable[int]] | None = None

    @property
    def url(self) -> str:
        return self.jupyter.url

    @property
    def token(self) -> str:
        return self.jupyter.token

    @property
    def root_dir(self) -> Path:
        return self.jupyter.root_dir


_REFERENCE_CONFIG = """
# Never save on a timer: only a user's save writes the file.
c.YDocExtension.document_save_delay = None
"""


@contextlib.asynccontextmanager
async def reference_lab(
    workdir: Path,
    *,
    extensions: Iterable[str] = (),
    config: str = "",
    disabled: Iterable[str] = (),
) -> AsyncIterator[Lab]:
    """JupyterLab on jupyter_server_ydoc; ``config`` may set
    ``c.Collaboration.*``, which names YDocExtension's traits here, and
    ``disabled`` names JupyterLab plugins to disable."""
    write_user_settings(workdir / "config")
    write_page_config(workdir / "config", disabled)
    async with running_jupyter(
        workdir,
        config=lab_config(
            _REFERENCE_CONFIG + config.replace("c.Collaboration.", "c.YDocExtension.")
        ),
        extensions=[
            *LAB_EXTENSIONS,
            "jupyter_server_fileid",
            "jupyter_server_ydoc",
            *extensions,
        ],
        args=["--FileContentsManager.delete_to_trash=False"],
    ) as jupyter:
        yield Lab("reference", jupyter, lambda: "jupyter server:\n" + jupyter.log())


def _write_secret(path: Path) -> Path:
    """A fresh glue secret, readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(secrets.token_hex(32))
    return path


_YSYNCD_CONFIG = """
c.YsyncdExtension.ysyncd_url = {url!r}
c.YsyncdExtension.secret_file = {secret_file!r}
"""

#: Longer than any test: ysyncd saves only when a user asks.
NO_AUTOSAVE_S = 300


@contextlib.asynccontextmanager
async def ysyncd_lab(
    workdir: Path,
    *,
    extensions: Iterable[str] = (),
    config: str = "",
    disabled: Iterable[str] = (),
) -> AsyncIterator[Lab]:
    """JupyterLab on the ysyncd.jupyter extension and a ``ysyncd serve``;
    ``config`` may set ``c.Collaboration.*``, YsyncdExtension's traits here,
    and ``disabled`` names JupyterLab plugins to disable.

    Each needs the other's address: ysyncd's port is picked first (a tiny
    window for another process to take it), the Jupyter server starts with
    the extension pointing there, then ysyncd starts with the Jupyter
    server's URL and token (it resolves file ids through
    ``api/fileid/path``) and writes files under the server's root (``fs``).
    """
    secret_file = _write_secret(workdir / "glue-secret")
    ysyncd = ServerProcess(workdir / "ysyncd.db")
    ysyncd.port = free_port()
    jupyter_dir = workdir / "jupyter"
    write_user_settings(jupyter_dir / "config")
    write_page_config(jupyter_dir / "config", disabled)
    async with running_jupyter(
        jupyter_dir,
        config=lab_config(
            _YSYNCD_CONFIG.format(url=ysyncd.url, secret_file=str(secret_file))
            + config.replace("c.Collaboration.", "c.YsyncdExtension.")
        ),
        extensions=[
            *LAB_EXTENSIONS,
            "jupyter_server_fileid",
            "ysyncd.jupyter",
            *extensions,
        ],
        args=["--FileContentsManager.delete_to_trash=False"],
    ) as jupyter:
        ysyncd.args = [
            "--auth",
            "glue",
            "--glue-secret-file",
            str(secret_file),
            *file_args(jupyter, save_delay=NO_AUTOSAVE_S, poll_interval=0.2),
        ]
        try:
            await ysyncd.start()

            def logs() -> str:
                return (
                    "ysyncd:\n"
                    + "".join(ysyncd.log)
                    + "\njupyter server:\n"
                    + jupyter.log()
                )

            yield Lab("ysyncd", jupyter, logs, partial(_connections, ysyncd))
        finally:
            await ysyncd.close()


async def _connections(ysyncd: ServerProcess) -> int:
    """ysyncd's open connections, from its ``/metrics``."""
    async with httpx.AsyncClient(trust_env=False, timeout=scaled(10)) as http:
        resp = await http.get(ysyncd.http_url + "/metrics")
    resp.raise_for_status()
    match = re.search(r"^ysyncd_connections (\d+)(\.0)?$", resp.text, re.M)
    assert match, f"no ysyncd_connections in /metrics:\n{resp.text}"
    return int(match[1])


BACKENDS: dict[str, Callable[..., contextlib.AbstractAsyncContextManager[Lab]]] = {
    "reference": reference_lab,
    "ysyncd": ysyncd_lab,
}
