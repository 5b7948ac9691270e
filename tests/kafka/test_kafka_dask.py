"""A bounded parallel load into Kafka whose partitions run as tasks on a Dask cluster of
worker processes: the table a read_committed consumer keeps from the topic equals the
canonical chain exactly, while the worker processes running partitions are SIGKILLed.
A killed task's successor starts the partition's producer with the same transactional
id, which aborts what the dead one left open, and resumes from its checkpoint."""

from __future__ import annotations

import pytest

from amp.devserver import DevServer
from clusterkit import DaskCluster, load_killing_workers
from kafkakit import assert_topic_matches_chain, kafka_config
from kit import LOGS_QUERY as QUERY
from kit import connected
from parallelkit import split

pytestmark = pytest.mark.timeout(300)


def test_partitions_on_a_cluster_through_worker_kills(bootstrap: str, cluster: DaskCluster) -> None:
    parallel = split(2, 0, 1_199, partition_size=300, executor=cluster.address)
    config = kafka_config(bootstrap, checkpoint={"enabled": True}, idempotency={"enabled": True})
    with (
        DevServer(port=0, seed=54, initial_blocks=1_300, max_interval=30) as srv,
        connected(srv, "k", "kafka", config) as client,
    ):
        srv.faults.set_latency(0.05)
        run = client.sql(QUERY).load("k", "logs", stream=True, parallel_config=parallel)
        _, killed = load_killing_workers(run, cluster, kills=3)
    assert killed == 3, f"only {killed} kills landed in a running partition"
    assert_topic_matches_chain(bootstrap, config["topic"], srv.chain, blocks=(0, 1_199))
