"""Live progress of a load in the terminal: rows, rows/s, current block, distance to head.

Why a separate head tracker: the stream says which block was just loaded but not how
far the chain goes, so a background thread asks the server for the head every second
(``SELECT max(_block_num)`` on a table the query reads) without slowing the load. A
block the load commits past the last polled head is a head the poll has not seen yet,
so the tracker takes it as the head at least: the line never shows a block beyond it.

Why rows/s over a window: an average since the start hides a stall or a slow server for
minutes; the speed of the last seconds shows it at once. The average belongs in the
summary at the end.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.text import Text

from amp.flight.transport import FlightTransport
from amp.streaming.reader import batch_events
from amp.streaming.results import LoadResult

log = logging.getLogger("amp.progress")

# One console for the live line and for log records, so that logs print above the line.
STDERR = Console(stderr=True)

# Rows/s is measured over this many seconds: the speed now, not the average since start.
RATE_SECONDS = 5.0
# How often the head tracker asks the server for the chain head.
HEAD_INTERVAL_SECONDS = 1.0

_TABLE_REFERENCE = re.compile(r"\b([A-Za-z_][A-Za-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*)\b")


def head_query_for(sql: str) -> str | None:
    """A query for the chain head, on the first ``dataset.table`` the SQL names."""
    match = _TABLE_REFERENCE.search(sql)
    if match is None:
        return None
    return f"SELECT max(_block_num) AS head FROM {match.group(1)}"


class HeadTracker(threading.Thread):
    """Polls the server for the chain head every ``interval`` seconds; ``observe`` raises
    the head to a block the load committed, so it is never below a loaded block."""

    def __init__(
        self, transport: FlightTransport, query: str, interval: float = HEAD_INTERVAL_SECONDS
    ) -> None:
        super().__init__(name="amp-head-tracker", daemon=True)
        self.transport = transport
        self.query = query
        self.interval = interval
        self._polled: int | None = None
        self._loaded: int | None = None
        self._stopping = threading.Event()

    @property
    def head(self) -> int | None:
        """The chain head as known: the last polled one, or a loaded block past it."""
        polled, loaded = self._polled, self._loaded
        if polled is None or loaded is None:
            return loaded if polled is None else polled
        return max(polled, loaded)

    def observe(self, block: int | None) -> None:
        """The load committed up to ``block``: the chain reaches that far at least."""
        if block is not None and (self._loaded is None or block > self._loaded):
            self._loaded = block

    def run(self) -> None:
        while not self._stopping.is_set():
            try:
                stream = self.transport.execute(self.query, streaming=False, timeout=10)
                try:
                    for event in batch_events(stream):
                        value = event.batch.column(0)[0].as_py()
                        if value is not None:
                            self._polled = int(value)
                finally:
                    stream.close()
            except Exception as exc:  # progress is best effort; the load goes on
                log.debug("head query failed: %s", exc)
            self._stopping.wait(self.interval)

    def stop(self) -> None:
        self._stopping.set()


class RateWindow:
    """The rate of a growing count over the last ``seconds`` (rows/s of a load or of one
    partition), from samples taken whenever the display renders."""

    def __init__(self, seconds: float = RATE_SECONDS) -> None:
        self.seconds = seconds
        self._samples: deque[tuple[float, int]] = deque()

    def add(self, now: float, total: int) -> float:
        """Record ``total`` at time ``now``; the rate since the sample that opens the
        window (the newest one at least ``seconds`` old, else the oldest)."""
        samples = self._samples
        samples.append((now, total))
        while len(samples) > 1 and samples[1][0] <= now - self.seconds:
            samples.popleft()
        start, first = samples[0]
        return (total - first) / (now - start) if now > start else 0.0


def position(block: int | None, head: int | None) -> str:
    """Where a load stands: its last committed block and the chain head, which is never
    shown below the block (the head is polled; the load may have just passed it)."""
    if block is None:
        return "no block yet"
    if head is None:
        return f"block {block:,}"
    if block >= head:
        return f"block {block:,} of head {block:,} (at the head)"
    return f"block {block:,} of head {head:,} ({head - block:,} behind)"


@dataclass
class LoadStats:
    """Totals of a load so far, updated from its LoadResults."""

    started: float = field(default_factory=time.monotonic)
    rows: int = 0
    microbatches: int = 0
    reorgs: int = 0
    rows_deleted: int = 0
    current_block: int | None = None
    failures: int = 0
    rate: RateWindow = field(default_factory=RateWindow)

    def record(self, result: LoadResult) -> None:
        operation = result.metadata.get("operation")
        if not result.success:
            self.failures += 1
            return
        if operation == "reorg":
            self.reorgs += 1
            self.rows_deleted += int(result.metadata.get("rows_deleted", 0))
            return
        self.rows += result.rows_loaded
        if result.metadata.get("ranges_complete"):
            self.microbatches += 1
        ranges = result.metadata.get("block_ranges") or []
        if ranges:
            self.current_block = max(int(r["end"]) for r in ranges)

    def recent_rows_per_second(self, now: float) -> float:
        """Rows/s over the last ``RATE_SECONDS`` (records a sample: call once a frame)."""
        return self.rate.add(now, self.rows)


def pace(rows: int, seconds: float) -> str:
    """A whole load's pace, for its summary line: ``12.3 s, 4,567 rows/s on average``."""
    rate = rows / seconds if seconds > 0 else 0.0
    return f"{seconds:,.1f} s, {rate:,.0f} rows/s on average"


