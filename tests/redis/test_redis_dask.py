"""A bounded parallel load into Redis whose partitions run as tasks on a Dask cluster of
worker processes equals the canonical chain exactly, while the worker processes running
partitions are SIGKILLed: a killed task's lease is taken over by its successor (the
holder is a dead process of this host), which resumes from the partition's checkpoint."""

from __future__ import annotations

import json

import pytest
import redis
from redis_support import Names, assert_exact, redis_config

from amp.devserver import DevServer
from clusterkit import DaskCluster, load_killing_workers
from kit import LOGS_QUERY as QUERY
from kit import connected
from parallelkit import split

pytestmark = pytest.mark.timeout(300)

FAST = {"retry": {"initial_backoff_ms": 10, "max_backoff_ms": 200, "jitter": False}}


def test_partitions_on_a_cluster_through_worker_kills(
    redis_client: redis.Redis, names: Names, cluster: DaskCluster
) -> None:
    parallel = split(2, 0, 1_599, partition_size=400, executor=cluster.address)
    config = {**redis_config(checkpoint=True, idempotency=True), "resilience": FAST}
    with (
        DevServer(port=0, seed=53, initial_blocks=1_700, max_interval=40) as srv,
        connected(srv, names.connection, "redis", config) as client,
    ):
        srv.faults.set_latency(0.05)
        run = client.sql(QUERY).load(
            names.connection, names.table, stream=True, parallel_config=parallel
        )
        _, killed = load_killing_workers(run, cluster, kills=3)
    assert killed == 3, f"only {killed} kills landed in a running partition"
    assert_exact(redis_client, names.table, "hash", srv.chain, blocks=(0, 1_599))
    for worker, end in enumerate((399, 799, 1_199, 1_599)):
        raw = redis_client.get(f"amp_checkpoint:{names.connection}:{names.table}:{worker}")
        assert raw is not None, f"no checkpoint of worker {worker}"
        assert json.loads(raw)["ranges"][-1]["end"] >= end
