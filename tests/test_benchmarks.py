"""The benchmark suite runs end to end: both servers, every scenario, converged.

Speed is not asserted here (that is what the benchmark itself reports); this
only proves that ``python -m benchmarks`` works from the project's own files,
including installing its npm pieces, and that every run converges.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_quick_benchmark_runs_both_servers_and_converges(tmp_path: Path) -> None:
    """``python -m benchmarks --quick`` exits 0 with results for ysyncd and node."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("node and npm are required on CI")
        pytest.skip("node or npm is not installed")
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
    runs = json.loads((tmp_path / "results.json").read_text())["runs"]
    assert {run["server"] for run in runs} == {"ysyncd", "node"}
    assert {run["scenario"] for run in runs} >= {
        "fanout",
        "throughput",
        "idle",
        "coldjoin",
        "awareness",
    }
    assert all(run["converged"] and run["error"] is None for run in runs)
