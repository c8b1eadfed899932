"""Scaling out: 2 ysyncd nodes against 1, on PostgreSQL, on the same loads.

Two cases, each run against two configurations (see :mod:`benchmarks.cluster`):

* ``ysyncd-pg``: one node on the run's PostgreSQL, no backplane;
* ``ysyncd-pg-2``: two nodes on it, sharing rooms through the run's Redis.

The loads are the fanout scenario's many-room case (100 rooms x 2 clients at
2 Hz, a room's two clients on different nodes, so every delivery to a peer
crosses from one node to the other through PostgreSQL's commit and Redis),
and the throughput scenario's (senders on node 1, receivers on node 2): the
updates per second one node takes while the other relays them. The
measurements are those scenarios' own; the cluster adds the CPU of PostgreSQL
and Redis (their process trees), of each node, and the nodes' commit and
backplane counters (``/metrics``). The SQLite ysyncd and the Node server come
from those scenarios' runs of the same load (their ``reference`` case, which
:func:`benchmarks.scenarios.build_cases` adds to the run when it is missing).

:func:`closing_note` turns the medians into the overhead per update of the
second node and a cost model for N nodes on machines of their own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

from benchmarks.cluster import ClusterSpec
from benchmarks.scenarios.base import Case, Metric, part_metrics
from benchmarks.scenarios.fanout import FanoutCase
from benchmarks.scenarios.throughput import ThroughputCase
from benchmarks.servers import ServerSpec

__all__ = [
    "CLUSTER_SPECS",
    "ClusterFanoutCase",
    "ClusterThroughputCase",
    "closing_note",
]

ONE, TWO = ClusterSpec(1), ClusterSpec(2)
CLUSTER_SPECS = (ONE, TWO)
#: Medians of one case: metric key -> column -> value.
Medians = Mapping[str, Mapping[str, float | None]]

_CLUSTER_ONLY = (
    Metric("postgres_us_per_commit", "PostgreSQL CPU per commit", "µs"),
    Metric("redis_messages_per_update", "Redis messages per update", ""),
    Metric("redis_us_per_message", "Redis CPU per message", "µs"),
)


def _cluster_servers(chosen: Sequence[ServerSpec]) -> list[ServerSpec]:
    # The cluster's configurations are ysyncd's: run them with ysyncd.
    return list(CLUSTER_SPECS) if any(s.name == "ysyncd" for s in chosen) else []


@dataclass(frozen=True)
class ClusterFanoutCase(FanoutCase):
    """The fanout load, a room's clients spread over the nodes."""

    scenario: ClassVar[str] = "cluster"
    ratio: ClassVar[tuple[str, str]] = ("ysyncd-pg-2", "ysyncd-pg")
    metrics: ClassVar[tuple[Metric, ...]] = (
        Metric("latency_p50", "delivery latency p50 (2 nodes: across)", "ms"),
        Metric("latency_p99", "delivery latency p99 (2 nodes: across)", "ms"),
        Metric("deliveries_per_s", "deliveries per second", "1/s", True),
        Metric("cpu_ms_per_1k", "server CPU per 1,000 deliveries", "ms"),
        *part_metrics(("postgres", "redis")),
        *_CLUSTER_ONLY,
        Metric("server_cpu_pct", "server CPU", "% of a core"),
        Metric("loadgen_cpu_pct", "load generator CPU", "% of a core"),
    )

    @property
    def name(self) -> str:
        return f"{super().name}, a room's clients on different nodes"

    def servers(self, chosen: Sequence[ServerSpec]) -> list[ServerSpec]:
        return _cluster_servers(chosen)

    @property
    def reference(self) -> Case:
        return FanoutCase(
            self.rooms, self.clients, self.rate_hz, self.warmup_s, self.window_s
        )


@dataclass(frozen=True)
class ClusterThroughputCase(ThroughputCase):
    """The throughput load: senders on node 1, receivers on node 2."""

    #: The throughput scenario's window (this case's may be shorter).
    reference_window_s: float = 10.0

    scenario: ClassVar[str] = "cluster"
    ratio: ClassVar[tuple[str, str]] = ("ysyncd-pg-2", "ysyncd-pg")
    metrics: ClassVar[tuple[Metric, ...]] = (
        Metric("updates_per_s", "updates per second (node 1 takes)", "1/s", True),
        Metric("relayed_per_s", "updates per second a receiver got", "1/s", True),
        *part_metrics(("node1", "node2", "postgres", "redis")),
        *_CLUSTER_ONLY,
        Metric("echo_p50", "echo latency p50", "ms"),
        Metric("echo_p99", "echo latency p99", "ms"),
        Metric("server_cpu_pct", "server CPU", "% of a core"),
        Metric("loadgen_cpu_pct", "load generator CPU", "% of a core"),
    )

    @property
    def name(self) -> str:
        return f"{super().name}; senders on node 1, receivers on node 2"

    def servers(self, chosen: Sequence[ServerSpec]) -> list[ServerSpec]:
        return _cluster_servers(chosen)

    @property
    def reference(self) -> Case:
        return ThroughputCase(
            self.senders,
            self.receivers,
            self.window,
            self.warmup_s,
            self.reference_window_s,
            self.plan_size,
        )


# --- the closing note -----------------------------------------------------------


def _get(medians: Medians, key: str, column: str) -> float | None:
    return medians.get(key, {}).get(column)


def _us(value: float) -> str:
    return f"{value:,.0f} µs" if abs(value) >= 100 else f"{value:.1f} µs"


def _rate(value: float) -> str:
    return f"{value:,.0f}/s"


