"""What ``amp load --parallel`` shows, from partition states: rows/s over the last
seconds (not since the start), a bar per partition and the live worker's line, and the
summary (a failed partition's error redacted, how to finish)."""

from __future__ import annotations

import io

from rich.console import Console

from amp.loop.parallel import PartitionState
from amp.parallel_progress import ParallelProgress, blocks_done, summary
from amp.progress import RateWindow
from amp.streaming.parallel import Partition


def test_rows_per_second_is_measured_over_the_last_seconds() -> None:
    window = RateWindow(seconds=10)
    assert window.add(0.0, 0) == 0.0
    assert window.add(5.0, 5_000) == 1_000
    assert window.add(10.0, 10_000) == 1_000
    assert window.add(15.0, 15_000) == 1_000  # measured from t=5: the last 10 s
    assert window.add(20.0, 15_000) == 500  # a stall shows within the window...
    assert window.add(26.0, 15_000) == 0  # ...and is all that is left once it passes


def _states() -> dict[int, PartitionState]:
    return {
        0: PartitionState(Partition(0, 0, 99), "done", committed=120, rows=1_000),
        1: PartitionState(Partition(1, 100, 199), "running", committed=149, rows=400),
        2: PartitionState(
            Partition(2, 200, 299),
            "failed",
            rows=0,
            error="FATAL: cannot connect to postgresql://amp:S3cretPW@db:5432/x",
        ),
        3: PartitionState(Partition(3, 300, None), "running", committed=310, rows=77),
    }


def test_blocks_done_counts_committed_blocks_of_the_partition_only() -> None:
    states = _states()
    assert [blocks_done(states[w]) for w in range(3)] == [100, 50, 0]


def test_the_display_has_a_bar_per_partition_and_the_live_line() -> None:
    out = io.StringIO()
    console = Console(file=out, width=140, force_terminal=False, color_system=None)
    progress = ParallelProgress("logs", _states(), console=console)
    console.print(progress.get_renderable())
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("partition 0 ") and "100/100 blocks" in lines[0]
    assert "1,000 rows" in lines[0] and lines[0].rstrip().endswith("done")
    assert "50/100 blocks" in lines[1] and "eta" in lines[1]
    assert "0/100 blocks" in lines[2] and lines[2].rstrip().endswith("failed")
    assert lines[3].startswith("live ") and "block 310" in lines[3]
    assert "streaming live" in lines[3]
    assert lines[4] == "logs: 1,477 rows | 0 rows/s | 4 partitions: 1 done, 1 failed, 2 running"


def test_the_summary_names_each_partition_and_how_to_finish() -> None:
    lines = summary("logs", _states(), checkpoints=True, seconds=10.0)
    assert lines[0] == "partition 0 (blocks 0..99): done, 100 of 100 blocks, 1,000 rows"
    assert lines[1] == "partition 1 (blocks 100..199): running, 50 of 100 blocks, 400 rows"
    assert lines[2].startswith("partition 2 (blocks 200..299): failed, 0 of 100 blocks, 0 rows: ")
    assert "S3cretPW" not in lines[2] and "db:5432" in lines[2]
    assert lines[3] == "partition 3 (blocks 300..live): running, up to block 310, 77 rows"
    assert lines[4] == (
        "loaded 1,477 rows into logs: 4 partitions (1 done, 1 failed, 2 running); "
        "10.0 s, 148 rows/s on average"
    )
    assert lines[5].startswith("3 partition(s) not done: run the same command again")
    without = summary("logs", _states(), checkpoints=False, seconds=10.0)
    assert "kept no checkpoints" in without[-1] and "--checkpoint" in without[-1]
