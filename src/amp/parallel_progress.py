"""What ``amp load --parallel`` shows: a bar per partition, the live worker's line, and a
summary at the end.

Why it reads the partitions' states and not the results: a result tells what one
microbatch did; the states, which the workers update, tell where each partition stands,
including partitions finished before a restart, partitions waiting for a worker, and
workers between two results. The display renders them a few times a second on rich's
refresh thread, so rates and ETAs move even while no result arrives.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Mapping
from types import TracebackType

from rich.console import Console, RenderableType
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TaskID, TextColumn
from rich.table import Column
from rich.text import Text

from amp.loop.parallel import PartitionState
from amp.progress import STDERR, HeadTracker, RateWindow, pace, position
from amp.redact import redact_text

# Blocks/s for the ETA is measured over this many seconds (rich's speed estimate).
ETA_SECONDS = 30.0


def blocks_done(state: PartitionState) -> int:
    """Blocks of a bounded partition that are committed (a resumed one starts above 0)."""
    partition = state.partition
    if state.committed is None or state.committed < partition.start:
        return 0
    last = state.committed if partition.end is None else min(state.committed, partition.end)
    return last - partition.start + 1


def blocks_total(state: PartitionState) -> int | None:
    partition = state.partition
    return None if partition.end is None else partition.end - partition.start + 1


class _BlocksColumn(ProgressColumn):
    """``done/total blocks`` of a partition; the live worker's block and the head."""

    def render(self, task: Task) -> Text:
        if task.total is not None:
            return Text(f"{int(task.completed):,}/{int(task.total):,} blocks")
        return Text(position(task.fields["committed"], task.fields["head"]))


class _StatusColumn(ProgressColumn):
    """The ETA of a running bounded partition, else what the partition is doing."""

    def render(self, task: Task) -> Text:
        status: str = task.fields["status"]
        if status != "running":
            return Text(status, style="red" if status == "failed" else "")
        if task.total is None:
            return Text("streaming live")
        eta = task.time_remaining
        if eta is None:
            return Text("eta -:--:--")
        minutes, seconds = divmod(int(eta), 60)
        hours, minutes = divmod(minutes, 60)
        return Text(f"eta {hours:d}:{minutes:02d}:{seconds:02d}")


class ParallelProgress(Progress):
    """The live display of a parallel load over ``partitions`` (``LoadRun.partitions``,
    filled when the load starts); ``head`` feeds the live worker's distance to the head."""

    def __init__(
        self,
        table: str,
        partitions: Mapping[int, PartitionState],
        head: HeadTracker | None = None,
        console: Console | None = None,
        disabled: bool = False,
    ) -> None:
        # Set first: rich renders once while it builds the display.
        self.table = table
        self.partitions = partitions
        self.head = head
        self._rows: dict[int, tuple[TaskID, RateWindow]] = {}
        self._total = RateWindow()
        self._syncing = True  # no tasks until rich's own state is built
        super().__init__(
            TextColumn("{task.description}", table_column=Column(no_wrap=True)),
            BarColumn(bar_width=20),
            _BlocksColumn(table_column=Column(no_wrap=True)),
            TextColumn("{task.fields[rows]:>11,} rows", table_column=Column(no_wrap=True)),
            TextColumn("{task.fields[rate]:>8,.0f} rows/s", table_column=Column(no_wrap=True)),
            _StatusColumn(table_column=Column(no_wrap=True)),
            console=console or STDERR,
            refresh_per_second=4,
            speed_estimate_period=ETA_SECONDS,
            disable=disabled,
        )
        self._syncing = False

    def __enter__(self) -> ParallelProgress:
        if self.head is not None:
            self.head.start()
        super().__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        super().__exit__(exc_type, exc, traceback)
        if self.head is not None:
            self.head.stop()

    def get_renderables(self) -> Iterable[RenderableType]:
        now = time.monotonic()
        states = dict(self.partitions)  # one atomic copy: the load adds partitions as it plans
        if not self._syncing:  # add_task renders again, from inside this
            self._syncing = True
            try:
                for worker, state in sorted(states.items()):
                    self._show(worker, state, now)
            finally:
                self._syncing = False
        yield self.make_tasks_table(self.tasks)
        rows = sum(state.rows for state in states.values())
        counts = Counter(state.status for state in states.values())
        where = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
        yield Text(
            f"{self.table}: {rows:,} rows | {self._total.add(now, rows):,.0f} rows/s | "
            f"{len(states)} partitions{': ' + where if where else ''}"
        )

    def _show(self, worker: int, state: PartitionState, now: float) -> None:
        if worker not in self._rows:
            window = RateWindow()
            # Added at its committed blocks, so a resumed partition's ETA counts no jump.
            task = self.add_task(
                "live" if state.partition.live else f"partition {worker}",
                total=blocks_total(state),
                completed=blocks_done(state),
                rows=state.rows,
                rate=window.add(now, state.rows),
                status=state.status,
                committed=state.committed,
                head=None,
            )
            self._rows[worker] = (task, window)
            return
        task, window = self._rows[worker]
        if self.head is not None and state.partition.live:
            self.head.observe(state.committed)
        self.update(
            task,
            completed=blocks_done(state),
            rows=state.rows,
            rate=window.add(now, state.rows),
            status=state.status,
            committed=state.committed,
            head=self.head.head if self.head is not None else None,
        )


def summary(
    table: str, states: Mapping[int, PartitionState], checkpoints: bool, seconds: float
) -> list[str]:
    """The lines printed when a parallel load ends: each partition's outcome, the totals
    with the average pace over the load's ``seconds``, and, unless every partition is
    done, how to finish."""
    lines = []
    for _, state in sorted(states.items()):
        partition = state.partition
        total = blocks_total(state)
        if total is not None:
            blocks = f"{blocks_done(state):,} of {total:,} blocks"
        elif state.committed is not None:
            blocks = f"up to block {state.committed:,}"
        else:
            blocks = "no block"
        line = f"{partition.describe()}: {state.status}, {blocks}, {state.rows:,} rows"
        if state.error is not None:
            line += f": {redact_text(state.error)}"
        lines.append(line)
    counts = Counter(state.status for state in states.values())
    where = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    rows = sum(state.rows for state in states.values())
    lines.append(
        f"loaded {rows:,} rows into {table}: {len(states)} partitions ({where}); "
        f"{pace(rows, seconds)}"
    )
    unfinished = len(states) - counts["done"]
    if unfinished and checkpoints:
        lines.append(
            f"{unfinished} partition(s) not done: run the same command again to go on; done "
            "partitions are skipped and the others resume from their checkpoints"
        )
    elif unfinished:
        lines.append(
            f"{unfinished} partition(s) not done, and this load kept no checkpoints: running "
            "it again loads every partition again (rows twice); load into a new table, with "
            "--checkpoint to resume next time"
        )
    return lines
