"""Streaming load into Redis: the loader's rows/s against a bare redis-py pipeline, in one run.

The bare runs write the same rows of the same server microbatches (captured once from
the stream, held as Arrow in memory) as the loader would: the same keys
``<table>:<network>:<start>-<end>:<hash16>:<n>`` and field values, one MULTI/EXEC per
microbatch holding the rows' HSETs and the block index ZADD (or, for the stream layout,
the XADDs with ids ``<block>-<n>``). "bare + DEL" adds the DEL the loader sends before
each HSET. The loader runs stream the query from a dev server in another process (as a
real server would be) into a fresh table, from block 0 until the head is committed.

    .venv/bin/python bench/redis_throughput.py --blocks 1000 --txs-per-block 50 --repeat 3

Keys go to ``--db`` (default 9) under ``bench_redis_<pid>_*`` and are deleted afterwards.
The bare runs use the redis-py client the loader connects (``RedisLoader.client``).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from amp.client import Client
from amp.errors import DestinationError
from amp.loaders.redis import RedisLoader, _value
from amp.streaming.types import BlockRange
from benchkit import microbatches, start_server

QUERY = "SELECT * FROM eth_firehose.logs"
HOST, PORT = "127.0.0.1", 6379


@dataclass
class Microbatch:
    block_range: BlockRange
    batches: list[pa.RecordBatch]

    @property
    def rows(self) -> int:
        return sum(batch.num_rows for batch in self.batches)


def capture(url: str, head: int) -> list[Microbatch]:
    """The server's microbatches of the streaming query, from block 0 to the head."""
    return [
        Microbatch(block_range, batches) for block_range, batches in microbatches(url, QUERY, head)
    ]


def drop(r: Any, table: str) -> None:
    index = f"{table}:_index"
    keys = r.zrange(index, 0, -1)
    for first in range(0, len(keys), 10_000):
        r.delete(*keys[first : first + 10_000])
    r.delete(index, table)


def bare_hash(r: Any, table: str, microbatches: list[Microbatch], delete: bool) -> float:
    """Seconds to write the loader's hashes and index with redis-py alone."""
    drop(r, table)
    started = time.perf_counter()
    for microbatch in microbatches:
        block_range = microbatch.block_range
        tag = (block_range.hash or "")[2:18]
        prefix = f"{table}:{block_range.network}:{block_range.start}-{block_range.end}:{tag}"
        pipe = r.pipeline(transaction=True)
        scores: dict[str, int] = {}
        position = 0
        for batch in microbatch.batches:
            blocks = batch.column("_block_num").to_pylist()
            for block, row in zip(blocks, batch.to_pylist(), strict=True):
                key = f"{prefix}:{position}"
                if delete:
                    pipe.delete(key)
                pipe.hset(key, mapping={k: _value(v) for k, v in row.items() if v is not None})
                scores[key] = block
                position += 1
        if scores:
            pipe.zadd(f"{table}:_index", scores)
        pipe.execute()
    elapsed = time.perf_counter() - started
    drop(r, table)
    return elapsed


def bare_stream(r: Any, table: str, microbatches: list[Microbatch]) -> float:
    """Seconds to XADD the loader's stream entries with redis-py alone."""
    drop(r, table)
    started = time.perf_counter()
    for microbatch in microbatches:
        pipe = r.pipeline(transaction=True)
        sequence: dict[int, int] = {}
        for batch in microbatch.batches:
            ordered = batch.sort_by([("_block_num", "ascending")])
            blocks = ordered.column("_block_num").to_pylist()
            for block, row in zip(blocks, ordered.to_pylist(), strict=True):
                n = sequence.get(block, 0)
                sequence[block] = n + 1
                fields = {k: _value(v) for k, v in row.items() if v is not None}
                pipe.xadd(table, fields, id=f"{block}-{n}")
        pipe.execute()
    elapsed = time.perf_counter() - started
    drop(r, table)
    return elapsed


def loader_run(
    r: Any, url: str, table: str, head: int, structure: str, db: int
) -> tuple[float, int]:
    """Seconds and rows of a streaming load from block 0 until the head is committed."""
    drop(r, table)
    client = Client(url)
    config = {"host": HOST, "port": PORT, "db": db, "data_structure": structure}
    client.configure_connection("bench", "redis", config)
    rows = 0
    started = time.perf_counter()
    run = client.sql(QUERY).load("bench", table, stream=True)
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
    drop(r, table)
    return elapsed, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--blocks", type=int, default=1_000)
    parser.add_argument("--txs-per-block", type=int, default=50, help="logs ~1.5x this")
    parser.add_argument("--max-interval", type=int, default=100, help="blocks per microbatch")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--db", type=int, default=9, help="Redis database for the bench keys")
    args = parser.parse_args()
    connection = RedisLoader({"host": HOST, "port": PORT, "db": args.db}, "bench-bare")
    try:
        connection.connect()
    except DestinationError as exc:
        sys.exit(str(exc))
    r = connection.client
    version = r.info("server")["redis_version"]
    table = f"bench_redis_{os.getpid()}"
    process, url = start_server(args)
    head = args.blocks - 1
    try:
        microbatches = capture(url, head)
        rows = sum(m.rows for m in microbatches)
        runs: dict[str, Callable[[], float]] = {
            "bare redis-py, hash": lambda: bare_hash(r, f"{table}_bh", microbatches, False),
            "bare redis-py + DEL, hash": lambda: bare_hash(r, f"{table}_bd", microbatches, True),
            "bare redis-py, stream": lambda: bare_stream(r, f"{table}_bs", microbatches),
        }
        for structure in ("hash", "stream"):

            def load(structure: str = structure) -> float:
                seconds, loaded = loader_run(r, url, f"{table}_l", head, structure, args.db)
                assert loaded == rows, f"loader ({structure}) loaded {loaded} rows, not {rows}"
                return seconds

            runs[f"amp loader, {structure}"] = load
        timings: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.repeat):  # interleaved, so drift affects all alike
            for name, run in runs.items():
                timings[name].append(run())
    finally:
        process.terminate()
        process.wait()
        connection.close()
    print(" ".join(["redis_throughput.py", *sys.argv[1:]]))
    print(
        f"blocks {args.blocks:,}, txs/block {args.txs_per_block}, max-interval "
        f"{args.max_interval}, seed {args.seed}, repeat {args.repeat}, db {args.db}; "
        f"Redis {version}, redis-py {importlib.metadata.version('redis')}"
    )
    print(f"rows: {rows:,} of eth_firehose.logs in {len(microbatches)} microbatches")
    print(f"{'run':<28}{'median s':>10}{'rows/s':>12}{'vs bare':>10}")
    bare = {"hash": "bare redis-py, hash", "stream": "bare redis-py, stream"}
    for name, values in timings.items():
        seconds = statistics.median(values)
        limit = statistics.median(timings[bare[name.rsplit(" ", 1)[-1]]])
        print(f"{name:<28}{seconds:>10.3f}{rows / seconds:>12,.0f}{limit / seconds:>10.1%}")


if __name__ == "__main__":
    main()
