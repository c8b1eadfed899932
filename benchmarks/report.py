"""results.json (everything, every round) and results.md (the summary table).

Each value in the table is the median over the rounds whose run converged. A
latency metric has a p50 and a p99 row, each the median over rounds of that
round's percentile. The ratio column is ysyncd's median over node's; where
the relay floor ran (fanout and throughput), a second one is ysyncd's over
the relay's: what ysyncd's own work costs beyond its Python stack.

The cluster cases have a table of their own: their columns are the servers of
their reference case (the same load in fanout or throughput), then their own
configurations, and the ratio is two nodes' median over one's. A closing note
gives the overhead per update and the cost model
(:func:`benchmarks.scenarios.cluster.closing_note`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.runner import RunRecord
from benchmarks.scenarios import Case, Metric
from benchmarks.scenarios.cluster import (
    ClusterFanoutCase,
    ClusterThroughputCase,
    closing_note,
)
from benchmarks.scenarios.idle import IdleCase
from benchmarks.servers import FLOOR
from benchmarks.stats import median

__all__ = ["CaseSummary", "summarize", "write_reports"]

RSS_TARGET_ROOMS = 10_000
RSS_TARGET_MIB = 1024.0

NOTES = """\
## How to read this

- Each server runs in its own process on 127.0.0.1; every run starts a fresh
  server. ysyncd runs with its default settings (SQLite, synchronous=FULL,
  commit before echo) with its database in a temporary directory; the Node
  reference server (`@y/websocket-server`) keeps everything in memory.
- Rounds alternate which server goes first. Values are medians over the
  converged rounds; a latency has a p50 and a p99 row, each the median of the
  rounds' percentiles. ↓ lower is better, ↑ higher is better.
- A delivery is one update (or awareness update) received by one client,
  the sender's own echo included; both servers echo to the sender.
