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
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx

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


# ``python -m jupyterhub``, minus ~2 s of start-up: jupyter_events imports
# jsonschema's format checkers, and the "iri" checker's rfc3987_syntax module
# builds an Earley parser at import. jsonschema skips a checker whose module
# fails to import, and the hub never validates an IRI, so block that import.
_LAUNCH = (
    "import sys; sys.modules['rfc3987_syntax'] = None; "
    "from jupyterhub.app import main; main()"
)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class HubError(AssertionError):
    """The hub failed to start, or an API call returned an unexpected status."""


class _PortTaken(HubError):
    """Someone bound the chosen port before the hub did."""


class Hub:
    """One JupyterHub subprocess plus API helpers that use the service token."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.config_path = workdir / "jupyterhub_config.py"
        self.log_path = workdir / "jupyterhub.log"
        self.service_token = secrets.token_hex(32)
        self.port = 0
        self.startup_seconds = 0.0
        self.proc: asyncio.subprocess.Process | None = None
        self._client: httpx.AsyncClient | None = None
        # Where the current start attempt's output begins in the shared log.
        self._log_start = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.url}/hub/api"

    def log(self, *, this_attempt: bool = False) -> str:
        """The hub's output so far (all start attempts), for failure messages."""
        try:
            with self.log_path.open("rb") as f:
                f.seek(self._log_start if this_attempt else 0)
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    # --- lifecycle -------------------------------------------------------------

    async def start(self, timeout: float = 30, attempts: int = 3) -> None:
        """Start the hub and wait until its API answers.

        The port is chosen before the hub binds it, so another process can take
        it in between; on "address in use" try again on a new port.
        """
        started = time.monotonic()
        # trust_env=False: an HTTP(S)_PROXY in the environment must not see
        # loopback requests.
        self._client = httpx.AsyncClient(trust_env=False, timeout=scaled(10))
        for attempt in range(1, attempts + 1):
            self.port = _free_port()
            self._write_config()
            await self._spawn()
            try:
                await self._wait_ready(timeout)
            except _PortTaken:
                await self._kill()
                if attempt < attempts:
                    continue
                raise
            except HubError:
                await self._kill()
                raise
            self.startup_seconds = time.monotonic() - started
            return

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

    async def _spawn(self) -> None:
        # Drop JUPYTERHUB_* from the environment: when the tests themselves run
        # under a hub, those variables describe that other hub.
        env = {k: v for k, v in os.environ.items() if not k.startswith("JUPYTERHUB_")}
        pythonpath = [str(REPO_ROOT), env.get("PYTHONPATH", "")]
        env["PYTHONPATH"] = os.pathsep.join(p for p in pythonpath if p)
        env["PYTHONUNBUFFERED"] = "1"
        with self.log_path.open("ab") as log:
            self._log_start = log.tell()
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                _LAUNCH,
                "-f",
                str(self.config_path),
                cwd=self.workdir,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
            )

    async def _wait_ready(self, timeout: float) -> None:
        assert self.proc is not None and self._client is not None
        try:
            async with asyncio.timeout(scaled(timeout)):
                while True:
                    # Checked before the exit status: a hub that failed to bind
                    # exits with 1, and that case is worth another attempt.
                    if "Failed to bind hub" in self.log(this_attempt=True):
                        raise _PortTaken(f"port {self.port} taken:\n" + self.log())
                    if self.proc.returncode is not None:
                        raise HubError(
                            f"jupyterhub exited with {self.proc.returncode}:\n"
                            + self.log()
                        )
                    # Short per-request timeout: whoever else holds the port
                    # may accept connections and never answer.
                    try:
                        resp = await self._client.get(
                            f"{self.api_url}/", timeout=scaled(1)
                        )
                    except httpx.TransportError:
                        resp = None  # not listening yet
                    if resp is not None and resp.status_code == 200:
                        return
                    # Nothing to await: the hub gives no readiness signal but this.
                    await asyncio.sleep(0.05)
        except TimeoutError:
            raise HubError(
                f"jupyterhub not ready after {scaled(timeout)}s:\n" + self.log()
            ) from None

    async def _kill(self) -> None:
        # Memory database: nothing to shut down gracefully, so SIGKILL the PID.
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            async with asyncio.timeout(scaled(10)):
                await self.proc.wait()

    async def stop(self) -> None:
        try:
            await self._kill()
        finally:
            if self._client is not None:
                await self._client.aclose()
                self._client = None

    # --- raw API ---------------------------------------------------------------

    async def request(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        json: Any = None,
        expect: int | tuple[int, ...] | None = None,
    ) -> httpx.Response:
        """Call ``{api_url}{path}`` with ``token`` (default: the service token)."""
        assert self._client is not None, "hub not started"
        auth = self.service_token if token is None else token
        resp = await self._client.request(
            method,
            self.api_url + path,
            json=json,
            headers={"Authorization": f"token {auth}"},
        )
        wanted = (expect,) if isinstance(expect, int) else expect
        if wanted is not None and resp.status_code not in wanted:
            raise HubError(
                f"{method} {path}: HTTP {resp.status_code}, expected {wanted}: "
                f"{resp.text}"
            )
        return resp

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
        self, owner: str, server_name: str, with_user: str
    ) -> dict[str, Any]:
        """Share ``owner/server_name`` ("" = default server) with ``with_user``."""
        resp = await self.request(
            "POST",
            f"/shares/{owner}/{server_name}",
            json={"user": with_user},
            expect=200,
        )
        model: dict[str, Any] = resp.json()
        return model

    async def unshare(self, owner: str, server_name: str, with_user: str) -> None:
        """Revoke every permission ``with_user`` had on the shared server."""
        await self.request(
            "PATCH",
            f"/shares/{owner}/{server_name}",
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
        path = f"/users/{owner}/servers/{name}" if name else f"/users/{owner}/server"
        await self.request("DELETE", path, expect=(202, 204))


@contextlib.asynccontextmanager
async def running_hub(workdir: Path, timeout: float = 30) -> AsyncIterator[Hub]:
    """A started ``Hub`` writing its config and log into ``workdir``."""
    hub = Hub(workdir)
    try:
        await hub.start(timeout)
        yield hub
    finally:
        await hub.stop()
