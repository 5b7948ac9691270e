"""One writer per stream on PostgreSQL (issue 9, defect 5): a session advisory lock.

Two loads of one (connection, table, worker) at once duplicated rows. The second is now
refused at start, naming the first; after the first stops, a new one starts.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest
from ownership_support import load_command, refused, running_load, stop_gracefully

from amp.devserver import DevServer
from crashkit import catch_up
from kit import PG_DSN, PG_URL


@pytest.fixture
def table() -> Iterator[str]:
    name = f"own_{uuid.uuid4().hex[:10]}"
    yield name
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {name}")
        for state in ("amp_checkpoints", "amp_processed_ranges", "amp_stream_owners"):
            if conn.execute("SELECT to_regclass(%s)", (state,)).fetchone() != (None,):
                conn.execute(f"DELETE FROM {state} WHERE table_name LIKE %s", (f"%{name}",))


@pytest.fixture
def chain() -> Iterator[DevServer]:
    with DevServer(port=0, seed=5, initial_blocks=60, max_interval=10) as server:
        yield server


def canonical_count(server: DevServer) -> int:
    return server.chain.canonical_table("logs").num_rows


def rows_and_distinct(table: str) -> tuple[int, int]:
    with psycopg.connect(PG_DSN) as conn:
        row = conn.execute(
            f"SELECT count(*), count(DISTINCT (block_num, log_index)) FROM {table}"
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def test_second_load_of_a_stream_is_refused_naming_the_first(chain: DevServer, table: str) -> None:
    command = load_command(chain, PG_URL, table, "own")
    with running_load(command, "own") as first:
        second = refused(command)
        assert "already being loaded" in second.stderr
        assert f"PID {first.process.pid}" in second.stderr  # the owner, by host and PID
        assert "connection 'own'" in second.stderr and table in second.stderr
        stop_gracefully(first)
    with running_load(command, "own") as third:  # the stream is free again
        stop_gracefully(third)
    # The scenario: both loads ran "at the same time", yet no row is twice.
    catch_up(chain, "own", "postgresql", {"dsn": PG_DSN}, table)
    total, distinct = rows_and_distinct(table)
    assert total == distinct == canonical_count(chain)


def test_another_worker_or_table_of_the_same_connection_runs(chain: DevServer, table: str) -> None:
    with running_load(load_command(chain, PG_URL, table, "own"), "own"):
        other = f"{table}_b"
        try:
            with running_load(load_command(chain, PG_URL, other, "own"), "own") as second:
                stop_gracefully(second)
        finally:
            with psycopg.connect(PG_DSN, autocommit=True) as conn:
                conn.execute(f"DROP TABLE IF EXISTS {other}")


def test_a_killed_load_is_restarted_at_once(chain: DevServer, table: str) -> None:
    """SIGKILL ends the process; PostgreSQL ends its session (and lock) a moment later.
    The restart waits for that (bounded), instead of failing."""
    command = load_command(chain, PG_URL, table, "own")
    with running_load(command, "own") as first:
        first.kill()
        with running_load(command, "own") as restarted:
            stop_gracefully(restarted)
    catch_up(chain, "own", "postgresql", {"dsn": PG_DSN}, table)
    total, distinct = rows_and_distinct(table)
    assert total == distinct == canonical_count(chain)
