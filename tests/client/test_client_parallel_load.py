"""Parallel streaming loads (``parallel_config=ParallelConfig(...)``): a bounded load
equals the canonical chain over ``[min_block, max_block]`` (both included) with one
checkpoint per worker; a restart reuses the stored plan; a hybrid load hands off to a
live worker at H without a gap or a duplicate, through reorgs around H."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from oracle import Destination, connected

from amp.devserver import DevServer
from amp.errors import ConfigError
from amp.streaming.parallel import ParallelConfig
from amp.streaming.resilience import CircuitBreakerConfig, RetryConfig
from kit import assert_table_equals_chain, block_range, checkpoint_ends
from parallelkit import around_handoff, drive_hybrid, first_live_block, reorgs_of

pytestmark = pytest.mark.timeout(120)

QUERY = "SELECT * FROM eth_firehose.logs"


def _with_checkpoints(destination: Destination) -> dict[str, Any]:
    return {
        **destination.config,
        "checkpoint": {"enabled": True},
        "idempotency": {"enabled": True},
    }


def test_bounded_parallel_load_equals_the_chain_with_a_checkpoint_per_worker(
    destination: Destination,
) -> None:
    table = destination.new_table("par")
    config = ParallelConfig(
        num_workers=3, table_name="eth_firehose.blocks", min_block=5, max_block=1_999
    )
    with (
        DevServer(port=0, seed=3, initial_blocks=2_500, max_interval=150) as srv,
        connected(
            srv,
            replace(destination, config=_with_checkpoints(destination)),
        ) as client,
    ):
        run = client.sql(QUERY).load("dest", table, stream=True, parallel_config=config)
        results = list(run)  # ends by itself once every partition is done
        assert all(r.success for r in results)
        workers = {r.metadata["worker_id"] for r in results}
        assert workers == {0, 1, 2}
        partitions = {r.metadata["worker_id"]: r.metadata["partition"] for r in results}
        assert partitions == {
            0: {"start": 5, "end": 669},
            1: {"start": 670, "end": 1334},
            2: {"start": 1335, "end": 1999},
        }
        loaded = sum(r.rows_loaded for r in results)
        count = assert_table_equals_chain(destination, table, srv.chain, "logs", blocks=(5, 1_999))
        assert loaded == count
        checkpoints = checkpoint_ends(destination, table)
        assert [worker for worker, _ in checkpoints] == [0, 1, 2]
        for worker, end in checkpoints:
            assert end >= partitions[worker]["end"]
        # Run again: the stored plan says every partition is done; nothing is loaded.
        again = list(client.sql(QUERY).load("dest", table, stream=True, parallel_config=config))
        assert again == []
        # Another plan over the same destination is refused, naming what changed.
        other = ParallelConfig(
            num_workers=4, table_name="eth_firehose.blocks", min_block=5, max_block=1_999
        )
        with pytest.raises(ConfigError, match="num_workers 3 -> 4"):
            list(client.sql(QUERY).load("dest", table, stream=True, parallel_config=other))
        assert_table_equals_chain(destination, table, srv.chain, "logs", blocks=(5, 1_999))


def test_partitions_of_a_given_size_and_more_partitions_than_workers(
    destination: Destination,
) -> None:
    table = destination.new_table("par")
    config = ParallelConfig(
        num_workers=2,
        table_name="eth_firehose.blocks",
        min_block=0,
        max_block=999,
        partition_size=170,
    )
    with (
        DevServer(port=0, seed=4, initial_blocks=1_200, max_interval=100) as srv,
        connected(srv, destination) as client,
    ):
        results = list(client.sql(QUERY).load("dest", table, stream=True, parallel_config=config))
        assert {r.metadata["worker_id"] for r in results} == set(range(6))
        assert_table_equals_chain(destination, table, srv.chain, "logs", blocks=(0, 999))


def test_hybrid_load_hands_off_at_h_through_reorgs_around_it(destination: Destination) -> None:
    """H = 600 - 20 = 580. Blocks arrive; a reorg of depth 8 stays above H, one of depth
    30 reaches below it (the live worker waits for the backfill, then reloads)."""
    table = destination.new_table("par")
    config = ParallelConfig(
        num_workers=3, table_name="eth_firehose.blocks", min_block=0, reorg_buffer=20
    )
    with (
        DevServer(port=0, seed=5, initial_blocks=601, max_interval=50) as srv,
        connected(
            srv,
            replace(destination, config=_with_checkpoints(destination)),
        ) as client,
    ):
        run = client.sql(QUERY).load("dest", table, stream=True, parallel_config=config)
        seen = drive_hybrid(run, srv.chain, live_worker=3, changes=around_handoff())
        assert {r.metadata["worker_id"] for r in seen} == {0, 1, 2, 3}
        assert first_live_block(seen, live_worker=3) == 581
        assert reorgs_of(seen, worker=3)
        assert_table_equals_chain(destination, table, srv.chain, "logs")


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"num_workers": 0, "table_name": "eth_firehose.blocks"}, "num_workers must be >= 1"),
        ({"num_workers": 2, "table_name": ""}, "table_name"),
        (
            {"num_workers": 2, "table_name": "eth_firehose.blocks", "min_block": 9, "max_block": 3},
            "min_block",
        ),
        (
            {"num_workers": 2, "table_name": "eth_firehose.blocks", "partition_size": 0},
            "partition_size must be >= 1",
        ),
        ({"num_workers": 2, "table_name": "eth_firehose.blocks", "workers": 3}, "did you mean"),
        (
            {"num_workers": 2, "table_name": "eth_firehose.blocks", "retry_config": {"x": 1}},
            "RetryConfig",
        ),
    ],
)
def test_invalid_parallel_config_is_refused_at_construction(
    arguments: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        ParallelConfig(**arguments)


def test_the_guides_resilience_overrides_are_accepted() -> None:
    config = ParallelConfig(
        num_workers=8,
        table_name="eth_firehose.blocks",
        min_block=0,
        max_block=1_000_000,
        retry_config=RetryConfig(max_retries=5, initial_backoff_ms=1000),
        circuit_breaker_config=CircuitBreakerConfig(failure_threshold=10, timeout_ms=60000),
    )
    assert config.circuit_breaker_config is not None
    assert config.circuit_breaker_config.failure_threshold == 10


def test_parallel_config_needs_stream_true(destination: Destination) -> None:
    config = ParallelConfig(num_workers=2, table_name="eth_firehose.blocks", max_block=10)
    with (
        DevServer(port=0, seed=1, initial_blocks=20) as srv,
        connected(srv, destination) as client,
        pytest.raises(ConfigError, match="stream=True"),
    ):
        client.sql(QUERY).load("dest", destination.new_table("par"), parallel_config=config)


def test_a_reorg_across_a_seam_at_the_head_is_taken_over_by_the_partition_above(
    destination: Destination,
) -> None:
    """Partitions 0..149 and 150..299 over a chain at 199: partition 0 finishes, and
    partition 1 waits at the head. A reorg forks at 145, below the seam: partition 1 sees
    it in its stream (partition 0, done, never will), so it must take blocks 145..149 over
    (delete and reload them) once partition 0 is done, or their forked rows stay."""
    table = destination.new_table("par")
    config = ParallelConfig(
        num_workers=2, table_name="eth_firehose.blocks", min_block=0, max_block=299
    )
    with (
        DevServer(port=0, seed=6, initial_blocks=200, max_interval=50) as srv,
        connected(srv, replace(destination, config=_with_checkpoints(destination))) as client,
    ):
        run = client.sql(QUERY).load("dest", table, stream=True, parallel_config=config)
        reached: set[int] = set()
        results = []
        reorged = False
        for result in run:
            assert result.success, result.error
            results.append(result)
            if result.metadata.get("operation") == "load":
                end = block_range(result)["end"]
                reached |= {w for w, last in ((0, 149), (1, srv.chain.head)) if end >= last}
            if reached == {0, 1} and not reorged:
                reorged = True
                srv.chain.reorg(55)  # fork at 145
                srv.chain.mine(110)  # head 309: past max_block, the load ends
        assert reorged
        reorgs = [r for r in results if r.metadata.get("operation") == "reorg"]
        assert [r.metadata["worker_id"] for r in reorgs] == [1]
        assert_table_equals_chain(destination, table, srv.chain, "logs", blocks=(0, 299))
        ends = dict(checkpoint_ends(destination, table))
        assert ends[0] >= 149 and ends[1] >= 299
