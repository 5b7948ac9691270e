"""The SQL catalog on the real PostgreSQL (127.0.0.1:5432, database ``test``): a
streaming load through reorgs is exact there too, and its streams are claimed with the
catalog database's advisory lock, so a second ``amp load`` of the same stream (through
``--to iceberg+postgresql://...``) is refused naming the first; the same for the SQLite
catalog's file lock. Each test uses a catalog name of its own (the SQL catalog keeps
several catalogs apart by name) and drops its tables afterwards."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from iceberg_support import Lake, assert_exact, checkpoint_end
from pyiceberg.catalog import Catalog, load_catalog

from amp.devserver import DevServer
from crashkit import LoadProcess, amp_load_command
from kit import (
    LOGS_QUERY,
    PG_HOST,
    PG_PORT,
    Mine,
    Reorg,
    assert_reorgs_reported,
    load_to_head,
    unique,
)
from kit.services import require_postgres

pytestmark = pytest.mark.timeout(240)
PG_CATALOG_URI = f"postgresql+psycopg://postgres@{PG_HOST}:{PG_PORT}/test"


def load_command(server: DevServer, url: str, table: str, connection: str) -> list[str]:
    return amp_load_command(server.url, LOGS_QUERY, url, table, connection)


@contextmanager
def running_load(command: list[str], connection: str) -> Iterator[LoadProcess]:
    """A load process that has claimed its stream (it logged its start line); killed
    on exit."""
    load = LoadProcess(command, connection)
    try:
        assert load.started.wait(timeout=60), "the load did not start within 60 s"
        assert load.process.poll() is None, "the load exited:\n" + "".join(load.lines)
        yield load
    finally:
        load.kill()


def refused(command: list[str]) -> subprocess.CompletedProcess[str]:
    """A load that must be refused: it exits by itself, non-zero, promptly."""
    finished = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert finished.returncode != 0, f"a second load of the stream ran:\n{finished.stderr}"
    return finished


class PgLake:
    """A catalog named ``name`` in the test PostgreSQL, its warehouse under ``directory``."""

    def __init__(self, name: str, directory: Path) -> None:
        self.name = name
        self.directory = directory

    @property
    def catalog_config(self) -> dict[str, str]:
        return {
            "type": "sql",
            "uri": PG_CATALOG_URI,
            "warehouse": f"file://{self.directory}",
        }

    def config(self, **more: Any) -> dict[str, Any]:
        return {"catalog_config": self.catalog_config, "catalog_name": self.name, **more}

    @property
    def url(self) -> str:
        return (
            f"iceberg+postgresql://postgres@{PG_HOST}:{PG_PORT}/test?warehouse={self.directory}"
            f"&catalog_name={self.name}"
        )

    def catalog(self) -> Catalog:
        return load_catalog(self.name, **self.catalog_config)


@pytest.fixture
def pg_lake(tmp_path: Path) -> Iterator[PgLake]:
    require_postgres()
    lake = PgLake(unique("amp_it"), tmp_path / "warehouse")
    try:
        yield lake
    finally:
        catalog = lake.catalog()
        for namespace in catalog.list_namespaces():
            for identifier in catalog.list_tables(namespace):
                catalog.drop_table(identifier)
            catalog.drop_namespace(namespace)


def test_streaming_through_reorgs_on_a_postgresql_catalog(pg_lake: PgLake) -> None:
    actions = [Reorg(1), Mine(3), Reorg(4), Mine(2), Reorg(25)]
    config = pg_lake.config(checkpoint={"enabled": True}, idempotency={"enabled": True})
    with DevServer(port=0, seed=3, initial_blocks=60, max_interval=10) as server:
        driven = load_to_head(server, "pgconn", "iceberg", config, "logs", actions)
        assert_reorgs_reported(driven, [a for a in actions if isinstance(a, Reorg)])
        table = pg_lake.catalog().load_table(("amp", "logs"))
        assert_exact(table, server.chain)
        assert checkpoint_end(table) == server.chain.head


def test_a_second_load_of_a_stream_is_refused_postgresql_catalog(pg_lake: PgLake) -> None:
    with DevServer(port=0, seed=4, initial_blocks=30) as server:
        first = load_command(server, pg_lake.url, "logs", "owned")
        with running_load(first, "owned") as holder:
            finished = refused(load_command(server, pg_lake.url, "logs", "owned"))
            assert "is already being loaded" in finished.stderr, finished.stderr
            assert f"PID {holder.process.pid}" in finished.stderr, finished.stderr


def test_a_second_load_of_a_stream_is_refused_sqlite_catalog(lake: Lake) -> None:
    with DevServer(port=0, seed=4, initial_blocks=30) as server:
        first = load_command(server, lake.url, "logs", "owned")
        with running_load(first, "owned") as holder:
            finished = refused(load_command(server, lake.url, "logs", "owned"))
            assert "is already being loaded" in finished.stderr, finished.stderr
            assert f"PID {holder.process.pid}" in finished.stderr, finished.stderr
            # Another worker id, or another table, is another stream: not refused here.
        # The holder was killed: its lock went with it, a new load claims the stream.
        with running_load(load_command(server, lake.url, "logs", "owned"), "owned"):
            pass
