"""Checkpoint + idempotency on PostgreSQL: their cost per microbatch and end to end, as
ratios measured in one run.

1. Per microbatch, one microbatch per transaction (the shape at the chain head): the
   loop's own unit of work (``_Unit``: duplicate lookup, idempotent delete, COPY,
   processed range, checkpoint, COMMIT) over the same rows with delivery on and off,
   alternated microbatch by microbatch into two tables. The delivery work of a
   microbatch is its time on minus its time off (p50, p95), in several rounds: the
   quietest is shown in full. Goal: p50 <= 0.5 ms.
2. End to end, a backfill in microbatches of 100 blocks from a dev server in its own
   process (as a real server would be) until the head is committed: checkpoint +
   idempotency on vs off with commit grouping on (the default; goal: within 5%), and
   vs a bare binary COPY of the same rows (goal: within 10%); with commit grouping off
   for reference. Two bare COPYs: of the rows already in memory (the destination's
   limit), and fed by the same streaming query (what any client of this server on this
   machine can reach: the dev server shares the machine's cores). Runs interleaved;
   each ratio is the median of the ratios within a round (neighbours in time share the
   machine's load), so noise from other work on a shared machine cancels.

    .venv/bin/python bench/delivery_postgres.py --repeat 7
"""

from __future__ import annotations

import argparse
import hashlib
import resource
import statistics
import time
from collections.abc import Callable, Iterator

import numpy as np
import pgpq
import psycopg
import pyarrow as pa

from amp import sqltext
from amp.client import Client
from amp.loaders import LoadMode
from amp.loaders.pg_writer import _TableWriter
from amp.loaders.postgresql import PostgreSQLLoader
from amp.loop.delivery import Delivery
from amp.loop.grouping import CommitGrouping
from amp.loop.streaming import StreamingLoad, _Unit
from amp.streaming.checkpoint import CheckpointConfig
from amp.streaming.idempotency import IdempotencyConfig
from amp.streaming.reader import Data, MicrobatchEnd, MicrobatchReader
from amp.streaming.types import BlockRange
from pipeline_postgres import DSN, QUERY, bare_copy, pipeline, start_server

BARE = "bare COPY, rows in memory"
STREAMED = "bare COPY, fed by the stream"
OFF = "delivery off, grouping on"

DELIVERY_ON: dict[str, object] = {"checkpoint": {"enabled": True}, "idempotency": {"enabled": True}}
GROUPING_OFF: dict[str, object] = {"commit_grouping": {"enabled": False}}
RUNS: dict[str, dict[str, object]] = {
    "delivery off, grouping on": {},
    "delivery on, grouping on": DELIVERY_ON,
    "delivery off, grouping off": GROUPING_OFF,
    "delivery on, grouping off": {**DELIVERY_ON, **GROUPING_OFF},
}


def streamed_copy(url: str, head: int, schema: pa.Schema) -> float:
    """Seconds to COPY the streaming query's rows, as they arrive, into a table like the
    loader's, in one transaction: no loop, no state, nothing but reading and COPY."""
    writer = _TableWriter(schema, "error")
    client = Client(url)
    with psycopg.connect(DSN) as conn:
        conn.execute("DROP TABLE IF EXISTS bench_streamed")
        columns = ", ".join(f'"{name}" {pg_type}' for name, pg_type in writer.column_types())
        conn.execute(f"CREATE TABLE bench_streamed ({columns})")
        conn.execute("CREATE INDEX ON bench_streamed (_block_num)")
        conn.commit()
        started = time.perf_counter()
        source = client.transport.execute(sqltext.with_streaming(QUERY))
        encoder = pgpq.ArrowToPostgresBinaryEncoder(writer.copy_schema)
        try:
            with (
                conn.cursor() as cur,
                cur.copy("COPY bench_streamed FROM STDIN WITH (FORMAT BINARY)") as copy,
            ):
                copy.write(encoder.write_header())
                for event in MicrobatchReader(None).events(source.messages()):
                    if isinstance(event, Data):
                        copy.write(encoder.write_batch(writer.convert(event.batch, "bench")))
                    elif isinstance(event, MicrobatchEnd) and event.block_range.end >= head:
                        break
                copy.write(encoder.finish())
            conn.commit()
        finally:
            source.close()
            client.close()
        return time.perf_counter() - started