- Server CPU is utime+stime of the server process and its child processes
  (ysyncd's worker) from /proc, read at the start and end of each window
  (10 ms resolution).
- Every run checks convergence: each client's document, rebuilt from what it
  sent and received, must equal a fresh reader's, and hold every update sent.

## Fairness caveats

- The load generator is one Python process on the same cores as the server.
  Its CPU is reported ("load generator CPU"); near 100 % of a core, a result is
  bounded by the client, not the server (likely in `throughput`).
- Latency is stamped when the load generator's event loop reads a frame, so it
  includes the client's own queueing, the same for both servers.
- The Node server re-encodes every update it relays and answers sync step 1
  from its in-memory Y.Doc; ysyncd relays the bytes it received. Updates are
  matched by their first struct id, which both keep.
- ysyncd pays for durability (an fsync per group commit) before every echo;
  the Node server persists nothing. Cold join: ysyncd is restarted so its
  first join loads from SQLite; the Node server cannot be restarted (its
  rooms would be gone), so its first join is warm.
- On loopback the kernel's TCP work for delivering a frame is charged to the
  process that writes it, so the server's system time includes delivery to
  the clients; the same for both servers.
- Each writer types in a region of its own within the shared text (its
  updates are made ahead of time, without seeing the others'), so the
  servers integrate every update without a conflict scan, as in a session
  where each user edits their own paragraph.
- Other work on the machine skews everything: compare the load averages at
  the start (machine table) and the end (results.json settings).
- Cluster: `ysyncd-pg` is one ysyncd node on PostgreSQL (no backplane),
  `ysyncd-pg-2` two nodes on it sharing rooms through Redis; both are the
  run's own, on free loopback ports, with a fresh database per run and
  fsync on. Server CPU is every node's (child processes included);
  PostgreSQL's (its process tree) and Redis's are reported apart, per update
  (µs per update = ms per 1,000 updates). Commits and backplane messages are
  the nodes' `/metrics` counters over the window. The `ysyncd` and `node`
  columns are the fanout and throughput runs of the same load.
- Idle CPU: the Node server pings each connection every 30 s, ysyncd every
  20 s and it also ticks every room once a second. A window of a few seconds
  falls between ping rounds; the 30 s window of the 10,000-room case holds
  at least one round of each.
"""


@dataclass(slots=True)
class Row:
    metric: Metric
    rounds: dict[str, list[float]]
    medians: dict[str, float | None]
    ratio: float | None
    #: ysyncd's median over the relay floor's (when the relay ran).
    floor: float | None = None


@dataclass(slots=True)
class CaseSummary:
    case: Case
    #: The table's server columns.
    columns: list[str]
    rows: list[Row]
    #: server -> (converged runs, runs)
    converged: dict[str, tuple[int, int]]
    failures: list[str] = field(default_factory=list)


def _ratio(medians: dict[str, float | None], pair: tuple[str, str]) -> float | None:
    ours, theirs = medians.get(pair[0]), medians.get(pair[1])
    if ours is None or theirs is None or theirs == 0:
        return None
    return ours / theirs


def summarize(
    cases: Sequence[Case], servers: Sequence[str], records: Sequence[RunRecord]
) -> list[CaseSummary]:
    summaries: list[CaseSummary] = []
    for case in cases:
        own = [r for r in records if r.case is case]
        reference = case.reference
        if reference is None:
            runs, columns = own, list(servers)
        elif not own:
            continue  # nothing of its own ran (--servers node)
        else:
            refs = [r for r in records if r.case == reference]
            runs = refs + own
            columns = [*servers, *dict.fromkeys(r.server for r in own)]
        converged = {
            s: (
                sum(1 for r in runs if r.server == s and r.ok),
                sum(1 for r in runs if r.server == s),
            )
            for s in columns
        }
        rows: list[Row] = []
        for metric in case.metrics:
            per_round = {
                s: [
                    r.outcome.values[metric.key]
                    for r in runs
                    if r.server == s and r.ok and r.outcome is not None
                    if metric.key in r.outcome.values
                ]
                for s in columns
            }
            medians = {s: median(v) if v else None for s, v in per_round.items()}
            ratio = _ratio(medians, case.ratio)
            floor = _ratio(medians, (case.ratio[0], FLOOR))
            rows.append(Row(metric, per_round, medians, ratio, floor))
        failures = [_failure(r) for r in own if not r.ok]
        summaries.append(CaseSummary(case, columns, rows, converged, failures))
    return summaries


def _failure(record: RunRecord) -> str:
    where = f"{record.server} round {record.round}"
    if record.error is not None:
        return f"{where}: error: {record.error}"
    assert record.outcome is not None
    shown = record.outcome.problems[:5]
    more = len(record.outcome.problems) - len(shown)
    tail = f" (and {more} more)" if more > 0 else ""
    return f"{where}: not converged: {'; '.join(shown)}{tail}"


def _fmt(value: float | None) -> str:
    if value is None:
        return "—"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _table(summaries: Sequence[CaseSummary]) -> list[str]:
    """One table; its summaries share their columns and ratio."""
    servers = summaries[0].columns
    pair = summaries[0].case.ratio
    with_ratio = pair[0] in servers and pair[1] in servers
    # The floor is ysyncd's stack: a ratio to it says nothing of a cluster.
    with_floor = pair[0] == "ysyncd" and FLOOR in servers
    head = ["scenario", "case", "metric", "unit", *servers]
    if with_ratio:
        head.append(f"{pair[0]}/{pair[1]}")
    if with_floor:
        head.append(f"{pair[0]}/{FLOOR}")
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for summary in summaries:
        case = summary.case
        cells = [case.scenario, case.name, "converged runs", ""]
        cells += [
            f"{ok}/{n}" if n else "—"  # not run (the relay needs no document)
            for ok, n in (summary.converged[s] for s in servers)
        ]
        cells += [""] * (with_ratio + with_floor)
        lines.append("| " + " | ".join(cells) + " |")
        for row in summary.rows:
            arrow = "↑" if row.metric.higher_is_better else "↓"
            cells = ["", "", f"{row.metric.label} {arrow}", row.metric.unit]
            cells += [_fmt(row.medians[s]) for s in servers]
            if with_ratio:
                cells.append("—" if row.ratio is None else f"{row.ratio:.2f}")
            if with_floor:
                cells.append("—" if row.floor is None else f"{row.floor:.2f}")
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def _targets(summaries: Sequence[CaseSummary]) -> list[str]:
    lines: list[str] = []
    for summary in summaries:
        case = summary.case
        if not isinstance(case, IdleCase) or case.room_count < RSS_TARGET_ROOMS:
            continue
        for row in summary.rows:
            value = row.medians.get("ysyncd")
            if row.metric.key == "rss_total_mib" and value is not None:
                verdict = "met" if value < RSS_TARGET_MIB else "MISSED"
                lines.append(
                    f"- ysyncd RSS with {case.room_count:,} idle rooms open:"
                    f" {value:,.0f} MiB (target under {RSS_TARGET_MIB:,.0f} MiB:"
                    f" {verdict})."
                )
    return lines


_EXCEPTION = re.compile(r"^[\w.]*(Error|Exception|Exit)\b")


def _headline(alerts: Sequence[str]) -> list[str]:
    """The first alert line, and the first exception line after it."""
    exception = next((a for a in alerts[1:] if _EXCEPTION.match(a)), None)
    return [*alerts[:1], *([exception] if exception else [])]


def _alerts(
    summaries: Sequence[CaseSummary], records: Sequence[RunRecord]
) -> list[str]:
    lines: list[str] = []
    for summary in summaries:
        for record in records:
            if record.case is not summary.case or not record.server_alert_count:
                continue
            lines.append(
                f"- {record.case.scenario} / {record.case.name}, {record.server}"
                f" round {record.round}: {record.server_alert_count} lines"
                " (all in results.json); the first, and its exception:"
            )
            lines += [f"  - `{line[:200]}`" for line in _headline(record.server_alerts)]
    return lines


def _cluster_medians(
    summaries: Sequence[CaseSummary],
) -> tuple[dict[str, dict[str, float | None]] | None, ...]:
    """The medians of the many-room and the throughput cluster cases."""
    found: dict[type, dict[str, dict[str, float | None]]] = {}
    for summary in summaries:
        medians = {row.metric.key: row.medians for row in summary.rows}
        found.setdefault(type(summary.case), medians)
    return found.get(ClusterFanoutCase), found.get(ClusterThroughputCase)


def render_markdown(
    facts: dict[str, object],
    settings: dict[str, object],
    summaries: Sequence[CaseSummary],
    records: Sequence[RunRecord],
) -> str:
    out = ["# ysyncd benchmark results", ""]
    out.append(f"`{settings['command']}`, {facts['date']}")
    load = (facts.get("loadavg_at_start"), settings.get("loadavg_at_end"))
    out.append(
        f"\nWall time {settings.get('wall_s')} s; load average (1, 5, 15 min)"
        f" at the start {load[0]}, at the end {load[1]}."
    )
    out += ["", "## Machine", "", "| fact | value |", "| --- | --- |"]
    out += [f"| {key} | {value} |" for key, value in facts.items()]
    out += ["", "## Results", ""]
    main = [s for s in summaries if s.case.reference is None]
    cluster = [s for s in summaries if s.case.reference is not None]
    if main:
        out += _table(main)
    targets = _targets(summaries)
    if targets:
        out += ["", *targets]
    if cluster:
        out += ["", "## Cluster: 2 ysyncd nodes against 1", "", *_table(cluster)]
        note = closing_note(*_cluster_medians(cluster))
        if note:
            out += ["", *note]
    alerts = _alerts(summaries, records)
    if alerts:
        out += ["", "## Server warnings and errors", "", *alerts]
    failures = [
        f"- {s.case.scenario} / {s.case.name}: {f}"
        for s in summaries
        for f in s.failures
    ]
    if failures:
        out += ["", "## Failed runs", "", *failures]
    out += ["", NOTES]
    return "\n".join(out)


def _record_json(record: RunRecord) -> dict[str, Any]:
    data: dict[str, Any] = {
        "scenario": record.case.scenario,
        "case": record.case.name,
        "server": record.server,
        "round": record.round,
        "position_in_round": record.position,
        "seconds": round(record.seconds, 3),
        "error": record.error,
        "server_alert_count": record.server_alert_count,
        "server_alerts": record.server_alerts,
    }
    if record.outcome is not None:
        data.update(
            converged=record.outcome.converged,
            values=record.outcome.values,
            info=record.outcome.info,
            problems=record.outcome.problems,
        )
    return data


def write_reports(
    out_dir: Path,
    facts: dict[str, object],
    settings: dict[str, object],
    summaries: Sequence[CaseSummary],
    records: Sequence[RunRecord],
) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    cases = [
        {
            "scenario": s.case.scenario,
            "case": s.case.name,
            "columns": s.columns,
            "ratio_of": list(s.case.ratio),
            "converged": {k: list(v) for k, v in s.converged.items()},
            "failures": s.failures,
            "metrics": [
                {
                    "key": row.metric.key,
                    "label": row.metric.label,
                    "unit": row.metric.unit,
                    "higher_is_better": row.metric.higher_is_better,
                    "rounds": row.rounds,
                    "median": row.medians,
                    "ratio": row.ratio,
                    "floor_ratio": row.floor,
                }
                for row in s.rows
            ],
        }
        for s in summaries
    ]
    document = {
        "machine": facts,
        "settings": settings,
        "cases": cases,
        "runs": [_record_json(r) for r in records],
    }
    json_path = out_dir / "results.json"
    md_path = out_dir / "results.md"
    json_path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    md_path.write_text(render_markdown(facts, settings, summaries, records))
    return json_path, md_path
