"""PostgreSQL loader: Arrow → binary COPY (pgpq) inside one transaction per microbatch.

Why binary COPY: it is the fastest way into PostgreSQL and pgpq encodes Arrow columns
in Rust, so no row passes through Python. Types follow protocol §6: FixedSizeBinary and
Binary → BYTEA, Decimal128 → NUMERIC, UInt64 → NUMERIC(20,0) (no overflow), timestamps
with a zone → TIMESTAMPTZ. PostgreSQL text cannot hold a NUL byte; ``text_nul`` decides
what happens to one: ``'error'`` (default: stop, naming the column), ``'strip'`` it, or
store every text column as ``'bytea'`` (lossless).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import pgpq
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
from psycopg import sql

from amp.config import typed
from amp.errors import ConfigError, DestinationError
from amp.loaders.base import Loader, LoadMode
from amp.streaming.state_sql import POSTGRESQL, SqlStateStore
from amp.streaming.types import BlockRange

_TEXT_NUL_CHOICES = ("error", "strip", "bytea")

# pgpq's Postgres type (class name) → the column type we declare.
_PG_TYPES = {
    "Bool": "BOOLEAN",
    "Bytea": "BYTEA",
    "Int8": "BIGINT",
    "Int2": "SMALLINT",
    "Int4": "INTEGER",
    "Char": '"char"',
    "Text": "TEXT",
    "Jsonb": "JSONB",
    "Float4": "REAL",
    "Float8": "DOUBLE PRECISION",
    "Date": "DATE",
    "Time": "TIME",
    "Timestamp": "TIMESTAMP",
    "Interval": "INTERVAL",
    "Numeric": "NUMERIC",
}


def _is_text(data_type: pa.DataType) -> bool:
    return (
        pa.types.is_string(data_type)
        or pa.types.is_large_string(data_type)
        or pa.types.is_string_view(data_type)
    )


class _TableWriter:
    """Converts batches of one Arrow schema for COPY and knows the table's DDL."""

    def __init__(self, schema: pa.Schema, text_nul: str) -> None:
        self.source_schema = schema
        self.text_nul = text_nul
        fields = []
        for field in schema:
            data_type = field.type
            if pa.types.is_timestamp(data_type) and data_type.unit == "ns":
                data_type = pa.timestamp("us", tz=data_type.tz)
            elif _is_text(data_type):
                data_type = pa.binary() if text_nul == "bytea" else pa.string()
            elif pa.types.is_large_binary(data_type) or pa.types.is_binary_view(data_type):
                data_type = pa.binary()
            fields.append(pa.field(field.name, data_type, field.nullable))
        self.copy_schema = pa.schema(fields)
        try:
            self.encoder_schema = pgpq.ArrowToPostgresBinaryEncoder(self.copy_schema).schema()
        except Exception as exc:  # pgpq raises ValueError with the unsupported type
            raise ConfigError(f"cannot load this schema into PostgreSQL: {exc}") from exc

    def column_types(self) -> list[tuple[str, str]]:
        declared = []
        for field, column in zip(self.copy_schema, self.encoder_schema.columns, strict=True):
            data_type = field.type
            pg_name = type(column.data_type).__name__
            if pa.types.is_decimal(data_type):
                pg_type = f"NUMERIC({data_type.precision},{data_type.scale})"
            elif pa.types.is_uint64(data_type):
                pg_type = "NUMERIC(20,0)"
            elif pa.types.is_timestamp(data_type) and data_type.tz is not None:
                pg_type = "TIMESTAMPTZ"
            elif pg_name in _PG_TYPES:
                pg_type = _PG_TYPES[pg_name]
            else:
                raise ConfigError(
                    f"column {field.name!r} of Arrow type {data_type} has no PostgreSQL "
                    "column type in amp; cast it in the query (for example to a string)"
                )
            declared.append((field.name, pg_type))
        return declared

    def convert(self, batch: pa.RecordBatch, table: str) -> pa.RecordBatch:
        columns = []
        for index, (source, target) in enumerate(
            zip(self.source_schema, self.copy_schema, strict=True)
        ):
            column = batch.column(index)
            if _is_text(source.type) and self.text_nul != "bytea":
                column = self._text_column(column, source.name, table, batch)
            if column.type != target.type:
                try:
                    column = column.cast(target.type)
                except pa.ArrowInvalid as exc:
                    raise DestinationError(
                        f"column {source.name!r} of {table}: cannot convert {source.type} to "
                        f"{target.type} for PostgreSQL without losing data: {exc}"
                    ) from exc
            columns.append(column)
        return pa.RecordBatch.from_arrays(columns, schema=self.copy_schema)

    def _text_column(
        self, column: pa.Array, name: str, table: str, batch: pa.RecordBatch
    ) -> pa.Array:
        has_nul = pc.match_substring(column, "\x00")
        if not pc.any(has_nul).as_py():
            return column
        if self.text_nul == "strip":
            return pc.replace_substring(column, "\x00", "")
        row = pc.index(has_nul, True).as_py()
        where = ""
        for block_name in ("_block_num", "block_num"):
            if block_name in batch.schema.names:
                where = f" (block {batch.column(block_name)[row].as_py()})"
                break
        raise DestinationError(
            f"column {name!r} of {table} holds a NUL byte{where}, which PostgreSQL text "
            "cannot store; set the connection's 'text_nul' to 'bytea' (lossless: text "
            "columns become BYTEA) or 'strip' (removes NUL bytes), or cast the column in SQL"
        )


