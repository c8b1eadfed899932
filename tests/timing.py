"""Test timeouts, scaled for slow machines by ``YSYNCD_TESTS_TIMEOUT_FACTOR``."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable


def timeout_factor() -> float:
    """Multiplier for every test timeout (slow CI machines set it above 1)."""
    try:
        factor = float(os.environ.get("YSYNCD_TESTS_TIMEOUT_FACTOR", "1"))
    except ValueError:
        return 1.0
    return factor if factor > 0 else 1.0


def scaled(seconds: float) -> float:
    """``seconds`` times the timeout factor."""
    return seconds * timeout_factor()


async def wait_until(
    condition: Callable[[], bool], what: str, timeout: float = 5
) -> None:
    """Poll ``condition`` until it holds; for state that has no event to await."""
    try:
        async with asyncio.timeout(scaled(timeout)):
            while not condition():  # noqa: ASYNC110 - nothing to await but time
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None
