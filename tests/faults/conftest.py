"""Fixtures of the fault-injection suite: a dev server, clients, real destinations."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from faultkit import Destination

from amp.client import Client
from amp.devserver import DevServer
from kit import PG_DSN, require_postgres


@pytest.fixture(params=["postgresql", "duckdb"])
def destination(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Destination]:
    """Each destination kind; PostgreSQL tables created by the test are dropped after it."""
    yield from _destination(request, request.param, tmp_path)


@pytest.fixture
def postgres(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Destination]:
    yield from _destination(request, "postgresql", tmp_path)


def _destination(
    request: pytest.FixtureRequest, kind: str, tmp_path: Path
) -> Iterator[Destination]:
    if kind == "duckdb":
        yield Destination("duckdb", duckdb_path=tmp_path / "amp.duckdb")
        return
    require_postgres()
    with psycopg.connect(PG_DSN, autocommit=True, application_name="amp-faults-check") as conn:
        destination = Destination("postgresql", admin=conn)
        try:
            yield destination
        finally:
            destination.drop_created()


@pytest.fixture
def srv() -> Iterator[DevServer]:
    """200 blocks in microbatches of 50 (4 per stream), 100 rows per data message."""
    with DevServer(
        port=0, seed=7, initial_blocks=200, max_interval=50, rows_per_message=100
    ) as server:
        yield server


@pytest.fixture
def client(srv: DevServer) -> Iterator[Client]:
    amp_client = Client(srv.url)
    yield amp_client
    amp_client.close()


@pytest.fixture(autouse=True)
def quiet_devserver() -> Iterator[None]:
    """The dev server logs every injected INTERNAL with a traceback; keep output short."""
    logger = logging.getLogger("amp.devserver")
    previous = logger.level
    logger.setLevel(logging.CRITICAL)
    yield
    logger.setLevel(previous)
