"""A bounded parallel load into one Iceberg table whose partitions run as tasks on a Dask
cluster of worker processes equals the canonical chain exactly, while the worker
processes running partitions are SIGKILLed: several processes commit to the table
concurrently (the catalog refuses a commit built on stale metadata; it is built again),
a killed task's stream lock (a ``flock`` beside the SQLite catalog, so one host: fine on
a LocalCluster) dies with its process, and its successor resumes from the partition's
checkpoint in the table's properties."""

from __future__ import annotations

import pytest
from iceberg_support import Lake, assert_exact, checkpoints

from amp.devserver import DevServer
from clusterkit import DaskCluster, load_killing_workers
from kit import LOGS_QUERY as QUERY
from kit import connected, unique
from parallelkit import split

pytestmark = pytest.mark.timeout(300)

FAST = {"retry": {"initial_backoff_ms": 10, "max_backoff_ms": 200, "jitter": False}}
FEATURES = {"checkpoint": {"enabled": True}, "idempotency": {"enabled": True}}
TABLE = "logs"


def test_partitions_on_a_cluster_through_worker_kills(lake: Lake, cluster: DaskCluster) -> None:
    parallel = split(2, 0, 1_599, partition_size=400, executor=cluster.address)
    connection = unique("id")
    config = lake.config(**FEATURES, resilience=FAST)
    with (
        DevServer(port=0, seed=53, initial_blocks=1_700, max_interval=40) as srv,
        connected(srv, connection, "iceberg", config) as client,
    ):
        srv.faults.set_latency(0.05)
        run = client.sql(QUERY).load(connection, TABLE, stream=True, parallel_config=parallel)
        _, killed = load_killing_workers(run, cluster, kills=3)
    assert killed == 3, f"only {killed} kills landed in a running partition"
    table = lake.table(TABLE)
    assert_exact(table, srv.chain, blocks=(0, 1_599))
    stored = checkpoints(table)
    for worker, end in enumerate((399, 799, 1_199, 1_599)):
        assert worker in stored, f"no checkpoint of worker {worker}: {sorted(stored)}"
        assert stored[worker]["ranges"][-1]["end"] >= end, f"worker {worker}"
