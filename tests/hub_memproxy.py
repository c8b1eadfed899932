"""JupyterHub plug-ins for tests, imported by the hub subprocess only (see hub.py).

``MemoryProxy`` replaces configurable-http-proxy (a Node program) with a dict, so
the hub runs without npm and tests talk to the hub's own port directly.

``InProcessSpawner`` "spawns" a single-user server as a tiny HTTP listener inside
the hub process: it answers the hub's readiness probe at once, so a start takes
milliseconds instead of the seconds a real ``jupyterhub-singleuser`` needs. It
serves nothing else; tests that need a real Jupyter server must configure one.
"""

from __future__ import annotations

import socket
from typing import Any

import jupyterhub
from jupyterhub.proxy import Proxy
from jupyterhub.spawner import Spawner
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application, RequestHandler


class MemoryProxy(Proxy):
    """Routes live in memory; nothing listens, nothing forwards."""

    # The hub must not try to launch or stop a proxy process.
    should_start = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._routes: dict[str, dict[str, Any]] = {}

    async def add_route(
        self, routespec: str, target: str, data: dict[str, Any]
    ) -> None:
        self._routes[routespec] = {
            "routespec": routespec,
            "target": target,
            "data": data,
        }

    async def delete_route(self, routespec: str) -> None:
        self._routes.pop(routespec, None)

    async def get_all_routes(self) -> dict[str, dict[str, Any]]:
        return dict(self._routes)


class _Ok(RequestHandler):
    def get(self, *args: str) -> None:
        # Without this header the hub logs a warning about an ancient server.
        self.set_header("X-JupyterHub-Version", jupyterhub.__version__)
        self.write("ok")


class InProcessSpawner(Spawner):
    """A "server" that is just an HTTP 200 listener on a free loopback port."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._http: HTTPServer | None = None

    async def start(self) -> tuple[str, int]:
        sockets = bind_sockets(0, "127.0.0.1", family=socket.AF_INET)
        self._http = HTTPServer(Application([(r"/(.*)", _Ok)]))
        self._http.add_sockets(sockets)
        return "127.0.0.1", sockets[0].getsockname()[1]

    async def stop(self, now: bool = False) -> None:
        if self._http is not None:
            self._http.stop()
            self._http = None

    async def poll(self) -> int | None:
        # None means "running"; 0 means "not running, exit status unknown".
        return None if self._http is not None else 0
