"""Parallel streaming into PostgreSQL: rows/s of 1, 2 and 4 workers, in one run.

Two settings, each with its own limit measured in the same run:

- **local**: the dev server in another process on loopback. The limit is the same
  number of bare binary COPY streams (pgpq + psycopg, one thread and connection each)
  writing the same rows, split the same way: what this machine can write at all.
- **remote**: the dev server waits ``--latency-ms`` before every data message, as a
  server across a network would, with small microbatches. Workers overlap those waits,
  so they should scale nearly linearly (goal: 4 workers >= 3.2x one).

    .venv/bin/python bench/parallel.py --blocks 4000 --repeat 3
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import threading
import time
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.compute as pc

from amp.client import Client
from amp.loaders.postgresql import _TableWriter
from amp.streaming.parallel import ParallelConfig
from barecopy import copy_batches

DSN = "host=127.0.0.1 port=5432 dbname=test user=postgres"
QUERY = "SELECT * FROM eth_firehose.logs"
WORKERS = (1, 2, 4)


def start_server(
    blocks: int, txs: int, latency_ms: float, interval: int
) -> tuple[subprocess.Popen[str], str]:
    command = [sys.executable, "-m", "amp.cli", "dev", "--port", "0"]
    command += ["--initial-blocks", str(blocks), "--txs-per-block", str(txs)]
    command += ["--latency-ms", str(latency_ms), "--max-interval", str(interval)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    return process, line.rsplit(" ", 1)[-1]


def bare_parallel_copy(table: pa.Table, workers: int, last: int) -> float:
    """Seconds for ``workers`` threads, each COPYing its share of blocks in one
    transaction on its own connection."""
    writer = _TableWriter(table.schema, "error")
    columns = ", ".join(f'"{name}" {pg_type}' for name, pg_type in writer.column_types())
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS bench_bare_parallel")
        conn.execute(f"CREATE TABLE bench_bare_parallel ({columns})")
        conn.execute("CREATE INDEX ON bench_bare_parallel (_block_num)")
    size = -(-(last + 1) // workers)
    shares = []
    for index in range(workers):
        blocks = table.column("block_num")
        keep = pc.and_(pc.greater_equal(blocks, index * size), pc.less(blocks, (index + 1) * size))
        part = table.filter(keep)
        shares.append([writer.convert(b, "bench_bare_parallel") for b in part.to_batches()])

    def copy(batches: list[pa.RecordBatch]) -> None:
        with psycopg.connect(DSN) as conn:
            copy_batches(conn, "bench_bare_parallel", writer, batches)
            conn.commit()

    threads = [threading.Thread(target=copy, args=(share,)) for share in shares]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started


def parallel_load(
    url: str, workers: int, last: int, run: int, executor: Any = "threads", tag: str = ""
) -> tuple[float, int]:
    """Seconds and rows of a bounded parallel load of blocks 0..last into a new table,
    by ``workers`` partitions on ``executor`` (threads here, or a Dask scheduler)."""
    client = Client(url)
    client.configure_connection("bench", "postgresql", {"dsn": DSN})
    table = f"bench_parallel{tag}_{workers}_{run}"
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {table}")
    config = ParallelConfig(
        num_workers=workers,
        table_name="eth_firehose.blocks",
        min_block=0,
        max_block=last,
        executor=executor,
    )
    started = time.perf_counter()
    rows = sum(
        result.rows_loaded
        for result in client.sql(QUERY).load("bench", table, stream=True, parallel_config=config)
    )
    elapsed = time.perf_counter() - started
    client.close()
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {table}")
    return elapsed, rows


def measure(url: str, last: int, repeat: int, expected: int) -> dict[int, float]:
    timings: dict[int, list[float]] = {n: [] for n in WORKERS}
    for run in range(repeat):  # interleaved, so drift affects every size alike
        for workers in WORKERS:
            elapsed, rows = parallel_load(url, workers, last, run)
            assert rows == expected, f"{workers} workers loaded {rows} rows, expected {expected}"
            timings[workers].append(elapsed)
    return {n: statistics.median(values) for n, values in timings.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--blocks", type=int, default=4_000)
    parser.add_argument("--txs-per-block", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--remote-blocks", type=int, default=1_000)
    parser.add_argument("--remote-interval", type=int, default=10)
    parser.add_argument(
        "--remote-txs-per-block",
        type=int,
        default=None,
        help="chain density of the remote run (default: --txs-per-block)",
    )
    parser.add_argument("--skip-local", action="store_true", help="only the remote setting")
    args = parser.parse_args()
    if not args.skip_local:
        run_local(args)
    run_remote(args)


def run_local(args: argparse.Namespace) -> None:
    last = args.blocks - 1
    process, url = start_server(args.blocks, args.txs_per_block, 0.0, 1000)
    try:
        client = Client(url)
        table = client.sql(f"{QUERY} WHERE block_num <= {last}").to_arrow()
        client.close()
        rows = table.num_rows
        bare = {
            n: statistics.median(bare_parallel_copy(table, n, last) for _ in range(args.repeat))
            for n in WORKERS
        }
        local = measure(url, last, args.repeat, rows)
    finally:
        process.terminate()
        process.wait()
    print(
        f"local: {rows:,} rows ({args.blocks:,} blocks of eth_firehose.logs), repeat {args.repeat}"
    )
    print(
        f"{'workers':<9}{'bare COPY rows/s':>18}{'amp rows/s':>14}{'amp / bare':>12}"
        f"{'vs 1 worker':>13}"
    )
    for n in WORKERS:
        print(
            f"{n:<9}{rows / bare[n]:>18,.0f}{rows / local[n]:>14,.0f}"
            f"{bare[n] / local[n]:>12.1%}{local[1] / local[n]:>12.2f}x"
        )


def run_remote(args: argparse.Namespace) -> None:
    remote_last = args.remote_blocks - 1
    density = args.remote_txs_per_block or args.txs_per_block
    process, url = start_server(args.remote_blocks, density, args.latency_ms, args.remote_interval)
    try:
        client = Client(url)
        remote_rows = client.sql(f"{QUERY} WHERE block_num <= {remote_last}").to_arrow().num_rows
        client.close()
        remote = measure(url, remote_last, args.repeat, remote_rows)
    finally:
        process.terminate()
        process.wait()
    print(
        f"remote: {remote_rows:,} rows ({args.remote_blocks:,} blocks, microbatches of "
        f"{args.remote_interval} blocks, {args.latency_ms:g} ms before each data message)"
    )
    print(f"{'workers':<9}{'amp rows/s':>14}{'vs 1 worker':>13}")
    for n in WORKERS:
        print(f"{n:<9}{remote_rows / remote[n]:>14,.0f}{remote[1] / remote[n]:>12.2f}x")


if __name__ == "__main__":
    main()
