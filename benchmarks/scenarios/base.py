"""What every scenario shares: metrics, outcomes, cases, and the run context."""

from __future__ import annotations

import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from benchmarks.measure import Latencies, Usage
from benchmarks.servers import ServerSpec
from benchmarks.stats import percentile

__all__ = [
    "CONNECT_CONCURRENCY",
    "Case",
    "Metric",
    "Outcome",
    "RunContext",
    "latency_metrics",
    "latency_values",
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

    def fresh_dir(self, prefix: str) -> Path:
        return Path(tempfile.mkdtemp(prefix=f"{prefix}-", dir=self.workdir))

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

    @property
    @abstractmethod
    def name(self) -> str: ...

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
