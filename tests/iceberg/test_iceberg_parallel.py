"""Parallel streaming loads into one Iceberg table: the workers' commits race (each is
built on the table's latest metadata; a commit that lost the race is built again), yet
a bounded load equals the canonical chain over ``[min_block, max_block]`` with one
checkpoint per worker, none hidden by another's commit; a hybrid load ends equal to the
chain through reorgs around the hand-off block."""

from __future__ import annotations

import pytest
from iceberg_support import Lake, assert_exact, checkpoints

from amp.client import Client
from amp.devserver import DevServer
from kit import LOGS_QUERY as QUERY
from parallelkit import around_handoff, drive_hybrid, first_live_block, reorgs_of, split

pytestmark = pytest.mark.timeout(300)
FEATURES = {"checkpoint": {"enabled": True}, "idempotency": {"enabled": True}}


def test_bounded_parallel_load_equals_the_chain(lake: Lake) -> None:
    """Three threads, five partitions of 130 blocks, microbatches of 40 (every seam falls
    inside one); the rerun finds every partition done."""
    parallel = split(3, 5, 599, partition_size=130)
    with DevServer(port=0, seed=21, initial_blocks=700, max_interval=40) as srv:
        client = Client(srv.url)
        try:
            client.configure_connection("par", "iceberg", lake.config(**FEATURES))
            run = client.sql(QUERY).load("par", "logs", stream=True, parallel_config=parallel)
            results = list(run)
            assert all(r.success for r in results), [r.error for r in results if not r.success]
            partitions = {r.metadata["worker_id"]: r.metadata["partition"] for r in results}
            assert sorted(partitions) == [0, 1, 2, 3, 4]
            table = lake.table("logs")
            assert_exact(table, srv.chain, blocks=(5, 599))
            stored = checkpoints(table)
            for worker, partition in partitions.items():
                assert worker in stored, f"no checkpoint of worker {worker}: {sorted(stored)}"
                assert stored[worker]["ranges"][-1]["end"] >= partition["end"]
            again = client.sql(QUERY).load("par", "logs", stream=True, parallel_config=parallel)
            assert list(again) == []
        finally:
            client.close()
    assert_exact(lake.table("logs"), srv.chain, blocks=(5, 599))


def test_hybrid_load_through_reorgs_around_the_handoff(lake: Lake) -> None:
    """H = 240 - 20 = 220: three backfill workers, then the live one (worker 3)."""
    parallel = split(3, 0, None, reorg_buffer=20)
    with DevServer(port=0, seed=22, initial_blocks=241, max_interval=25) as srv:
        client = Client(srv.url)
        try:
            client.configure_connection("par", "iceberg", lake.config(checkpoint={"enabled": True}))
            run = client.sql(QUERY).load("par", "logs", stream=True, parallel_config=parallel)
            seen = drive_hybrid(run, srv.chain, live_worker=3, changes=around_handoff())
        finally:
            client.close()
    assert {r.metadata["worker_id"] for r in seen} == {0, 1, 2, 3}
    assert first_live_block(seen, live_worker=3) == 221
    assert min(reorgs_of(seen, worker=3)) < 221
    assert_exact(lake.table("logs"), srv.chain)
