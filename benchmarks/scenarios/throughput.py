"""Throughput ceiling of one busy room.

Two senders push updates as fast as the server relays them, each keeping at
most ``window`` of its own updates un-echoed (the echo is the server's
acknowledgement; for ysyncd it also means the update is on disk). Two passive
receivers get everything too. Measured over a fixed window after a warm-up:

* updates per second: a sender's own updates echoed back to it in the window;
* server CPU per update (µs), server and load generator CPU;
* echo latency: from a send until the sender got it back.

On a cluster the senders are on node 1 and the receivers on node 2: node 1
takes every update, node 2 relays them (relayed updates per second: what a
receiver got in the window).

The load generator is often the limit here, not the server: when its CPU is near
100 % of a core the result says more about the client than about the server.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import ClassVar

from benchmarks.cluster import Deployment
from benchmarks.convergence import check_room
from benchmarks.loadgen import Client, abort_all, connect_many, wait_until
from benchmarks.measure import measure_during
from benchmarks.payloads import Framed, history, unique_client_ids
from benchmarks.scenarios.base import (
    DRAIN_TIMEOUT_S,
    Case,
    Metric,
    Outcome,
    RunContext,
    part_values,
)
from benchmarks.scenarios.fanout import update_arrivals, window_sends
from benchmarks.servers import ServerSpec
from benchmarks.stats import percentile

__all__ = ["ThroughputCase"]

ROOM = "throughput"
ECHO_TIMEOUT_S = 30.0
_START_DELAY_NS = 200_000_000


async def _pump(client: Client, plan: list[Framed], window: int, end_ns: int) -> bool:
    """Send until ``end_ns``; False if the plan ran out first."""
    for update in plan:
        if time.perf_counter_ns() >= end_ns:
            return True
        await client.wait_unechoed_below(window, ECHO_TIMEOUT_S)
        await client.send_update(update)
    return False


@dataclass(frozen=True)
class ThroughputCase(Case):
    senders: int
    receivers: int
    window: int
    warmup_s: float
    window_s: float
    #: Updates made ahead for each sender; more than it can send in the run.
    plan_size: int

    scenario: ClassVar[str] = "throughput"
    stateless_ok: ClassVar[bool] = True
    metrics: ClassVar[tuple[Metric, ...]] = (
        Metric("updates_per_s", "updates per second", "1/s", True),
        Metric("cpu_us_per_update", "server CPU per update", "µs"),
        Metric("echo_p50", "echo latency p50", "ms"),
        Metric("echo_p99", "echo latency p99", "ms"),
        Metric("server_cpu_pct", "server CPU", "% of a core"),
        Metric("loadgen_cpu_pct", "load generator CPU", "% of a core"),
        Metric("rss_mib", "server RSS", "MiB"),
    )
    timeout_s: float = 240.0

    @property
    def name(self) -> str:
        return (
            f"1 room, {self.senders} senders (≤{self.window} un-echoed each)"
            f" + {self.receivers} receivers"
        )

    async def run(self, spec: ServerSpec, ctx: RunContext) -> Outcome:
        rng = random.Random("throughput")
        ids = unique_client_ids(rng, self.senders + self.receivers)
        plans = [history(cid, self.plan_size).updates for cid in ids[: self.senders]]
        async with ctx.deploy(spec) as server:
            senders, _ = await connect_many(
                server.url_for(0),
                [(ROOM, cid) for cid in ids[: self.senders]],
                concurrency=self.senders,
                track_echo=True,
            )
            try:
                receivers, _ = await connect_many(
                    server.url_for(1),
                    [(ROOM, cid) for cid in ids[self.senders :]],
                    concurrency=self.receivers,
                )
            except BaseException:
                await abort_all(senders)
                raise
            try:
                return await self._measure(
                    server, senders, receivers, plans, spec.stateful
                )
            finally:
                await abort_all([*senders, *receivers])

    async def _measure(
        self,
        server: Deployment,
        senders: list[Client],
        receivers: list[Client],
        plans: list[list[Framed]],
        stateful: bool = True,
    ) -> Outcome:
        start = time.perf_counter_ns() + _START_DELAY_NS
        w0 = start + round(self.warmup_s * 1e9)
        w1 = w0 + round(self.window_s * 1e9)
        pumps = [
            _pump(c, plan, self.window, w1)
            for c, plan in zip(senders, plans, strict=True)
        ]
        usage, kept_up = await measure_during(server, w0, w1, pumps, server.counters)
        outcome = Outcome()
        outcome.values["rss_mib"] = server.rss_bytes() / 2**20
        if not all(kept_up):
            outcome.problems.append(
                "a sender ran out of prepared updates before the window ended;"
                " raise plan_size"
            )
        everyone = [*senders, *receivers]
        total = sum(len(c.sent) for c in senders)
        if not await wait_until(
            lambda: all(c.updates >= total or c.problem() for c in everyone),
            DRAIN_TIMEOUT_S,
        ):
            outcome.problems.append("not every update reached every client")

        sends = window_sends(senders, w0, w1)
        echoed = 0
        echo_ms: list[float] = []
        for index, sender in enumerate(senders):
            for struct, t in update_arrivals(sender):
                if struct[0] != sender.client_id:
                    continue
                if w0 <= t < w1:
                    echoed += 1
                sent = sends.get(struct)
                if sent is not None and sent[1] == index:
                    echo_ms.append((t - sent[0]) / 1e6)
        outcome.values["updates_per_s"] = echoed / usage.wall_s
        relayed = [sum(1 for t, frame in c.frames if w0 <= t < w1) for c in receivers]
        if relayed:
            outcome.values["relayed_per_s"] = min(relayed) / usage.wall_s
        part_values(usage, echoed, outcome)
        if echo_ms:
            outcome.values["echo_p50"] = percentile(echo_ms, 0.50)
            outcome.values["echo_p99"] = percentile(echo_ms, 0.99)
        outcome.values["server_cpu_pct"] = usage.server_cpu_pct
        outcome.values["loadgen_cpu_pct"] = usage.loadgen_cpu_pct
        outcome.info.update(
            window_s=usage.wall_s,
            updates_sent=total,
            updates_echoed_in_window=echoed,
            server_cpu_s=usage.server_cpu_s,
        )
        outcome.problems += await check_room(
            server.url, ROOM, everyone, reader=stateful
        )
        server.check_alive()
        return outcome
