"""Live progress of a load in the terminal: rows, rows/s, current block, distance to head.

Why a separate head tracker: the stream says which block was just loaded but not how
far the chain goes, so a background thread asks the server for the head now and then
(``SELECT max(_block_num)`` on a table the query reads) without slowing the load.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass, field

from rich.console import Console
from rich.live import Live
from rich.text import Text

from amp.flight.transport import FlightTransport
from amp.streaming.pipeline import LoadResult
from amp.streaming.reader import batch_events

log = logging.getLogger("amp.progress")

# One console for the live line and for log records, so that logs print above the line.
STDERR = Console(stderr=True)

_TABLE_REFERENCE = re.compile(r"\b([A-Za-z_][A-Za-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*)\b")


def head_query_for(sql: str) -> str | None:
    """A query for the chain head, on the first ``dataset.table`` the SQL names."""
    match = _TABLE_REFERENCE.search(sql)
    if match is None:
        return None
    return f"SELECT max(_block_num) AS head FROM {match.group(1)}"


class HeadTracker(threading.Thread):
    """Polls the server for the chain head every ``interval`` seconds."""

    def __init__(self, transport: FlightTransport, query: str, interval: float = 5.0) -> None:
        super().__init__(name="amp-head-tracker", daemon=True)
        self.transport = transport
        self.query = query
        self.interval = interval
        self.head: int | None = None
        self._stop = threading.Event()

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                stream = self.transport.execute(self.query, streaming=False, timeout=10)
                try:
                    for event in batch_events(stream):
                        value = event.batch.column(0)[0].as_py()
                        if value is not None:
                            self.head = int(value)
                finally:
                    stream.close()
            except Exception as exc:  # progress is best effort; the load goes on
                log.debug("head query failed: %s", exc)
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()


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

    @property
    def rows_per_second(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.rows / elapsed if elapsed > 0 else 0.0


def render(stats: LoadStats, head: int | None, table: str) -> Text:
    block = f"{stats.current_block:,}" if stats.current_block is not None else "-"
    if head is not None and stats.current_block is not None:
        behind = max(head - stats.current_block, 0)
        distance = f"head {head:,} ({behind:,} behind)"
    else:
        distance = "head ?"
    return Text(
        f"{table}: {stats.rows:,} rows | {stats.rows_per_second:,.0f} rows/s | "
        f"block {block} | {distance} | microbatches {stats.microbatches:,} | "
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
            self._live = Live(self._render(), console=self.console, refresh_per_second=4)
            self._live.__enter__()
        return self

    def _render(self) -> Text:
        return render(self.stats, self.head.head if self.head else None, self.table)

    def update(self, result: LoadResult) -> None:
        self.stats.record(result)
        if self._live is not None:
            self._live.update(self._render())

    def __exit__(self, *exc_info: object) -> None:
        if self._live is not None:
            self._live.update(self._render())
            self._live.__exit__(None, None, None)
            if not self.console.is_terminal:  # off a terminal the last frame has no newline
                self.console.line()
        if self.head is not None:
            self.head.stop()
