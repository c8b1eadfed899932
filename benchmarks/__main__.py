"""``python -m benchmarks``: ysyncd against the Node reference server.

Exit codes: 0 when every run converged, 1 when a run failed or did not
converge, 2 when the benchmark could not start (Node.js or npm missing; or
PostgreSQL or Redis, for the cluster scenario named in ``--scenarios``), 130
when interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks.machine import machine_facts
from benchmarks.report import summarize, write_reports
from benchmarks.runner import RunRecord, run_all
from benchmarks.scenarios import SCENARIOS, Case, RunContext, build_cases
from benchmarks.servers import (
    BENCH_DIR,
    SERVERS,
    ServerSpec,
    SetupError,
    ensure_node_modules,
)
from benchmarks.services import Services, missing_services

DEFAULT_ROUNDS = 3


def _names(values: Sequence[str], allowed: Sequence[str], what: str) -> list[str]:
    names = [n for v in values for n in v.split(",") if n]
    unknown = [n for n in names if n not in allowed]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown {what}: {', '.join(unknown)} (choose from {', '.join(allowed)})"
        )
    return list(dict.fromkeys(names))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=(
            "Run the same load against ysyncd (durable, default settings) and the"
            " Node reference server (@y/websocket-server, in memory), alternately,"
            " and write results.json and results.md."
        ),
    )
    parser.add_argument(
        "--servers",
        default="ysyncd,node,relay",
        help="comma-separated servers to run (default: ysyncd,node,relay; relay"
        " is the floor, and runs only where a case needs no document)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=None,
        help=f"rounds per case (default: {DEFAULT_ROUNDS}, or 1 with --quick)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="shrink every scenario so that the whole run takes about a minute",
    )
    parser.add_argument(
        "--scenarios",
        nargs="+",
        default=None,
        metavar="NAME",
        help=(
            f"scenarios to run, comma- or space-separated: {', '.join(SCENARIOS)}"
            " (default: all; cluster only where PostgreSQL and Redis are installed)"
        ),
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=BENCH_DIR / "results",
        help="directory for results.json and results.md (default: benchmarks/results)",
    )
    args = parser.parse_args(argv)
    #: Scenarios named on the command line must run; the default's may be
    #: skipped (cluster, without PostgreSQL or Redis).
    args.scenarios_named = args.scenarios is not None
    try:
        args.servers = _names([args.servers], list(SERVERS), "server")
        args.scenarios = _names(
            args.scenarios or list(SCENARIOS), SCENARIOS, "scenario"
        )
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    if not args.servers or not args.scenarios:
        parser.error("nothing to run")
    if args.rounds is None:
        args.rounds = 1 if args.quick else DEFAULT_ROUNDS
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    return args


def _raise_fd_limit() -> None:
    # The idle scenario holds 10,000 connections; children inherit the limit.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def _run(
    cases: Sequence[Case], specs: Sequence[ServerSpec], rounds: int, ctx: RunContext
) -> list[RunRecord]:
    """Every run, then PostgreSQL and Redis stopped (if a cluster case started them)."""
    try:
        return await run_all(cases, specs, rounds, ctx)
    finally:
        await ctx.services.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if not Path("/proc/self/stat").exists():
        _log("the benchmarks read server CPU and memory from /proc: Linux only")
        return 2
    if "node" in args.servers:
        try:
            ensure_node_modules()
        except SetupError as exc:
            _log(f"error: {exc}")
            return 2
    if "cluster" in args.scenarios and "ysyncd" in args.servers:
        missing = missing_services()
        if missing and args.scenarios_named:
            _log(f"error: the cluster scenario needs {', '.join(missing)}")
            return 2
        if missing:
            _log(f"skipping the cluster scenario: no {', '.join(missing)}")
            args.scenarios.remove("cluster")
    _raise_fd_limit()
    specs = [SERVERS[name] for name in args.servers]
    cases = build_cases(args.scenarios, quick=args.quick)
    facts = machine_facts()
    command = "python -m benchmarks " + shlex.join(
        sys.argv[1:] if argv is None else argv
    )
    settings: dict[str, object] = {
        "command": command.strip(),
        "servers": args.servers,
        "rounds": args.rounds,
        "quick": args.quick,
        "scenarios": args.scenarios,
    }
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ysyncd-bench-") as workdir:
        ctx = RunContext(Path(workdir), _log, Services(_log))
        try:
            records = asyncio.run(_run(cases, specs, args.rounds, ctx))
        except KeyboardInterrupt:
            _log("interrupted; the servers were stopped, no results written")
            return 130
    settings["wall_s"] = round(time.monotonic() - started, 1)
    settings["loadavg_at_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    summaries = summarize(cases, args.servers, records)
    json_path, md_path = write_reports(args.out, facts, settings, summaries, records)
    print(md_path.read_text())
    failed = [r for r in records if not r.ok]
    _log(f"wrote {json_path} and {md_path} in {settings['wall_s']} s")
    if failed:
        _log(f"{len(failed)} of {len(records)} runs failed or did not converge")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
