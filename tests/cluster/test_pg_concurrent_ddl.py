"""Partitions on a cluster are processes that each prepare the same PostgreSQL table and
amp's state tables when they start, at the same moment. PostgreSQL's CREATE TABLE IF
NOT EXISTS is not safe against a concurrent creator of the same table (the loser fails on
pg_type's unique index), so every amp DDL first takes one transaction-level advisory
lock. Eight sessions (each a loader with its own connection, as eight processes would
be) create a new table and new state tables at once: none fails."""

from __future__ import annotations

import threading
import uuid

import psycopg
import pyarrow as pa

from amp.loaders.base import LoadMode
from amp.loaders.postgresql import PostgreSQLLoader
from kit import PG_DSN, require_postgres

SESSIONS = 8
SCHEMA = pa.schema([("block_num", pa.uint64()), ("payload", pa.string())])


def test_sessions_creating_the_same_tables_at_once_all_succeed() -> None:
    require_postgres()
    tag = uuid.uuid4().hex[:8]
    table, prefix = f"ddl_race_{tag}", f"amp_race_{tag}_"
    loaders = [PostgreSQLLoader.for_connection({"dsn": PG_DSN}, "race") for _ in range(SESSIONS)]
    for loader in loaders:
        loader.ensure_connected()  # connected first: the DDL is what runs at once
    start = threading.Barrier(SESSIONS)
    errors: list[BaseException] = []

    def prepare(loader: PostgreSQLLoader) -> None:
        try:
            start.wait()
            loader.prepare_table(table, SCHEMA, LoadMode.APPEND, "block_num")
            store = loader.state_store(prefix)
            with loader.transaction():
                store.create_checkpoint_tables()
                store.create_processed_ranges_table()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=prepare, args=(loader,)) for loader in loaders]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors, errors
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            made = conn.execute(
                "SELECT count(*) FROM information_schema.tables WHERE table_name = %s "
                "OR table_name LIKE %s",
                (table, f"{prefix}%"),
            ).fetchone()
        assert made == (4,), made  # the table, checkpoints, history, processed ranges
    finally:
        for loader in loaders:
            loader.close()
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            names = [table] + [f"{prefix}{n}" for n in ("checkpoints", "checkpoint_history")]
            names.append(f"{prefix}processed_ranges")
            for name in names:
                conn.execute(f'DROP TABLE IF EXISTS "{name}"')
