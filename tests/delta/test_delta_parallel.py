"""Parallel streaming loads into one Delta table: worker threads commit concurrently
(delta-rs's optimistic concurrency; a conflict replays the unit), each with its own
checkpoint carried in the commits. A bounded load equals the canonical chain over its
blocks with a checkpoint per worker, and a rerun finds every partition done; a hybrid
load ends equal to the chain through reorgs around the hand-off block."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from delta_support import TABLE, amp_commits, assert_exact, delta_config

from amp.client import Client
from amp.devserver import DevServer
from kit import LOGS_QUERY as QUERY
from kit import unique
from parallelkit import around_handoff, drive_hybrid, first_live_block, reorgs_of, split

pytestmark = pytest.mark.timeout(180)


def checkpoints(table_path: Path, connection: str) -> dict[int, dict[str, object]]:
    """Every worker's current checkpoint: the highest sequence number across commits."""
    best: dict[int, tuple[int, dict[str, object]]] = {}
    for commit in amp_commits(table_path):
        for key, seq, document in json.loads(commit["amp"])["checkpoints"]:
            if key[1] != "checkpoint" or key[2] != connection or key[3] != TABLE:
                continue
            if document is not None and (key[4] not in best or seq > best[key[4]][0]):
                best[key[4]] = (seq, document)
    return {worker: document for worker, (_, document) in best.items()}


def test_bounded_parallel_load_equals_the_chain(tmp_path: Path) -> None:
    """Three threads, five partitions of 130 blocks, microbatches of 40 (every seam falls
    inside one); the rerun finds every partition done."""
    parallel = split(3, 5, 599, partition_size=130)
    connection = unique("dp")
    config = delta_config(tmp_path, checkpoint=True, idempotency=True)
    with DevServer(port=0, seed=21, initial_blocks=700, max_interval=40) as srv:
        client = Client(srv.url)
        try:
            client.configure_connection(connection, "deltalake", config)
            run = client.sql(QUERY).load(connection, TABLE, stream=True, parallel_config=parallel)
            results = list(run)
            assert all(r.success for r in results), [r.error for r in results if not r.success]
            partitions = {r.metadata["worker_id"]: r.metadata["partition"] for r in results}
            assert sorted(partitions) == [0, 1, 2, 3, 4]
            assert_exact(tmp_path, srv.chain, blocks=(5, 599))
            stored = checkpoints(tmp_path, connection)
            for worker, partition in partitions.items():
                ranges = stored[worker]["ranges"]
                assert isinstance(ranges, list)
                assert ranges[-1]["end"] >= partition["end"], f"worker {worker}"
            again = client.sql(QUERY).load(connection, TABLE, stream=True, parallel_config=parallel)
            assert list(again) == []
        finally:
            client.close()
    assert_exact(tmp_path, srv.chain, blocks=(5, 599))


def test_hybrid_load_through_reorgs_around_the_handoff(tmp_path: Path) -> None:
    """H = 240 - 20 = 220: three backfill workers, then the live one (worker 3)."""
    parallel = split(3, 0, None, reorg_buffer=20)
    connection = unique("dp")
    with DevServer(port=0, seed=22, initial_blocks=241, max_interval=25) as srv:
        client = Client(srv.url)
        try:
            client.configure_connection(
                connection, "deltalake", delta_config(tmp_path, checkpoint=True)
            )
            run = client.sql(QUERY).load(connection, TABLE, stream=True, parallel_config=parallel)
            seen = drive_hybrid(run, srv.chain, live_worker=3, changes=around_handoff())
        finally:
            client.close()
    summary = sorted(
        (r.metadata["worker_id"], r.metadata.get("operation"), str(r.metadata.get("block_ranges")))
        for r in seen
    )
    assert {r.metadata["worker_id"] for r in seen} == {0, 1, 2, 3}, summary
    assert first_live_block(seen, live_worker=3) == 221
    assert min(reorgs_of(seen, worker=3)) < 221
    assert_exact(tmp_path, srv.chain)
