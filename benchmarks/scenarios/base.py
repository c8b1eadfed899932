"""What every scenario shares: metrics, outcomes, cases, and the run context."""

from __future__ import annotations

import contextlib
import tempfile
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from benchmarks.cluster import Deployment, deploy
from benchmarks.measure import Latencies, Usage
from benchmarks.servers import ServerSpec
from benchmarks.services import Services
from benchmarks.stats import percentile

__all__ = [
    "CONNECT_CONCURRENCY",
    "Case",
    "Metric",
    "Outcome",
    "RunContext",
    "latency_metrics",
    "latency_values",
    "part_metrics",
    "part_values",
    "usage_metrics",
    "usage_values",
]

#: Connections opened at once while a scenario sets up.
CONNECT_CONCURRENCY = 64
#: How long the servers get to relay everything sent before the window closed.
DRAIN_TIMEOUT_S = 60.0


@dataclass(frozen=True, slots=True)
class Metric:
    key: str
    label: str
    unit: str
    higher_is_better: bool = False


@dataclass(slots=True)
class Outcome:
    """One run of one case against one server."""

    values: dict[str, float] = field(default_factory=dict)
    #: Anything that makes the run invalid: not converged, closed, gave up.
    problems: list[str] = field(default_factory=list)
    #: Counts and sizes that explain the values (kept in results.json).
    info: dict[str, float | int | str] = field(default_factory=dict)

    @property
    def converged(self) -> bool:
        return not self.problems


@dataclass(frozen=True, slots=True)
class RunContext:
    """Where runs keep their files, and how they report progress."""

    workdir: Path
    log: Callable[[str], None]
    #: The run's PostgreSQL and Redis, started when a cluster case needs them.
    services: Services

    def fresh_dir(self, prefix: str) -> Path:
        return Path(tempfile.mkdtemp(prefix=f"{prefix}-", dir=self.workdir))

    @contextlib.asynccontextmanager
    async def deploy(self, spec: ServerSpec) -> AsyncIterator[Deployment]:
        """Run ``spec``, one server or a cluster, until the block exits."""
        async with deploy(spec, self.services, self.fresh_dir) as deployment:
            yield deployment

    def kept_dir(self, name: str) -> Path:
        """A directory that outlives one run (a prepared database)."""
        path = self.workdir / name
        path.mkdir(exist_ok=True)
        return path


class Case(ABC):
    """One measured configuration of a scenario (a row group in the table)."""

    scenario: ClassVar[str]
    metrics: ClassVar[tuple[Metric, ...]]
    #: Rounds to run regardless of --rounds (None: use --rounds).
    rounds: int | None = None
    timeout_s: float = 300.0

    #: The two columns whose ratio the table shows, when both ran.
    ratio: ClassVar[tuple[str, str]] = ("ysyncd", "node")
    #: Whether a server that keeps no document (the relay floor) can run it.
    stateless_ok: ClassVar[bool] = False

    @property
    @abstractmethod
    def name(self) -> str: ...

    def servers(self, chosen: Sequence[ServerSpec]) -> list[ServerSpec]:
        """What this case runs against, given the servers of ``--servers``:
        a server that keeps no document (the relay) only where the case
        needs none."""
        return [s for s in chosen if s.stateful or self.stateless_ok]

    @property
    def reference(self) -> Case | None:
        """Another case, with the same load, whose runs fill this case's
        table too (its columns come first)."""
        return None

    @abstractmethod
    async def run(self, spec: ServerSpec, ctx: RunContext) -> Outcome: ...


def latency_metrics(prefix: str, what: str) -> tuple[Metric, ...]:
    return (
        Metric(f"{prefix}_p50", f"{what} latency p50", "ms"),
        Metric(f"{prefix}_p99", f"{what} latency p99", "ms"),
        Metric(f"{prefix}_all_p50", f"{what} latency to all peers p50", "ms"),
        Metric(f"{prefix}_all_p99", f"{what} latency to all peers p99", "ms"),
    )


