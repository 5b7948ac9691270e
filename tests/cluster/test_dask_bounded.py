"""A bounded parallel load whose partitions run as tasks on a Dask cluster of worker
processes (``ParallelConfig(executor=client)`` or a scheduler address) equals the
canonical chain over ``[min_block, max_block]`` exactly, with one checkpoint per
partition, also while worker processes are SIGKILLed in the middle of partitions."""

from __future__ import annotations

import pytest

from amp.devserver import DevServer
from amp.streaming.parallel import ParallelConfig
from clusterkit import DaskCluster, load_killing_workers, start_cluster
from kit import PG_DSN, SqlDestination, assert_table_equals_chain, checkpoint_ends, connected

pytestmark = pytest.mark.timeout(300)

QUERY = "SELECT * FROM eth_firehose.logs"
EXACTLY_ONCE = {"dsn": PG_DSN, "checkpoint": {"enabled": True}, "idempotency": {"enabled": True}}
# Quick retries: a killed worker's task is re-run or resubmitted within a second or two.
FAST = {"retry": {"initial_backoff_ms": 10, "max_backoff_ms": 200, "jitter": False}}


def test_partitions_on_worker_processes_equal_the_chain(
    cluster: DaskCluster, postgres: SqlDestination
) -> None:
    table = postgres.new_table("dask")
    config = ParallelConfig(
        num_workers=2,
        table_name="eth_firehose.blocks",
        min_block=5,
        max_block=1_204,
        partition_size=300,
        executor=cluster.address,
    )
    with (
        DevServer(port=0, seed=51, initial_blocks=1_400, max_interval=100) as srv,
        connected(srv, "pg", "postgresql", EXACTLY_ONCE) as client,
    ):
        results = list(client.sql(QUERY).load("pg", table, stream=True, parallel_config=config))
    assert all(r.success for r in results), [r.error for r in results if not r.success]
    assert {r.metadata["worker_id"] for r in results} == {0, 1, 2, 3}
    count = assert_table_equals_chain(postgres, table, srv.chain, "logs", blocks=(5, 1_204))
    assert sum(r.rows_loaded for r in results) == count
    assert checkpoint_ends(postgres, table) == [(0, 304), (1, 604), (2, 904), (3, 1_204)]


@pytest.mark.parametrize("allowed_failures", [10, 0], ids=["dask-reruns", "amp-resubmits"])
def test_worker_processes_killed_mid_partition_end_exact(
    postgres: SqlDestination, allowed_failures: int
) -> None:
    """Four kills, each of the worker process running a partition, right after a result
    of that run arrived (mid-partition: every partition is 10 microbatches of 50 ms
    each at least). Dask runs a lost task again on a worker (its own retries), or gives
    up on it at once (``allowed-failures`` 0) and amp submits it again; either way the
    partition resumes from its checkpoint."""
    table = postgres.new_table("dask")
    with start_cluster(workers=2, allowed_failures=allowed_failures) as cluster:
        config = ParallelConfig(
            num_workers=2,
            table_name="eth_firehose.blocks",
            min_block=0,
            max_block=1_999,
            partition_size=500,
            executor=cluster.client,
        )
        with (
            DevServer(port=0, seed=52, initial_blocks=2_100, max_interval=50) as srv,
            connected(srv, "pg", "postgresql", {**EXACTLY_ONCE, "resilience": FAST}) as client,
        ):
            srv.faults.set_latency(0.05)
            run = client.sql(QUERY).load("pg", table, stream=True, parallel_config=config)
            _, killed = load_killing_workers(run, cluster, kills=4)
    assert killed == 4, f"only {killed} kills landed in a running partition"
    assert run.partitions is not None
    submissions = max(state.submissions for state in run.partitions.values())
    assert (submissions > 1) == (allowed_failures == 0), submissions
    assert_table_equals_chain(postgres, table, srv.chain, "logs", blocks=(0, 1_999))
    assert checkpoint_ends(postgres, table) == [(0, 499), (1, 999), (2, 1_499), (3, 1_999)]