def microbatches(table: pa.Table, blocks: int) -> Iterator[tuple[BlockRange, list[pa.RecordBatch]]]:
    """The rows of ``table`` in consecutive ranges of ``blocks`` blocks (hashes made up:
    delivery stores them, nothing checks them here)."""
    table = table.sort_by("_block_num")
    numbers = table.column("_block_num").to_numpy()
    last = int(numbers[-1])
    for start in range(0, last + 1, blocks):
        end = min(start + blocks - 1, last)
        first, stop = np.searchsorted(numbers, [start, end + 1])
        block_hash = "0x" + hashlib.sha256(str(end).encode()).hexdigest()
        rows = table.slice(int(first), int(stop - first))
        yield BlockRange("mainnet", start, end, hash=block_hash), rows.to_batches()


def unit_load(client: Client, table: str, delivered: bool) -> StreamingLoad:
    """A streaming load of ``table`` with one microbatch per transaction, started (state
    tables made, old state forgotten) but fed by the bench instead of a server."""
    loader = PostgreSQLLoader({"dsn": DSN}, connection_name="bench_unit")
    delivery = Delivery(
        loader, table, CheckpointConfig(enabled=delivered), IdempotencyConfig(enabled=delivered)
    )
    load = StreamingLoad(
        client.transport,
        loader,
        table,
        QUERY,
        mode=LoadMode.OVERWRITE,
        delivery=delivery,
        grouping=CommitGrouping(enabled=False),
    )
    load._start()
    return load


def per_microbatch(
    client: Client, table: pa.Table, blocks: int, count: int
) -> dict[str, list[float]]:
    """Milliseconds of each microbatch's unit of work, delivery on and off, and their
    difference (the delivery work), over the first ``count`` microbatches."""
    loads = {on: unit_load(client, f"bench_unit_{'on' if on else 'off'}", on) for on in (1, 0)}
    for load in loads.values():
        load._prepare(table.schema)
    times: dict[int, list[float]] = {1: [], 0: []}
    try:
        for index, (block_range, batches) in enumerate(microbatches(table, blocks)):
            if index == count:
                break
            for on in (1, 0) if index % 2 == 0 else (0, 1):  # neither always goes first
                started = time.perf_counter()
                unit = _Unit(loads[on])
                for batch in batches:
                    unit.add(Data(batch, block_range))
                unit.end(MicrobatchEnd(block_range))
                unit.commit()
                times[on].append((time.perf_counter() - started) * 1000)
    finally:
        for load in loads.values():
            load.target.loader.close()
    work = [on - off for on, off in zip(times[1], times[0], strict=True)]
    return {"on": times[1], "off": times[0], "work": work}


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def clean_up() -> None:
    with psycopg.connect(DSN, autocommit=True) as conn:
        for table in ("bench_unit_on", "bench_unit_off", "bench_pipeline", "bench_bare"):
            conn.execute(f"DROP TABLE IF EXISTS {table}")
        conn.execute("DROP TABLE IF EXISTS bench_streamed")
        for state in ("amp_checkpoints", "amp_processed_ranges"):
            conn.execute(f"DELETE FROM {state} WHERE connection_name LIKE %s", ("bench%",))


def cpu_seconds() -> float:
    """CPU time of this process (the client, with its reader thread) so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def backfill(
    url: str, table: pa.Table, head: int, repeat: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Seconds of each run, round by round (every run once per round), and the client's
    CPU seconds of each (less disturbed than wall time by other work on the machine)."""
    timings: dict[str, list[float]] = {BARE: [], STREAMED: [], **{name: [] for name in RUNS}}
    cpu: dict[str, list[float]] = {name: [] for name in timings}
    runs = {
        BARE: lambda: bare_copy(table),
        STREAMED: lambda: streamed_copy(url, head, table.schema),
        **{name: _loading(url, head, table.num_rows, settings) for name, settings in RUNS.items()},
    }
    for _ in range(repeat):
        for name, run in runs.items():
            started = cpu_seconds()
            timings[name].append(run())
            cpu[name].append(cpu_seconds() - started)
    return timings, cpu


