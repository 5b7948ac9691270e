"""Read a destination table back and compare it with the dev server's canonical chain.

The oracle is ``SimulatedChain.canonical_table(name)``: every canonical row right now. A
destination is correct when it holds exactly those rows: same count, no duplicate keys,
equal values. Values are normalised to plain Python so that PostgreSQL's and DuckDB's
representations compare with Arrow's: integers and integral decimals → ``int``,
binaries → ``bytes``, timestamps → integer nanoseconds since the epoch (UTC). A text
column stored as BYTEA (PostgreSQL ``text_nul='bytea'``) is decoded back to ``str``.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
from psycopg import sql

from amp.client import Client
from amp.devserver import DevServer
from amp.devserver.chain import SimulatedChain

PG_HOST = "127.0.0.1"
PG_PORT = 5432
PG_DATABASE = "test"
PG_USER = "postgres"
PG_CONNINFO = f"host={PG_HOST} port={PG_PORT} dbname={PG_DATABASE} user={PG_USER}"

# Unique key of each table's rows (one row per key in the canonical chain).
TABLE_KEYS: dict[str, tuple[str, ...]] = {
    "logs": ("block_num", "log_index"),
    "transactions": ("block_num", "tx_index"),
    "blocks": ("block_num",),
}

# The columns compared by default: keys first, then the block hash, a binary column and
# a decimal / uint64 column (and the timestamp).
KEY_COLUMNS: dict[str, tuple[str, ...]] = {
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

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def pg_config(**extra: Any) -> dict[str, Any]:
    """amp connection config of the test PostgreSQL (text columns stored losslessly)."""
    config: dict[str, Any] = {
        "host": PG_HOST,
        "port": PG_PORT,
        "database": PG_DATABASE,
        "user": PG_USER,
        "text_nul": "bytea",
    }
    config.update(extra)
    return config


Row = tuple[Any, ...]


@dataclass
class Destination:
    """A destination database of one test: how to configure amp for it, how to read it.

    ``kind`` is the amp loader name (``'postgresql'`` or ``'duckdb'``); ``config`` the
    connection config for ``Client.configure_connection``. Tables made with ``new_table``
    are dropped by ``drop_tables`` (the fixture calls it at teardown).
    """

    kind: str
    config: dict[str, Any]
    duckdb_path: Path | None = None
    tables: list[str] = field(default_factory=list)

    def new_table(self, prefix: str = "t") -> str:
        name = f"amp_{prefix}_{uuid.uuid4().hex[:12]}"
        self.tables.append(name)
        return name

    def query(self, statement: str, params: Sequence[Any] = ()) -> list[Row]:
        """Run one read-only statement on a fresh connection; all rows."""
        if self.kind == "postgresql":
            with psycopg.connect(PG_CONNINFO, autocommit=True) as conn:
                return conn.execute(statement, params).fetchall()  # type: ignore[arg-type]
        assert self.duckdb_path is not None
        conn = duckdb.connect(str(self.duckdb_path))
        try:
            return conn.execute(statement, list(params)).fetchall()
        finally:
            conn.close()

    def columns(self, table: str) -> list[str]:
        if self.kind == "postgresql":
            rows = self.query(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_schema = 'public' AND table_name = %s ORDER BY ordinal_position",
                (table,),
            )
        else:
            rows = self.query(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_name = ? ORDER BY ordinal_position",
                (table,),
            )
        return [row[0] for row in rows]

    def select(self, table: str, columns: Sequence[str]) -> list[Row]:
        """Every row of ``table``, projected on ``columns``, raw driver values."""
        quoted = ", ".join(_quote(name) for name in columns)
        return self.query(f"SELECT {quoted} FROM {_quote(table)}")

    def count(self, table: str) -> int:
        return int(self.query(f"SELECT count(*) FROM {_quote(table)}")[0][0])

    def drop_tables(self) -> None:
        if self.kind != "postgresql" or not self.tables:
            return
        with psycopg.connect(PG_CONNINFO, autocommit=True) as conn:
            for table in self.tables:
                conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(table)))


@contextmanager
def connected(server: DevServer, destination: Destination, name: str = "dest") -> Iterator[Client]:
    """A client of ``server`` with ``destination`` configured as connection ``name``;
    closed on exit."""
    client = Client(server.url)
    try:
        client.configure_connection(name=name, loader=destination.kind, config=destination.config)
        yield client
    finally:
        client.close()


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


# -- normalisation ---------------------------------------------------------------------


def epoch_ns(value: datetime) -> int:
    """A timezone-aware datetime as integer nanoseconds since the Unix epoch."""
    assert value.tzinfo is not None, f"timestamp {value!r} has no time zone"
    return (value - _EPOCH) // timedelta(microseconds=1) * 1000


def normalise(value: Any) -> Any:
    """A destination's value as plain Python comparable with the oracle's."""
    if isinstance(value, bool):
        return value
    if isinstance(value, Decimal):
        assert value == value.to_integral_value(), f"non-integral decimal {value}"
        return int(value)
    if isinstance(value, memoryview | bytearray):
        return bytes(value)
    if isinstance(value, datetime):
        return epoch_ns(value)
    return value


def _column_values(column: pa.ChunkedArray) -> list[Any]:
    if pa.types.is_timestamp(column.type):
        column = pc.cast(column.cast(pa.timestamp("ns", tz=column.type.tz)), pa.int64())
    return [normalise(value) for value in column.to_pylist()]


def arrow_rows(table: pa.Table, columns: Sequence[str]) -> list[Row]:
    """Rows of an Arrow table projected on ``columns``, normalised."""
    values = [_column_values(table.column(name)) for name in columns]
    return list(zip(*values, strict=True)) if values else []


def destination_rows(
    destination: Destination, table: str, columns: Sequence[str], schema: pa.Schema
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


# -- comparison ------------------------------------------------------------------------


def _describe_difference(actual: list[Row], expected: list[Row], columns: Sequence[str]) -> str:
    actual_counts, expected_counts = Counter(actual), Counter(expected)
    missing = list((expected_counts - actual_counts).elements())
    extra = list((actual_counts - expected_counts).elements())
    lines = [f"{len(missing)} canonical row(s) missing, {len(extra)} unexpected row(s)"]
    for label, rows in (("missing", missing), ("unexpected", extra)):
        for row in sorted(rows, key=repr)[:3]:
            shown = {name: _short(value) for name, value in zip(columns, row, strict=True)}
            lines.append(f"  {label}: {shown}")
    return "\n".join(lines)


def _short(value: Any) -> Any:
    if isinstance(value, bytes) and len(value) > 12:
        return value[:12].hex() + "…"
    if isinstance(value, str) and len(value) > 24:
        return value[:24] + "…"
    return value


def assert_rows_equal(
    actual: list[Row], expected: list[Row], columns: Sequence[str], what: str
) -> None:
    """Equal as multisets, with a readable account of the first differences."""
    assert len(actual) == len(expected), (
        f"{what}: {len(actual)} rows, the canonical chain has {len(expected)}\n"
        + _describe_difference(actual, expected, columns)
    )
    assert Counter(actual) == Counter(expected), f"{what}: rows differ\n" + _describe_difference(
        actual, expected, columns
    )


def assert_no_duplicates(rows: list[Row], key_width: int, what: str) -> None:
    keys = Counter(row[:key_width] for row in rows)
    duplicated = [(key, n) for key, n in keys.items() if n > 1]
    assert not duplicated, (
        f"{what}: {len(duplicated)} key(s) appear more than once, e.g. {sorted(duplicated)[:5]}"
    )


def assert_destination_equals_chain(
    destination: Destination,
    table: str,
    chain: SimulatedChain,
    name: str,
    columns: Sequence[str] | None = None,
    copies: int = 1,
) -> int:
    """``table`` holds exactly the canonical rows of ``name`` (``copies`` times each).

    Compares ``columns`` (default: ``KEY_COLUMNS[name]``, which start with the table's
    key); returns the number of canonical rows.
    """
    canonical = chain.canonical_table(name)
    columns = tuple(columns or KEY_COLUMNS[name])
    key_width = len(TABLE_KEYS[name])
    assert columns[:key_width] == TABLE_KEYS[name], "columns must start with the table key"
    expected = arrow_rows(canonical, columns)
    actual = destination_rows(destination, table, columns, canonical.schema)
    what = f"{destination.kind} table {table} vs canonical {name}"
    if copies == 1:
        assert_no_duplicates(actual, key_width, what)
    else:
        keys = Counter(row[:key_width] for row in actual)
        wrong = [(key, n) for key, n in keys.items() if n != copies]
        assert not wrong, f"{what}: keys not present exactly {copies} times: {sorted(wrong)[:5]}"
    assert_rows_equal(actual, expected * copies, columns, what)
    return canonical.num_rows


def canonical_count(chain: SimulatedChain, name: str, start: int, end: int) -> int:
    """Canonical rows of ``name`` in blocks ``start..end`` right now."""
    table = chain.canonical_table(name)
    numbers = table.column("block_num")
    mask = pc.and_(pc.greater_equal(numbers, start), pc.less_equal(numbers, end))
    return int(pc.sum(pc.cast(mask, pa.int64())).as_py() or 0)


def column_filter(table: pa.Table, column: str, predicate: Callable[[Any], bool]) -> list[Any]:
    """Values of an oracle column (normalised) that satisfy ``predicate``."""
    return [value for value in _column_values(table.column(column)) if predicate(value)]
