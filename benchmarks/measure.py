"""Measured windows and latencies.

A window is fixed in time (perf_counter ns). The server's CPU time (its child
processes' included: ysyncd's worker; every node's, for a cluster) is read from
/proc at its start and its end; so is the load generator's own, and any other
part the server reports apart (a cluster's PostgreSQL and Redis, each node).
Counters the server keeps (a cluster node's ``/metrics``) may be read at both
ends too, just outside the CPU readings. Python's cyclic
garbage collector is paused inside the window, so that its pauses do not show up
as server latency (reference counting still frees memory meanwhile).
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from benchmarks import procstat
from benchmarks.payloads import StructId

__all__ = [
    "Counters",
    "Latencies",
    "Measured",
    "Usage",
    "latencies",
    "measure_during",
    "measure_window",
    "sleep_until",
]


T = TypeVar("T")

#: Reads a server's counters (name -> value) at one end of a window.
Counters = Callable[[], Awaitable[dict[str, float]]]


class Measured(Protocol):
    """What a window measures: a server, or several (a cluster)."""

    def cpu_readings(self) -> dict[str, float]:
        """CPU seconds so far: ``"own"`` and ``"children"`` (the server's
        processes, and their child processes), and any other part that is
        reported apart, by name (not counted as the server's)."""


@dataclass(frozen=True, slots=True)
class Usage:
    """What one measured window cost."""

    wall_s: float
    #: The server's own CPU time and its child processes'.
    server_cpu_s: float
    loadgen_cpu_s: float
    #: Of ``server_cpu_s``, what its child processes took.
    children_cpu_s: float = 0.0
    #: CPU seconds of the parts reported apart (see :class:`Measured`).
    parts_cpu_s: dict[str, float] = field(default_factory=dict)
    #: How much each counter grew over the window.
    counts: dict[str, float] = field(default_factory=dict)

    @property
    def server_cpu_pct(self) -> float:
        return 100 * self.server_cpu_s / self.wall_s

    @property
    def loadgen_cpu_pct(self) -> float:
        return 100 * self.loadgen_cpu_s / self.wall_s


async def sleep_until(t_ns: int) -> None:
    delay = (t_ns - time.perf_counter_ns()) / 1e9
    if delay > 0:
        await asyncio.sleep(delay)


async def measure_window(
    server: Measured, start_ns: int, end_ns: int, counters: Counters | None = None
) -> Usage:
    """Sleep until ``start_ns``, then measure until ``end_ns``."""
    await sleep_until(start_ns)
    counts0 = await counters() if counters is not None else {}
    gc.disable()
    try:
        t0 = time.perf_counter_ns()
        cpu0, self0 = server.cpu_readings(), procstat.self_cpu_seconds()
        await sleep_until(end_ns)
        t1 = time.perf_counter_ns()
        cpu1, self1 = server.cpu_readings(), procstat.self_cpu_seconds()
    finally:
        gc.enable()
    counts1 = await counters() if counters is not None else {}
    cpu = {key: cpu1[key] - cpu0[key] for key in cpu0}
    own, kids = cpu.pop("own"), cpu.pop("children")
    return Usage(
        (t1 - t0) / 1e9,
        own + kids,
        self1 - self0,
        kids,
        cpu,
        {key: counts1[key] - counts0.get(key, 0.0) for key in counts1},
    )


async def measure_during(
    server: Measured,
    start_ns: int,
    end_ns: int,
    work: Sequence[Coroutine[Any, Any, T]],
    counters: Counters | None = None,
) -> tuple[Usage, list[T]]:
    """Run ``work`` (the load) while measuring the window; all results."""
    async with asyncio.TaskGroup() as group:
        window = group.create_task(measure_window(server, start_ns, end_ns, counters))
        tasks = [group.create_task(w) for w in work]
    return window.result(), [t.result() for t in tasks]


@dataclass(slots=True)
class Latencies:
    """Send-to-receive times (ns) of the messages sent in a window."""

    #: One per delivery to a peer other than the sender.
    deliveries: list[int]
    #: One per message: until the last of the sender's peers had it.
    all_peers: list[int]
    #: Deliveries to peers that never came.
    missing: int = 0

    def extend(self, other: Latencies) -> None:
        self.deliveries += other.deliveries
        self.all_peers += other.all_peers
        self.missing += other.missing


def latencies(
    sends: Mapping[StructId, tuple[int, int]],
    arrivals: Sequence[Sequence[tuple[StructId, int]]],
) -> Latencies:
    """Latencies in one room.

    ``sends`` maps each measured message to (send ns, index of its sender);
    ``arrivals[i]`` lists (message, arrival ns) as client ``i`` received them.
    The sender's own echo is not a delivery to a peer, so it is left out.
    """
    deliveries: list[int] = []
    last: dict[StructId, int] = {}
    count: dict[StructId, int] = {}
    for receiver, received in enumerate(arrivals):
        for key, t in received:
            send = sends.get(key)
            if send is None or send[1] == receiver:
                continue
            deliveries.append(t - send[0])
            last[key] = max(last.get(key, t), t)
            count[key] = count.get(key, 0) + 1
    peers = len(arrivals) - 1
    all_peers: list[int] = []
    missing = 0
    for key, (sent_ns, _) in sends.items():
        got = count.get(key, 0)
        if peers == 0:
            continue
        if got >= peers:
            all_peers.append(last[key] - sent_ns)
        else:
            missing += peers - got
    return Latencies(deliveries, all_peers, missing)