def _commit_split(pg_commit: float, batch: float, throughput: Medians | None) -> str:
    """PostgreSQL's cost per commit, split into a fixed part and a part per
    row, from the many-room load's small batches and throughput's big ones."""
    if throughput is None:
        return ""
    big = _get(throughput, "postgres_us_per_commit", TWO.name)
    big_batch = _get(throughput, "updates_per_commit", TWO.name)
    if big is None or big_batch is None or big_batch <= 2 * batch:
        return ""
    per_row = (big - pg_commit) / (big_batch - batch)
    fixed = pg_commit - batch * per_row
    return (
        f" (with {big_batch:.0f} updates per commit, at saturation, {_us(big)}:"
        f" about {_us(fixed)} per commit + {_us(per_row)} per update)"
    )


#: The cluster sizes the cost model predicts for.
MODEL_NODES = (1, 2, 4, 8, 16, 32)
#: The cluster-wide rate at which the model gives each part's CPU.
MODEL_RATE = 1_000


def closing_note(fanout: Medians | None, throughput: Medians | None) -> list[str]:
    """What two nodes cost over one, and what N nodes on their own machines
    would take, from the cluster cases' medians (markdown lines)."""
    if fanout is None:
        return []
    c1 = _get(fanout, "cpu_us_per_update", ONE.name)
    c2 = _get(fanout, "cpu_us_per_update", TWO.name)
    if c1 is None or c2 is None:
        return []
    pg1 = _get(fanout, "postgres_us_per_update", ONE.name) or 0.0
    pg2 = _get(fanout, "postgres_us_per_update", TWO.name) or 0.0
    redis = _get(fanout, "redis_us_per_update", TWO.name) or 0.0
    o = c2 - c1
    lines = [
        "## Cluster: overhead and cost model",
        "",
        (
            "Both nodes, PostgreSQL, Redis and the load generator share this"
            " machine's cores, so the latency and throughput of 2 nodes above"
            " include their contention; their CPU per update much less so."
        ),
        "",
        "Measured on the many-room load (medians, per update: µs of CPU):",
        "",
        (
            f"- ysyncd: 1 node {_us(c1)}, 2 nodes {_us(c2)} (both together): the"
            f" second node costs **{_us(o)} per update** (publish, receive from"
            " Redis, apply, relay to the peer)."
        ),
        (
            f"- With Redis ({_us(redis)}): **{_us(o + redis)} per update**."
            f" PostgreSQL: {_us(pg1)} with 1 node, {_us(pg2)} with 2."
        ),
    ]
    if throughput is not None:
        one = _get(throughput, "updates_per_s", ONE.name)
        two = _get(throughput, "updates_per_s", TWO.name)
        n1 = _get(throughput, "node1_us_per_update", TWO.name)
        n2 = _get(throughput, "node2_us_per_update", TWO.name)
        if one is not None and two is not None:
            split = "."
            if n1 is not None and n2 is not None:
                split = f" (node 1 {_us(n1)}, node 2 {_us(n2)} per update)."
            lines.append(
                f"- One room at saturation: one node on PostgreSQL takes"
                f" {_rate(one)}; node 1 of 2 takes {_rate(two)} while node 2"
                f" relays them{split}"
            )
    pg_commit = _get(fanout, "postgres_us_per_commit", TWO.name)
    batch = _get(fanout, "updates_per_commit", TWO.name)
    if pg_commit is None or batch is None or not redis:
        return lines
    rate = f"{MODEL_RATE:,}"
    lines += [
        "",
        (
            "Cost model for N nodes, each on a machine of its own, with U updates"
            " per second in all and rooms like these (2 clients, on k = min(N, 2)"
            " nodes), the clients spread evenly:"
        ),
        "",
        (
            "- a node takes its own clients' updates, U/N, and relays the other"
            " nodes' updates to its clients, U(k-1)/N: its CPU is"
            f" U/N x (c1 + (k-1) o), with c1 = {_us(c1)} (an update taken,"
            f" committed and delivered by one node) and o = {_us(o)};"
        ),
        (
            "- PostgreSQL: one commit round trip per batch per node: U/b x p, with"
            f" b = {batch:.2f} updates per commit here and p = {_us(pg_commit)} per"
            f" commit{_commit_split(pg_commit, batch, throughput)};"
        ),
        (
            "- Redis: one PUBLISH per commit per room, and its fan-out to the k"
            f" subscribed nodes: U x r, with r = {_us(redis)} per update for k = 2"
            " (for bigger rooms on more nodes, r grows as 1 + k)."
        ),
        "",
        (
            f"At {rate} updates/s in all, and where each part saturates one core"
            " (Redis is single-threaded; PostgreSQL's fsync waits are not CPU):"
        ),
        "",
        (
            f"| N | k | each node at {rate}/s | PostgreSQL at {rate}/s"
            f" | Redis at {rate}/s | predicted ceiling, updates/s |"
        ),
        "| --- | --- | --- | --- | --- | --- |",
    ]
    pg_per_update = pg_commit / batch
    for n in MODEL_NODES:
        k = min(n, 2)
        node = (c1 + (k - 1) * o) / n
        limits = [(1e6 / node, "nodes"), (1e6 / pg_per_update, "PostgreSQL")]
        if n > 1:
            limits.append((1e6 / redis, "Redis"))
        ceiling, limit = min(limits)
        lines.append(
            f"| {n} | {k} | {node * MODEL_RATE / 1e4:.1f} % |"
            f" {pg_per_update * MODEL_RATE / 1e4:.1f} % |"
            f" {f'{redis * MODEL_RATE / 1e4:.1f} %' if n > 1 else '—'} |"
            f" {_rate(ceiling)} ({limit}) |"
        )
    lines += [
        "",
        (
            "These per-update costs come from a light load (2 Hz per client, small"
            " batches); at saturation batches grow and an update costs less (see"
            " the throughput rows), so the ceilings are conservative."
        ),
    ]
    return lines
