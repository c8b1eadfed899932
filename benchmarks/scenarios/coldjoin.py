"""Cold join: how long a client waits for a room with a long history.

One client writes the room's history, one small update at a time, keeping at
most ``ingest_window`` updates un-echoed. Then joins are timed, one after the
other: from the start of the connect until the joiner has received sync step 2
and applied it to a fresh document. Every joiner's document must equal the
writer's, and so must the writer's own (built from what it sent and received).

* ysyncd is restarted after the history is written, so the first join loads the
  room from SQLite (cold); the later ones find it in memory. The database is
  written once per benchmark run and reused by later rounds, each of which
  starts a new ysyncd process on it, so each round's first join is cold.
* The Node server keeps rooms in memory only (it has no persistence), so it
  cannot be restarted: its history is written anew in each round, and its first
  join is as warm as the others.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import ClassVar

from benchmarks.convergence import client_state
from benchmarks.loadgen import Client, LoadgenError, wait_until
from benchmarks.payloads import History, doc_from, doc_state, history
from benchmarks.scenarios.base import Case, Metric, Outcome, RunContext
from benchmarks.servers import RunningServer, ServerSpec
from benchmarks.stats import percentile

__all__ = ["ColdJoinCase", "write_history"]

WRITER_ID = 7_777_777
ECHO_TIMEOUT_S = 60.0
SETTLE_S = 1.0
_PREPARED = "prepared"


async def write_history(
    server: RunningServer,
    room: str,
    past: History,
    ingest_window: int,
    outcome: Outcome,
) -> Client:
    """Write ``past`` into ``room`` as its writer, keeping at most
    ``ingest_window`` updates un-echoed, and wait for every echo.

    Sets ``ingest_per_s``; returns the writer, still connected.
    """
    label = f"{room} writer"
    writer = await Client.connect(
        server.url, room, past.client_id, label=label, track_echo=True
    )
    try:
        started = time.perf_counter_ns()
        for update in past.updates:
            await writer.wait_unechoed_below(ingest_window, ECHO_TIMEOUT_S)
            await writer.send_update(update)
        total = len(past.updates)
        if not await wait_until(
            lambda: writer.echoes >= total or writer.problem() is not None,
            ECHO_TIMEOUT_S,
        ):
            raise LoadgenError(f"{label}: {total - writer.echoes} not echoed")
        elapsed = (time.perf_counter_ns() - started) / 1e9
        outcome.values["ingest_per_s"] = total / elapsed
    except BaseException:
        writer.abort()
        raise
    return writer


@dataclass(frozen=True)
class ColdJoinCase(Case):
    history_size: int
    joins: int
    ingest_window: int

    scenario: ClassVar[str] = "coldjoin"
    metrics: ClassVar[tuple[Metric, ...]] = (
        Metric("first_join_ms", "first join after start (cold for ysyncd)", "ms"),
        Metric("join_p50_ms", "later joins p50", "ms"),
        Metric("join_cpu_ms", "server CPU per later join", "ms"),
        Metric("step2_kib", "sync step 2 size", "KiB"),
        Metric("ingest_per_s", "history written", "updates/s", True),
        Metric("rss_mib", "server RSS after the joins", "MiB"),
    )
    timeout_s: float = 900.0

    @property
    def name(self) -> str:
        return f"{self.history_size:,}-update history, {self.joins} joins"

    @property
    def room(self) -> str:
        return f"cold-{self.history_size}"

    async def run(self, spec: ServerSpec, ctx: RunContext) -> Outcome:
        past = history(WRITER_ID, self.history_size)
        outcome = Outcome()
        if spec.durable:
            data_dir = ctx.kept_dir(f"coldjoin-{self.history_size}-{spec.name}")
            marker = data_dir / _PREPARED
            if not marker.exists():
                async with spec.start(data_dir) as server:
                    await self._write(server, past, outcome)
                if outcome.converged:
                    marker.touch()  # after a clean stop, so every row is in
            if not outcome.converged:
                return outcome
            async with spec.start(data_dir) as server:
                await self._joins(server, past, outcome)
        else:
            async with spec.start(ctx.fresh_dir(spec.name)) as server:
                await self._write(server, past, outcome)
                if outcome.converged:
                    await asyncio.sleep(SETTLE_S)
                    await self._joins(server, past, outcome)
        return outcome

    async def _write(
        self, server: RunningServer, past: History, outcome: Outcome
    ) -> None:
        writer = await write_history(
            server, self.room, past, self.ingest_window, outcome
        )
        try:
            state = client_state(writer)
            if state != past.expected:
                outcome.problems.append(
                    f"{writer.label}: {state.describe()},"
                    f" expected {past.expected.describe()}"
                )
            if (problem := writer.problem()) is not None:
                outcome.problems.append(problem)
        finally:
            await writer.close()

    async def _joins(
        self, server: RunningServer, past: History, outcome: Outcome
    ) -> None:
        times_ms: list[float] = []
        cpu_ms: list[float] = []
        for i in range(self.joins):
            cpu0 = server.cpu_seconds()
            t0 = time.perf_counter_ns()
            joiner = await Client.connect(
                server.url, self.room, 0, label=f"{self.room} joiner {i}"
            )
            try:
                doc = doc_from(joiner.step2)
                t1 = time.perf_counter_ns()
                cpu1 = server.cpu_seconds()
                state = doc_state(doc)
                if state != past.expected:
                    outcome.problems.append(
                        f"{joiner.label}: {state.describe()}, expected"
                        f" {past.expected.describe()}"
                    )
                outcome.values["step2_kib"] = sum(map(len, joiner.step2)) / 1024
            finally:
                await joiner.close()
            times_ms.append((t1 - t0) / 1e6)
            cpu_ms.append((cpu1 - cpu0) * 1000)
        outcome.values["first_join_ms"] = times_ms[0]
        if len(times_ms) > 1:
            outcome.values["join_p50_ms"] = percentile(times_ms[1:], 0.50)
            outcome.values["join_cpu_ms"] = sum(cpu_ms[1:]) / len(cpu_ms[1:])
        outcome.values["rss_mib"] = server.rss_bytes() / 2**20
        outcome.info["join_ms"] = ", ".join(f"{t:.1f}" for t in times_ms)
        server.check_alive()