def latency_values(prefix: str, lat: Latencies, outcome: Outcome) -> None:
    if not lat.deliveries or not lat.all_peers:
        outcome.problems.append("no deliveries measured")
        return
    ms = [v / 1e6 for v in lat.deliveries]
    all_ms = [v / 1e6 for v in lat.all_peers]
    outcome.values.update(
        {
            f"{prefix}_p50": percentile(ms, 0.50),
            f"{prefix}_p99": percentile(ms, 0.99),
            f"{prefix}_all_p50": percentile(all_ms, 0.50),
            f"{prefix}_all_p99": percentile(all_ms, 0.99),
        }
    )
    outcome.info[f"{prefix}_samples"] = len(ms)
    if lat.missing:
        outcome.problems.append(f"{lat.missing} deliveries never arrived")


def usage_metrics(per: str) -> tuple[Metric, ...]:
    return (
        Metric("deliveries_per_s", "deliveries per second", "1/s", True),
        Metric("cpu_ms_per_1k", f"server CPU per 1,000 {per}", "ms"),
        Metric("server_cpu_pct", "server CPU", "% of a core"),
        Metric("loadgen_cpu_pct", "load generator CPU", "% of a core"),
    )


def usage_values(usage: Usage, deliveries: int, outcome: Outcome) -> None:
    outcome.values.update(
        deliveries_per_s=deliveries / usage.wall_s,
        server_cpu_pct=usage.server_cpu_pct,
        loadgen_cpu_pct=usage.loadgen_cpu_pct,
    )
    if deliveries:
        outcome.values["cpu_ms_per_1k"] = 1e6 * usage.server_cpu_s / deliveries
    outcome.info.update(
        window_s=usage.wall_s,
        deliveries=deliveries,
        server_cpu_s=usage.server_cpu_s,
        server_children_cpu_s=usage.children_cpu_s,
        loadgen_cpu_s=usage.loadgen_cpu_s,
    )


#: The parts of a cluster whose CPU is reported apart (see benchmarks.cluster).
PARTS = {
    "postgres": "PostgreSQL",
    "redis": "Redis",
    "node1": "node 1",
    "node2": "node 2",
}


def part_metrics(parts: Sequence[str]) -> tuple[Metric, ...]:
    """Server CPU per update, and that of each of ``parts`` (see :data:`PARTS`)."""
    return (
        Metric("cpu_us_per_update", "server CPU per update (all nodes)", "µs"),
        *(
            Metric(f"{p}_us_per_update", f"{PARTS[p]} CPU per update", "µs")
            for p in parts
        ),
        Metric("updates_per_commit", "updates per commit", "", True),
    )


def part_values(usage: Usage, updates: int, outcome: Outcome) -> None:
    """Server CPU per update and that of each part reported apart, and the
    counters read at the window's ends (into ``info``)."""
    if not updates:
        return
    outcome.values["cpu_us_per_update"] = 1e6 * usage.server_cpu_s / updates
    for part, cpu_s in usage.parts_cpu_s.items():
        outcome.values[f"{part}_us_per_update"] = 1e6 * cpu_s / updates
        outcome.info[f"{part}_cpu_s"] = cpu_s
    commits = usage.counts.get("commits", 0.0)
    if commits:
        committed = usage.counts.get("updates_committed", 0.0)
        outcome.values["updates_per_commit"] = committed / commits
    outcome.info.update({f"count_{k}": v for k, v in usage.counts.items()})
    outcome.info["updates_in_window"] = updates
    # A cluster's costs per commit and per backplane message (published, and
    # each delivery to a subscribed node).
    if commits and "postgres" in usage.parts_cpu_s:
        cpu_s = usage.parts_cpu_s["postgres"]
        outcome.values["postgres_us_per_commit"] = 1e6 * cpu_s / commits
    messages = usage.counts.get("backplane_published", 0.0)
    messages += usage.counts.get("backplane_received", 0.0)
    if messages:
        outcome.values["redis_messages_per_update"] = messages / updates
        if "redis" in usage.parts_cpu_s:
            cpu_s = usage.parts_cpu_s["redis"]
            outcome.values["redis_us_per_message"] = 1e6 * cpu_s / messages
