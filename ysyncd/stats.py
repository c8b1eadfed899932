"""Counters, gauges and histograms for ``GET /metrics``, served by
prometheus-client (text format, Prometheus naming: ``_total`` counters,
``_seconds`` histograms).

Limits report through :meth:`Stats.limit_hit`, which counts every hit and logs
only the first of each kind, so a flood cannot flood the log as well.
"""

from __future__ import annotations

import bisect
import itertools
import logging
from collections import Counter, deque
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

__all__ = ["Stats"]

log = logging.getLogger("ysyncd.limits")

# A commit waits on fsync: from a fraction of a millisecond (tmpfs, a
# battery-backed cache) to seconds (a stalled disk).
_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)
_RECENT = 2048


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
        self.webhooks: Counter[str] = Counter()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collected(self))
        self.commit_latency = _Histogram(
            "ysyncd_commit_latency_seconds",
            "From an update's arrival until it is durable in the store.",
        )
        self.delivery_time = _Histogram(
            "ysyncd_delivery_seconds",
            "From an update's arrival until its echo is written to the peers.",
        )
        #: The latest samples, for the dashboard's percentiles.
        self.recent_commits: deque[float] = deque(maxlen=_RECENT)
        self.recent_deliveries: deque[float] = deque(maxlen=_RECENT)

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

    def render(self) -> bytes:
        """The Prometheus exposition text, as prometheus-client writes it."""
        return generate_latest(self.registry)

    def observe(self, commit: float, delivery: float) -> None:
        """A commit's oldest update waited ``commit`` seconds from arrival
        until durable, and ``delivery`` until its echo was written to the
        peers' connections (the committer's ``on_latency``)."""
        self.commit_latency.observe(commit)
        self.delivery_time.observe(delivery)
        self.recent_commits.append(commit)
        self.recent_deliveries.append(delivery)


class _Histogram:
    """A histogram counted here and written by prometheus-client at scrape
    time: observed on every commit, from the event loop only, so it needs
    none of prometheus_client.Histogram's locking (which cost 20 µs a
    commit under a profiler, on a path of a few hundred)."""

    __slots__ = ("counts", "doc", "name", "total")

    def __init__(self, name: str, doc: str) -> None:
        self.name = name
        self.doc = doc
        #: Observations per bucket (not cumulative), the last one +Inf's.
        self.counts = [0] * (len(_BUCKETS) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(_BUCKETS, value)] += 1
        self.total += value

    def family(self) -> HistogramMetricFamily:
        cumulative = list(itertools.accumulate(self.counts))
        bounds = [*map(floatToGoString, _BUCKETS), "+Inf"]
        return HistogramMetricFamily(
            self.name,
            self.doc,
            buckets=list(zip(bounds, cumulative, strict=True)),
            sum_value=self.total,
        )


class _Collected(Collector):
    """The counters and gauges :class:`Stats` keeps, read at scrape time."""

    def __init__(self, stats: Stats) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        stats = self._stats
        for name, read in sorted(stats.gauges.items()):
            yield GaugeMetricFamily(f"ysyncd_{name}", _help(name), value=read())
        counters = dict(stats.counters)
        counters.update((name, read()) for name, read in stats.counter_reads.items())
        for name, value in sorted(counters.items()):
            yield CounterMetricFamily(f"ysyncd_{name}", _help(name), value=value)
        labelled = (
            ("limit_hits", "limit", stats.limits, "Limits hit, by limit."),
            ("auth_refusals", "status", stats.refusals, "Refusals, by HTTP status."),
            ("closes", "code", stats.closes, "Connections closed, by close code."),
            (
                "webhook_deliveries",
                "outcome",
                stats.webhooks,
                "Webhook deliveries, by outcome.",
            ),
        )
        for name, label, counts, text in labelled:
            family = CounterMetricFamily(f"ysyncd_{name}", text, labels=[label])
            for key, value in sorted(counts.items(), key=lambda kv: str(kv[0])):
                family.add_metric([str(key)], value)
            yield family
        yield stats.commit_latency.family()
        yield stats.delivery_time.family()


def _help(name: str) -> str:
    return name.replace("_", " ").capitalize() + "."
