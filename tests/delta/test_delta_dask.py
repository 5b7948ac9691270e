"""A bounded parallel load into one Delta table whose partitions run as tasks on a Dask
cluster of worker processes equals the canonical chain exactly, while the worker
processes running partitions are SIGKILLed: several processes commit to the table
concurrently, a killed task's stream lock dies with its process, and its successor
resumes from the partition's checkpoint in the table's commits."""

from __future__ import annotations

from pathlib import Path

import pytest
from delta_support import TABLE, assert_exact, delta_config
from test_delta_parallel import checkpoints

from amp.devserver import DevServer
from clusterkit import DaskCluster, load_killing_workers
from kit import LOGS_QUERY as QUERY
from kit import connected, unique
from parallelkit import split

pytestmark = pytest.mark.timeout(300)

FAST = {"retry": {"initial_backoff_ms": 10, "max_backoff_ms": 200, "jitter": False}}


def test_partitions_on_a_cluster_through_worker_kills(tmp_path: Path, cluster: DaskCluster) -> None:
    parallel = split(2, 0, 1_599, partition_size=400, executor=cluster.address)
    connection = unique("dd")
    config = {**delta_config(tmp_path, checkpoint=True, idempotency=True), "resilience": FAST}
    with (
        DevServer(port=0, seed=53, initial_blocks=1_700, max_interval=40) as srv,
        connected(srv, connection, "deltalake", config) as client,
    ):
        srv.faults.set_latency(0.05)
        run = client.sql(QUERY).load(connection, TABLE, stream=True, parallel_config=parallel)
        _, killed = load_killing_workers(run, cluster, kills=3)
    assert killed == 3, f"only {killed} kills landed in a running partition"
    assert_exact(tmp_path, srv.chain, blocks=(0, 1_599))
    stored = checkpoints(tmp_path, connection)
    for worker, end in enumerate((399, 799, 1_199, 1_599)):
        ranges = stored[worker]["ranges"]
        assert isinstance(ranges, list) and ranges[-1]["end"] >= end, f"worker {worker}"
