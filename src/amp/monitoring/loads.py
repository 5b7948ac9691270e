"""What every load in this process is doing, for ``/metrics`` and ``/healthz``.

Each load (a streaming load, a parallel load's partition, a batch load) gets a
``LoadMonitor`` keyed by its table and worker when it starts; the loop reports each
event to it with one call (a commit, a reorg, the end). A monitor stays after its load
ended, so that a load that stopped with a FATAL keeps ``/healthz`` at 503 until a load
of the same table and worker starts again (or ``loads.forget(table)``).

Health rules (``LoadRegistry.health``): unhealthy when any load failed (FATAL), when a
running load's circuit breaker is OPEN, or when a running load has not committed for
``stall_seconds`` while behind the chain head. A load that ended normally (a finished
batch load, a done partition, a load stopped on request) is healthy.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from amp.monitoring import metrics
from amp.redact import redact_text
from amp.streaming.resilience import RetryPolicy

RUNNING, DONE, STOPPED, FAILED = "running", "done", "stopped", "failed"

# The head source of a table: the chain head as last read, or None when not known.
HeadSource = Callable[[], int | None]


class LoadMonitor:
    """One load's state and its pre-labelled metrics. Its methods are the loop's hooks:
    each costs a few attribute writes and counter increments."""

    def __init__(self, table: str, worker: int, last_block: int | None = None) -> None:
        self.table = table
        self.worker = worker
        # A bounded load's (a parallel partition's) last block: its head, while the
        # chain's is beyond it.
        self.last_block = last_block
        self.state = RUNNING
        self.error: str | None = None
        self.committed_block: int | None = None
        # The server had nothing more to send at the last commit: the load is at the head.
        self.caught_up = False
        self.last_commit: float | None = None  # Unix time
        self.last_progress = time.monotonic()  # since start, or the last commit
        self.edges: dict[str, RetryPolicy] = {}
        labels = (table, str(worker))
        self._rows = metrics.ROWS_LOADED.labels(*labels)
        self._microbatches = metrics.MICROBATCHES.labels(*labels)
        self._reorgs = metrics.REORGS.labels(*labels)
        self._rows_deleted = metrics.ROWS_DELETED.labels(*labels)
        self._commit_duration = metrics.COMMIT_DURATION.labels(*labels)

    def watch(self, edge: str, policy: RetryPolicy) -> None:
        """Count ``policy``'s retries and show its breaker and limiter as ``edge``."""
        policy.on_retry = metrics.RETRIES.labels(self.table, str(self.worker), edge).inc
        self.edges[edge] = policy

    # -- the loop's hooks ---------------------------------------------------------------

    def committed(
        self, rows: int, microbatches: int, seconds: float, block: int | None, caught_up: bool
    ) -> None:
        """A unit of work committed: ``rows`` written in ``microbatches``, up to ``block``."""
        self._rows.inc(rows)
        self._microbatches.inc(microbatches)
        self._commit_duration.observe(seconds)
        if block is not None:
            self.committed_block = block
        self.caught_up = caught_up
        self._progressed()

    def reorged(self, rows_deleted: int, kept_block: int | None) -> None:
        """A reorg's revert committed; the destination now ends at ``kept_block``."""
        self._reorgs.inc()
        self._rows_deleted.inc(rows_deleted)
        self.committed_block = kept_block
        self.caught_up = False
        self._progressed()

    def progressed(self) -> None:
        """Work that commits later went well (a batch load's batch arrived)."""
        self.last_progress = time.monotonic()

    def failed(self, error: BaseException) -> None:
        self.state = FAILED
        self.error = redact_text(str(error))

    def ended(self, done: bool) -> None:
        """The load ended without a failure: ``done`` (all its blocks) or stopped."""
        if self.state == RUNNING:
            self.state = DONE if done else STOPPED

    def _progressed(self) -> None:
        self.last_commit = time.time()
        self.last_progress = time.monotonic()

    # -- what healthz and the gauges read -------------------------------------------------

    def head_lag(self, head: int | None) -> int | None:
        """Blocks behind ``head`` (the chain head when known); 0 at the head; None when
        it cannot be told."""
        head = self._own_head(head)
        if head is not None:
            if self.committed_block is None:
                return None
            return max(head - self.committed_block, 0)
        return 0 if self.caught_up else None

    def _own_head(self, head: int | None) -> int | None:
        if head is None or self.last_block is None:
            return head
        return min(head, self.last_block)

    def behind(self, head: int | None) -> bool:
        head = self._own_head(head)
        if head is not None:
            return self.committed_block is None or self.committed_block < head
        return not self.caught_up

    def problem(self, head: int | None, stall_seconds: float, now: float) -> str | None:
        """Why this load makes the process unhealthy, or None."""
        if self.state == FAILED:
            return f"stopped with a FATAL error: {self.error}"
        if self.state != RUNNING:
            return None
        for edge, policy in self.edges.items():
            if policy.breaker.is_open():
                return f"the {edge} circuit breaker is OPEN"
        idle = now - self.last_progress
        if idle > stall_seconds and self.behind(head):
            return f"no commit for {idle:.0f} s while behind the chain head"
        return None

    def report(self, head: int | None, stall_seconds: float, now: float) -> dict[str, Any]:
        problem = self.problem(head, stall_seconds, now)
        return {
            "table": self.table,
            "worker": self.worker,
            "state": self.state,
            "healthy": problem is None,
            "problem": problem,
            "last_commit": self.last_commit,
            "committed_block": self.committed_block,
            "head_lag": self.head_lag(head),
        }


