"""The live dashboard: ``/_ysyncd/`` and the state it polls.

- ``GET /_ysyncd/``: the page (``dashboard.html``, in the package: no CDN).
  It holds no data, so it is served to anyone; it asks for the admin token
  (or reads it from the URL's ``#token=`` fragment, which browsers never
  send), keeps it in the tab's sessionStorage, and polls:
- ``GET /_ysyncd/state`` (admin token): the rooms in memory with their
  peers, the counters commits per second are worked out from, commit and
  delivery latency percentiles over the latest commits, and the store's and
  backplane's health, as JSON.
"""

from __future__ import annotations

import json
import time
from importlib.resources import files
from typing import Any

from websockets.http11 import Request, Response

from ysyncd.api import is_admin
from ysyncd.health import Health
from ysyncd.rooms import RoomRegistry
from ysyncd.routes import respond
from ysyncd.stats import Stats

__all__ = ["DASHBOARD", "Dashboard"]

#: Where the dashboard lives.
DASHBOARD = "/_ysyncd/"
_STATE = "/_ysyncd/state"
#: Rooms listed, busiest first; the count covers all of them.
_ROOMS_SHOWN = 200


class Dashboard:
    """The dashboard's two routes; mixed into the server's application."""

    registry: RoomRegistry
    stats: Stats
    health: Health
    admin_token: bytes | None

    def _dashboard(self, request: Request, path: str) -> Response | None:
        """The response for ``path``, or None when it is not the dashboard's."""
        if path == DASHBOARD:
            page = files("ysyncd").joinpath("dashboard.html").read_bytes()
            return respond(200, "text/html; charset=utf-8", page)
        if path != _STATE:
            return None
        if not is_admin(self.admin_token, request):
            refusal = {"error": "the dashboard needs the admin token"}
            resp = respond(401, "application/json", json.dumps(refusal).encode())
            resp.headers["WWW-Authenticate"] = 'Bearer realm="ysyncd"'
            return resp
        body = json.dumps(self._state()).encode()
        resp = respond(200, "application/json", body)
        resp.headers["Cache-Control"] = "no-store"
        return resp

    def _state(self) -> dict[str, Any]:
        stats = self.stats
        rooms = sorted(
            ((name, len(room.peers)) for name, room in self.registry.rooms.items()),
            key=lambda item: (-item[1], item[0]),
        )
        counters = {name: read() for name, read in stats.counter_reads.items()}
        gauges = {name: read() for name, read in stats.gauges.items()}
        return {
            "time": time.time(),
            "rooms": [{"name": n, "peers": p} for n, p in rooms[:_ROOMS_SHOWN]],
            "room_count": len(rooms),
            "peers": sum(p for _, p in rooms),
            "connections": gauges.get("connections", 0),
            "commits": counters.get("commits", 0),
            "updates_committed": counters.get("updates_committed", 0),
            "commit_backlog": gauges.get("commit_backlog", 0),
            "commit_latency": _percentiles(stats.recent_commits),
            "delivery_time": _percentiles(stats.recent_deliveries),
            "health": self.health.parts(),
            "webhooks": dict(stats.webhooks),
            "limit_hits": sum(stats.limits.values()),
        }


def _percentiles(samples: Any) -> dict[str, float | None]:
    """p50, p90 and p99 of ``samples`` (seconds), or None with none."""
    ordered = sorted(samples)
    if not ordered:
        return {"p50": None, "p90": None, "p99": None, "samples": 0}
    last = len(ordered) - 1
    return {
        "p50": ordered[round(last * 0.5)],
        "p90": ordered[round(last * 0.9)],
        "p99": ordered[round(last * 0.99)],
        "samples": len(ordered),
    }
