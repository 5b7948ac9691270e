"""Rows per second into Iceberg: amp's Iceberg loader against pyiceberg appending the same
Arrow batches directly, and what commit grouping does to the number of data files.

Run by hand (a SQL catalog on SQLite and a warehouse in a temporary directory)::

    /work/main/.venv/bin/python bench/iceberg_throughput.py
    /work/main/.venv/bin/python bench/iceberg_throughput.py --blocks 5000 --max-interval 50

All in one run, on the same ``logs`` rows of a simulated chain, cut into microbatches of
``--max-interval`` blocks (already cast to the stored types, so no path pays for that):

1. pyiceberg append per microbatch: ``table.append(rows)``, one commit each. The ceiling
   of this library and catalog for one commit per microbatch.
2. pyiceberg append, grouped: one ``append`` per ``--group`` microbatches.
3. loader per microbatch: ``IcebergLoader`` as the pipeline drives it with checkpoint and
   idempotency on: begin, ``delete_blocks`` (the idempotent pre-delete), ``write``, the
   processed-range mark and the checkpoint through its state store, commit. Adds the
   pre-delete's scan and the state; each commit also expires the snapshots beyond
   ``max_snapshots`` (100). Then the same with ``max_snapshots=0`` (none expired), as
   pyiceberg alone does.
4. loader, grouped: the same with ``--group`` microbatches per unit (what commit
   grouping does while a load catches up).
5. end to end: ``Client`` streaming loads from a dev server in this process until the
   head, commit grouping on (the default) and off.
6. compaction: the grouped-off end-to-end table rewritten into few files by one
   ``overwrite`` of its rows (what to run between loads; see docs/loaders.md).

Each path writes its own table; the data files each leaves are counted.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
from pyiceberg.catalog import Catalog, load_catalog
from rich.console import Console
from rich.table import Table

from amp.client import Client
from amp.devserver import DevServer
from amp.loaders.base import LoadMode
from amp.loaders.iceberg.loader import IcebergLoader
from amp.loaders.iceberg.types import stored_schema, to_stored
from amp.streaming.checkpoint import CheckpointState, CheckpointStore
from amp.streaming.types import BlockRange, hex_hash
from benchkit import stream_to_head

console = Console(width=None if sys.stdout.isatty() else 130)
QUERY = "SELECT * FROM eth_firehose.logs"


@dataclass
class Microbatch:
    block_range: BlockRange
    rows: pa.Table  # the logs of its blocks, as sent
    stored: pa.Table  # the same, cast to the stored types


@dataclass
class Measured:
    path: str
    rows: int
    seconds: float
    files: int
    note: str = ""

    @property
    def rate(self) -> float:
        return self.rows / self.seconds


def microbatches(server: DevServer, max_interval: int) -> list[Microbatch]:
    chain = server.chain
    work = []
    for start in range(chain.first_block, chain.head + 1, max_interval):
        end = min(chain.head, start + max_interval - 1)
        rows = chain.snapshot(start, end).table("logs").combine_chunks()
        block_range = BlockRange("mainnet", start, end, hash=hex_hash(chain.canonical_hash(end)))
        stored = to_stored(rows, stored_schema(rows.schema), "exact")
        work.append(Microbatch(block_range, rows, stored))
    return work


def timed(run: Callable[[], int]) -> tuple[int, float]:
    started = time.perf_counter()
    rows = run()
    return rows, time.perf_counter() - started


def files_of(catalog: Catalog, name: str) -> int:
    return catalog.load_table(("amp", name)).inspect.files().num_rows


def bare(catalog: Catalog, name: str, work: list[Microbatch], group: int) -> int:
    table = catalog.create_table(("amp", name), work[0].stored.schema)
    rows = 0
    for first in range(0, len(work), group):
        chunk = pa.concat_tables([m.stored for m in work[first : first + group]])
        table.append(chunk)
        rows += chunk.num_rows
    return rows


def through_loader(config: dict[str, Any], name: str, work: list[Microbatch], group: int) -> int:
    loader = IcebergLoader(config, connection_name=name)
    loader.connect()
    loader.prepare_table(name, work[0].rows.schema, LoadMode.APPEND, "block_num")
    ranges = loader.state_store("amp_")
    checkpoints = CheckpointStore(loader.state_store("amp_"), "bench")
    rows = 0
    try:
        for first in range(0, len(work), group):
            loader.begin()
            for microbatch in work[first : first + group]:
                block_range = microbatch.block_range
                loader.delete_blocks(name, "block_num", block_range.start, block_range.end)
                for batch in microbatch.rows.to_batches():
                    rows += loader.write(name, batch, block_range)
                now = datetime.now(UTC)
                ranges.mark_processed("bench", name, block_range, now, None)
            checkpoints.save(name, CheckpointState((block_range,), now))
            loader.commit()
    finally:
        loader.close()
    return rows


def end_to_end(server: DevServer, config: dict[str, Any], name: str, grouping: bool) -> int:
    client = Client(server.url)
    client.configure_connection(
        name,
        "iceberg",
        {
            **config,
            "checkpoint": {"enabled": True},
            "idempotency": {"enabled": True},
            "commit_grouping": {"enabled": grouping},
        },
    )
    return stream_to_head(client, QUERY, name, name, server.chain.head)


def compact(catalog: Catalog, name: str) -> int:
    """Rewrite every row of ``name`` in one overwrite commit (few large files)."""
    table = catalog.load_table(("amp", name))
    rows = table.scan().to_arrow()
    table.overwrite(rows)
    return rows.num_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--blocks", type=int, default=3000, help="blocks in the chain")
    parser.add_argument("--max-interval", type=int, default=100, help="blocks per microbatch")
    parser.add_argument("--group", type=int, default=10, help="microbatches per grouped commit")
    parser.add_argument("--txs-per-block", type=int, default=30)
    args = parser.parse_args()

    directory = Path(tempfile.mkdtemp(prefix="amp-iceberg-bench-"))
    catalog_config = {
        "type": "sql",
        "uri": f"sqlite:///{directory}/catalog.db",
        "warehouse": f"file://{directory}/warehouse",
    }
    config: dict[str, Any] = {"catalog_config": catalog_config}
    with DevServer(
        port=0,
        seed=3,
        initial_blocks=args.blocks,
        max_interval=args.max_interval,
        mean_txs_per_block=args.txs_per_block,
    ) as server:
        work = microbatches(server, args.max_interval)
        total = sum(m.rows.num_rows for m in work)
        console.print(
            f"{total:,} log rows in {len(work)} microbatches of {args.max_interval} blocks; "
            f"grouped: {args.group} per commit; catalog {catalog_config['uri']}"
        )
        loader = IcebergLoader(config, "setup")
        loader.connect()
        loader.close()
        catalog = load_catalog("amp", **catalog_config)
        bare(catalog, "warmup", work[:1], 1)  # imports and first-file costs, untimed
        results: list[Measured] = []

        def measure(path: str, name: str, run: Callable[[], int], note: str = "") -> None:
            rows, seconds = timed(run)
            results.append(Measured(path, rows, seconds, files_of(catalog, name), note))

        measure("pyiceberg append, per microbatch", "bare", lambda: bare(catalog, "bare", work, 1))
        measure(
            f"pyiceberg append, {args.group} per commit",
            "bare_grouped",
            lambda: bare(catalog, "bare_grouped", work, args.group),
        )
        measure(
            "IcebergLoader, per microbatch",
            "loader",
            lambda: through_loader(config, "loader", work, 1),
            "+ pre-delete, state",
        )
        measure(
            "IcebergLoader, per microbatch, max_snapshots=0",
            "loader_all",
            lambda: through_loader({**config, "max_snapshots": 0}, "loader_all", work, 1),
            "no snapshot expired",
        )
        measure(
            f"IcebergLoader, {args.group} per unit",
            "loader_grouped",
            lambda: through_loader(config, "loader_grouped", work, args.group),
            "+ pre-delete, state",
        )
        measure(
            "end to end, commit grouping on",
            "e2e_grouped",
            lambda: end_to_end(server, config, "e2e_grouped", True),
            "dev server in-process",
        )
        measure(
            "end to end, commit grouping off",
            "e2e_single",
            lambda: end_to_end(server, config, "e2e_single", False),
            "dev server in-process",
        )
        measure(
            "compaction of the grouping-off table",
            "e2e_single",
            lambda: compact(catalog, "e2e_single"),
            "one overwrite",
        )

    limit = results[0].rate
    table = Table(title="Rows per second into Iceberg (SQL catalog on SQLite, local files)")
    for column in ("path", "rows", "seconds", "rows/s", "vs pyiceberg", "data files", "note"):
        table.add_column(column, justify="left" if column in ("path", "note") else "right")
    for measured in results:
        table.add_row(
            measured.path,
            f"{measured.rows:,}",
            f"{measured.seconds:.2f}",
            f"{measured.rate:,.0f}",
            f"{measured.rate / limit:.2f}x",
            f"{measured.files:,}",
            measured.note,
        )
    console.print(table)


if __name__ == "__main__":
    main()
