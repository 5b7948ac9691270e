"""amp's Prometheus metrics, in prometheus-client's default registry.

Why the default registry: a process that already exports metrics (its own
``start_http_server`` or a framework's exporter) shows amp's with no extra wiring.

Counters and the commit histogram are pushed by the loop at each event; the gauges
(breaker, rate-limit delay, head lag, last commit) are read from the live loads when a
scrape asks (``LoadsCollector``), so a microbatch pays nothing for them and a breaker
that moved from OPEN to HALF-OPEN by its timeout alone reads right.

Label values are a destination table's name, a worker number and an edge kind
(``server`` or ``destination``): never a URL, a DSN or a token.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from amp.monitoring.loads import LoadRegistry

LOAD_LABELS = ("table", "worker")
EDGE_LABELS = ("table", "worker", "edge")

# prometheus-client appends ``_total`` to a counter's name: these expose exactly
# amp_rows_loaded_total, amp_microbatches_total, amp_reorgs_total, amp_rows_deleted_total
# and amp_retries_total.
ROWS_LOADED = Counter(
    "amp_rows_loaded", "Rows written to the destination and committed", LOAD_LABELS
)
MICROBATCHES = Counter(
    "amp_microbatches", "Microbatches committed (duplicates skipped included)", LOAD_LABELS
)
REORGS = Counter("amp_reorgs", "Reorgs handled (invalidated blocks reverted)", LOAD_LABELS)
ROWS_DELETED = Counter("amp_rows_deleted", "Rows deleted by reorgs", LOAD_LABELS)
RETRIES = Counter(
    "amp_retries", "Transient failures retried, by edge (server or destination)", EDGE_LABELS
)
COMMIT_DURATION = Histogram(
    "amp_commit_duration_seconds",
    "Time to commit one unit of work (its retries and replays included)",
    LOAD_LABELS,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)

BREAKER_OPEN = "amp_circuit_breaker_open"
RATE_LIMIT_DELAY = "amp_rate_limit_delay_ms"
HEAD_LAG = "amp_head_lag_blocks"
LAST_COMMIT = "amp_last_commit_timestamp_seconds"


class LoadsCollector(Collector):
    """The gauges of every running load, read at scrape time from ``loads``."""

    def __init__(self, loads: LoadRegistry) -> None:
        self.loads = loads

    def describe(self) -> Iterator[Metric]:
        """Names only: registering must not read the loads."""
        return iter(self._families())

    def _families(self) -> tuple[GaugeMetricFamily, ...]:
        return (
            GaugeMetricFamily(
                BREAKER_OPEN,
                "1 while the edge's circuit breaker is OPEN (rejecting calls), else 0",
                labels=EDGE_LABELS,
            ),
            GaugeMetricFamily(
                RATE_LIMIT_DELAY,
                "The adaptive rate limiter's delay before each request, in milliseconds",
                labels=EDGE_LABELS,
            ),
            GaugeMetricFamily(
                HEAD_LAG,
                "Blocks between the chain head and the last committed block",
                labels=LOAD_LABELS,
            ),
            GaugeMetricFamily(
                LAST_COMMIT, "Unix time of the load's last commit", labels=LOAD_LABELS
            ),
        )

    def collect(self) -> Iterator[Metric]:
        breaker, delay, lag, last_commit = self._families()
        for monitor in self.loads.monitors():
            labels = [monitor.table, str(monitor.worker)]
            if monitor.state == "running":
                for edge, policy in monitor.edges.items():
                    breaker.add_metric([*labels, edge], 1.0 if policy.breaker.is_open() else 0.0)
                    delay.add_metric([*labels, edge], policy.rate_limiter.get_current_delay())
                head_lag = monitor.head_lag(self.loads.head_of(monitor.table))
                if head_lag is not None:
                    lag.add_metric(labels, head_lag)
            if monitor.last_commit is not None:
                last_commit.add_metric(labels, monitor.last_commit)
        yield from (breaker, delay, lag, last_commit)


def register(loads: LoadRegistry) -> None:
    """Add the gauges of ``loads`` to the default registry (once per process)."""
    REGISTRY.register(LoadsCollector(loads))
