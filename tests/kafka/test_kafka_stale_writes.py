"""What a killed load's writers leave open on Kafka: a transaction that no producer will
ever end, holding back every ``read_committed`` read of its topics (until the broker's
transaction timeout; tansu never times it out). A parallel load ends them before it
reads its plan (``KafkaLoader.end_stale_writes``): every transactional id of its table
and connection with a transaction open is fenced, which aborts it. A partition that is
done never starts its producer again, so nothing else would.

The open transaction is a real one: a producer process with the worker's transactional
id that produces a record (named by its ``amp-writer`` header, as amp's records are) and
is SIGKILLed before it commits.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from confluent_kafka import IsolationLevel, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic, OffsetSpec

from amp.devserver import DevServer
from amp.loaders.kafka import KafkaLoader
from kafkakit import assert_topic_matches_chain, kafka_config, loader_config
from kit import connected
from parallelkit import split

pytestmark = pytest.mark.timeout(180)

LOGS = "SELECT * FROM eth_firehose.logs"
EXACTLY_ONCE = {"checkpoint": {"enabled": True}, "idempotency": {"enabled": True}}
# A state record no load reads (another kind, another table): only its transaction matters.
NOISE_KEY = json.dumps(["", "test-noise", "k", "elsewhere"])


def leave_open_transaction(bootstrap: str, writer: str, topic: str) -> None:
    """A producer process with transactional id ``writer`` opens a transaction on
    ``topic`` (partition 0), delivers one record into it and is SIGKILLed."""
    script = textwrap.dedent(
        f"""
        import os, signal
        from confluent_kafka import Producer
        producer = Producer({{"bootstrap.servers": {bootstrap!r}, "transactional.id": {writer!r}}})
        producer.init_transactions(30)
        producer.begin_transaction()
        producer.produce({topic!r}, key={NOISE_KEY!r}, value=b"{{}}", partition=0,
                         headers=[("amp-writer", {writer!r})])
        assert producer.flush(30) == 0
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    finished = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert finished.returncode == -9, finished.stderr.decode(errors="replace")


def is_open(bootstrap: str, topic: str) -> bool:
    """Whether a transaction is open on ``topic``'s partition 0: its last stable offset
    is short of its end."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    ends = []
    for isolation in (IsolationLevel.READ_COMMITTED, IsolationLevel.READ_UNCOMMITTED):
        futures = admin.list_offsets(
            {TopicPartition(topic, 0): OffsetSpec.latest()},
            isolation_level=isolation,
            request_timeout=10,
        )
        ends.append(next(iter(futures.values())).result().offset)
    return ends[0] < ends[1]


def test_a_rerun_ends_the_open_transaction_of_a_done_partitions_worker(bootstrap: str) -> None:
    """Two partitions, loaded to the end; then worker 1's id is left with an open
    transaction on the state topic (its process killed). The rerun reads the stored plan,
    finds both partitions done, and ends it: without that, reading the plan would wait on
    it for good."""
    config = kafka_config(bootstrap, **EXACTLY_ONCE)
    state_topic = config["state_topic"]
    parallel = split(2, 0, 399)
    with (
        DevServer(port=0, seed=41, initial_blocks=500, max_interval=40) as srv,
        connected(srv, "k", "kafka", config) as client,
    ):
        first = list(client.sql(LOGS).load("k", "logs", stream=True, parallel_config=parallel))
        assert {r.metadata["worker_id"] for r in first} == {0, 1}
        leave_open_transaction(bootstrap, "amp-k-logs-1", state_topic)
        assert is_open(bootstrap, state_topic)

        rerun = client.sql(LOGS).load("k", "logs", stream=True, parallel_config=parallel)
        assert list(rerun) == [], "both partitions were done: nothing to load again"
        assert rerun.partitions is not None
        assert {p.status for p in rerun.partitions.values()} == {"done"}
        assert not is_open(bootstrap, state_topic), "the killed worker's transaction is open"
        assert_topic_matches_chain(bootstrap, config["topic"], srv.chain, blocks=(0, 399))


def test_only_the_tables_own_writers_are_fenced(bootstrap: str) -> None:
    """Open transactions of another table's writer and of another connection's writer of
    the same table stay open (they may be live loads); the table's own writer's, on its
    rows' topic, is ended."""
    config = loader_config(bootstrap)
    topic, state_topic = config["topic"], config["state_topic"]
    loader = KafkaLoader(config, "k")
    loader.ensure_connected()  # creates the state topic
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, 1)])[topic].result()
    try:
        leave_open_transaction(bootstrap, "amp-k-logs_other-0", state_topic)
        leave_open_transaction(bootstrap, "amp-j-logs-0", state_topic)
        leave_open_transaction(bootstrap, "amp-k-logs-3", topic)
        assert is_open(bootstrap, topic) and is_open(bootstrap, state_topic)

        loader.end_stale_writes("logs")
        assert not is_open(bootstrap, topic), "the table's own writer's transaction is open"
        assert is_open(bootstrap, state_topic), "another table's or connection's was ended"
    finally:
        for other in ("amp-k-logs_other-0", "amp-j-logs-0"):  # the test's own clean-up
            Producer({"bootstrap.servers": bootstrap, "transactional.id": other}).init_transactions(
                30
            )
        loader.close()
    assert not is_open(bootstrap, state_topic)
