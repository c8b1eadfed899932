"""A real Jupyter server (jupyter_server 2.x) in a subprocess, for tests.

``running_jupyter(workdir)`` starts ``jupyter server`` on a free loopback port
with a random token and its own root directory, waits until ``GET /api/status``
answers with that token, and kills the process (group) on exit.

Isolation: nothing from the user's home reaches it. ``HOME``, the Jupyter
config, data and runtime directories and ``IPYTHONDIR`` all point into
``workdir``; ``PYTHONNOUSERSITE`` hides ``~/.local/etc/jupyter``; other
``JUPYTER*``/``JPY_*`` variables are dropped. The server reads one config file,
written here into its config directory, which wins over the environment's
(``JUPYTER_PREFER_ENV_PATH=0``). Server extensions enabled by the environment
(e.g. ``jupyter_server_terminals``) are disabled unless asked for
(``extensions=``). Tests add their own settings as config-file text (``config=``),
which may define classes (an ``Authorizer``, an ``IdentityProvider``) without
any module on the import path.

The test process never imports jupyter_server; it only talks HTTP to it, so
the server's own warnings stay in its log instead of failing the test
(``filterwarnings = error``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
from collections.abc import AsyncIterator, Iterable
from http.cookiejar import CookieJar, DefaultCookiePolicy
from pathlib import Path
from typing import Any

import httpx

from tests.subprocs import LoggedServer, launch_code
from tests.timing import scaled

__all__ = ["JupyterError", "JupyterServer", "running_jupyter"]


_CONFIG = """\
# Written by tests/jupyterproc.py for one test run.
c = get_config()  # noqa: F821
# Set here so the server writes no jupyter_cookie_secret file.
c.ServerApp.cookie_secret = bytes.fromhex({cookie_secret!r})
# Keep only the server extensions the test asked for: the environment's
# jupyter_server_config.d enables whatever is installed.
from jupyter_core.paths import jupyter_config_path as _config_path
from jupyter_server.extension.config import ExtensionConfigManager as _Manager

_keep = {extensions!r}
_found = _Manager(read_config_path=_config_path()).get_jpserver_extensions()
c.ServerApp.jpserver_extensions = {{
    **dict.fromkeys(_found, False),
    **dict.fromkeys(_keep, True),
}}
del _config_path, _Manager, _keep, _found

