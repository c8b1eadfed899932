"""The benchmark suite runs end to end: both servers, every scenario, converged.

Speed is not asserted here (that is what the benchmark itself reports); this
only proves that ``python -m benchmarks`` works from the project's own files,
including installing its npm pieces, and that every run converges. The cluster
scenario runs where PostgreSQL and Redis are installed (always on CI).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.scenarios import build_cases
from benchmarks.scenarios.cluster import (
    ClusterFanoutCase,
    ClusterThroughputCase,
    closing_note,
)
from benchmarks.scenarios.fanout import FanoutCase
from benchmarks.scenarios.throughput import ThroughputCase
from benchmarks.services import missing_services

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_quick_benchmark_runs_both_servers_and_converges(tmp_path: Path) -> None:
    """``python -m benchmarks --quick`` exits 0 with results for ysyncd, node
    and the relay floor (where a case needs no document)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("node and npm are required on CI")
        pytest.skip("node or npm is not installed")
    cluster = not missing_services()
    if not cluster and os.environ.get("CI") == "true":
        pytest.fail(f"the cluster scenario needs {', '.join(missing_services())}")
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    table = (tmp_path / "results.md").read_text()
    assert "ysyncd/node" in table
    assert "ysyncd/relay" in table
    runs = json.loads((tmp_path / "results.json").read_text())["runs"]
    servers = {"ysyncd", "node", "relay"}
    servers |= {"ysyncd-pg", "ysyncd-pg-2"} if cluster else set()
    assert {run["server"] for run in runs} == servers
    assert {run["scenario"] for run in runs if run["server"] == "relay"} == {
        "fanout",
        "throughput",
    }
    scenarios = {"fanout", "throughput", "idle", "coldjoin", "massjoin", "awareness"}
    assert {run["scenario"] for run in runs} >= scenarios | (
        {"cluster"} if cluster else set()
    )
    assert all(run["converged"] and run["error"] is None for run in runs)
    if cluster:
        assert "ysyncd-pg-2/ysyncd-pg" in table
        assert "Cost model for N nodes" in table


def test_cluster_cases_bring_their_references_once() -> None:
    """The cluster's SQLite and Node columns come from fanout's and throughput's
    runs of the same load: added when those scenarios are not chosen, never
    run twice when they are."""
    alone = build_cases(["cluster"], quick=True)
    assert [type(c) for c in alone] == [
        FanoutCase,
        ClusterFanoutCase,
        ThroughputCase,
        ClusterThroughputCase,
    ]
    assert all(c.reference in alone for c in alone if c.reference is not None)
    everything = build_cases(["cluster", "fanout", "throughput"], quick=True)
    assert len(everything) == len(set(map(id, everything)))
    assert sum(type(c) is ThroughputCase for c in everything) == 1
    assert sum(c == alone[0] for c in everything) == 1


def test_closing_note_gives_overhead_and_model() -> None:
    one, two = "ysyncd-pg", "ysyncd-pg-2"
    fanout = {
        "cpu_us_per_update": {one: 300.0, two: 800.0},
        "postgres_us_per_update": {one: 200.0, two: 250.0},
        "postgres_us_per_commit": {two: 300.0},
        "updates_per_commit": {two: 1.2},
        "redis_us_per_update": {two: 50.0},
    }
    note = "\n".join(closing_note(fanout, None))
    assert "**500 µs per update**" in note
    assert "**550 µs per update**" in note
    # 4 nodes: each pays (300 + 500) / 4 = 200 µs per update, 20 % of a core
    # at 1,000/s; PostgreSQL 250 µs per update caps the cluster at 4,000/s.
    assert "| 4 | 2 | 20.0 % | 25.0 % | 5.0 % | 4,000/s (PostgreSQL) |" in note