def _loading(url: str, head: int, rows: int, settings: dict[str, object]) -> Callable[[], float]:
    def run() -> float:
        elapsed, loaded, _calls = pipeline(url, head, settings)
        assert loaded == rows, f"{settings}: loaded {loaded} rows, expected {rows}"
        return elapsed

    return run


def paired(timings: dict[str, list[float]], name: str, baseline: str) -> float:
    """The median over rounds of ``name``'s time / ``baseline``'s time, minus one."""
    ratios = [a / b for a, b in zip(timings[name], timings[baseline], strict=True)]
    return statistics.median(ratios) - 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--blocks", type=int, default=20_000, help="blocks of the backfill")
    parser.add_argument("--txs-per-block", type=int, default=10, help="~1.35 logs per tx")
    parser.add_argument("--max-interval", type=int, default=100, help="blocks per microbatch")
    parser.add_argument("--microbatches", type=int, default=400, help="for the per-microbatch part")
    parser.add_argument("--unit-blocks", type=int, default=10, help="blocks per microbatch there")
    parser.add_argument("--unit-rounds", type=int, default=5, help="rounds of that part")
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    process, url = start_server(args.blocks, args.txs_per_block, args.max_interval)
    try:
        client = Client(url)
        table = client.sql(QUERY).to_arrow()
        rounds = [
            per_microbatch(client, table, args.unit_blocks, args.microbatches)
            for _ in range(args.unit_rounds)
        ]
        client.close()
        timings, cpu = backfill(url, table, args.blocks - 1, args.repeat)
    finally:
        process.terminate()
        process.wait()
        clean_up()
    rows = table.num_rows
    # Latency is what other work on a shared machine inflates most: every round is
    # shown by its p50s, and the quietest round (lowest p50 with delivery off) in full.
    quietest = min(rounds, key=lambda unit: statistics.median(unit["off"]))
    print(
        f"per microbatch ({args.unit_rounds} rounds of {args.microbatches} microbatches of "
        f"{args.unit_blocks} blocks, ~{rows * args.unit_blocks // args.blocks:,} rows each, "
        "one per transaction), ms:"
    )
    print(f"{'':<34}{'p50':>8}{'p95':>8}   p50 of each round")
    for name, key in (("unit of work, delivery off", "off"),
                      ("unit of work, delivery on", "on"),
                      ("delivery work (on - off)", "work")):  # fmt: skip
        values = quietest[key]
        each = " ".join(f"{statistics.median(unit[key]):.3f}" for unit in rounds)
        print(
            f"{name:<34}{statistics.median(values):>8.3f}{percentile(values, 0.95):>8.3f}   {each}"
        )
    print(
        f"\nbackfill: {rows:,} rows, {args.blocks:,} blocks in microbatches of "
        f"{args.max_interval} blocks, {args.repeat} rounds (time ratios: median within rounds):"
    )
    print(
        f"{'run':<30}{'median s':>9}{'min s':>8}{'rows/s':>10}"
        f"{'vs off':>9}{'vs streamed':>12}{'vs bare':>9}{'client CPU s':>14}"
    )
    for name, values in timings.items():
        seconds = statistics.median(values)
        print(
            f"{name:<30}{seconds:>9.3f}{min(values):>8.3f}{rows / seconds:>10,.0f}"
            f"{paired(timings, name, OFF):>+9.1%}{paired(timings, name, STREAMED):>+12.1%}"
            f"{paired(timings, name, BARE):>+9.1%}{statistics.median(cpu[name]):>14.3f}"
        )


if __name__ == "__main__":
    main()
