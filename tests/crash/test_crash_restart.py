"""Exactly once through crashes: a real ``amp load`` process is killed with SIGKILL at
random moments while new blocks and reorgs arrive, and restarted each time. Afterwards
the destination must hold every canonical row exactly once and no row of a forked block.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import duckdb
import psycopg
import pyarrow as pa
import pytest

from amp.devserver import DevServer
from crashkit import busy_chain_server, catch_up, crash_and_restart_amp_load

KEYS = ["block_num", "log_index", "block_hash", "tx_hash", "data"]
PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
PG_DSN = "host=127.0.0.1 port=5432 dbname=test user=postgres"
CONNECTION = "crash"


def assert_equals_chain(destination: pa.Table, server: DevServer) -> None:
    canonical = server.chain.canonical_table("logs").select(KEYS)
    order = [("block_num", "ascending"), ("log_index", "ascending")]
    ours = destination.select(KEYS).cast(canonical.schema).sort_by(order)
    keys = ours.select(["block_num", "log_index"])
    distinct = keys.group_by(["block_num", "log_index"]).aggregate([]).num_rows
    assert distinct == keys.num_rows, f"{keys.num_rows - distinct} duplicate rows"
    assert ours.num_rows == canonical.num_rows
    assert ours.equals(canonical.sort_by(order)), "rows differ from the canonical chain"


@pytest.fixture
def busy_chain() -> Iterator[DevServer]:
    with busy_chain_server(initial_blocks=3_000) as server:
        yield server


@pytest.mark.slow
def test_postgresql_exactly_once_through_sigkills(busy_chain: DevServer) -> None:
    table = f"crash_{uuid.uuid4().hex[:10]}"
    try:
        crash_and_restart_amp_load(busy_chain, PG_URL, table, CONNECTION, seed=11)
        catch_up(busy_chain, CONNECTION, "postgresql", {"dsn": PG_DSN}, table)
        assert len(busy_chain.chain.reorgs) >= 5, "the run should have seen reorgs"
        with psycopg.connect(PG_DSN) as conn:
            columns = ", ".join(KEYS)
            rows = conn.execute(f"SELECT {columns} FROM {table}").fetchall()
        destination = pa.table(
            {
                "block_num": pa.array([int(r[0]) for r in rows], pa.uint64()),
                "log_index": pa.array([int(r[1]) for r in rows], pa.uint32()),
                "block_hash": pa.array([bytes(r[2]) for r in rows], pa.binary(32)),
                "tx_hash": pa.array([bytes(r[3]) for r in rows], pa.binary(32)),
                "data": pa.array([bytes(r[4]) for r in rows], pa.binary()),
            }
        )
        assert_equals_chain(destination, busy_chain)
    finally:
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            conn.execute(f"DROP TABLE IF EXISTS {table}")
            for state in ("amp_checkpoints", "amp_processed_ranges", "amp_checkpoint_history"):
                conn.execute(f"DELETE FROM {state} WHERE table_name = %s", (table,)) if _exists(
                    conn, state
                ) else None


def _exists(conn: psycopg.Connection[tuple[object, ...]], table: str) -> bool:
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()
    return bool(row and row[0])


@pytest.mark.slow
def test_duckdb_exactly_once_through_sigkills(busy_chain: DevServer, tmp_path: Path) -> None:
    path = tmp_path / "crash.duckdb"
    table = "crash_logs"
    crash_and_restart_amp_load(busy_chain, f"duckdb:///{path}", table, CONNECTION, seed=13)
    catch_up(busy_chain, CONNECTION, "duckdb", {"database": str(path)}, table)
    assert len(busy_chain.chain.reorgs) >= 5, "the run should have seen reorgs"
    with duckdb.connect(str(path), read_only=True) as conn:
        destination = conn.sql(f"SELECT {', '.join(KEYS)} FROM {table}").to_arrow_table()
    assert_equals_chain(destination, busy_chain)
    assert os.path.exists(path)
