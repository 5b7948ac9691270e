"""Exactly once into Kafka through crashes of a parallel load: the hybrid case of
``tests/crash/test_crash_parallel.py`` with ``amp load --parallel 3 --to kafka://…``
(a transactional id per worker), from block 0, so that the table a read_committed
consumer keeps from the topic must be the whole canonical chain.

The plan and the checkpoints are read back through amp's own Kafka state store (the
state topic), in a transaction of a fresh loader, as a restarted load reads them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from amp.devserver import DevServer
from amp.loaders.kafka import KafkaLoader
from crashkit import ParallelCrash, busy_chain_server, checkpoint_readers
from kafkakit import FAST_RESILIENCE, assert_topic_matches_chain
from kit import unique

REORG_BUFFER = 10
PREFIX = "amp_"


@pytest.fixture
def busy_chain() -> Iterator[DevServer]:
    """A backfill of 3,000 blocks of 10 logs (as the Redis case: grouped commits into a
    broker take longer than the SQL ones)."""
    with busy_chain_server(3_000, max_interval=50, txs_per_block=10) as server:
        yield server


@pytest.mark.slow
def test_kafka_hybrid_parallel_load_exactly_once_through_sigkills(
    busy_chain: DevServer, bootstrap: str
) -> None:
    topic = unique("pcrash")
    table = "pcrash_logs"
    connection = unique("pk")
    config = {"bootstrap_servers": bootstrap, "topic": topic, "resilience": FAST_RESILIENCE}

    def read(key: str, worker: int) -> dict[str, Any] | None:
        loader = KafkaLoader({"bootstrap_servers": bootstrap, "topic": topic}, connection)
        try:
            loader.ensure_connected()
            loader.end_stale_writes(table)  # as a restarted load does before it reads
            with loader.transaction():
                return loader.state_store(PREFIX).load_checkpoint(connection, key, worker)
        finally:
            loader.close()

    read_plan, read_ends = checkpoint_readers(read, table)

    crash = ParallelCrash(
        busy_chain,
        f"kafka://{bootstrap}/{topic}",
        table,
        connection,
        ["--parallel", "3", "--reorg-buffer", str(REORG_BUFFER)],
        "kafka",
        config,
        read_plan,
        read_ends,
        window=2.5,
    )
    crash.hybrid(busy_chain.chain.head - REORG_BUFFER, seed=71)
    assert_topic_matches_chain(bootstrap, topic, busy_chain.chain)
