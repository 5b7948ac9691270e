"""``make demo``: the main job on the embedded defaults, with no external services.

It starts the dev server in-process (a history of blocks, a new block every second and
a reorg now and then), streams ``eth_firehose.logs`` into an embedded DuckDB file with
the live progress line for about 30 seconds, then stops block production, lets the load
catch up with the head, and verifies the destination against the chain's canonical rows
per block range: they must be equal, with no duplicates.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
from rich.console import Console
from rich.table import Table

from amp.cli import configure_logging, run_load_with_progress
from amp.client import Client
from amp.devserver import DevServer
from amp.progress import HeadTracker, ProgressDisplay, head_query_for
from amp.streaming.results import LoadResult

DEMO_SECONDS = 30.0
DATABASE = Path("demo-output/demo.duckdb")
TABLE = "logs"
QUERY = "SELECT * FROM eth_firehose.logs"
KEY_COLUMNS = ["block_num", "log_index", "block_hash", "tx_hash", "address", "data"]
BUCKETS = 8


def _sorted_keys(table: pa.Table) -> pa.Table:
    return table.select(KEY_COLUMNS).sort_by(
        [("block_num", "ascending"), ("log_index", "ascending")]
    )


def verify(destination: pa.Table, canonical: pa.Table, first: int, head: int) -> tuple[Table, bool]:
    """Rows per block range, destination against chain; equal content in every range."""
    report = Table(title="Verification: destination vs canonical chain")
    for name in ("blocks", "destination rows", "canonical rows", "duplicates", "content"):
        report.add_column(name, justify="right")
    width = max((head - first + 1) // BUCKETS, 1)
    all_ok = True
    for low in range(first, head + 1, width):
        high = min(head, low + width - 1)

        def in_range(table: pa.Table, low: int = low, high: int = high) -> pa.Table:
            blocks = table.column("block_num")
            return table.filter(pc.and_(pc.greater_equal(blocks, low), pc.less_equal(blocks, high)))

        theirs = _sorted_keys(in_range(canonical))
        ours = _sorted_keys(in_range(destination)).cast(theirs.schema)
        keys = ours.select(["block_num", "log_index"])
        duplicates = (
            keys.num_rows - keys.group_by(["block_num", "log_index"]).aggregate([]).num_rows
        )
        same = ours.equals(theirs)
        all_ok &= same and duplicates == 0
        report.add_row(
            f"{low:,}..{high:,}",
            f"{ours.num_rows:,}",
            f"{theirs.num_rows:,}",
            str(duplicates),
            "[green]equal[/green]" if same else "[red]DIFFERENT[/red]",
        )
    return report, all_ok


def main() -> int:
    configure_logging(logging.WARNING)
    console = Console()
    DATABASE.parent.mkdir(exist_ok=True)
    with DevServer(
        port=0, seed=1, initial_blocks=20_000, block_time=1.0, reorg_every=7, reorg_depth=3
    ) as server:
        console.print(f"Amp dev server listening on {server.url} (head {server.chain.head:,})")
        client = Client(server.url)
        client.configure_connection("demo", "duckdb", {"database": str(DATABASE)})
        console.print(f"Streaming {QUERY!r} into {DATABASE} for {DEMO_SECONDS:.0f} s ...")
        load = client.sql(QUERY).load("demo", TABLE, stream=True, mode="overwrite")
        tracker = HeadTracker(client.transport, head_query_for(QUERY) or "", interval=1.0)
        display = ProgressDisplay(TABLE, tracker)
        deadline = time.monotonic() + DEMO_SECONDS

        def caught_up(result: LoadResult) -> bool:
            if time.monotonic() < deadline:
                return False
            server.stop_block_production()
            ranges = result.metadata.get("block_ranges") or []
            return bool(ranges) and ranges[-1]["end"] == server.chain.head

        stats = run_load_with_progress(load, display, done=caught_up)
        client.close()
        head = server.chain.head
        canonical = server.chain.canonical_table(TABLE)
        reorgs = server.chain.reorgs
    with duckdb.connect(str(DATABASE), read_only=True) as connection:
        destination = connection.sql(f"SELECT * FROM {TABLE}").to_arrow_table()
    report, ok = verify(destination, canonical, 0, head)
    console.print(report)
    console.print(
        f"loaded {stats.rows:,} rows in {stats.microbatches} microbatches; "
        f"reorgs on the chain: {len(reorgs)}, handled by the load: {stats.reorgs} "
        f"({stats.rows_deleted:,} rows invalidated and replaced)"
    )
    if ok:
        console.print("[bold green]The destination equals the canonical chain.[/bold green]")
        return 0
    console.print("[bold red]The destination differs from the canonical chain.[/bold red]")
    return 1


if __name__ == "__main__":
    sys.exit(main())