class PostgreSQLLoader(Loader):
    """Loads into PostgreSQL. Keys: host, port, database, user, password, dsn, schema,
    sslmode, connect_timeout, application_name, text_nul."""

    loader_type = "postgresql"
    transactional = True
    config_keys = frozenset(
        {
            "host",
            "port",
            "database",
            "user",
            "password",
            "dsn",
            "schema",
            "sslmode",
            "connect_timeout",
            "application_name",
            "text_nul",
        }
    )

    def __init__(self, config: dict[str, Any], connection_name: str = "") -> None:
        super().__init__(config, connection_name)
        where = "postgresql config"
        for key in ("host", "database", "user", "password", "dsn", "schema", "sslmode"):
            if key in self.config:
                typed(where, key, self.config[key], str)
        if "port" in self.config:
            typed(where, "port", self.config["port"], int)
        if "connect_timeout" in self.config:
            typed(where, "connect_timeout", self.config["connect_timeout"], (int, float))
        self.text_nul = self.config.get("text_nul", "error")
        if self.text_nul not in _TEXT_NUL_CHOICES:
            raise ConfigError(
                f"{where}['text_nul'] must be one of {', '.join(_TEXT_NUL_CHOICES)}, "
                f"got {self.text_nul!r}"
            )
        self.schema_name = self.config.get("schema", "public")
        self._conn: psycopg.Connection[Any] | None = None
        self._writers: dict[str, _TableWriter] = {}
        self._copy: Any = None
        self._copy_context: Any = None
        self._copy_table: str | None = None

    def describe(self) -> str:
        if "dsn" in self.config:
            with contextlib.suppress(Exception):
                info = psycopg.conninfo.conninfo_to_dict(self.config["dsn"])
                user, host = info.get("user", ""), info.get("host", "localhost")
                return (
                    f"postgresql://{user}@{host}:{info.get('port', 5432)}/{info.get('dbname', '')}"
                )
            return "postgresql (dsn)"
        return (
            f"postgresql://{self.config.get('user', '')}@{self.config.get('host', 'localhost')}:"
            f"{self.config.get('port', 5432)}/{self.config.get('database', '')}"
        )

    # -- connection ----------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.closed

    def connect(self) -> None:
        if self.connected:
            return
        params: dict[str, Any] = {}
        if "dsn" in self.config:
            params.update(psycopg.conninfo.conninfo_to_dict(self.config["dsn"]))
        for key, name in (
            ("host", "host"),
            ("port", "port"),
            ("database", "dbname"),
            ("user", "user"),
            ("password", "password"),
            ("sslmode", "sslmode"),
            ("application_name", "application_name"),
        ):
            if key in self.config:
                params[name] = self.config[key]
        params.setdefault("host", "localhost")
        params.setdefault("application_name", "amp")
        params["connect_timeout"] = int(self.config.get("connect_timeout", 10))
        try:
            self._conn = psycopg.connect(autocommit=False, **params)
        except psycopg.OperationalError as exc:
            raise DestinationError(
                f"cannot connect to {self.describe()}: {_first_line(exc)}; check host, port, "
                "database, user and password, and that PostgreSQL is running"
            ) from exc

    def close(self) -> None:
        self.rollback()
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self.connect()
        assert self._conn is not None
        return self._conn

    def _identifier(self, table: str) -> sql.Composed:
        if "." in table:
            schema_name, table_name = table.split(".", 1)
        else:
            schema_name, table_name = self.schema_name, table
        return sql.SQL(".").join([sql.Identifier(schema_name), sql.Identifier(table_name)])

    # -- tables --------------------------------------------------------------------------

    def prepare_table(
        self, table: str, schema: pa.Schema, mode: LoadMode, block_column: str
    ) -> None:
        writer = _TableWriter(schema, self.text_nul)
        conn = self._connection()
        target = self._identifier(table)
        columns = sql.SQL(", ").join(
            sql.SQL("{} {}").format(sql.Identifier(name), sql.SQL(pg_type))
            for name, pg_type in writer.column_types()
        )
        bare_name = table.rsplit(".", 1)[-1]
        index_name = sql.Identifier(f"{bare_name}_{block_column}_idx"[:63])
        with conn.transaction(), conn.cursor() as cur:
            if mode is LoadMode.OVERWRITE:
                cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(target))
            cur.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} ({})").format(target, columns))
            cur.execute(
                sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} ({})").format(
                    index_name, target, sql.Identifier(block_column)
                )
            )
            self._check_columns(cur, table, writer)
        self._writers[table] = writer

    def _check_columns(self, cur: psycopg.Cursor[Any], table: str, writer: _TableWriter) -> None:
        schema_name, table_name = table.split(".", 1) if "." in table else (self.schema_name, table)
        cur.execute(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = %s AND table_name = %s",
            (schema_name, table_name),
        )
        existing = {row[0] for row in cur.fetchall()}
        missing = [name for name in writer.copy_schema.names if name not in existing]
        if missing:
            raise ConfigError(
                f"table {table} exists without the column(s) {', '.join(missing)} that the "
                "query returns; load with mode='overwrite', choose another table, or alter it"
            )

    # -- transactions --------------------------------------------------------------------

    def begin(self) -> None:
        conn = self._connection()
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            raise DestinationError("begin() while a transaction is already open")

    def write(
        self, table: str, batch: pa.RecordBatch, block_range: BlockRange | None = None
    ) -> int:
        writer = self._writers.get(table)
        if writer is None:
            raise DestinationError(f"write to {table} before prepare_table()")
        if self._copy_table != table:
            self._finish_copy()
            self._start_copy(table, writer)
        converted = writer.convert(batch, table)
        try:
            self._copy.write(self._encoder.write_batch(converted))
        except psycopg.Error as exc:
            raise _destination_error(exc, f"COPY into {table}") from exc
        return batch.num_rows

    def _start_copy(self, table: str, writer: _TableWriter) -> None:
        conn = self._connection()
        statement = sql.SQL("COPY {} ({}) FROM STDIN WITH (FORMAT BINARY)").format(
            self._identifier(table),
            sql.SQL(", ").join(sql.Identifier(name) for name in writer.copy_schema.names),
        )
        self._encoder = pgpq.ArrowToPostgresBinaryEncoder(writer.copy_schema)
        cursor = conn.cursor()
        try:
            self._copy_context = cursor.copy(statement)
            self._copy = self._copy_context.__enter__()
            self._copy_table = table
            self._copy.write(self._encoder.write_header())
        except BaseException as exc:
            self._abort_copy(exc)
            if isinstance(exc, psycopg.Error):
                raise _destination_error(exc, f"COPY into {table}") from exc
            raise

    def _finish_copy(self) -> None:
        """End the open COPY; on any failure abort it (CopyFail) so the connection never
        stays in COPY mode, where a later rollback would block."""
        if self._copy is None:
            return
        try:
            self._copy.write(self._encoder.finish())
            context = self._copy_context
            self._copy = self._copy_context = self._copy_table = None
            context.__exit__(None, None, None)
        except BaseException as exc:
            self._abort_copy(exc)
            if isinstance(exc, psycopg.Error):
                raise _destination_error(exc, "finishing COPY") from exc
            raise

    def _abort_copy(self, exc: BaseException) -> None:
        context = self._copy_context
        self._copy = self._copy_context = self._copy_table = None
        if context is not None:
            with contextlib.suppress(Exception):
                context.__exit__(type(exc), exc, exc.__traceback__)

    def delete_blocks(self, table: str, block_column: str, start: int, end: int) -> int:
        self._finish_copy()
        statement = sql.SQL("DELETE FROM {} WHERE {} BETWEEN %s AND %s").format(
            self._identifier(table), sql.Identifier(block_column)
        )
        try:
            with self._connection().cursor() as cur:
                cur.execute(statement, (start, end))
                return cur.rowcount
        except psycopg.Error as exc:
            raise _destination_error(exc, f"deleting blocks {start}..{end} of {table}") from exc

    def commit(self) -> None:
        self._finish_copy()
        conn = self._connection()
        try:
            conn.commit()
        except psycopg.Error as exc:
            error = _destination_error(exc, "COMMIT")
            error.commit_outcome_unknown = conn.closed or conn.broken
            raise error from exc

    def rollback(self) -> None:
        if self._copy_context is not None:
            self._abort_copy(DestinationError("rolled back"))
        if self._conn is not None and not self._conn.closed:
            with contextlib.suppress(Exception):
                self._conn.rollback()

    @property
    def connection(self) -> psycopg.Connection[Any]:
        """The live psycopg connection."""
        return self._connection()

    def state_store(self, prefix: str) -> SqlStateStore:
        """Checkpoint and processed-range tables, written in this loader's transaction."""
        return SqlStateStore(POSTGRESQL, self._execute_state, prefix)

    def _execute_state(self, statement: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        self._finish_copy()
        try:
            with self._connection().cursor() as cur:
                cur.execute(statement, params)
                return cur.fetchall() if cur.description is not None else []
        except psycopg.Error as exc:
            raise _destination_error(exc, "delivery state statement") from exc


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _destination_error(exc: psycopg.Error, action: str) -> DestinationError:
    return DestinationError(
        f"PostgreSQL {action} failed: {_first_line(exc)}", getattr(exc, "sqlstate", None)
    )
