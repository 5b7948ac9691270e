"""Parallel streaming loads into Kafka: a transactional producer per worker, so several
writers share a topic and its state topic without fencing each other.

The table a consumer keeps from the topic (upsert by key, tombstone deletes) must equal
the canonical chain over ``[min_block, max_block]``; each row is written by the producer
of the partition that holds its block; each worker has its own checkpoint in the state
topic. A worker thread that takes several partitions restarts its producer with each
partition's id, and no worker retracts a neighbour's rows at a seam, even when it knows
them (a rerun reads the whole state topic).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from amp.client import LoadResult
from amp.devserver import DevServer
from amp.errors import FatalLoadError
from kafkakit import assert_topic_matches_chain, kafka_config, read_topic
from kit import Mine, Reorg, caught_up, connected
from parallelkit import around_handoff, drive_hybrid, first_live_block, reorgs_of, split

pytestmark = pytest.mark.timeout(180)

LOGS = "SELECT * FROM eth_firehose.logs"
EXACTLY_ONCE = {"checkpoint": {"enabled": True}, "idempotency": {"enabled": True}}


def checkpoints(bootstrap: str, state_topic: str, table: str) -> dict[int, int]:
    """Worker id → last block of its committed checkpoint, read from the state topic."""
    latest: dict[tuple[Any, ...], bytes | None] = {}
    for record in read_topic(bootstrap, state_topic):
        assert record.key is not None
        latest[tuple(json.loads(record.key))] = record.value
    found = {}
    for key, value in latest.items():
        if key[1] == "checkpoint" and key[3] == table and value is not None:
            found[int(key[4])] = int(json.loads(value)["ranges"][-1]["end"])
    return found


def partition_of(block: int, partitions: dict[int, dict[str, int]]) -> int:
    [worker] = [w for w, p in partitions.items() if p["start"] <= block <= p["end"]]
    return worker


def test_bounded_parallel_load_with_a_producer_per_worker(bootstrap: str) -> None:
    """Two threads, five partitions of 130 blocks, microbatches of 40: every seam falls
    inside a microbatch, and each thread moves from partition to partition."""
    config = kafka_config(bootstrap, **EXACTLY_ONCE)
    parallel = split(2, 5, 599, partition_size=130)
    with (
        DevServer(port=0, seed=11, initial_blocks=700, max_interval=40) as srv,
        connected(srv, "k", "kafka", config) as client,
    ):
        results = list(client.sql(LOGS).load("k", "logs", stream=True, parallel_config=parallel))
        assert all(r.success for r in results), [r.error for r in results if not r.success]
        partitions = {r.metadata["worker_id"]: r.metadata["partition"] for r in results}
        assert partitions == {
            0: {"start": 5, "end": 134},
            1: {"start": 135, "end": 264},
            2: {"start": 265, "end": 394},
            3: {"start": 395, "end": 524},
            4: {"start": 525, "end": 599},
        }
        view = assert_topic_matches_chain(bootstrap, config["topic"], srv.chain, blocks=(5, 599))
        assert sum(r.rows_loaded for r in results) == len(view)
        for record in view.values():
            block = int(record.headers["amp-block"])
            worker = partition_of(block, partitions)
            assert record.headers["amp-writer"] == f"amp-k-logs-{worker}".encode()
            start, end = map(int, record.headers["amp-block-range"].split(b"-"))
            part = partitions[worker]
            assert part["start"] <= start <= block <= end <= part["end"], (record, part)
        stored = checkpoints(bootstrap, config["state_topic"], "logs")
        assert sorted(stored) == [0, 1, 2, 3, 4]
        for worker, end in stored.items():
            assert end >= partitions[worker]["end"]
        # The stored plan says every partition is done: a rerun loads nothing.
        again = client.sql(LOGS).load("k", "logs", stream=True, parallel_config=parallel)
        assert list(again) == []
    assert_topic_matches_chain(bootstrap, config["topic"], srv.chain, blocks=(5, 599))


def test_a_failed_partition_is_rerun_without_retracting_its_neighbour(bootstrap: str) -> None:
    """One thread, partitions 0..99 and 100..199, microbatches of 40. Partition 0's
    first query fails for good; partition 1 is loaded; the load then fails naming
    partition 0. The rerun loads partition 0, whose last microbatch (80..119) reaches
    into partition 1: rows of 100..119 are partition 1's, and stay."""
    config = kafka_config(bootstrap, **EXACTLY_ONCE)
    parallel = split(1, 0, 199, partition_size=100)
    with (
        DevServer(port=0, seed=12, initial_blocks=260, max_interval=40) as srv,
        connected(srv, "k", "kafka", config) as client,
    ):
        srv.faults.fail_next("get_flight_info", "FAILED_PRECONDITION")
        run = client.sql(LOGS).load("k", "logs", stream=True, parallel_config=parallel)
        results: list[LoadResult] = []
        with pytest.raises(FatalLoadError) as failure:
            for result in run:
                results.append(result)
        message = str(failure.value)
        assert "1 partition(s)" in message and "partition 0 (blocks 0..99)" in message
        assert "run the same load again" in message
        [failed] = [r for r in results if not r.success]
        assert failed.metadata["worker_id"] == 0
        assert {r.metadata["worker_id"] for r in results if r.success} == {1}
        assert_topic_matches_chain(bootstrap, config["topic"], srv.chain, blocks=(100, 199))

        rerun = list(client.sql(LOGS).load("k", "logs", stream=True, parallel_config=parallel))
        assert {r.metadata["worker_id"] for r in rerun} == {0}
        last = rerun[-1].metadata["block_ranges"][0]
        assert (last["start"], last["end"]) == (80, 119), "the seam is inside a microbatch"
        assert_topic_matches_chain(bootstrap, config["topic"], srv.chain, blocks=(0, 199))
    stored = checkpoints(bootstrap, config["state_topic"], "logs")
    assert sorted(stored) == [0, 1]


