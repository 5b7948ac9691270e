"""The destination's side of a verification: a table's rows, one block range at a time.

Why per range and streamed: the table may be far larger than memory, so no reader ever
selects the whole table; each reads ``WHERE <block column> BETWEEN a AND b`` (the column
amp's loaders index) in batches. DuckDB hands back Arrow batches natively; PostgreSQL
rows come through a server-side cursor and are turned into Arrow columns, whose values
``amp.verify.rowhash`` then puts in the same canonical form as the server's.

PostgreSQL, DuckDB, Delta Lake (``amp.verify.delta_side``) and Iceberg
(``amp.verify.iceberg_side``, imported only for them) are supported. Redis and Kafka keep
rows as hashes or messages with no range query over the block, so ``open_destination``
refuses them, naming the destinations it can verify.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any, Protocol

import duckdb
import psycopg
import pyarrow as pa

from amp.destination_url import destination_from_url
from amp.errors import ConfigError, DestinationError
from amp.redact import redact_text
from amp.verify.source import quote

SUPPORTED = ("postgresql", "duckdb", "deltalake", "iceberg")
_BATCH_ROWS = 50_000


class DestinationSide(Protocol):
    """What verify reads from a destination table."""

    def columns(self, table: str) -> list[str]:
        """The table's column names (empty: no such table)."""
        ...

    def bounds(self, table: str, block_column: str) -> tuple[int, int] | None:
        """The lowest and highest block of the table's rows (None: no rows)."""
        ...

    def batches(
        self, table: str, columns: list[str], block_column: str, first: int, last: int
    ) -> Iterator[pa.RecordBatch]:
        """The table's rows of blocks ``first..last``, projected on ``columns``."""
        ...

    def close(self) -> None: ...


def _qualified(table: str) -> str:
    return ".".join(quote(part) for part in table.split(".", 1))


def _split(table: str) -> tuple[str | None, str]:
    schema, dot, name = table.partition(".")
    return (schema, name) if dot else (None, table)


def _range_sql(table: str, columns: list[str], block_column: str, placeholder: str) -> str:
    select = ", ".join(quote(name) for name in columns)
    block = quote(block_column)
    return (
        f"SELECT {select} FROM {_qualified(table)} "
        f"WHERE {block} BETWEEN {placeholder} AND {placeholder}"
    )


def _arrow_column(values: list[Any]) -> pa.Array:
    """Python values of one PostgreSQL column as Arrow (types inferred: NUMERIC →
    decimal, BYTEA → binary, TIMESTAMPTZ → timestamp); a NUMERIC column with values of
    several scales is cast to text, which is its canonical form anyway."""
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        if any(isinstance(value, Decimal) for value in values):
            return pa.array([None if value is None else str(value) for value in values])
        raise


class PostgreSQLSide:
    """A PostgreSQL database, read through one read-only connection."""

    def __init__(self, dsn: str) -> None:
        try:
            self.conn = psycopg.connect(dsn, autocommit=False)
        except psycopg.Error as exc:
            reason = redact_text(str(exc))
            raise DestinationError(f"cannot connect to PostgreSQL: {reason}") from exc
        self.conn.read_only = True

    def columns(self, table: str) -> list[str]:
        schema, name = _split(table)
        rows = self._query(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = coalesce(%s, current_schema()) AND table_name = %s "
            "ORDER BY ordinal_position",
            (schema, name),
        )
        return [row[0] for row in rows]

    def bounds(self, table: str, block_column: str) -> tuple[int, int] | None:
        block = quote(block_column)
        rows = self._query(f"SELECT min({block}), max({block}) FROM {_qualified(table)}", ())
        first, last = rows[0]
        return None if first is None else (int(first), int(last))

    def batches(
        self, table: str, columns: list[str], block_column: str, first: int, last: int
    ) -> Iterator[pa.RecordBatch]:
        statement = _range_sql(table, columns, block_column, "%s")
        try:
            with self.conn.cursor(name=f"amp_verify_{uuid.uuid4().hex}") as cursor:
                cursor.itersize = _BATCH_ROWS
                cursor.execute(statement, (first, last))
                while rows := cursor.fetchmany(_BATCH_ROWS):
                    values = list(zip(*rows, strict=True))
                    yield pa.RecordBatch.from_arrays(
                        [_arrow_column(list(column)) for column in values], names=columns
                    )
        except psycopg.Error as exc:
            raise DestinationError(f"reading {table} from PostgreSQL failed: {exc}") from exc
        finally:
            self.conn.rollback()

    def _query(self, statement: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        try:
            with self.conn.cursor() as cursor:
                cursor.execute(statement, params)
                return cursor.fetchall()
        except psycopg.Error as exc:
            raise DestinationError(f"PostgreSQL: {exc}") from exc
        finally:
            self.conn.rollback()

    def close(self) -> None:
        self.conn.close()


class DuckDBSide:
    """A DuckDB file, opened read-only (a load writing to it at the same time holds its
    lock, and DuckDB then refuses to open it: verify after the load, or stop it)."""

    def __init__(self, database: str) -> None:
        if database in ("", ":memory:"):
            raise ConfigError("amp verify: an in-memory DuckDB has no table to verify; give a file")
        try:
            self.conn = duckdb.connect(database, read_only=True)
        except duckdb.Error as exc:
            raise DestinationError(f"cannot open DuckDB file {database}: {exc}") from exc

    def columns(self, table: str) -> list[str]:
        schema, name = _split(table)
        rows = self._query(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = coalesce(?, current_schema()) AND table_name = ? "
            "ORDER BY ordinal_position",
            [schema, name],
        )
        return [row[0] for row in rows]

    def bounds(self, table: str, block_column: str) -> tuple[int, int] | None:
        block = quote(block_column)
        rows = self._query(f"SELECT min({block}), max({block}) FROM {_qualified(table)}", [])
        first, last = rows[0]
        return None if first is None else (int(first), int(last))

    def batches(
        self, table: str, columns: list[str], block_column: str, first: int, last: int
    ) -> Iterator[pa.RecordBatch]:
        statement = _range_sql(table, columns, block_column, "?")
        try:
            relation = self.conn.sql(statement, params=[first, last])
            yield from relation.to_arrow_reader(_BATCH_ROWS)
        except duckdb.Error as exc:
            raise DestinationError(f"reading {table} from DuckDB failed: {exc}") from exc

    def _query(self, statement: str, params: list[Any]) -> list[tuple[Any, ...]]:
        try:
            return self.conn.execute(statement, params).fetchall()
        except duckdb.Error as exc:
            raise DestinationError(f"DuckDB: {exc}") from exc

    def close(self) -> None:
        with contextlib.suppress(duckdb.Error):
            self.conn.close()


def open_destination(url: str) -> DestinationSide:
    """The reader of a ``--to`` URL's destination; ConfigError for one verify cannot read."""
    loader, config = destination_from_url(url)
    if loader == "postgresql":
        return PostgreSQLSide(config["dsn"])
    if loader == "duckdb":
        return DuckDBSide(config["database"])
    if loader == "deltalake":
        from amp.verify.delta_side import DeltaSide  # delta-rs: the 'delta' extra

        return DeltaSide(config["table_path"])

    if loader == "iceberg":
        from amp.verify.iceberg_side import IcebergSide  # the iceberg extra

        return IcebergSide(config)
    raise ConfigError(
        f"amp verify compares {', '.join(SUPPORTED[:-1])} and {SUPPORTED[-1]} destinations; "
        f"{loader} is not supported yet (its rows cannot be read back by block range)"
    )