class LoadRegistry:
    """The loads of this process by (table, worker), and the chain head per table."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._monitors: dict[tuple[str, int], LoadMonitor] = {}
        self._heads: dict[str, HeadSource] = {}

    def start(self, monitor: LoadMonitor) -> LoadMonitor:
        """``monitor``'s load starts now; it replaces its table and worker's earlier one."""
        monitor.state = RUNNING
        monitor.last_progress = time.monotonic()
        with self._lock:
            self._monitors[(monitor.table, monitor.worker)] = monitor
        return monitor

    def monitor(self, table: str, worker: int = 0) -> LoadMonitor | None:
        """The load of ``table`` and ``worker`` (the last one started), if any."""
        with self._lock:
            return self._monitors.get((table, worker))

    def monitors(self) -> list[LoadMonitor]:
        with self._lock:
            return list(self._monitors.values())

    def forget(self, table: str | None = None) -> None:
        """Drop the loads of ``table`` (all loads: None), say after handling a failure."""
        with self._lock:
            for key in [key for key in self._monitors if table is None or key[0] == table]:
                del self._monitors[key]

    def watch_head(self, table: str, source: HeadSource) -> None:
        """Where the chain head of ``table``'s loads is read (the CLI's head tracker)."""
        with self._lock:
            self._heads[table] = source

    def unwatch_head(self, table: str) -> None:
        with self._lock:
            self._heads.pop(table, None)

    @contextmanager
    def watching_head(self, table: str, source: HeadSource | None) -> Iterator[None]:
        """``watch_head`` for the duration of a ``with`` block (nothing for None)."""
        if source is None:
            yield
            return
        self.watch_head(table, source)
        try:
            yield
        finally:
            self.unwatch_head(table)

    def head_of(self, table: str) -> int | None:
        source = self._heads.get(table)
        return source() if source is not None else None

    def health(self, stall_seconds: float) -> tuple[bool, dict[str, Any]]:
        """Whether every load is healthy, and the ``/healthz`` body saying why."""
        now = time.monotonic()
        reports = [
            monitor.report(self.head_of(monitor.table), stall_seconds, now)
            for monitor in self.monitors()
        ]
        healthy = all(report["healthy"] for report in reports)
        return healthy, {"healthy": healthy, "stall_seconds": stall_seconds, "loads": reports}


# The process's loads: the loop reports to it, serve_metrics reads it.
loads = LoadRegistry()
metrics.register(loads)
