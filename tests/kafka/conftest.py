"""Fixtures of the Kafka suite: dev servers and what the broker shows (the broker itself,
``broker`` and ``bootstrap``, is the session fixture of tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from amp.devserver import DevServer
from kafkakit import aborted_messages_visible


@pytest.fixture(scope="session")
def broker_shows_aborted(bootstrap: str) -> bool:
    """Whether this broker lets read_committed consumers see aborted messages."""
    return aborted_messages_visible(bootstrap)


@pytest.fixture
def chain_server() -> Iterator[DevServer]:
    """A dev server of 60 blocks in microbatches of at most 10."""
    with DevServer(port=0, seed=5, initial_blocks=60, max_interval=10) as server:
        yield server
