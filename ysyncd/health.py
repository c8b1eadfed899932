"""Whether this node can keep its promises right now: what ``/healthz`` says.

A store that stopped answering is noticed even while nobody writes: it is
pinged every :data:`PING_SECONDS`. Commits that fail say so at once (the
committer), and so does a backplane that lost Redis.
"""

from __future__ import annotations

import logging

import anyio

from ysyncd.cluster import Cluster
from ysyncd.commits import Committer
from ysyncd.errors import StoreError

__all__ = ["PING_SECONDS", "Health"]

log = logging.getLogger("ysyncd.health")

PING_SECONDS = 2.0


class Health:
    """The store's and the backplane's state, for ``/healthz`` and ``/metrics``."""

    def __init__(self, committer: Committer, cluster: Cluster | None) -> None:
        self._committer = committer
        self._cluster = cluster
        self.store_up = True

    def problem(self) -> str | None:
        """Why this node cannot serve as it should, or None."""
        if not self._committer.healthy:
            return "store failing"
        if not self.store_up:
            return "store unreachable"
        backplane = self._cluster.backplane if self._cluster else None
        if backplane is not None and not backplane.healthy:
            return "backplane unreachable"
        return None

    def parts(self) -> dict[str, str]:
        """The store's and the backplane's state, each in a word."""
        store = "ok"
        if not self._committer.healthy:
            store = "failing"
        elif not self.store_up:
            store = "unreachable"
        backplane = self._cluster.backplane if self._cluster else None
        if backplane is None:
            plane = "none"
        else:
            plane = "ok" if backplane.healthy else "unreachable"
        return {"store": store, "backplane": plane}

    async def watch(self) -> None:
        """Ping the store forever (run it in the task group)."""
        store = self._committer.store
        while True:
            await anyio.sleep(PING_SECONDS)
            try:
                with anyio.fail_after(PING_SECONDS):
                    await store.ping()
            except (StoreError, TimeoutError) as exc:
                if self.store_up:
                    log.error("the store does not answer: %s", exc)
                self.store_up = False
                continue
            if not self.store_up:
                log.warning("the store answers again")
            self.store_up = True
