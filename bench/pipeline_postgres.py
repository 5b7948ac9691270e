"""Streaming load into PostgreSQL: the pipeline's rows/s against the limit, in one run.

The limit is the same Arrow rows written by a bare binary COPY (pgpq + psycopg, one
transaction, no pipeline around it) into a table like the loader's (with its block
index). The pipeline streams the same query from a dev server in another process (as a
real server would be) into a fresh table, with resilience on (the default) and off,
interleaved. The happy-path price of resilience is also measured directly: the time a
RetryPolicy adds per guarded call, times the calls a load makes.

    .venv/bin/python bench/pipeline_postgres.py --blocks 40000 --repeat 3
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import psycopg
import pyarrow as pa

from amp.client import Client
from amp.loaders.postgresql import _TableWriter
from amp.streaming.resilience import ResilienceConfig, RetryPolicy
from barecopy import copy_batches

DSN = "host=127.0.0.1 port=5432 dbname=test user=postgres"
ROWS_PER_MESSAGE = 65_536  # the dev server's default split
QUERY = "SELECT * FROM eth_firehose.logs"
DISABLED_SETTINGS: dict[str, object] = {
    "resilience": {
        "retry": {"enabled": False},
        "circuit_breaker": {"enabled": False},
        "back_pressure": {"enabled": False},
    }
}


def start_server(
    blocks: int, txs_per_block: int, max_interval: int = 1000
) -> tuple[subprocess.Popen[str], str]:
    """A dev server in its own process (as a real server would be); returns its URL."""
    command = [sys.executable, "-m", "amp.cli", "dev", "--port", "0"]
    command += ["--initial-blocks", str(blocks), "--txs-per-block", str(txs_per_block)]
    command += ["--max-interval", str(max_interval)]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    return process, line.rsplit(" ", 1)[-1]


def bare_copy(table: pa.Table) -> float:
    """Seconds for COPY of ``table`` (converted as the loader converts) in one transaction."""
    writer = _TableWriter(table.schema, "error")
    batches = [writer.convert(batch, "bench_bare") for batch in table.to_batches()]
    with psycopg.connect(DSN) as conn:
        conn.execute("DROP TABLE IF EXISTS bench_bare")
        columns = ", ".join(f'"{name}" {pg_type}' for name, pg_type in writer.column_types())
        conn.execute(f"CREATE TABLE bench_bare ({columns})")
        conn.execute("CREATE INDEX ON bench_bare (_block_num)")  # as the loader's table
        conn.commit()
        started = time.perf_counter()
        copy_batches(conn, "bench_bare", writer, batches)
        conn.commit()
        return time.perf_counter() - started


def pipeline(url: str, head: int, settings: dict[str, object]) -> tuple[float, int, int]:
    """Seconds, rows and guarded calls (one per message written, one per commit) of a
    streaming load from block 0 until the head is committed; ``settings`` are added to
    the connection's config (resilience, checkpoint, idempotency, commit_grouping)."""
    client = Client(url)
    client.configure_connection("bench", "postgresql", {"dsn": DSN, **settings})
    rows = 0
    calls = 0
    started = time.perf_counter()
    for result in client.sql(QUERY).load("bench", "bench_pipeline", stream=True, mode="overwrite"):
        rows += result.rows_loaded
        calls += 1 + -(-result.rows_loaded // ROWS_PER_MESSAGE)  # writes + the commit
        ranges = result.metadata.get("block_ranges") or []
        if ranges and ranges[-1]["end"] >= head:
            break
    elapsed = time.perf_counter() - started
    client.close()
    return elapsed, rows, calls


def policy_overhead_seconds(calls: int = 200_000) -> float:
    """Seconds a RetryPolicy adds to one successful call (rate limiter at 0 ms, breaker
    closed): the whole happy-path cost of resilience, per write or commit."""
    policy = RetryPolicy(ResilienceConfig())

    def noop() -> None:
        return None

    started = time.perf_counter()
    for _ in range(calls):
        noop()
    bare = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(calls):
        policy.call(noop)
    return (time.perf_counter() - started - bare) / calls


def median_of(repeat: int, run: Callable[[], float]) -> float:
    return statistics.median(run() for _ in range(repeat))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--blocks", type=int, default=5_000)
    parser.add_argument(
        "--txs-per-block",
        type=int,
        default=100,
        help="chain density; 100 gives ~150 logs per block, near mainnet's order",
    )
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    process, url = start_server(args.blocks, args.txs_per_block)
    try:
        client = Client(url)
        table = client.sql(QUERY).to_arrow()
        head = args.blocks - 1
        client.close()
        rows = table.num_rows
        bare = median_of(args.repeat, lambda: bare_copy(table))
        timings: dict[str, list[float]] = {"resilience on": [], "resilience off": []}
        calls = 0
        for _ in range(args.repeat):  # interleaved, so drift affects both alike
            for name, settings in (("resilience on", {}), ("resilience off", DISABLED_SETTINGS)):
                elapsed, loaded, calls = pipeline(url, head, settings)
                assert loaded == rows, f"{name}: loaded {loaded} rows, expected {rows}"
                timings[name].append(elapsed)
        per_call = policy_overhead_seconds()
    finally:
        process.terminate()
        process.wait()
    print(f"rows: {rows:,} ({args.blocks:,} blocks of eth_firehose.logs), repeat {args.repeat}")
    print(f"{'run':<28}{'median s':>10}{'rows/s':>14}{'vs bare COPY':>14}")
    print(f"{'bare binary COPY (limit)':<28}{bare:>10.3f}{rows / bare:>14,.0f}{1.0:>14.1%}")
    for name, values in timings.items():
        seconds = statistics.median(values)
        label = "pipeline, " + name
        print(f"{label:<28}{seconds:>10.3f}{rows / seconds:>14,.0f}{bare / seconds:>14.1%}")
    on = statistics.median(timings["resilience on"])
    off = statistics.median(timings["resilience off"])
    print(f"resilience, end to end: {on / off - 1:+.2%} (on/off - 1, within run-to-run noise)")
    cost = per_call * calls
    print(
        f"resilience, measured directly: {per_call * 1e6:.2f} us per guarded call x {calls} "
        f"calls = {cost * 1000:.3f} ms per load = {cost / on:.4%} of the load time"
    )


if __name__ == "__main__":
    main()
