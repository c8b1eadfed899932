"""Awareness fan-out: every client of a room moves its cursor at a fixed rate.

Each client first makes one document edit (so the room's document is checked
too), then sends an awareness update (a small JSON state with a cursor) at
``rate_hz`` from a random phase. An awareness update is identified by its
``(client id, clock)``, which both servers relay unchanged. Measured:

* latency from a send until another client received it, and until all did
  (p50, p99; and the longest);
* server CPU per 1,000 awareness deliveries (the sender's echo included).

Afterwards every client must know every client's last state, and the room's
document must have converged.

:class:`CompactingAwarenessCase` runs the same load while the server works on
another room: just before it, a writer fills a room with a long history, each
update a ``get_update(state vector)`` diff that carries the document's whole
delete set (:func:`benchmarks.payloads.diff_history`), so its log is tens of MB.
ysyncd compacts a room's log once it holds 1,000 rows and the room has been
quiet for 2 s: that is while the awareness load runs, its window opening just
before. The compaction's duration is read from ysyncd's log ("compacted room
..."), and how much of it fell inside the window. The Node server keeps the
room in memory (the writer stays connected, so it is not dropped). Afterwards a
fresh reader of that room must get the writer's document.
"""

from __future__ import annotations

import math
import random
import re
import time
from dataclasses import dataclass
from typing import ClassVar

