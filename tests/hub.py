"""A real JupyterHub (6.x) in a subprocess, on a free loopback port, for auth tests.

No configurable-http-proxy: ``tests.hub_memproxy.MemoryProxy`` keeps routes in a
dict and tests call the hub's own port. The database is SQLite in memory, so every
user, token and share dies with the process.

Users ``alice`` and ``bob`` exist from the start, and so does ``admin``, a hub
admin, whose role holds unfiltered ``access:servers``. Only an admin may make an
admin through the API, so that one comes from the config. A service ``ysyncd``
holds ``service_token`` and a role with test-only powers (create users and tokens
for anyone, share and create servers), which the helpers below use.

Sharing and named-server scopes need no running server, only the server's row in
the hub database: the default server's row exists as soon as the user does, and
``add_named_server`` creates a named one without starting it (PUT, JupyterHub 6).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx

from tests.subprocs import LoggedServer, launch_code
from tests.timing import scaled

REPO_ROOT = Path(__file__).resolve().parents[1]
SERVICE_NAME = "ysyncd"
USERS = ("alice", "bob")
ADMIN = "admin"
# Powers of the test service. A real deployment would give ysyncd far less
# (nothing at all is needed to validate a user's token via GET /hub/api/user).
SERVICE_SCOPES = [
    "admin:users",
    "admin:servers",
    "tokens",
    "read:users",
    "shares",
]

_CONFIG = """\
# Written by tests/hub.py for one test run.
c = get_config()  # noqa: F821
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = {port}
# The public side belongs to the (absent) proxy; keep it on loopback anyway.
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.proxy_class = "tests.hub_memproxy.MemoryProxy"
c.JupyterHub.spawner_class = "tests.hub_memproxy.InProcessSpawner"
c.JupyterHub.authenticator_class = "dummy"
c.Authenticator.allowed_users = {users!r}
c.Authenticator.admin_users = {admins!r}
c.JupyterHub.allow_named_servers = True
c.JupyterHub.db_url = "sqlite:///:memory:"
# Set here so the hub does not write a jupyterhub_cookie_secret file.
c.JupyterHub.cookie_secret = bytes.fromhex({cookie_secret!r})
c.JupyterHub.services = [{{"name": {service!r}, "api_token": {token!r}}}]
c.JupyterHub.load_roles = [
    {{"name": "ysyncd-test", "services": [{service!r}], "scopes": {scopes!r}}}
]
"""


class HubError(AssertionError):
    """The hub failed to start, or an API call returned an unexpected status."""


class Hub(LoggedServer):
    """One JupyterHub subprocess plus API helpers that use the service token."""

    name = "jupyterhub"
    error = HubError
    port_taken = "Failed to bind hub"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir / "jupyterhub.log")
        self.workdir = workdir
        self.config_path = workdir / "jupyterhub_config.py"
        self.service_token = secrets.token_hex(32)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.url}/hub/api"

    # --- lifecycle -------------------------------------------------------------

    async def start(self, timeout: float = 30, attempts: int = 3) -> None:
        """Start the hub and wait until its API answers.

        The port is chosen before the hub binds it, so another process can take
        it in between; on "address in use" try again on a new port.
        """
        # trust_env=False: an HTTP(S)_PROXY in the environment must not see
        # loopback requests.
        self._client = httpx.AsyncClient(trust_env=False, timeout=scaled(10))
        await self._start_on_free_port(timeout, attempts)

    def _write_config(self) -> None:
        self.config_path.write_text(
            _CONFIG.format(
                port=self.port,
                users=set(USERS),
                admins={ADMIN},
                cookie_secret=secrets.token_hex(32),
                service=SERVICE_NAME,
                token=self.service_token,
                scopes=SERVICE_SCOPES,
            )
        )

    def _environment(self) -> dict[str, str]:
        """The hub's environment: ours, without JUPYTERHUB_* (when the tests
        themselves run under a hub, those describe that other hub)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("JUPYTERHUB_")}
        pythonpath = [str(REPO_ROOT), env.get("PYTHONPATH", "")]
        env["PYTHONPATH"] = os.pathsep.join(p for p in pythonpath if p)
        env["PYTHONUNBUFFERED"] = "1"
        return env

    async def _spawn(self) -> None:
        self._write_config()
        await self._spawn_logged(
            "-c",
            launch_code("jupyterhub.app:main"),
            "-f",
            str(self.config_path),
            cwd=self.workdir,
            env=self._environment(),
        )

    async def _ready(self) -> bool:
        assert self._client is not None
        # Short per-request timeout: whoever else holds the port may accept
        # connections and never answer.
        try:
            resp = await self._client.get(f"{self.api_url}/", timeout=scaled(1))
        except httpx.TransportError:
            return False  # not listening yet
        return resp.status_code == 200

    async def kill(self) -> None:
        # Memory database: nothing to shut down gracefully, so SIGKILL the PID.
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            async with asyncio.timeout(scaled(10)):
                await self.proc.wait()

    # --- raw API ---------------------------------------------------------------

    async def request(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        json: Any = None,
        expect: int | tuple[int, ...] | None = None,
        timeout: float = 10,
    ) -> httpx.Response:
        """Call ``{api_url}{path}`` with ``token`` (default: the service token)."""
        assert self._client is not None, "hub not started"
        auth = self.service_token if token is None else token
        resp = await self._client.request(
            method,
            self.api_url + path,
            json=json,
            headers={"Authorization": f"token {auth}"},
            timeout=scaled(timeout),
        )
        return self.expect(resp, expect, f"{method} {path}")

    async def whoami(self, token: str | None) -> httpx.Response:
        """``GET /user`` as the holder of ``token``: what an auth provider sees.

        ``token=None`` sends no Authorization header at all.
        """
        assert self._client is not None, "hub not started"
        headers = {} if token is None else {"Authorization": f"token {token}"}
        return await self._client.get(f"{self.api_url}/user", headers=headers)

    # --- helpers ---------------------------------------------------------------

    async def create_user(self, name: str) -> dict[str, Any]:
        resp = await self.request("POST", f"/users/{name}", expect=201)
        model: dict[str, Any] = resp.json()
        return model

    async def new_token(
        self,
        user: str,
        scopes: list[str] | None = None,
        *,
        expires_in: int | None = None,
    ) -> tuple[str, str]:
        """Issue a token for ``user``; return ``(token, token_id)``.

        ``scopes=None`` gives the hub's default (role ``token``, i.e. everything
        the user may do, evaluated at each request, so later shares show up).
        Scopes the user does not hold are refused with 400.
        """
        body: dict[str, Any] = {"note": "ysyncd tests"}
        if scopes is not None:
            body["scopes"] = scopes
        if expires_in is not None:
            body["expires_in"] = expires_in
        resp = await self.request(
            "POST", f"/users/{user}/tokens", json=body, expect=201
        )
        model = resp.json()
        return model["token"], model["id"]

    async def revoke_token(self, user: str, token_id: str) -> None:
        await self.request("DELETE", f"/users/{user}/tokens/{token_id}", expect=204)

    async def add_named_server(self, owner: str, name: str) -> dict[str, Any]:
        """Create a named server without starting it (JupyterHub >= 6)."""
        resp = await self.request(
            "PUT", f"/users/{owner}/servers/{name}", json={}, expect=201
        )
        model: dict[str, Any] = resp.json()
        return model

    async def share(
        self, owner: str, server_name: str, with_user: str, token: str | None = None
    ) -> dict[str, Any]:
        """Share ``owner/server_name`` ("" = default server) with ``with_user``,
        as the holder of ``token`` (default: the service)."""
        resp = await self.request(
            "POST",
            f"/shares/{owner}/{server_name}",
            token=token,
            json={"user": with_user},
            expect=200,
        )
        model: dict[str, Any] = resp.json()
        return model

    async def unshare(
        self, owner: str, server_name: str, with_user: str, token: str | None = None
    ) -> None:
        """Revoke every permission ``with_user`` had on the shared server."""
        await self.request(
            "PATCH",
            f"/shares/{owner}/{server_name}",
            token=token,
            json={"user": with_user},
            expect=200,
        )

    async def start_server(
        self, owner: str, name: str = "", timeout: float = 10
    ) -> dict[str, Any]:
        """Start a (fake, in-process) server and wait until the hub says ready."""
        path = f"/users/{owner}/servers/{name}" if name else f"/users/{owner}/server"
        await self.request("POST", path, json={}, expect=(201, 202))
        try:
            async with asyncio.timeout(scaled(timeout)):
                while True:
                    resp = await self.request(
                        "GET", f"/users/{owner}/servers/{name}", expect=200
                    )
                    model: dict[str, Any] = resp.json()
                    if model.get("ready"):
                        return model
                    await asyncio.sleep(0.02)  # no event to await
        except TimeoutError:
            raise HubError(f"{owner}/{name} not ready:\n" + self.log()) from None

    async def stop_server(self, owner: str, name: str = "") -> None:
        """Stop a server; the hub answers 202 after slow_stop_timeout (10 s)
        if it has not stopped by then, so wait longer than that."""
        path = f"/users/{owner}/servers/{name}" if name else f"/users/{owner}/server"
        await self.request("DELETE", path, expect=(202, 204), timeout=30)


@contextlib.asynccontextmanager
async def running_hub(workdir: Path, timeout: float = 30) -> AsyncIterator[Hub]:
    """A started ``Hub`` writing its config and log into ``workdir``."""
    hub = Hub(workdir)
    try:
        await hub.start(timeout)
        yield hub
    finally:
        await hub.stop()
