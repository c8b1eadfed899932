"""Starting a task in a task group from wherever the caller is.

A peer's messages are handled in the transport's callback (see
connection.py), where no task is running, and anyio's ``start_soon`` needs
one: it reads the current task. :func:`start_soon` starts the task from a
short-lived asyncio task in that case; it is for rare work (a rebuild, a
save), not for anything per message.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVarTuple

from anyio.abc import TaskGroup

__all__ = ["start_soon"]

Args = TypeVarTuple("Args")

# The short-lived tasks, kept referenced until they have run.
_starting: set[asyncio.Task[None]] = set()


def start_soon(
    tg: TaskGroup, func: Callable[[*Args], Coroutine[Any, Any, None]], *args: *Args
) -> None:
    """``tg.start_soon(func, *args)``, also outside of any task."""
    if asyncio.current_task() is not None:
        tg.start_soon(func, *args)
        return

    async def start() -> None:
        tg.start_soon(func, *args)

    task = asyncio.get_running_loop().create_task(start())
    _starting.add(task)
    task.add_done_callback(_starting.discard)
