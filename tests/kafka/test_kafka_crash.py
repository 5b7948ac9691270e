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

from amp.devserver import DevServer
from crashkit import busy_chain_server, catch_up, crash_and_restart_amp_load
from kafkakit import FAST_RESILIENCE, assert_topic_matches_chain
from kit import unique

CONNECTION = "crash"


@pytest.fixture
def busy_chain() -> Iterator[DevServer]:
    with busy_chain_server(initial_blocks=2_000) as server:
        yield server


@pytest.mark.slow
def test_kafka_exactly_once_through_sigkills(busy_chain: DevServer, bootstrap: str) -> None:
    topic = unique("crash")
    crash_and_restart_amp_load(
        busy_chain, f"kafka://{bootstrap}/{topic}", "crash_logs", CONNECTION, seed=17
    )
    config = {"bootstrap_servers": bootstrap, "topic": topic, "resilience": FAST_RESILIENCE}
    catch_up(busy_chain, CONNECTION, "kafka", config, "crash_logs")
    assert len(busy_chain.chain.reorgs) >= 5, "the run should have seen reorgs"
    assert_topic_matches_chain(bootstrap, topic, busy_chain.chain)
