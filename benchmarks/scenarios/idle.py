"""Many idle rooms: one client in each, each having made one small edit (or,
with ``empty``, none: the rooms' documents stay empty, as a Jupyter
deployment's are for the many documents opened and left).

* connect time: all connections (opened ``concurrency`` at a time), and each one
  from the start of its connect until it had the document (p50, p99);
* server RSS per room: (RSS with every room open - RSS before) / rooms;
* idle server CPU: over a few seconds in which nobody sends anything.

Each client sends one edit and waits for its echo. Then each client's document
must hold its edit, and a fresh reader of a sample of rooms must see the same
document as the room's client.
"""

from __future__ import annotations

import asyncio
import random
import resource
import time
from dataclasses import dataclass
from typing import ClassVar

from benchmarks.convergence import check_room, client_state
from benchmarks.loadgen import (
    Client,
    LoadgenError,
    abort_all,
    connect_many,
    wait_until,
)
from benchmarks.measure import measure_window
from benchmarks.payloads import first_struct_id, text_updates, unique_client_ids
from benchmarks.scenarios.base import (
    DRAIN_TIMEOUT_S,
    Case,
    Metric,
    Outcome,
    RunContext,
)
from benchmarks.servers import RunningServer, ServerSpec
from benchmarks.stats import percentile

__all__ = ["IdleCase"]

SETTLE_S = 1.0
#: Rooms whose fresh reader is compared with the room's client.
SAMPLED_ROOMS = 50
#: File descriptors kept free beside the connections (servers, pipes, readers).
FD_MARGIN = 256


@dataclass(frozen=True)
class IdleCase(Case):
    room_count: int
    idle_s: float
    concurrency: int
    rounds: int | None = None
    #: No edits: every room's document stays empty.
    empty: bool = False

    scenario: ClassVar[str] = "idle"
    metrics: ClassVar[tuple[Metric, ...]] = (
        Metric("connect_total_s", "connect all", "s"),
        Metric("connect_p50", "connect one p50", "ms"),
        Metric("connect_p99", "connect one p99", "ms"),
        Metric("rss_before_mib", "server RSS before", "MiB"),
        Metric("rss_total_mib", "server RSS with all rooms open", "MiB"),
        Metric("rss_per_room_kib", "server RSS per room", "KiB"),
        Metric("idle_cpu_pct", "idle server CPU", "% of a core"),
    )
    timeout_s: float = 600.0

    @property
    def name(self) -> str:
        rounds = "" if self.rounds is None else f", {self.rounds} round"
        empty = ", empty documents" if self.empty else ""
        return (
            f"{self.room_count:,} rooms x 1 client{empty}, {self.idle_s:g} s idle"
            f"{rounds}"
        )

    async def run(self, spec: ServerSpec, ctx: RunContext) -> Outcome:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and soft < self.room_count + FD_MARGIN:
            raise LoadgenError(
                f"{self.room_count} connections need {self.room_count + FD_MARGIN}"
                f" file descriptors; the limit is {soft} (ulimit -n)"
            )
        rng = random.Random(f"idle {self.room_count}")
        ids = unique_client_ids(rng, self.room_count)
        edits = [text_updates(cid, 1)[0] for cid in ids]
        rooms = [f"idle-{i}" for i in range(self.room_count)]
        async with spec.start(ctx.fresh_dir(spec.name)) as server:
            await asyncio.sleep(SETTLE_S)
            rss_before = server.rss_bytes()
            started = time.perf_counter_ns()
            clients, durations = await connect_many(
                server.url,
                list(zip(rooms, ids, strict=True)),
                concurrency=self.concurrency,
            )
            connect_total = (time.perf_counter_ns() - started) / 1e9
            try:
                outcome = Outcome()
                for client, edit in zip(clients, edits, strict=True):
                    if not self.empty:
                        await client.send_update(edit)
                if not self.empty and not await wait_until(
                    lambda: all(c.updates >= 1 or c.problem() for c in clients),
                    DRAIN_TIMEOUT_S,
                ):
                    missing = sum(1 for c in clients if c.updates < 1)
                    outcome.problems.append(f"{missing} edits were never echoed")
                await asyncio.sleep(SETTLE_S)
                rss_total = server.rss_bytes()
                now = time.perf_counter_ns()
                usage = await measure_window(
                    server, now, now + round(self.idle_s * 1e9)
                )
                connect_ms = [d / 1e6 for d in durations]
                outcome.values.update(
                    connect_total_s=connect_total,
                    connect_p50=percentile(connect_ms, 0.50),
                    connect_p99=percentile(connect_ms, 0.99),
                    rss_before_mib=rss_before / 2**20,
                    rss_total_mib=rss_total / 2**20,
                    rss_per_room_kib=(rss_total - rss_before) / self.room_count / 1024,
                    idle_cpu_pct=usage.server_cpu_pct,
                )
                outcome.info.update(rooms=self.room_count, idle_s=usage.wall_s)
                outcome.problems += await self._check(server, clients, rooms, rng)
            finally:
                await abort_all(clients)
        return outcome

    async def _check(
        self,
        server: RunningServer,
        clients: list[Client],
        rooms: list[str],
        rng: random.Random,
    ) -> list[str]:
        problems: list[str] = []
        for index, client in enumerate(clients):
            if self.empty:
                break
            struct = first_struct_id(client.sent[0][1])
            state = client_state(client)
            if struct is None or state.state_vector.get(struct[0], 0) <= struct[1]:
                problems.append(f"{client.label}: its own edit is not in its document")
            if index % 500 == 0:
                await asyncio.sleep(0)
        sample = rng.sample(range(len(clients)), min(SAMPLED_ROOMS, len(clients)))
        for index in sample:
            problems += await check_room(server.url, rooms[index], [clients[index]])
        server.check_alive()
        return problems
