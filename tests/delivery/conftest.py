"""Fixtures of the delivery suite: a dev server per test and real destinations.

PostgreSQL must answer at 127.0.0.1:5432 (trust, database ``test``, user ``postgres``);
without it every PostgreSQL test fails with a message saying so (never skips).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from delivery_support import Destination

from amp.devserver import DevServer
from kit import unique


def _destination(
    request: pytest.FixtureRequest, kind: str, tmp_path: Path
) -> Iterator[Destination]:
    table, name = unique("dlv"), unique("conn")
    if kind == "duckdb":
        yield Destination("duckdb", duckdb_path=tmp_path / "dest.duckdb", table=table, name=name)
        return
    admin: psycopg.Connection[Any] = request.getfixturevalue("pg_admin")
    dest = Destination("postgresql", admin=admin, table=table, name=name)
    try:
        yield dest
    finally:
        dest.drop_created()


@pytest.fixture(params=["postgresql", "duckdb"])
def dest(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Destination]:
    """Each destination kind in turn, with a table and connection name of its own."""
    yield from _destination(request, request.param, tmp_path)


@pytest.fixture
def pg_dest(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Destination]:
    yield from _destination(request, "postgresql", tmp_path)


@pytest.fixture
def srv() -> Iterator[DevServer]:
    """100 blocks in microbatches of 10 blocks."""
    with DevServer(port=0, seed=5, initial_blocks=100, max_interval=10) as server:
        yield server


@pytest.fixture
def amp_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """caplog recording amp's DEBUG lines and up."""
    caplog.set_level(logging.DEBUG, logger="amp")
    return caplog
