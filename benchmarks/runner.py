"""Runs every case against every server, round after round, alternating order.

Round 1 runs the servers in the order given, round 2 in reverse, and so on, so
neither always goes first (a warmer page cache, a cooler CPU). Every run starts
its own server process, so runs share nothing but the cached inputs (prepared
updates, and ysyncd's cold-join database).

A run that raises or times out is recorded with its error and the others go on;
the exit code reports it.
"""

from __future__ import annotations

import asyncio
import gc
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field

from benchmarks.scenarios import Case, Outcome, RunContext
from benchmarks.servers import ServerSpec

__all__ = ["RunRecord", "run_all"]


@dataclass(slots=True)
class RunRecord:
    case: Case
    server: str
    round: int
    #: 0 when this server went first in its round.
    position: int
    seconds: float
    outcome: Outcome | None = None
    error: str | None = None
    #: Warning and error lines the server printed during this run.
    server_alerts: list[str] = field(default_factory=list)
    server_alert_count: int = 0

    @property
    def ok(self) -> bool:
        return self.outcome is not None and self.outcome.converged


def _order(specs: Sequence[ServerSpec], round_index: int) -> list[ServerSpec]:
    return list(specs) if round_index % 2 == 0 else list(reversed(specs))


def _summary(record: RunRecord) -> str:
    if record.error is not None:
        return f"ERROR {record.error.splitlines()[-1]}"
    assert record.outcome is not None
    shown = ", ".join(
        f"{m.key}={record.outcome.values[m.key]:.4g}"
        for m in record.case.metrics
        if m.key in record.outcome.values
    )
    if not record.outcome.converged:
        return f"NOT CONVERGED: {record.outcome.problems[0]} | {shown}"
    return shown


async def run_all(
    cases: Sequence[Case], specs: Sequence[ServerSpec], rounds: int, ctx: RunContext
) -> list[RunRecord]:
    records: list[RunRecord] = []
    for number, case in enumerate(cases, 1):
        case_rounds = case.rounds or rounds
        case_specs = case.servers(specs)
        for round_index in range(case_rounds):
            for position, spec in enumerate(_order(case_specs, round_index)):
                ctx.log(
                    f"[{number}/{len(cases)}] {case.scenario}: {case.name}"
                    f" | {spec.name} round {round_index + 1}/{case_rounds}"
                )
                record = await _run_one(case, spec, round_index, position, ctx)
                records.append(record)
                ctx.log(f"    {record.seconds:.1f} s: {_summary(record)}")
    return records


async def _run_one(
    case: Case, spec: ServerSpec, round_index: int, position: int, ctx: RunContext
) -> RunRecord:
    gc.collect()
    spec.alerts.clear()
    spec.alert_count = 0
    started = time.monotonic()
    record = RunRecord(case, spec.name, round_index + 1, position, 0.0)
    deadline = asyncio.timeout(case.timeout_s)
    try:
        async with deadline:
            record.outcome = await case.run(spec, ctx)
    except Exception as exc:  # noqa: BLE001 - one failed run must not stop the rest
        if isinstance(exc, TimeoutError) and deadline.expired():
            record.error = f"timed out after {case.timeout_s:.0f} s"
        else:
            shown: BaseException = exc
            # A task group's error says little; its first sub-error says what.
            while isinstance(shown, BaseExceptionGroup) and shown.exceptions:
                shown = shown.exceptions[0]
            record.error = "".join(traceback.format_exception_only(shown)).strip()
            ctx.log("".join(traceback.format_exception(exc)))
    record.seconds = time.monotonic() - started
    record.server_alerts = list(spec.alerts)
    record.server_alert_count = spec.alert_count
    return record
