"""Cost of checkpoints plus idempotency on PostgreSQL, per microbatch and end to end.

1. Per microbatch: the work delivery adds inside each microbatch's transaction (the
   duplicate lookup, the idempotent delete of the range's blocks, the processed-range
   insert and the checkpoint upsert), timed around those calls alone, over N microbatches
   of a real load (p50, p95). Goal: p50 <= 2 ms.
2. End to end: rows/s of the same streaming load with checkpoint+idempotency on and off,
   interleaved, in one run.

    .venv/bin/python bench/delivery_postgres.py --microbatches 400 --repeat 3
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid

import psycopg

from amp.client import Client
from amp.devserver import DevServer
from amp.loaders import LoadMode
from amp.loaders.postgresql import PostgreSQLLoader
from amp.streaming.checkpoint import CheckpointConfig
from amp.streaming.delivery import Delivery
from amp.streaming.idempotency import IdempotencyConfig

DSN = "host=127.0.0.1 port=5432 dbname=test user=postgres"
QUERY = "SELECT * FROM eth_firehose.logs"


def per_microbatch(server: DevServer, microbatches: int, blocks_per_microbatch: int) -> list[float]:
    """Milliseconds of delivery work in each microbatch transaction."""
    table = f"bench_delivery_{uuid.uuid4().hex[:8]}"
    loader = PostgreSQLLoader({"dsn": DSN}, connection_name="bench")
    delivery = Delivery(
        loader,
        table,
        CheckpointConfig(enabled=True),
        IdempotencyConfig(enabled=True),
    )
    loader.connect()
    first = server.chain.snapshot(0, blocks_per_microbatch - 1)
    loader.prepare_table(table, first.table("logs").schema, LoadMode.OVERWRITE, "_block_num")
    delivery.prepare()
    costs = []
    try:
        for index in range(microbatches):
            start = index * blocks_per_microbatch
            snapshot = server.chain.snapshot(start, start + blocks_per_microbatch - 1)
            rows = snapshot.table("logs")
            block_range = _range(snapshot)
            loader.begin()
            began = time.perf_counter()
            duplicate = delivery.find_duplicate(block_range, range_keyed=False)
            assert duplicate is None
            loader.delete_blocks(table, "_block_num", block_range.start, block_range.end)
            checked = time.perf_counter()
            for batch in rows.to_batches():
                loader.write(table, batch, block_range)
            written = time.perf_counter()
            delivery.record(block_range, rows.to_batches())
            recorded = time.perf_counter()
            loader.commit()
            costs.append(((checked - began) + (recorded - written)) * 1000)
    finally:
        loader.close()
        with psycopg.connect(DSN, autocommit=True) as conn:
            conn.execute(f"DROP TABLE IF EXISTS {table}")
            conn.execute("DELETE FROM amp_checkpoints WHERE table_name = %s", (table,))
            conn.execute("DELETE FROM amp_processed_ranges WHERE table_name = %s", (table,))
    return costs


def _range(snapshot):  # type: ignore[no-untyped-def]
    from amp.streaming.types import BlockRange, hex_hash

    return BlockRange(
        snapshot.network, snapshot.start, snapshot.end, hex_hash(snapshot.hash),
        hex_hash(snapshot.prev_hash),
    )  # fmt: skip


def streaming(server: DevServer, delivered: bool) -> tuple[float, int]:
    client = Client(server.url)
    config: dict[str, object] = {"dsn": DSN}
    if delivered:
        config["checkpoint"] = {"enabled": True}
        config["idempotency"] = {"enabled": True}
    client.configure_connection("bench_e2e", "postgresql", config)
    head = server.chain.head
    rows = 0
    started = time.perf_counter()
    run = client.sql(QUERY).load("bench_e2e", "bench_delivery_e2e", stream=True, mode="overwrite")
    for result in run:
        rows += result.rows_loaded
        if result.metadata["block_ranges"][-1]["end"] >= head:
            break
    run.close()
    client.close()
    return time.perf_counter() - started, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--microbatches", type=int, default=400)
    parser.add_argument("--blocks-per-microbatch", type=int, default=10)
    parser.add_argument("--e2e-blocks", type=int, default=20_000)
    parser.add_argument("--max-interval", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    blocks = max(args.microbatches * args.blocks_per_microbatch, args.e2e_blocks)
    with DevServer(port=0, initial_blocks=blocks, max_interval=args.max_interval) as server:
        costs = per_microbatch(server, args.microbatches, args.blocks_per_microbatch)
        timings: dict[bool, list[float]] = {False: [], True: []}
        rows = 0
        for _ in range(args.repeat):
            for delivered in (False, True):
                elapsed, rows = streaming(server, delivered)
                timings[delivered].append(elapsed)
    costs.sort()
    p50 = statistics.median(costs)
    p95 = costs[int(len(costs) * 0.95) - 1]
    print(f"delivery work per microbatch ({len(costs)} microbatches of "
          f"{args.blocks_per_microbatch} blocks): p50 {p50:.2f} ms, p95 {p95:.2f} ms "
          f"(goal: p50 <= 2 ms)")  # fmt: skip
    off, on = statistics.median(timings[False]), statistics.median(timings[True])
    print(f"streaming {rows:,} rows, microbatches of {args.max_interval} blocks, "
          f"median of {args.repeat}:")  # fmt: skip
    print(f"  checkpoint+idempotency off: {rows / off:>10,.0f} rows/s")
    print(f"  checkpoint+idempotency on:  {rows / on:>10,.0f} rows/s ({on / off - 1:+.1%} time)")


if __name__ == "__main__":
    main()
