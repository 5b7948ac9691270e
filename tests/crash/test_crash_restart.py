"""Exactly once through crashes: a real ``amp load`` process is killed with SIGKILL at
random moments while new blocks and reorgs arrive, and restarted each time. Afterwards
the destination must hold every canonical row exactly once and no row of a forked block.

Two kinds of rows: a query with a block column (``SELECT *`` of the logs), and a query
without one, whose rows amp keys by their microbatch's range and whose reorgs reach
back further than a microbatch.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from amp.devserver import DevServer
from crashkit import (
    RANGE_COLUMNS,
    RANGE_QUERY,
    assert_range_keyed_exactly_once,
    busy_chain_server,
    catch_up,
    crash_and_restart_amp_load,
    range_keyed_chain_server,
)
from kit import (
    PG_DSN,
    PG_URL,
    SqlDestination,
    assert_table_equals_chain,
    normalise,
    unique,
)

CONNECTION = "crash"
RANGE_KEYS = ("_amp_block_start", "_amp_block_end")


@pytest.fixture
def busy_chain() -> Iterator[DevServer]:
    with busy_chain_server(initial_blocks=3_000) as server:
        yield server


@pytest.fixture
def range_chain() -> Iterator[DevServer]:
    with range_keyed_chain_server() as server:
        yield server


def _duckdb(tmp_path: Path) -> tuple[SqlDestination, str]:
    path = tmp_path / "crash.duckdb"
    return SqlDestination("duckdb", duckdb_path=path), f"duckdb:///{path}"


@pytest.mark.slow
def test_postgresql_exactly_once_through_sigkills(
    busy_chain: DevServer, postgres: SqlDestination
) -> None:
    table = postgres.new_table("crash")
    crash_and_restart_amp_load(busy_chain, PG_URL, table, CONNECTION, seed=11)
    catch_up(busy_chain, CONNECTION, "postgresql", {"dsn": PG_DSN}, table)
    assert len(busy_chain.chain.reorgs) >= 5, "the run should have seen reorgs"
    assert_table_equals_chain(postgres, table, busy_chain.chain)


@pytest.mark.slow
def test_duckdb_exactly_once_through_sigkills(busy_chain: DevServer, tmp_path: Path) -> None:
    duckdb, url = _duckdb(tmp_path)
    crash_and_restart_amp_load(busy_chain, url, "crash_logs", CONNECTION, seed=13)
    catch_up(busy_chain, CONNECTION, "duckdb", duckdb.loader_config(), "crash_logs")
    assert len(busy_chain.chain.reorgs) >= 5, "the run should have seen reorgs"
    assert_table_equals_chain(duckdb, "crash_logs", busy_chain.chain)


def _range_keyed_rows(destination: SqlDestination, table: str) -> list[tuple[object, ...]]:
    rows = destination.select(table, (*RANGE_COLUMNS, *RANGE_KEYS))
    return [tuple(normalise(value) for value in row) for row in rows]


@pytest.mark.slow
def test_postgresql_range_keyed_rows_exactly_once_through_sigkills(
    range_chain: DevServer, postgres: SqlDestination
) -> None:
    table = postgres.new_table("crash_range")
    lines = crash_and_restart_amp_load(
        range_chain, PG_URL, table, CONNECTION, seed=19, query=RANGE_QUERY
    )
    catch_up(range_chain, CONNECTION, "postgresql", {"dsn": PG_DSN}, table, RANGE_QUERY)
    rows = _range_keyed_rows(postgres, table)
    assert_range_keyed_exactly_once(rows, range_chain.chain, lines, f"postgresql {table}")


@pytest.mark.slow
def test_duckdb_range_keyed_rows_exactly_once_through_sigkills(
    range_chain: DevServer, tmp_path: Path
) -> None:
    duckdb, url = _duckdb(tmp_path)
    table = unique("crash_range")
    lines = crash_and_restart_amp_load(
        range_chain, url, table, CONNECTION, seed=29, query=RANGE_QUERY
    )
    catch_up(range_chain, CONNECTION, "duckdb", duckdb.loader_config(), table, RANGE_QUERY)
    rows = _range_keyed_rows(duckdb, table)
    assert_range_keyed_exactly_once(rows, range_chain.chain, lines, f"duckdb {table}")
