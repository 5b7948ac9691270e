"""A SQL destination of one test (PostgreSQL or a DuckDB file), read back and compared
with the dev server's canonical chain.

SQL given to ``query``/``execute`` uses ``%s`` placeholders for both kinds. PostgreSQL is
the shared test database, so every table a test names with ``new_table`` is dropped at
teardown (``drop_created``), with its rows in the shared ``amp_*`` state tables.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pyarrow as pa

from amp.devserver.chain import SimulatedChain
from kit.chain import Row, Spans, assert_equals_canonical, normalise
from kit.services import PG_DSN, unique

# The unique key of each chain table's rows.
TABLE_KEYS: dict[str, tuple[str, ...]] = {
    "logs": ("block_num", "log_index"),
    "transactions": ("block_num", "tx_index"),
    "blocks": ("block_num",),
}
# The columns compared by default: the key first, then the block hash, a binary column, a
# decimal or uint64 column and the timestamp.
COMPARED_COLUMNS: dict[str, tuple[str, ...]] = {
    "logs": ("block_num", "log_index", "block_hash", "tx_hash", "data", "_block_num", "timestamp"),
    "transactions": (
        "block_num",
        "tx_index",
        "block_hash",
        "tx_hash",
        "input",
        "nonce",
        "gas_price",
        "timestamp",
    ),
    "blocks": (
        "block_num",
        "hash",
        "parent_hash",
        "extra_data",
        "difficulty",
        "total_difficulty",
        "nonce",
        "timestamp",
    ),
}
STATE_TABLES = ("amp_checkpoints", "amp_checkpoint_history", "amp_processed_ranges")


def quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


@dataclass
class SqlDestination:
    """``kind`` is the loader name (``'postgresql'`` or ``'duckdb'``). PostgreSQL is read
    through ``admin`` (an autocommit connection of the test) or, without one, a fresh
    connection per statement; DuckDB through a fresh connection to ``duckdb_path``."""

    kind: str
    duckdb_path: Path | None = None
    admin: psycopg.Connection[Any] | None = None
    created: list[str] = field(default_factory=list)

    def loader_config(self) -> dict[str, Any]:
        """Where amp's loader of this kind writes."""
        if self.kind == "postgresql":
            return {"dsn": PG_DSN}
        assert self.duckdb_path is not None
        return {"database": str(self.duckdb_path)}

    def new_table(self, prefix: str = "t") -> str:
        """A table name of this test, dropped at teardown."""
        name = unique(prefix)
        self.created.append(name)
        return name

    def query(self, statement: str, params: Sequence[Any] = ()) -> list[Row]:
        if self.kind == "postgresql":
            if self.admin is not None:
                return _pg_rows(self.admin, statement, params)
            with psycopg.connect(PG_DSN, autocommit=True) as conn:
                return _pg_rows(conn, statement, params)
        assert self.duckdb_path is not None
        database = duckdb.connect(str(self.duckdb_path))
        try:
            result = database.execute(statement.replace("%s", "?"), list(params))
            return result.fetchall() if result.description is not None else []
        finally:
            database.close()

    def execute(self, statement: str, params: Sequence[Any] = ()) -> None:
        self.query(statement, params)

    def exists(self, table: str) -> bool:
        return bool(
            self.query(
                "SELECT 1 FROM information_schema.tables "
                "WHERE table_schema = current_schema() AND table_name = %s",
                (table,),
            )
        )

    def columns(self, table: str) -> list[str]:
        rows = self.query(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND table_name = %s "
            "ORDER BY ordinal_position",
            (table,),
        )
        return [row[0] for row in rows]

    def select(self, table: str, columns: Sequence[str]) -> list[Row]:
        """Every row of ``table`` projected on ``columns``: the driver's own values."""
        return self.query(f"SELECT {', '.join(map(quote, columns))} FROM {quote(table)}")

    def count(self, table: str) -> int:
        return int(self.query(f"SELECT count(*) FROM {quote(table)}")[0][0])

    def drop_created(self) -> None:
        """Drop this test's PostgreSQL tables and their rows in the shared state tables
        (a DuckDB file goes with the test's ``tmp_path``)."""
        if self.kind != "postgresql" or not self.created:
            return
        admin = self.admin
        if admin is not None and admin.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            admin.rollback()
        for state in STATE_TABLES:
            if self.exists(state):
                for table in self.created:
                    self.execute(f"DELETE FROM {state} WHERE table_name = %s", (table,))
        for table in self.created:
            self.execute(f"DROP TABLE IF EXISTS {quote(table)}")