# --- the test's own settings ---
{extra}
"""


class JupyterError(AssertionError):
    """The server failed to start or to answer as expected."""


class JupyterServer(LoggedServer):
    """One ``jupyter server`` subprocess.

    Attributes a test uses: ``url`` (base URL, trailing slash), ``token``,
    ``root_dir`` (its contents root), ``port``, ``pid``, ``log_path`` and
    ``startup_seconds`` (spawn to first 200 from ``/api/status``).
    """

    name = "jupyter server"
    error = JupyterError
    port_taken = "port {port} is not available"

    def __init__(
        self,
        workdir: Path,
        *,
        config: str = "",
        args: Iterable[str] = (),
        extensions: Iterable[str] = (),
        token: str | None = None,
    ) -> None:
        super().__init__(workdir / "jupyter_server.log")
        self.workdir = workdir
        self.root_dir = workdir / "root"
        self.config_dir = workdir / "config"
        self.data_dir = workdir / "data"
        self.runtime_dir = workdir / "runtime"
        self.home_dir = workdir / "home"
        self.token = token if token is not None else secrets.token_hex(24)
        self.extra_config = config
        self.extra_args = list(args)
        self.extensions = sorted(set(extensions))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    @property
    def client(self) -> httpx.AsyncClient:
        """An HTTP client for the server: no proxies from the environment, no
        cookie jar."""
        assert self._client is not None, "jupyter server not started"
        return self._client

    # --- lifecycle -------------------------------------------------------------

    async def start(self, timeout: float = 30, attempts: int = 3) -> None:
        """Start the server and wait until its API answers with the token.

        The port is chosen before the server binds it, so another process can
        take it in between; the server then exits (no port retries) and we try
        again on a new port.
        """
        for d in (
            self.root_dir,
            self.config_dir,
            self.data_dir,
            self.runtime_dir,
            self.home_dir,
        ):
            d.mkdir(parents=True, exist_ok=True)
        (self.config_dir / "jupyter_server_config.py").write_text(
            _CONFIG.format(
                cookie_secret=secrets.token_hex(32),
                extensions=self.extensions,
                extra=self.extra_config,
            )
        )
        if self._client is None:
            # No cookie jar: every token-authenticated answer sets a login
            # cookie, which would then sign in later requests on its own
            # (and give them the first request's identity).
            self._client = httpx.AsyncClient(
                trust_env=False,
                timeout=scaled(10),
                cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),
            )
        await self._start_on_free_port(timeout, attempts)

    def _env(self) -> dict[str, str]:
        drop = ("JUPYTER", "JPY_", "JUPYTERHUB_", "IPYTHONDIR")
        env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
        env.update(
            HOME=str(self.home_dir),
            IPYTHONDIR=str(self.home_dir / ".ipython"),
            JUPYTER_CONFIG_DIR=str(self.config_dir),
            JUPYTER_DATA_DIR=str(self.data_dir),
            JUPYTER_RUNTIME_DIR=str(self.runtime_dir),
            JUPYTER_PREFER_ENV_PATH="0",
            PYTHONNOUSERSITE="1",
            PYTHONUNBUFFERED="1",
        )
        return env

    async def _spawn(self) -> None:
        argv = [
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={self.port}",
            "--ServerApp.port_retries=0",
            f"--ServerApp.root_dir={self.root_dir}",
            # ServerApp.token is a deprecated alias of this one.
            f"--IdentityProvider.token={self.token}",
            "--no-browser",
            "--allow-root",
            *self.extra_args,
        ]
        await self._spawn_logged(
            "-c",
            launch_code("jupyter_server.serverapp:main"),
            *argv,
            cwd=self.root_dir,
            env=self._env(),
            # Its own process group, so kernels it may start die with it.
            start_new_session=True,
        )

    async def _ready(self) -> bool:
        # Short per-request timeout: whoever else holds the port may accept
        # connections and never answer.
        try:
            resp = await self.request("GET", "api/status", timeout=1)
        except httpx.TransportError:
            return False  # not listening yet
        if resp.status_code != 200:
            raise JupyterError(
                f"GET /api/status: HTTP {resp.status_code}, "
                f"another server on port {self.port}?\n" + self.log()
            )
        return True

    async def kill(self, timeout: float = 10) -> None:
        """SIGKILL the server's process group (it and any kernels) and reap it.

        Nothing of a test server is worth a graceful shutdown: its root,
        runtime and config directories are thrown away with ``workdir``.
        """
        proc = self.proc
        if proc is None:
            return
        if proc.returncode is None:
            # The group id is the server's PID (start_new_session). Signal the
            # group only while the leader is unreaped, so the id is still ours.
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                proc.kill()
        try:
            async with asyncio.timeout(scaled(timeout)):
                await proc.wait()
        except TimeoutError:
            raise JupyterError(f"jupyter server {proc.pid} did not die") from None

    # --- API -------------------------------------------------------------------

    async def request(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        headers: dict[str, str] | None = None,
        expect: int | tuple[int, ...] | None = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        """``method {url}{path}`` with ``Authorization: token`` (default: ours).

        ``token=""`` sends no Authorization header. ``kwargs`` go to httpx
        (``json=``, ``params=``, ``content=``...); send a cookie in ``headers``.
        No cookie the server sets is kept.
        """
        auth = self.token if token is None else token
        sent = dict(headers or {})
        if auth:
            sent.setdefault("Authorization", f"token {auth}")
        if timeout is not None:
            kwargs["timeout"] = scaled(timeout)
        resp = await self.client.request(
            method, self.url + path.lstrip("/"), headers=sent, **kwargs
        )
        return self.expect(resp, expect, f"{method} /{path.lstrip('/')}")

    @property
    def cookie_name(self) -> str:
        """The login cookie's name for requests to ``url`` (Host 127.0.0.1:port)."""
        return f"username-127-0-0-1-{self.port}"

    async def login_cookie(self) -> str:
        """Sign in on the login page with the token, as a browser does.

        Returns a ``Cookie`` header value holding the login cookie only.
        """
        async with httpx.AsyncClient(
            trust_env=False, timeout=scaled(10), follow_redirects=False
        ) as browser:
            page = await browser.get(self.url + "login")
            if page.status_code != 200:
                raise JupyterError(f"GET /login: HTTP {page.status_code}")
            xsrf = browser.cookies.get("_xsrf")
            if xsrf is None:
                raise JupyterError("GET /login set no _xsrf cookie")
            signed_in = await browser.post(
                self.url + "login", data={"password": self.token, "_xsrf": xsrf}
            )
            if signed_in.status_code != 302:
                raise JupyterError(
                    f"POST /login: HTTP {signed_in.status_code}:\n" + self.log()
                )
            value = signed_in.cookies.get(self.cookie_name)
            if value is None:
                raise JupyterError(
                    f"POST /login set no {self.cookie_name} cookie: "
                    f"{signed_in.headers.get_list('set-cookie')}"
                )
            return f"{self.cookie_name}={value}"


