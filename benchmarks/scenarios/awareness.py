"""Awareness fan-out: every client of a room moves its cursor at a fixed rate.

Each client first makes one document edit (so the room's document is checked
too), then sends an awareness update (a small JSON state with a cursor) at
``rate_hz`` from a random phase. An awareness update is identified by its
``(client id, clock)``, which both servers relay unchanged. Measured:

* latency from a send until another client received it, and until all did;
* server CPU per 1,000 awareness deliveries (the sender's echo included).

Afterwards every client must know every client's last state, and the room's
document must have converged.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from typing import ClassVar

from benchmarks.convergence import check_room
from benchmarks.loadgen import Client, abort_all, connect_many, wait_until
from benchmarks.measure import latencies, measure_during, sleep_until
from benchmarks.payloads import (
    StructId,
    awareness_message,
    decode_awareness,
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
    usage_metrics,
    usage_values,
)
from benchmarks.servers import RunningServer, ServerSpec
from ysyncd.protocol import Awareness

__all__ = ["AwarenessCase"]

ROOM = "awareness"
_START_DELAY_NS = 200_000_000
#: client id -> (clock, state JSON)
States = dict[int, tuple[int, str]]


def _state(index: int, step: int) -> dict[str, object]:
    return {
        "user": {"name": f"bench-{index}", "color": "#30bced"},
        "cursor": {"anchor": step, "head": step + index % 3},
    }


def _arrivals(client: Client) -> list[tuple[StructId, int]]:
    arrivals: list[tuple[StructId, int]] = []
    for t, message in client.messages():
        if isinstance(message, Awareness):
            for client_id, clock, _ in decode_awareness(message.update):
                arrivals.append(((client_id, clock), t))
    return arrivals


def _latest(client: Client) -> States:
    """The newest state this client has seen of every client."""
    states: States = {}
    for _, message in client.messages():
        if isinstance(message, Awareness):
            for client_id, clock, state in decode_awareness(message.update):
                if clock >= states.get(client_id, (-1, ""))[0]:
                    states[client_id] = (clock, state)
    return states


async def _cursor(
    client: Client, index: int, first_ns: int, period_ns: int, end_ns: int, limit: int
) -> None:
    next_ns = first_ns
    for clock in range(1, limit + 1):
        if next_ns >= end_ns:
            return
        await sleep_until(next_ns)
        await client.send_awareness(
            awareness_message(client.client_id, clock, _state(index, clock))
        )
        next_ns += period_ns


@dataclass(frozen=True)
class AwarenessCase(Case):
    clients: int
    rate_hz: float
    warmup_s: float
    window_s: float

    scenario: ClassVar[str] = "awareness"
    metrics: ClassVar[tuple[Metric, ...]] = (
        *latency_metrics("latency", "awareness"),
        *usage_metrics("awareness deliveries"),
    )
    timeout_s: float = 240.0

    @property
    def name(self) -> str:
        return f"1 room x {self.clients} clients, {self.rate_hz:g} Hz each"

    async def run(self, spec: ServerSpec, ctx: RunContext) -> Outcome:
        rng = random.Random(f"awareness {self.clients}")
        ids = unique_client_ids(rng, self.clients)
        async with spec.start(ctx.fresh_dir(spec.name)) as server:
            clients, _ = await connect_many(
                server.url,
                [(ROOM, cid) for cid in ids],
                concurrency=CONNECT_CONCURRENCY,
            )
            try:
                return await self._measure(server, clients, rng)
            finally:
                await abort_all(clients)

    async def _measure(
        self, server: RunningServer, clients: list[Client], rng: random.Random
    ) -> Outcome:
        outcome = Outcome()
        for client in clients:
            await client.send_update(text_updates(client.client_id, 1)[0])
        n = len(clients)
        await wait_until(
            lambda: all(c.updates >= n or c.problem() for c in clients), 30
        )

        period_ns = round(1e9 / self.rate_hz)
        limit = math.ceil((self.warmup_s + self.window_s) * self.rate_hz) + 2
        start = time.perf_counter_ns() + _START_DELAY_NS
        w0 = start + round(self.warmup_s * 1e9)
        w1 = w0 + round(self.window_s * 1e9)
        cursors = [
            _cursor(c, i, start + rng.randrange(period_ns), period_ns, w1, limit)
            for i, c in enumerate(clients)
        ]
        usage, _ = await measure_during(server, w0, w1, cursors)

        expected: States = {}
        for client in clients:
            if client.sent_awareness:
                update = client.sent_awareness[-1][1]
                ((client_id, clock, state),) = decode_awareness(update)
                expected[client_id] = (clock, state)
        sent = sum(len(c.sent_awareness) for c in clients)
        # Count first (cheap); the states decide convergence below.
        await wait_until(
            lambda: all(c.awareness >= sent or c.problem() for c in clients),
            DRAIN_TIMEOUT_S / 4,
        )
        for client in clients:
            seen = _latest(client)
            if any(seen.get(cid) != want for cid, want in expected.items()):
                outcome.problems.append(
                    f"{client.label}: does not have every client's last awareness state"
                )

        sends: dict[StructId, tuple[int, int]] = {}
        for index, client in enumerate(clients):
            for t, update in client.sent_awareness:
                for client_id, clock, _ in decode_awareness(update):
                    if w0 <= t < w1:
                        sends[(client_id, clock)] = (t, index)
        arrivals = [_arrivals(c) for c in clients]
        deliveries = sum(1 for each in arrivals for _, t in each if w0 <= t < w1)
        latency_values("latency", latencies(sends, arrivals), outcome)
        usage_values(usage, deliveries, outcome)
        outcome.info["awareness_sent"] = sent
        outcome.problems += await check_room(server.url, ROOM, clients)
        server.check_alive()
        return outcome
