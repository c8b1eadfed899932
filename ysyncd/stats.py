"""Counters and gauges for ``GET /metrics`` (Prometheus text format).

Limits report through :meth:`Stats.limit_hit`, which counts every hit and logs
only the first of each kind, so a flood cannot flood the log as well.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable

__all__ = ["Stats"]

log = logging.getLogger("ysyncd.limits")


class Stats:
    """Process-wide counters; gauges are read from callbacks at scrape time."""

    def __init__(self) -> None:
        self.counters: Counter[str] = Counter()
        self.limits: Counter[str] = Counter()
        self.closes: Counter[int] = Counter()
        self.refusals: Counter[int] = Counter()
        self.gauges: dict[str, Callable[[], float]] = {}
        #: Counters kept elsewhere (e.g. by the committer), read at scrape time.
        self.counter_reads: dict[str, Callable[[], int]] = {}

    def count(self, name: str, value: int = 1) -> None:
        self.counters[name] += value

    def limit_hit(self, limit: str, detail: str) -> None:
        """Count a limit; log it the first time only."""
        if not self.limits[limit]:
            log.warning(
                "limit %s hit: %s (further hits are counted in /metrics, not logged)",
                limit,
                detail,
            )
        self.limits[limit] += 1

    def refused(self, status: int, detail: str) -> None:
        """Count a connection refused by auth; log the first of each status."""
        if not self.refusals[status]:
            log.warning(
                "refused a connection with HTTP %d: %s (further refusals are "
                "counted in /metrics and logged at debug level)",
                status,
                detail,
            )
        else:
            log.debug("refused a connection with HTTP %d: %s", status, detail)
        self.refusals[status] += 1

    def failed(self, where: str, exc: BaseException) -> None:
        """Count an unexpected exception; log its first traceback at error
        level and later ones at debug level, so one client cannot flood the
        log with them."""
        if not self.counters["internal_errors"]:
            log.error(
                "unexpected error %s (further ones are counted in /metrics and "
                "logged at debug level)",
                where,
                exc_info=exc,
            )
        else:
            log.debug("unexpected error %s", where, exc_info=exc)
        self.counters["internal_errors"] += 1

    def closed(self, code: int) -> None:
        self.closes[code] += 1

    def render(self) -> str:
        """The Prometheus exposition text."""
        lines: list[str] = []
        for name, read in sorted(self.gauges.items()):
            lines += [f"# TYPE ysyncd_{name} gauge", f"ysyncd_{name} {read():g}"]
        counters = dict(self.counters)
        counters.update((name, read()) for name, read in self.counter_reads.items())
        for name, value in sorted(counters.items()):
            lines += [
                f"# TYPE ysyncd_{name}_total counter",
                f"ysyncd_{name}_total {value}",
            ]
        lines.append("# TYPE ysyncd_limit_hits_total counter")
        lines += [
            f'ysyncd_limit_hits_total{{limit="{k}"}} {v}'
            for k, v in sorted(self.limits.items())
        ]
        lines.append("# TYPE ysyncd_auth_refusals_total counter")
        lines += [
            f'ysyncd_auth_refusals_total{{status="{k}"}} {v}'
            for k, v in sorted(self.refusals.items())
        ]
        lines.append("# TYPE ysyncd_closes_total counter")
        lines += [
            f'ysyncd_closes_total{{code="{k}"}} {v}'
            for k, v in sorted(self.closes.items())
        ]
        return "\n".join(lines) + "\n"