from benchmarks.convergence import check_room, reader_state
from benchmarks.loadgen import Client, abort_all, connect_many, wait_until
from benchmarks.measure import Usage, latencies, measure_during, sleep_until
from benchmarks.payloads import (
    StructId,
    awareness_message,
    decode_awareness,
    diff_history,
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
from benchmarks.scenarios.coldjoin import write_history
from benchmarks.servers import RunningServer, ServerSpec
from ysyncd.protocol import Awareness

__all__ = ["AwarenessCase", "CompactingAwarenessCase"]

ROOM = "awareness"
BACKGROUND_ROOM = "compacting"
BACKGROUND_WRITER_ID = 7_777_778
#: How long after the window ysyncd may still take to log the compaction.
COMPACTION_WAIT_S = 120.0
_START_DELAY_NS = 200_000_000
# ysyncd's log line (sqlite store) once a compaction is done.
_COMPACTED = re.compile(
    r"compacted room '(?P<room>[^']*)': (?P<rows>\d+) rows \((?P<bytes>\d+) B\)"
    r".* in (?P<ms>[\d.]+) ms"
)
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


@dataclass(frozen=True, slots=True)
class Window:
    """A measured window: its bounds (perf_counter ns) and what it cost."""

    start_ns: int
    end_ns: int
    usage: Usage


@dataclass(frozen=True)
class AwarenessCase(Case):
    clients: int
    rate_hz: float
    warmup_s: float
    window_s: float

    scenario: ClassVar[str] = "awareness"
    metrics: ClassVar[tuple[Metric, ...]] = (
        *latency_metrics("latency", "awareness"),
        Metric("latency_max", "awareness latency max", "ms"),
        *usage_metrics("awareness deliveries"),
    )
    timeout_s: float = 240.0

    @property
    def name(self) -> str:
        return f"1 room x {self.clients} clients, {self.rate_hz:g} Hz each"

    async def run(self, spec: ServerSpec, ctx: RunContext) -> Outcome:
        outcome = Outcome()
        async with spec.start(ctx.fresh_dir(spec.name)) as server:
            await self._awareness(server, outcome)
        return outcome

    async def _awareness(self, server: RunningServer, outcome: Outcome) -> Window:
        """Connect the clients, run the load, check it; the measured window."""
        rng = random.Random(f"awareness {self.clients}")
        ids = unique_client_ids(rng, self.clients)
        clients, _ = await connect_many(
            server.url,
            [(ROOM, cid) for cid in ids],
            concurrency=CONNECT_CONCURRENCY,
        )
        try:
            return await self._measure(server, clients, rng, outcome)
        finally:
            await abort_all(clients)

    async def _measure(
        self,
        server: RunningServer,
        clients: list[Client],
        rng: random.Random,
        outcome: Outcome,
    ) -> Window:
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
        lat = latencies(sends, arrivals)
        latency_values("latency", lat, outcome)
        if lat.deliveries:
            outcome.values["latency_max"] = max(lat.deliveries) / 1e6
        usage_values(usage, deliveries, outcome)
        outcome.info["awareness_sent"] = sent
        outcome.problems += await check_room(server.url, ROOM, clients)
        server.check_alive()
        return Window(w0, w1, usage)


@dataclass(frozen=True)
class CompactingAwarenessCase(AwarenessCase):
    """The awareness load while the server compacts another room's big log."""

    #: The background room's history: updates, and one in how many deletes.
    history_size: int = 12_000
    delete_every: int = 8
    ingest_window: int = 256

    metrics: ClassVar[tuple[Metric, ...]] = (
        *AwarenessCase.metrics,
        Metric("worker_cpu_pct", "server CPU in child processes", "% of a core"),
        Metric("compaction_ms", "background room's compaction (server log)", "ms"),
        Metric(
            "compaction_in_window_s", "compaction time inside the window", "s", True
        ),
        Metric("ingest_per_s", "background history written", "updates/s", True),
    )
    timeout_s: float = 600.0

    @property
    def name(self) -> str:
        return (
            f"{super().name}, a {self.history_size:,}-update room compacting meanwhile"
        )

    async def run(self, spec: ServerSpec, ctx: RunContext) -> Outcome:
        past = diff_history(BACKGROUND_WRITER_ID, self.history_size, self.delete_every)
        outcome = Outcome()
        outcome.info["background_rows"] = len(past.updates)
        outcome.info["background_mib"] = sum(len(u) for u, _ in past.updates) / 2**20
        async with spec.start(ctx.fresh_dir(spec.name)) as server:
            writer = await write_history(
                server, BACKGROUND_ROOM, past, self.ingest_window, outcome
            )
            try:
                # At once: the room's 2 quiet seconds, after which ysyncd
                # compacts it, end just after the window opens.
                window = await self._awareness(server, outcome)
                usage = window.usage
                outcome.values["worker_cpu_pct"] = (
                    100 * usage.children_cpu_s / usage.wall_s
                )
                if spec.durable:
                    await self._compaction(server, window, outcome)
                state, _ = await reader_state(server.url, BACKGROUND_ROOM)
                if state != past.expected:
                    outcome.problems.append(
                        f"{BACKGROUND_ROOM}: a fresh reader has {state.describe()},"
                        f" expected {past.expected.describe()}"
                    )
                if (problem := writer.problem()) is not None:
                    outcome.problems.append(problem)
            finally:
                await writer.close()
        return outcome

    async def _compaction(
        self, server: RunningServer, window: Window, outcome: Outcome
    ) -> None:
        """When the background room's compaction ran, from the server's log."""

        def compacted() -> list[tuple[int, re.Match[str]]]:
            return [
                (t, m)
                for t, m in server.log_matches(_COMPACTED)
                if m["room"] == BACKGROUND_ROOM
            ]

        if not await wait_until(lambda: bool(compacted()), COMPACTION_WAIT_S, 0.1):
            outcome.problems.append(
                f"the server did not log a compaction of {BACKGROUND_ROOM!r}"
            )
            return
        done_ns, match = compacted()[0]
        took_ns = round(float(match["ms"]) * 1e6)
        began_ns = done_ns - took_ns
        inside = min(done_ns, window.end_ns) - max(began_ns, window.start_ns)
        outcome.values["compaction_ms"] = took_ns / 1e6
        outcome.values["compaction_in_window_s"] = max(0, inside) / 1e9
        outcome.info.update(
            compaction_rows=int(match["rows"]),
            compaction_mib=int(match["bytes"]) / 2**20,
            compaction_began_after_window_start_s=(began_ns - window.start_ns) / 1e9,
        )
