"""The scenarios, and their sizes for a full run and for ``--quick``."""

from __future__ import annotations

from collections.abc import Sequence

from benchmarks.scenarios.awareness import AwarenessCase, CompactingAwarenessCase
from benchmarks.scenarios.base import Case, Metric, Outcome, RunContext
from benchmarks.scenarios.cluster import ClusterFanoutCase, ClusterThroughputCase
from benchmarks.scenarios.coldjoin import ColdJoinCase
from benchmarks.scenarios.fanout import FanoutCase
from benchmarks.scenarios.idle import IdleCase
from benchmarks.scenarios.massjoin import MassJoinCase
from benchmarks.scenarios.throughput import ThroughputCase

__all__ = ["SCENARIOS", "Case", "Metric", "Outcome", "RunContext", "build_cases"]

SCENARIOS = (
    "fanout",
    "throughput",
    "idle",
    "coldjoin",
    "massjoin",
    "awareness",
    "cluster",
)


def _fanout(quick: bool) -> list[Case]:
    warmup, window = (0.5, 2.0) if quick else (2.0, 10.0)
    return [
        FanoutCase(1, 50, 2.0, warmup, window),
        # 200 clients at 0.5 Hz: 100 updates/s, each to 200 receivers: 20k/s
        FanoutCase(1, 200, 0.5, warmup, window),
        FanoutCase(100, 2, 2.0, warmup, window),
    ]


def _throughput(quick: bool) -> list[Case]:
    if quick:
        return [ThroughputCase(2, 2, 64, 0.5, 2.0, plan_size=60_000)]
    return [ThroughputCase(2, 2, 64, 2.0, 10.0, plan_size=300_000)]


def _idle(quick: bool) -> list[Case]:
    if quick:
        return [
            IdleCase(500, 2.0, 16),
            IdleCase(500, 2.0, 16, empty=True),
            IdleCase(1_000, 1.0, 16, rounds=1),
        ]
    # The 5,000-room window falls between the servers' ping rounds (ysyncd pings
    # each peer every 20 s, Node every 30 s); the 10,000-room one is 30 s long,
    # so it holds one ping round of each at least. That case also checks the
    # memory target (under 1 GiB for ysyncd), and runs once per server because
    # connecting 10k clients takes a while.
    return [
        IdleCase(5_000, 5.0, 16),
        # Empty documents: what a room costs when nobody has typed in it.
        IdleCase(5_000, 5.0, 16, empty=True),
        IdleCase(10_000, 30.0, 16, rounds=1),
    ]


def _coldjoin(quick: bool) -> list[Case]:
    # Server CPU is read in 10 ms ticks: ten later joins make that 1 ms each.
    sizes, joins = ((2_000, 10_000), 3) if quick else ((20_000, 100_000), 11)
    return [ColdJoinCase(size, joins, ingest_window=256) for size in sizes]


def _massjoin(quick: bool) -> list[Case]:
    # A class opening the lecture notebook: y/hub publishes 19 s p50, 30 s
    # p99 and 6.5 GB for 150 joiners of a 20 MB document.
    return [MassJoinCase(2, 20)] if quick else [MassJoinCase(20, 150)]


def _awareness(quick: bool) -> list[Case]:
    warmup, window = (0.5, 2.0) if quick else (2.0, 10.0)
    # The background room goes quiet just before the awareness load starts, and
    # ysyncd compacts it 2 s later, about 1 s into the window. 12,000 diffs
    # (29 MiB) took ysyncd 10-14 s to compact on 2 cores when it compacted in
    # a thread: the 20 s window holds all of it. Quick mode only checks that
    # the case works (its compaction takes a fraction of a second).
    if quick:
        busy = CompactingAwarenessCase(20, 10.0, 0.5, 2.5, history_size=1_500)
    else:
        busy = CompactingAwarenessCase(20, 10.0, 1.0, 20.0, history_size=12_000)
    return [AwarenessCase(20, 10.0, warmup, window), busy]


def _cluster(quick: bool) -> list[Case]:
    # The loads of fanout's many-room case and of throughput, with the same
    # sizes, so that those cases' runs are this table's SQLite and Node
    # columns. The throughput window is shorter than throughput's own (5 s, not
    # 10), to keep the cluster's 12 runs within 3 minutes.
    if quick:
        return [
            ClusterFanoutCase(100, 2, 2.0, 0.5, 2.0),
            ClusterThroughputCase(
                2, 2, 64, 0.5, 2.0, plan_size=60_000, reference_window_s=2.0
            ),
        ]
    return [
        ClusterFanoutCase(100, 2, 2.0, 2.0, 10.0),
        ClusterThroughputCase(
            2, 2, 64, 2.0, 5.0, plan_size=300_000, reference_window_s=10.0
        ),
    ]


_BUILDERS = {
    "fanout": _fanout,
    "throughput": _throughput,
    "idle": _idle,
    "coldjoin": _coldjoin,
    "massjoin": _massjoin,
    "awareness": _awareness,
    "cluster": _cluster,
}


def build_cases(names: Sequence[str], *, quick: bool) -> list[Case]:
    """The cases of the named scenarios, in the order given.

    A case's ``reference`` (the same load in another scenario) runs too: when
    its scenario is not among ``names``, it is added just before the case.
    """
    selected = [case for name in names for case in _BUILDERS[name](quick)]
    cases: list[Case] = []
    for case in selected:
        reference = case.reference
        if reference is not None and reference not in [*selected, *cases]:
            cases.append(reference)
        cases.append(case)
    return cases
