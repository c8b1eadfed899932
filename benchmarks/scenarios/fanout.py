"""Fan-out latency: every client of a room types, and everyone receives.

Each client sends a small text insert at a fixed rate, from a random phase so
that the room's sends spread out (an open loop: the schedule does not wait for
the server). After a warm-up, a window of fixed length is measured:

* latency: from one client's send until another client of the room received
  it (p50, p99 over every delivery to a peer), and until the last peer did;
* server CPU per 1,000 deliveries, where a delivery is one update received by
  one client, the sender's own echo included (both servers send it);
* server and load generator CPU, server RSS.

Then sending stops, the servers relay what is left, and every room is checked
for convergence.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from typing import ClassVar

from benchmarks.cluster import Deployment
from benchmarks.convergence import check_room
from benchmarks.loadgen import Client, abort_all, connect_many, wait_until
from benchmarks.measure import Latencies, latencies, measure_during, sleep_until
from benchmarks.payloads import (
    Framed,
    StructId,
    first_struct_id,
    text_updates,
    unique_client_ids,
)
from benchmarks.scenarios.base import (
    CONNECT_CONCURRENCY,
    DRAIN_TIMEOUT_S,
    Case,
    Metric,
    Outcome,
    RunContext,
    latency_metrics,
    latency_values,
    part_values,
    usage_metrics,
    usage_values,
)
from benchmarks.servers import ServerSpec
from ysyncd.protocol import Update

__all__ = ["FanoutCase", "update_arrivals", "window_sends"]

_START_DELAY_NS = 200_000_000


def update_arrivals(client: Client) -> list[tuple[StructId, int]]:
    """(first struct id, arrival ns) of each update the client received."""
    arrivals: list[tuple[StructId, int]] = []
    for t, message in client.messages():
        if isinstance(message, Update):
            struct = first_struct_id(message.update)
            if struct is not None:
                arrivals.append((struct, t))
    return arrivals


def window_sends(
    clients: list[Client], start_ns: int, end_ns: int
) -> dict[StructId, tuple[int, int]]:
    """The updates sent inside the window: struct id -> (send ns, sender index)."""
    sends: dict[StructId, tuple[int, int]] = {}
    for index, client in enumerate(clients):
        for t, update in client.sent:
            struct = first_struct_id(update)
            if struct is not None and start_ns <= t < end_ns:
                sends[struct] = (t, index)
    return sends


async def _send_periodically(
    client: Client, plan: list[Framed], first_ns: int, period_ns: int, end_ns: int
) -> None:
    next_ns = first_ns
    for update in plan:
        if next_ns >= end_ns:
            return
        await sleep_until(next_ns)
        await client.send_update(update)
        next_ns += period_ns


@dataclass(frozen=True)
class FanoutCase(Case):
    rooms: int
    clients: int
    rate_hz: float
    warmup_s: float
    window_s: float

    scenario: ClassVar[str] = "fanout"
    stateless_ok: ClassVar[bool] = True
    metrics: ClassVar[tuple[Metric, ...]] = (
        *latency_metrics("latency", "delivery"),
        *usage_metrics("deliveries"),
        Metric("rss_mib", "server RSS", "MiB"),
    )
    timeout_s: float = 240.0

    @property
    def name(self) -> str:
        rooms = "1 room" if self.rooms == 1 else f"{self.rooms} rooms"
        return f"{rooms} x {self.clients} clients, {self.rate_hz:g} Hz each"

    async def run(self, spec: ServerSpec, ctx: RunContext) -> Outcome:
        rng = random.Random(f"fanout {self.rooms} {self.clients}")
        total = self.rooms * self.clients
        ids = unique_client_ids(rng, total)
        sends_each = math.ceil((self.warmup_s + self.window_s) * self.rate_hz) + 2
        plans = [text_updates(cid, sends_each) for cid in ids]
        rooms = [f"fanout-{r}" for r in range(self.rooms)]
        targets = [(rooms[i // self.clients], ids[i]) for i in range(total)]
        async with ctx.deploy(spec) as server:
            # A room's k-th client on node k (of a cluster; round robin).
            urls = [server.url_for(i % self.clients) for i in range(total)]
            clients, _ = await connect_many(
                urls, targets, concurrency=CONNECT_CONCURRENCY
            )
            try:
                return await self._measure(
                    server, clients, plans, rooms, rng, spec.stateful
                )
            finally:
                await abort_all(clients)

    async def _measure(
        self,
        server: Deployment,
        clients: list[Client],
        plans: list[list[Framed]],
        rooms: list[str],
        rng: random.Random,
        stateful: bool = True,
    ) -> Outcome:
        period_ns = round(1e9 / self.rate_hz)
        start = time.perf_counter_ns() + _START_DELAY_NS
        w0 = start + round(self.warmup_s * 1e9)
        w1 = w0 + round(self.window_s * 1e9)
        senders = [
            _send_periodically(c, plan, start + rng.randrange(period_ns), period_ns, w1)
            for c, plan in zip(clients, plans, strict=True)
        ]
        usage, _ = await measure_during(server, w0, w1, senders, server.counters)
        outcome = Outcome()
        outcome.values["rss_mib"] = server.rss_bytes() / 2**20

        k = self.clients
        groups = [clients[r * k : (r + 1) * k] for r in range(self.rooms)]
        expected = [sum(len(c.sent) for c in group) for group in groups]

        def drained() -> bool:
            return all(
                c.updates >= want or c.problem() is not None
                for group, want in zip(groups, expected, strict=True)
                for c in group
            )

        if not await wait_until(drained, DRAIN_TIMEOUT_S):
            short = sum(
                1
                for group, want in zip(groups, expected, strict=True)
                for c in group
                if c.updates < want
            )
            outcome.problems.append(
                f"{short} clients still missing updates {DRAIN_TIMEOUT_S:.0f} s"
                " after sending stopped"
            )
        lat = Latencies([], [])
        updates = 0
        for group in groups:
            sends = window_sends(group, w0, w1)
            updates += len(sends)
            lat.extend(latencies(sends, [update_arrivals(c) for c in group]))
        deliveries = sum(
            1
            for c in clients
            for t, frame in c.frames
            if w0 <= t < w1 and frame.startswith(b"\x00\x02")
        )
        latency_values("latency", lat, outcome)
        usage_values(usage, deliveries, outcome)
        part_values(usage, updates, outcome)
        outcome.info["updates_sent"] = sum(expected)
        for room, group in zip(rooms, groups, strict=True):
            outcome.problems += await check_room(
                server.url, room, group, reader=stateful
            )
        server.check_alive()
        return outcome
