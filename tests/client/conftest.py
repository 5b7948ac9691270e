"""Fixtures of the client integration suite: real PostgreSQL and DuckDB destinations.

PostgreSQL must be running at 127.0.0.1:5432 (``make services``); when it is not, every
test that needs it fails (never skips) with a message saying so.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from oracle import Destination, pg_config

from kit import PG_DSN, require_postgres


@pytest.fixture(scope="session")
def postgres() -> str:
    """The conninfo of the test PostgreSQL, after checking that it answers."""
    require_postgres()
    return PG_DSN


def _make_destination(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Destination:
    if kind == "postgresql":
        request.getfixturevalue("postgres")
        return Destination("postgresql", config=pg_config())
    path = tmp_path / "dest.duckdb"
    return Destination("duckdb", duckdb_path=path, config={"database": str(path)})


@pytest.fixture(params=["postgresql", "duckdb"])
def destination(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Destination]:
    """Each destination in turn (ids ``postgresql`` / ``duckdb``); its PostgreSQL tables
    are dropped at teardown (DuckDB files live in ``tmp_path``)."""
    dest = _make_destination(request.param, request, tmp_path)
    try:
        yield dest
    finally:
        dest.drop_created()


@pytest.fixture
def pg_destination(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Destination]:
    """PostgreSQL only."""
    dest = _make_destination("postgresql", request, tmp_path)
    try:
        yield dest
    finally:
        dest.drop_created()