def render(stats: LoadStats, head: int | None, table: str, now: float) -> Text:
    return Text(
        f"{table}: {stats.rows:,} rows | {stats.recent_rows_per_second(now):,.0f} rows/s | "
        f"{position(stats.current_block, head)} | microbatches {stats.microbatches:,} | "
        f"reorgs {stats.reorgs}"
    )


class ProgressDisplay:
    """A one-line live status on stderr (plain lines when stderr is not a terminal)."""

    def __init__(
        self,
        table: str,
        head: HeadTracker | None,
        console: Console | None = None,
        disabled: bool = False,
    ) -> None:
        self.table = table
        self.head = head
        self.stats = LoadStats()
        self.console = console or STDERR
        self.disabled = disabled
        self._live: Live | None = None

    def __enter__(self) -> ProgressDisplay:
        if self.head is not None:
            self.head.start()
        if not self.disabled:
            # Rendered on every refresh, not only per result: rows/s falls during a stall.
            self._live = Live(
                console=self.console, refresh_per_second=4, get_renderable=self.render
            )
            self._live.__enter__()
        return self

    def render(self) -> Text:
        """The line as it stands (a ``ProgressBoard`` draws it among others)."""
        head = self.head.head if self.head else None
        return render(self.stats, head, self.table, time.monotonic())

    def update(self, result: LoadResult) -> None:
        self.stats.record(result)
        if self.head is not None:
            self.head.observe(self.stats.current_block)
        if self._live is not None:
            self._live.refresh()

    def __exit__(self, *exc_info: object) -> None:
        if self._live is not None:
            self._live.__exit__(None, None, None)
            if not self.console.is_terminal:  # off a terminal the last frame has no newline
                self.console.line()
        if self.head is not None:
            self.head.stop()


class ProgressBoard:
    """One live display of several loads' lines on stderr, redrawn four times a second.

    Why one: rich draws one live display per console; each load's own ``Live`` would
    fight over the same lines. The loads' displays keep their stats (and head trackers),
    shown here instead of by themselves (``disabled``). ``lines`` gives each load's
    renderable as it stands."""

    def __init__(
        self,
        lines: Callable[[], list[RenderableType]],
        console: Console | None = None,
        disabled: bool = False,
    ) -> None:
        self.lines = lines
        self.console = console or STDERR
        self.disabled = disabled
        self._live: Live | None = None

    def _group(self) -> Group:
        return Group(*self.lines())

    def __enter__(self) -> ProgressBoard:
        if not self.disabled:
            self._live = Live(
                get_renderable=self._group, console=self.console, refresh_per_second=4
            )
            self._live.__enter__()
        return self

    def stop(self) -> None:
        """Draw the last frame and leave the display (idempotent)."""
        live, self._live = self._live, None
        if live is not None:
            live.refresh()
            live.__exit__(None, None, None)
            if not self.console.is_terminal:  # off a terminal the last frame has no newline
                self.console.line()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
