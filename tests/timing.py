"""Test timeouts, scaled for slow machines by ``YSYNCD_TESTS_TIMEOUT_FACTOR``."""

from __future__ import annotations

import os


def scaled(seconds: float) -> float:
    """``seconds`` times the timeout factor (default 1)."""
    return seconds * float(os.environ.get("YSYNCD_TESTS_TIMEOUT_FACTOR", "1"))