def test_hybrid_load_hands_off_and_retracts_through_reorgs_around_h(bootstrap: str) -> None:
    """H = 240 - 20 = 220; three backfill writers and a live one. A reorg of depth 8
    stays above H; one of depth 30 reaches below it, into blocks the backfill wrote: the
    live worker retracts their rows (it never wrote them) and loads the fork."""
    config = kafka_config(bootstrap, **EXACTLY_ONCE)
    parallel = split(3, 0, None, reorg_buffer=20)
    with (
        DevServer(port=0, seed=13, initial_blocks=241, max_interval=25) as srv,
        connected(srv, "k", "kafka", config) as client,
    ):
        run = client.sql(LOGS).load("k", "logs", stream=True, parallel_config=parallel)
        seen = drive_hybrid(run, srv.chain, live_worker=3, changes=around_handoff())
        assert {r.metadata["worker_id"] for r in seen} == {0, 1, 2, 3}
        assert first_live_block(seen, live_worker=3) == 221
        assert min(reorgs_of(seen, worker=3)) < 221
        assert_topic_matches_chain(bootstrap, config["topic"], srv.chain)
    below = [
        r
        for r in read_topic(bootstrap, config["topic"])
        if r.value is None and int(r.headers["amp-block"]) <= 220
    ]
    assert below, "the reorg below H retracted no row of the backfill"
    assert {r.headers["amp-writer"] for r in below} == {b"amp-k-logs-3"}


def test_a_reorg_inside_one_partition_retracts_only_its_rows(bootstrap: str) -> None:
    """Partitions 0..79 and 80..159 over a chain whose head is 139: worker 1 waits at the
    head while worker 0 commits beside it. A reorg of blocks 135..139, then 20 new
    blocks: worker 1 retracts exactly the rows it wrote for the replaced blocks, with its
    own producer, and ends at block 159."""
    config = kafka_config(bootstrap, **EXACTLY_ONCE)
    parallel = split(2, 0, 159)
    reorg = Reorg(5)
    changes: list[Reorg | Mine] = [reorg, Mine(20)]
    with (
        DevServer(port=0, seed=14, initial_blocks=140, max_interval=10) as srv,
        connected(srv, "k", "kafka", config) as client,
    ):
        run = client.sql(LOGS).load("k", "logs", stream=True, parallel_config=parallel)
        results = []
        for result in run:
            assert result.success, result.error
            results.append(result)
            if changes and result.metadata["worker_id"] == 1 and caught_up(result, srv.chain):
                changes.pop(0)(srv.chain)
        assert not changes, "worker 1 never caught up with the head"
        [reorged] = [r for r in results if r.metadata.get("operation") == "reorg"]
        assert reorged.metadata["worker_id"] == 1
        assert reorged.metadata["invalidated_range"]["start"] == 135
        assert reorged.metadata["rows_deleted"] == reorg.rows_replaced
        assert run.partitions is not None and run.partitions[1].committed == 159
        assert_topic_matches_chain(bootstrap, config["topic"], srv.chain, blocks=(0, 159))
    tombstones = [r for r in read_topic(bootstrap, config["topic"]) if r.value is None]
    assert len(tombstones) == reorg.rows_replaced
    assert {r.headers["amp-writer"] for r in tombstones} == {b"amp-k-logs-1"}
    assert {int(r.headers["amp-block"]) for r in tombstones} <= set(range(135, 140))
