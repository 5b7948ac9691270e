"""A parallel load on a Dask cluster vs threads: rows/s into PostgreSQL, in one run.

Four ways of loading the same bounded parallel load (blocks 0..N-1 of eth_firehose.logs
from a dev server in another process, two partitions):

- 1 worker thread (the baseline);
- 2 worker threads in this process (``executor='threads'``);
- 2 Dask worker processes (``LocalCluster(processes=True)``, one thread each) running
  the partitions as tasks (``executor=<scheduler address>``);
- the limit: 2 bare binary COPY streams (pgpq + psycopg, a thread and a connection each)
  writing the same rows, split the same way.

    .venv/bin/python bench/dask_parallel.py --blocks 12000 --repeat 3
    .venv/bin/python bench/dask_parallel.py --blocks 1000 --interval 10 --latency-ms 20

``--latency-ms`` makes the dev server wait before every data message, as a server
across a network would: the workers then mostly wait, and threads and processes alike
overlap their waits.

A cluster's start (worker processes importing amp) is outside the timings: a cluster is
started once and used by many loads. Each Dask load does pay for its tasks' own
connections to the server and the database.
"""

from __future__ import annotations

import argparse
import statistics

from distributed import LocalCluster

from amp.client import Client
from parallel import QUERY, bare_parallel_copy, parallel_load, start_server

WAYS = ("1 thread", "2 threads", "2 dask processes")


def load(url: str, way: str, scheduler: str, last: int, run: int) -> tuple[float, int]:
    """Seconds and rows of one bounded load of blocks 0..last, the ``way`` says how."""
    workers = 1 if way == "1 thread" else 2
    executor = scheduler if way.endswith("processes") else "threads"
    return parallel_load(url, workers, last, run, executor, tag=f"_way{WAYS.index(way)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--blocks", type=int, default=4_000)
    parser.add_argument("--txs-per-block", type=int, default=100)
    parser.add_argument("--interval", type=int, default=200, help="blocks per microbatch")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    args = parser.parse_args()
    last = args.blocks - 1
    process, url = start_server(args.blocks, args.txs_per_block, args.latency_ms, args.interval)
    cluster = LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
    )
    try:
        client = Client(url)
        table = client.sql(f"{QUERY} WHERE block_num <= {last}").to_arrow()
        client.close()
        rows = table.num_rows
        bare = statistics.median(bare_parallel_copy(table, 2, last) for _ in range(args.repeat))
        timings: dict[str, list[float]] = {way: [] for way in WAYS}
        for run in range(args.repeat):  # interleaved, so drift affects every way alike
            for way in WAYS:
                elapsed, loaded = load(url, way, cluster.scheduler_address, last, run)
                assert loaded == rows, f"{way}: {loaded} rows loaded, expected {rows}"
                timings[way].append(elapsed)
    finally:
        cluster.close()
        process.terminate()
        process.wait()
    median = {way: statistics.median(values) for way, values in timings.items()}
    print(
        f"{rows:,} rows ({args.blocks:,} blocks of eth_firehose.logs, microbatches of "
        f"{args.interval} blocks, {args.latency_ms:g} ms before each data message), repeat "
        f"{args.repeat}; limit: 2 bare COPY streams "
        f"{rows / bare:,.0f} rows/s"
    )
    print(f"{'way':<19}{'rows/s':>12}{'vs 1 thread':>13}{'of the limit':>14}")
    for way in WAYS:
        print(
            f"{way:<19}{rows / median[way]:>12,.0f}{median['1 thread'] / median[way]:>12.2f}x"
            f"{bare / median[way]:>14.1%}"
        )


if __name__ == "__main__":
    main()