def _pg_rows(conn: psycopg.Connection[Any], statement: str, params: Sequence[Any]) -> list[Row]:
    with conn.cursor() as cur:
        cur.execute(statement, params)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description is not None else []


def destination_rows(
    destination: SqlDestination, table: str, columns: Sequence[str], schema: pa.Schema
) -> list[Row]:
    """Rows of a destination table projected on ``columns``, normalised; text columns
    stored as bytes (PostgreSQL ``text_nul='bytea'``) are decoded back to ``str``."""
    text = [
        name in schema.names and pa.types.is_string(schema.field(name).type) for name in columns
    ]
    rows = []
    for raw in destination.select(table, columns):
        row = []
        for value, is_text in zip(raw, text, strict=True):
            value = normalise(value)
            if is_text and isinstance(value, bytes):
                value = value.decode("utf-8")
            row.append(value)
        rows.append(tuple(row))
    return rows


def assert_table_equals_chain(
    destination: SqlDestination,
    table: str,
    chain: SimulatedChain,
    name: str = "logs",
    columns: Sequence[str] | None = None,
    upto: int | None = None,
    copies: int = 1,
    blocks: Spans | None = None,
) -> int:
    """``table`` holds exactly the canonical rows of chain table ``name`` (of blocks
    ``<= upto``, inside the ``blocks`` spans, when given), ``copies`` times each: none
    missing, none extra, no key twice. Compares ``columns`` (default
    ``COMPARED_COLUMNS[name]``, which start with the key); returns the number of
    canonical rows."""
    columns = tuple(columns or COMPARED_COLUMNS[name])
    key_width = len(TABLE_KEYS[name])
    assert columns[:key_width] == TABLE_KEYS[name], "columns must start with the table key"
    schema = chain.canonical_table(name).schema
    actual = destination_rows(destination, table, columns, schema)
    what = f"{destination.kind} table {table} vs canonical {name}"
    return assert_equals_canonical(
        actual, chain, name, columns, key_width, what, upto, copies, blocks
    )


# -- delivery state ---------------------------------------------------------------------


def _document(data: Any) -> dict[str, Any]:
    """A checkpoint document as PostgreSQL (jsonb: a dict) or DuckDB (JSON text) returns it."""
    return data if isinstance(data, dict) else json.loads(data)


def checkpoint_ends(destination: SqlDestination, table: str) -> list[tuple[int, int]]:
    """(worker_id, last block) of every checkpoint of ``table``, by worker."""
    rows = destination.query(
        "SELECT worker_id, checkpoint_data FROM amp_checkpoints WHERE table_name = %s "
        "ORDER BY worker_id",
        (table,),
    )
    return [(int(worker), int(_document(data)["ranges"][-1]["end"])) for worker, data in rows]


def stored_plan(destination: SqlDestination, table: str) -> dict[str, Any] | None:
    """The plan a parallel load of ``table`` stored with its checkpoints (None: none)."""
    rows = destination.query(
        "SELECT checkpoint_data FROM amp_checkpoints WHERE table_name = %s",
        (f"{table}/parallel-plan",),
    )
    assert len(rows) <= 1, f"{len(rows)} parallel plans stored for {table}"
    return _document(rows[0][0]) if rows else None
