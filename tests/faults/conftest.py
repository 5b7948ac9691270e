"""Fixtures of the fault-injection suite: a dev server, clients, real destinations."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from faultkit import PG_DSN, Destination

from amp.client import Client
from amp.devserver import DevServer


@pytest.fixture(scope="session")
def pg_available() -> None:
    """PostgreSQL must be up: this suite fails (never skips) without it."""
    try:
        with psycopg.connect(PG_DSN, connect_timeout=5) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        pytest.fail(
            f"PostgreSQL is not reachable with {PG_DSN!r}: {exc}. The fault tests need a real "
            "PostgreSQL (trust auth, database 'test', user 'postgres') on 127.0.0.1:5432.",
            pytrace=False,
        )


@pytest.fixture
def pg_admin(pg_available: None) -> Iterator[psycopg.Connection[Any]]:
    """A separate autocommit connection, for checks and for making PostgreSQL fail."""
    with psycopg.connect(PG_DSN, autocommit=True, application_name="amp-faults-admin") as conn:
        yield conn


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
        yield Destination("duckdb", duckdb_path=str(tmp_path / "amp.duckdb"))
        return
    request.getfixturevalue("pg_available")
    with psycopg.connect(PG_DSN, autocommit=True, application_name="amp-faults-check") as conn:
        destination = Destination("postgresql", pg_admin=conn)
        yield destination
        for table in destination.created:
            conn.execute(f'DROP TABLE IF EXISTS "{table}"')


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
