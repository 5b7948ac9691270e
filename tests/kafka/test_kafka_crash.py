"""Exactly once into Kafka through crashes: a real ``amp load --to kafka://…`` process is
killed with SIGKILL at random moments while new blocks and reorgs arrive, and restarted
each time (as ``tests/crash`` does for the SQL destinations). Afterwards the table a
read_committed consumer keeps from the topic must be the canonical chain exactly.

Each restart fences the killed producer (same ``transactional.id``), whose open
transaction the broker aborts; the checkpoint in the state topic says where to resume.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kafkakit import FAST_RESILIENCE, assert_topic_matches_chain, unique

from amp.client import Client
from amp.devserver import DevServer
from crashkit import amp_load_command, crash_and_restart

KILLS = 20
QUERY = "SELECT * FROM eth_firehose.logs"
CONNECTION = "crash"


def crash_and_restart_load(server: DevServer, destination: str, table: str, seed: int) -> None:
    command = amp_load_command(server.url, QUERY, destination, table, CONNECTION)
    crash_and_restart(command, CONNECTION, seed, kills=KILLS)


def catch_up(server: DevServer, config: dict[str, object], table: str) -> None:
    """With block production stopped, run the load in-process until it reaches the head
    (one more block is mined so that there is always a microbatch to reach it with)."""
    server.stop_block_production()
    server.chain.mine(1)
    client = Client(server.url)
    client.configure_connection(
        CONNECTION,
        "kafka",
        {
            **config,
            "checkpoint": {"enabled": True},
            "idempotency": {"enabled": True},
            "resilience": FAST_RESILIENCE,
        },
    )
    head = server.chain.head
    run = client.sql(QUERY).load(CONNECTION, table, stream=True)
    try:
        for result in run:
            assert result.success, result.error
            ranges = result.metadata.get("block_ranges") or []
            if ranges and ranges[-1]["end"] == head:
                break
    finally:
        run.close()
        client.close()


@pytest.fixture
def busy_chain() -> Iterator[DevServer]:
    """A chain that grows 20 blocks a second with a reorg of depth 4 every 15 blocks."""
    with DevServer(
        port=0,
        seed=7,
        initial_blocks=2_000,
        max_interval=300,
        block_time=0.05,
        reorg_every=15,
        reorg_depth=4,
        mean_txs_per_block=30,
    ) as server:
        yield server


@pytest.mark.slow
def test_kafka_exactly_once_through_sigkills(busy_chain: DevServer, bootstrap: str) -> None:
    topic = unique("crash")
    crash_and_restart_load(busy_chain, f"kafka://{bootstrap}/{topic}", "crash_logs", seed=17)
    catch_up(busy_chain, {"bootstrap_servers": bootstrap, "topic": topic}, "crash_logs")
    assert len(busy_chain.chain.reorgs) >= 5, "the run should have seen reorgs"
    assert_topic_matches_chain(bootstrap, topic, busy_chain.chain)
