"""Deployments: the server processes a case's clients talk to.

:func:`deploy` runs a :class:`~benchmarks.servers.ServerSpec` as:

* ``ysyncd`` (SQLite) or ``node``: one server process, as every scenario does;
* :class:`ClusterSpec` with one node, ``ysyncd-pg``: one ysyncd on PostgreSQL
  (``--db postgresql://...``), no backplane;
* :class:`ClusterSpec` with N nodes, ``ysyncd-pg-N``: N ysyncd processes on
  that database, sharing rooms through Redis (``--backplane redis://...``).

PostgreSQL and Redis are the run's own (:mod:`benchmarks.services`); each
cluster run gets a fresh database and Redis database number. A cluster's
CPU readings hold every node (``own`` and ``children``, as for one server),
and apart: each node (``node1``, ``node2``, ...), ``postgres`` and ``redis``
(with a backplane), read from one scan of ``/proc``. Its counters are the
nodes' ``/metrics`` counters, summed.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import httpx

from benchmarks import procstat
from benchmarks.measure import Counters
from benchmarks.servers import RunningServer, ServerSpec, YsyncdSpec
from benchmarks.services import Services

__all__ = ["CLUSTER_COUNTERS", "ClusterSpec", "Deployment", "deploy"]

#: The nodes' ``/metrics`` counters a cluster's windows read (without the
#: ``ysyncd_`` prefix and ``_total`` suffix): commits (one transaction, a
#: batch of updates), updates committed, backplane messages published and
#: received, remote updates applied.
CLUSTER_COUNTERS = (
    "commits",
    "updates_committed",
    "backplane_published",
    "backplane_received",
    "cluster_remote_updates",
)
_REDIS_DATABASES = 1023  # 1 to 1023 of the benchmark Redis's 1024


class ClusterSpec(YsyncdSpec):
    """ysyncd on the run's PostgreSQL: one node, or ``nodes`` with Redis."""

    def __init__(self, nodes: int) -> None:
        super().__init__()
        self.nodes = nodes
        self.name = "ysyncd-pg" if nodes == 1 else f"ysyncd-pg-{nodes}"


class Deployment:
    """The running server processes; ``servers[0]`` is node 1."""

    def __init__(
        self, servers: Sequence[RunningServer], parts: dict[str, int] | None = None
    ) -> None:
        self.servers = list(servers)
        #: Other processes whose CPU is read apart (name -> pid).
        self.parts = dict(parts or {})
        #: What a window reads at its ends: the nodes' counters (a cluster).
        self.counters: Counters | None = None if parts is None else self.read_counters

    @property
    def url(self) -> str:
        return self.servers[0].url

    def url_for(self, index: int) -> str:
        """The URL of node ``index + 1`` (round robin past the last)."""
        return self.servers[index % len(self.servers)].url

    def cpu_readings(self) -> dict[str, float]:
        """See :class:`benchmarks.measure.Measured`."""
        pids = [s.pid for s in self.servers] + list(self.parts.values())
        trees = procstat.tree_cpu_seconds(pids)
        nodes, others = trees[: len(self.servers)], trees[len(self.servers) :]
        readings = {
            "own": sum(own for own, _ in nodes),
            "children": sum(kids for _, kids in nodes),
        }
        if len(nodes) > 1:
            readings.update({f"node{i}": sum(t) for i, t in enumerate(nodes, 1)})
        readings.update(
            {name: sum(t) for name, t in zip(self.parts, others, strict=True)}
        )
        return readings

    async def read_counters(self) -> dict[str, float]:
        """The nodes' ``/metrics`` counters (:data:`CLUSTER_COUNTERS`), summed."""
        totals = dict.fromkeys(CLUSTER_COUNTERS, 0.0)
        async with httpx.AsyncClient(timeout=10) as client:
            for server in self.servers:
                url = f"http://127.0.0.1:{server.port}/metrics"
                text = (await client.get(url)).raise_for_status().text
                for line in text.splitlines():
                    name, _, value = line.partition(" ")
                    key = name.removeprefix("ysyncd_").removesuffix("_total")
                    if key in totals and name.endswith("_total"):
                        totals[key] += float(value)
        return totals

    def rss_bytes(self) -> int:
        return sum(s.rss_bytes() for s in self.servers)

    def check_alive(self) -> None:
        for server in self.servers:
            server.check_alive()


@contextlib.asynccontextmanager
async def deploy(
    spec: ServerSpec, services: Services, fresh_dir: Callable[[str], Path]
) -> AsyncIterator[Deployment]:
    """Run ``spec`` until the block exits (see the module's docstring)."""
    if not isinstance(spec, ClusterSpec):
        async with spec.start(fresh_dir(spec.name)) as server:
            yield Deployment([server])
        return
    postgres, redis = await services.start()
    number = services.next_run()
    database = f"bench_{number}"
    args = ["--db", await postgres.create_database(database)]
    parts = {"postgres": postgres.pid}
    if spec.nodes > 1:
        args += ["--backplane", redis.url(1 + number % _REDIS_DATABASES)]
        parts["redis"] = redis.pid
    try:
        async with contextlib.AsyncExitStack() as stack:
            servers = [
                await stack.enter_async_context(
                    spec.start(fresh_dir(f"{spec.name}-{i}"), args)
                )
                for i in range(1, spec.nodes + 1)
            ]
            yield Deployment(servers, parts)
    finally:
        await postgres.drop_database(database)
