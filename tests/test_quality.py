"""Static checks as tests, so the one test command also gates style and types."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_ruff_lint() -> None:
    result = run("ruff", "check", "ysyncd", "tests", "examples", "benchmarks")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format() -> None:
    result = run(
        "ruff", "format", "--check", "ysyncd", "tests", "examples", "benchmarks"
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict() -> None:
    result = run("mypy")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("path", sorted((ROOT / "ysyncd").rglob("*.py")), ids=str)
def test_no_swallowed_exceptions(path: Path) -> None:
    """No ``except: pass`` and no ``contextlib.suppress`` in the product code."""
    text = path.read_text()
    assert not re.search(r"except[^\n]*:\s*\n\s*pass\b", text)
    assert "suppress(" not in text
