"""Streaming load into Delta Lake: the loader's rows/s against delta-rs alone, in one run,
and what commit grouping does to the number of commits and data files.

The bare runs write the same rows of the same server microbatches (captured once from
the stream, held as Arrow in memory, already in the Delta types the loader stores:
``amp.loaders.delta.types``) with ``deltalake.write_deltalake``: one append commit per
microbatch, and all of them in one commit (the limit of the library on this machine).
The loader runs stream the query from a dev server in another process into a fresh
table from block 0 until the head is committed, with checkpoints on (each commit also
carries the checkpoint and processed range), with commit grouping on (the default)
and off. After each run the table's commits and data files are counted; the last
grouping-off table is then compacted (``DeltaTable.optimize.compact()``).

    .venv/bin/python bench/delta_throughput.py --blocks 1000 --txs-per-block 50 --repeat 3

Tables go to a temporary directory that is deleted afterwards.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
from deltalake import DeltaTable, write_deltalake

from amp.client import Client
from amp.loaders.delta.types import delta_schema, to_delta
from amp.streaming.types import BlockRange
from benchkit import microbatches, start_server

QUERY = "SELECT * FROM eth_firehose.logs"
BLOCK = "_block_num"


@dataclass
class Microbatch:
    block_range: BlockRange
    table: pa.Table | None

    @property
    def rows(self) -> int:
        return 0 if self.table is None else self.table.num_rows


@dataclass
class Outcome:
    seconds: float
    commits: int
    files: int


def capture(url: str, head: int) -> list[Microbatch]:
    """The server's microbatches of the streaming query, from block 0 to the head, in
    the Delta types (so the bare runs time the library alone)."""
    captured = []
    for block_range, batches in microbatches(url, QUERY, head):
        table = None
        if batches:
            target = delta_schema(batches[0].schema, frozenset({BLOCK}))
            table = to_delta(pa.Table.from_batches(batches), target)
        captured.append(Microbatch(block_range, table))
    return captured


def shape(path: Path) -> tuple[int, int]:
    """(commits after the table's creation, data files of its latest version)."""
    table = DeltaTable(str(path))
    return table.version(), len(table.file_uris())


def bare(path: Path, microbatches: list[Microbatch], one_commit: bool) -> Outcome:
    """Seconds to append the captured microbatches with delta-rs alone."""
    tables = [m.table for m in microbatches if m.table is not None]
    delta = DeltaTable.create(str(path), tables[0].schema)
    started = time.perf_counter()
    if one_commit:
        write_deltalake(delta, pa.concat_tables(tables), mode="append")
    else:
        for table in tables:  # one table object: its log is read incrementally
            write_deltalake(delta, table, mode="append")
            delta.update_incremental()
    elapsed = time.perf_counter() - started
    return Outcome(elapsed, *shape(path))


def loader_run(url: str, root: Path, head: int, grouping: bool) -> tuple[Outcome, int]:
    """A streaming load from block 0 until the head is committed: its outcome and rows."""
    client = Client(url)
    config: dict[str, Any] = {
        "table_path": str(root),
        "checkpoint": {"enabled": True},
        "commit_grouping": {"enabled": grouping},
    }
    client.configure_connection("bench", "deltalake", config)
    rows = 0
    started = time.perf_counter()
    run = client.sql(QUERY).load("bench", "logs", stream=True)
    try:
        for result in run:
            assert result.success, result.error
            rows += result.rows_loaded
            ranges = result.metadata.get("block_ranges") or []
            if ranges and ranges[-1]["end"] >= head:
                break
    finally:
        run.close()
    elapsed = time.perf_counter() - started
    client.close()
    return Outcome(elapsed, *shape(root / "logs")), rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--blocks", type=int, default=1_000)
    parser.add_argument("--txs-per-block", type=int, default=50, help="logs ~1.5x this")
    parser.add_argument("--max-interval", type=int, default=100, help="blocks per microbatch")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="amp-delta-bench-"))
    process, url = start_server(args)
    head = args.blocks - 1
    counter = iter(range(1_000_000))
    last: dict[str, Path] = {}
    try:
        microbatches = capture(url, head)
        rows = sum(m.rows for m in microbatches)

        def fresh(name: str) -> Path:
            path = work / f"{next(counter)}"
            last[name] = path
            return path

        runs: dict[str, Callable[[], Outcome]] = {
            "bare delta-rs, 1 commit/mb": lambda: bare(fresh("bare"), microbatches, False),
            "bare delta-rs, 1 commit": lambda: bare(fresh("bare1"), microbatches, True),
        }
        for grouping in (True, False):

            def load(grouping: bool = grouping) -> Outcome:
                name = "grouped" if grouping else "ungrouped"
                outcome, loaded = loader_run(url, fresh(name), head, grouping)
                assert loaded == rows, f"the loader loaded {loaded} rows, not {rows}"
                return outcome

            label = "on" if grouping else "off"
            runs[f"amp loader, grouping {label}"] = load
        outcomes: dict[str, list[Outcome]] = {name: [] for name in runs}
        for _ in range(args.repeat):  # interleaved, so drift affects all alike
            for name, run in runs.items():
                outcomes[name].append(run())
        compact_path = last["ungrouped"] / "logs"
        before = shape(compact_path)[1]
        started = time.perf_counter()
        metrics = DeltaTable(str(compact_path)).optimize.compact()
        compact_seconds = time.perf_counter() - started
        after = shape(compact_path)[1]
    finally:
        process.terminate()
        process.wait()
        shutil.rmtree(work, ignore_errors=True)
    print(" ".join(["delta_throughput.py", *sys.argv[1:]]))
    print(
        f"blocks {args.blocks:,}, txs/block {args.txs_per_block}, max-interval "
        f"{args.max_interval}, seed {args.seed}, repeat {args.repeat}; "
        f"deltalake {importlib.metadata.version('deltalake')}, "
        f"pyarrow {importlib.metadata.version('pyarrow')}"
    )
    print(f"rows: {rows:,} of eth_firehose.logs in {len(microbatches)} microbatches")
    print(f"{'run':<30}{'median s':>10}{'rows/s':>12}{'vs bare':>10}{'commits':>9}{'files':>7}")
    limit = statistics.median(o.seconds for o in outcomes["bare delta-rs, 1 commit/mb"])
    for name, values in outcomes.items():
        seconds = statistics.median(o.seconds for o in values)
        print(
            f"{name:<30}{seconds:>10.3f}{rows / seconds:>12,.0f}{limit / seconds:>10.1%}"
            f"{values[-1].commits:>9}{values[-1].files:>7}"
        )
    print(
        f"compact (grouping off table): {before} files -> {after} in {compact_seconds:.2f} s "
        f"({metrics.get('numFilesRemoved')} removed, {metrics.get('numFilesAdded')} added)"
    )


if __name__ == "__main__":
    main()