@contextlib.asynccontextmanager
async def running_jupyter(
    workdir: Path,
    *,
    config: str = "",
    args: Iterable[str] = (),
    extensions: Iterable[str] = (),
    timeout: float = 30,
) -> AsyncIterator[JupyterServer]:
    """A started :class:`JupyterServer` keeping its files in ``workdir``."""
    server = JupyterServer(workdir, config=config, args=args, extensions=extensions)
    try:
        await server.start(timeout)
        yield server
    finally:
        await server.stop()


def collaborating_jupyter(
    workdir: Path,
) -> contextlib.AbstractAsyncContextManager[JupyterServer]:
    """A Jupyter server with file ids and jupyter_server_ydoc: the reference
    implementation, and the one that hands out file ids and session ids."""
    return running_jupyter(
        workdir,
        extensions=["jupyter_server_fileid", "jupyter_server_ydoc"],
        # Deleted files go away, not into a trash under $HOME.
        args=["--FileContentsManager.delete_to_trash=False"],
    )


def file_args(
    jupyter: JupyterServer, *, save_delay: float, poll_interval: float = 1.0
) -> list[str]:
    """``ysyncd serve`` options binding Jupyter rooms to ``jupyter``'s files."""
    return [
        "--jupyter-files",
        "fs",
        "--fs-root",
        str(jupyter.root_dir),
        "--jupyter-url",
        jupyter.url,
        "--jupyter-token",
        jupyter.token,
        "--save-delay",
        str(save_delay),
        "--poll-interval",
        str(poll_interval),
    ]


def viewer_config(viewer_token: str, guest: tuple[str, Path] | None = None) -> str:
    """Jupyter config text adding a read-only user: ``viewer_token`` signs in
    as "viewer", who may only read; the server's own token works as usual.

    ``guest``, a token and a JSON file, adds "guest", whose actions on
    contents are listed in that file (e.g. ``["read"]``), read at each check,
    so a test can take them away while the guest is connected.
    """
    guest_token, guest_file = guest if guest is not None else ("", Path())
    return f"""\
import json

from jupyter_server.auth.authorizer import Authorizer
from jupyter_server.auth.identity import PasswordIdentityProvider, User

GUEST_TOKEN, GUEST_FILE = {guest_token!r}, {str(guest_file)!r}


class ViewerTokenIdentity(PasswordIdentityProvider):
    async def get_user_token(self, handler):
        token = self.get_token(handler)
        if token == {viewer_token!r}:
            return User(username="viewer")
        if GUEST_TOKEN and token == GUEST_TOKEN:
            return User(username="guest")
        return await super().get_user_token(handler)


class ViewerOnlyReads(Authorizer):
    def is_authorized(self, handler, user, action, resource):
        if user.username == "guest":
            with open(GUEST_FILE) as f:
                return action in json.load(f)
        return user.username != "viewer" or action == "read"


c.ServerApp.identity_provider_class = ViewerTokenIdentity
c.ServerApp.authorizer_class = ViewerOnlyReads
"""
