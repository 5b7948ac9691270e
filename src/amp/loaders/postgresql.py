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
import getpass
import hashlib
import math
import os
from collections.abc import Sequence
from typing import Any

import pgpq
import psycopg
import pyarrow as pa
from psycopg import sql

from amp.config import port_number, timeout_seconds, typed
from amp.deadpeer import DEAD_PEER_TIMEOUT_KEY, dead_peer_timeout
from amp.errors import ConfigError, DestinationError
from amp.loaders.base import DataLoader, LoadMode
from amp.loaders.blocks import RANGE_END, RANGE_START
from amp.loaders.ownership import Stream
from amp.loaders.pg_deadline import DeadlineConnection, libpq_keepalive_params
from amp.loaders.pg_stream_lock import CLAIM_WAIT_SECONDS, PgStreamLock
from amp.loaders.pg_writer import _TableWriter
from amp.streaming.classify import psycopg_sqlstate
from amp.streaming.state import RowsDelete
from amp.streaming.state_sql import (
    PG_DDL_LOCK_KEY,
    POSTGRESQL,
    POSTGRESQL_MAX_IDENTIFIER_BYTES,
    SqlStateStore,
)
from amp.streaming.types import BlockRange

_TEXT_NUL_CHOICES = ("error", "strip", "bytea")


class PostgreSQLLoader(DataLoader[dict[str, Any]]):
    """Loads into PostgreSQL. Keys: host, port, database, user, password, dsn, schema,
    sslmode, connect_timeout, application_name, text_nul, dead_peer_timeout."""

    loader_type = "postgresql"
    transactional = True
    finds_range_starts = True
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
            DEAD_PEER_TIMEOUT_KEY,
        }
    )

    def __init__(self, config: dict[str, Any], connection_name: str = "") -> None:
        super().__init__(config, connection_name)
        where = "postgresql config"
        for key in ("host", "database", "user", "password", "dsn", "schema", "sslmode"):
            if key in self.config:
                typed(where, key, self.config[key], str)
        if "port" in self.config:
            port_number(where, "port", self.config["port"])
        if "dsn" in self.config:
            _check_dsn(where, self.config["dsn"])
        self.connect_timeout = _connect_timeout(where, self.config)
        self.text_nul = self.config.get("text_nul", "error")
        if self.text_nul not in _TEXT_NUL_CHOICES:
            raise ConfigError(
                f"{where}['text_nul'] must be one of {', '.join(_TEXT_NUL_CHOICES)}, "
                f"got {self.text_nul!r}"
            )
        self.schema_name = self.config.get("schema", "public")
        self.dead_peer_timeout = dead_peer_timeout(where, self.config)
        self._conn: psycopg.Connection[Any] | None = None
        self._writers: dict[str, _TableWriter] = {}
        self._copy_statements: dict[str, sql.Composed] = {}
        self._delete_statements: dict[tuple[str, str], str] = {}
        self._copy: Any = None
        self._copy_context: Any = None
        self._copy_table: str | None = None
        self._stream_locks: dict[Stream, PgStreamLock] = {}

    def describe(self) -> str:
        """``postgresql://host:port/database as user 'name'``, libpq's defaults resolved as the
        connection will resolve them (a database not given is the user's name, which is
        the OS user's without a user), and said so: a load into a database nobody named
        must not go unnoticed."""
        try:
            params = self._connection_params()
        except psycopg.ProgrammingError:
            return "postgresql (unreadable dsn)"
        user = params.get("user") or os.environ.get("PGUSER") or _os_user()
        port = params.get("port") or os.environ.get("PGPORT") or 5432
        database = params.get("dbname") or os.environ.get("PGDATABASE")
        # The user is said apart from the URL: URL userinfo is redacted in every message.
        where = f"postgresql://{params['host']}:{port}/{database or user} as user {user!r}"
        if database is None:
            where += " (no database given: libpq's default, the user name)"
        return where

    def describe_table(self, table: str) -> str:
        return f"table {table if '.' in table else f'{self.schema_name}.{table}'}"

    # -- connection ----------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.closed

    def connect(self) -> None:
        if self.connected:
            return
        params = self._connection_params()
        params["connect_timeout"] = self.connect_timeout
        try:
            conn = DeadlineConnection.connect(autocommit=False, **params)
        except psycopg.OperationalError as exc:
            # A server FATAL (no such role or database, bad password) carries a permanent
            # SQLSTATE, so the load stops at once instead of retrying what cannot heal.
            raise DestinationError(
                f"cannot connect to {self.describe()}: {_first_line(exc)}; check host, port, "
                "database, user and password, and that PostgreSQL is running",
                psycopg_sqlstate(exc),
            ) from exc
        conn.dead_peer_timeout = self.dead_peer_timeout
        self._conn = conn
        self._reclaim_streams()

    def _connection_params(self) -> dict[str, Any]:
        """libpq parameters from the dsn and the separate keys (which win), with TCP
        keepalive and ``tcp_user_timeout`` from ``dead_peer_timeout`` unless the dsn
        sets its own."""
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
        for name, value in libpq_keepalive_params(self.dead_peer_timeout).items():
            params.setdefault(name, value)
        params.setdefault("host", "localhost")
        params.setdefault("application_name", "amp")
        return params

    def close(self) -> None:
        self.rollback()
        self.release_stream()
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None

    # -- one writer per stream --------------------------------------------------------

    def claim_stream(self, table: str, worker_id: int) -> None:
        """A session advisory lock on (schema, table, connection, worker); see
        ``amp.loaders.pg_stream_lock``. Waits up to 10 s only for a crashed holder."""
        schema_name, table_name = self._split(table)
        stream = Stream(self.connection_name, f"{schema_name}.{table_name}", worker_id)
        if stream in self._stream_locks:
            return
        lock = PgStreamLock(stream, schema_name, self.describe())
        lock.acquire(self._connection(), CLAIM_WAIT_SECONDS)
        self._stream_locks[stream] = lock

    def release_stream(self) -> None:
        locks, self._stream_locks = self._stream_locks, {}
        for lock in locks.values():
            lock.release(self._conn)

    def _reclaim_streams(self) -> None:
        """A new session holds none of the old one's locks: take them again before any
        write, or stop (StreamOwnedError) when another load took one meanwhile."""
        conn = self._conn
        assert conn is not None
        try:
            for lock in self._stream_locks.values():
                lock.acquire(conn, CLAIM_WAIT_SECONDS)
        except BaseException:
            # Never left connected without the lock: any further use reconnects and
            # claims again.
            with contextlib.suppress(Exception):
                conn.close()
            self._conn = None
            raise

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self.connect()
        assert self._conn is not None
        return self._conn

    def _split(self, table: str) -> tuple[str, str]:
        """(schema, table) of a destination name, the connection's schema by default;
        both checked against PostgreSQL's 63-byte limit before any statement uses them."""
        if "." in table:
            schema_name, table_name = table.split(".", 1)
        else:
            schema_name, table_name = self.schema_name, table
        _check_name(f"schema of table {table!r}", schema_name)
        _check_name("table", table_name)
        return schema_name, table_name

    def _identifier(self, table: str) -> sql.Composed:
        schema_name, table_name = self._split(table)
        return sql.SQL(".").join([sql.Identifier(schema_name), sql.Identifier(table_name)])

    # -- tables --------------------------------------------------------------------------

    def prepare_table(
        self, table: str, schema: pa.Schema, mode: LoadMode, block_column: str
    ) -> None:
        schema_name, table_name = self._split(table)
        for column in schema.names:
            _check_name(f"column of table {table!r}", column)
        writer = _TableWriter(schema, self.text_nul)
        conn = self._connection()
        target = self._identifier(table)
        columns = sql.SQL(", ").join(
            sql.SQL("{} {}").format(sql.Identifier(name), sql.SQL(pg_type))
            for name, pg_type in writer.column_types()
        )
        index = _index_name(table_name, block_column)
        with conn.transaction(), conn.cursor() as cur:
            # Workers in other processes (a Dask cluster's) may create the table at once.
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (PG_DDL_LOCK_KEY,))
            if mode is LoadMode.OVERWRITE:
                cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(target))
            cur.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} ({})").format(target, columns))
            # CREATE INDEX IF NOT EXISTS takes its SHARE lock before it finds the index,
            # so it would wait for every open write of the table (another worker's).
            cur.execute(
                "SELECT 1 FROM pg_indexes WHERE schemaname = %s AND indexname = %s",
                (schema_name, index),
            )
            if cur.fetchone() is None:
                cur.execute(
                    sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} ({})").format(
                        sql.Identifier(index), target, sql.Identifier(block_column)
                    )
                )
            self._check_columns(cur, table, writer)
        self._writers[table] = writer
        self._copy_statements[table] = sql.SQL(
            "COPY {} ({}) FROM STDIN WITH (FORMAT BINARY)"
        ).format(
            target, sql.SQL(", ").join(sql.Identifier(name) for name in writer.copy_schema.names)
        )

    def _check_columns(self, cur: psycopg.Cursor[Any], table: str, writer: _TableWriter) -> None:
        """The table holds every column the query returns, each of a type binary COPY can
        fill: a table left by an earlier attempt under other settings (TEXT made before
        ``text_nul='bytea'``) is named here, not deep inside a failed COPY."""
        cur.execute(
            "SELECT column_name, data_type, udt_name FROM information_schema.columns "
            "WHERE table_schema = %s AND table_name = %s",
            self._split(table),
        )
        existing = {name: (data_type, udt) for name, data_type, udt in cur.fetchall()}
        missing = [name for name in writer.copy_schema.names if name not in existing]
        if missing:
            raise ConfigError(
                f"table {table} exists without the column(s) {', '.join(missing)} that the "
                "query returns; load with mode='overwrite', choose another table, or alter it"
            )
        wrong = [
            f"{name!r} is {existing[name][0]} but this load writes {declared}"
            for name, declared in writer.column_types()
            if not _copy_compatible(existing[name][1], declared)
        ]
        if wrong:
            raise ConfigError(
                f"table {table} exists with other column types than this load writes "
                f"(text_nul={self.text_nul!r}): column {'; column '.join(wrong)}. It was "
                "probably created by an earlier attempt with other settings: drop the table, "
                "load with mode='overwrite', or choose another table"
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
        statement = self._copy_statements[table]
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
        try:
            with self._connection().cursor() as cur:
                cur.execute(self._delete_statement(table, block_column), (start, end))
                return cur.rowcount
        except psycopg.Error as exc:
            raise _destination_error(exc, f"deleting blocks {start}..{end} of {table}") from exc

    def rows_delete(self, table: str, block_column: str, start: int, end: int) -> RowsDelete:
        return RowsDelete(
            lambda: self.delete_blocks(table, block_column, start, end),
            self._delete_statement(table, block_column),
            (start, end),
        )

    def _delete_statement(self, table: str, block_column: str) -> str:
        """``DELETE ... WHERE block BETWEEN %s AND %s`` as text (a ``%`` in a name
        doubled, as psycopg reads placeholders from the text)."""
        key = (table, block_column)
        statement = self._delete_statements.get(key)
        if statement is None:
            names = sql.SQL("DELETE FROM {} WHERE {} BETWEEN ").format(
                self._identifier(table), sql.Identifier(block_column)
            )
            statement = names.as_string(self._connection()).replace("%", "%%") + "%s AND %s"
            self._delete_statements[key] = statement
        return statement

    def has_rows_after(self, table: str, block_column: str, block: int) -> bool | None:
        # max() is read from the end of the block index whatever the statistics say; an
        # EXISTS (... > n) on a table without statistics yet was planned as a seq scan.
        statement = sql.SQL("SELECT max({}) FROM {}").format(
            sql.Identifier(block_column), self._identifier(table)
        )
        rows = self._statement(statement, (), f"looking for rows after block {block}")
        return rows[0][0] is not None and rows[0][0] > block

    def finish_writes(self) -> None:
        self._finish_copy()

    def first_range_start(self, table: str, block: int) -> int | None:
        statement = sql.SQL("SELECT min({}) FROM {} WHERE {} >= %s").format(
            sql.Identifier(RANGE_START), self._identifier(table), sql.Identifier(RANGE_END)
        )
        rows = self._statement(statement, (block,), f"finding microbatch boundaries of {table}")
        return int(rows[0][0]) if rows and rows[0][0] is not None else None

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
        return self._statement(statement, params, "delivery state statement")

    def _statement(
        self, statement: str | sql.Composed, params: Sequence[Any], action: str
    ) -> list[tuple[Any, ...]]:
        """One statement in the open transaction (after the open COPY, if any)."""
        self._finish_copy()
        try:
            with self._connection().cursor() as cur:
                cur.execute(statement, params)
                return cur.fetchall() if cur.description is not None else []
        except psycopg.Error as exc:
            raise _destination_error(exc, action) from exc


# The pg_type name (information_schema's udt_name) of each type we declare.
_UDT_NAMES = {
    "BOOLEAN": "bool",
    "BYTEA": "bytea",
    "BIGINT": "int8",
    "SMALLINT": "int2",
    "INTEGER": "int4",
    '"char"': "char",
    "TEXT": "text",
    "JSONB": "jsonb",
    "REAL": "float4",
    "DOUBLE PRECISION": "float8",
    "DATE": "date",
    "TIME": "time",
    "TIMESTAMP": "timestamp",
    "TIMESTAMPTZ": "timestamptz",
    "INTERVAL": "interval",
}
# Types sharing one binary COPY format: a column of any of them accepts the others' data.
_SAME_BINARY_FORMAT = (
    frozenset({"text", "varchar", "bpchar", "citext"}),
    frozenset({"timestamp", "timestamptz"}),
)


def _copy_compatible(existing_udt: str, declared: str) -> bool:
    """Whether binary COPY of a ``declared`` column fills an existing ``existing_udt``
    column (a NUMERIC of any precision takes any NUMERIC)."""
    wanted = "numeric" if declared.startswith("NUMERIC") else _UDT_NAMES.get(declared)
    if wanted is None or existing_udt == wanted:
        return True
    return any(existing_udt in family and wanted in family for family in _SAME_BINARY_FORMAT)


def _check_name(what: str, name: str) -> None:
    """ConfigError for a name PostgreSQL would cut: it keeps 63 bytes and drops the rest
    silently, so two long names would address one table (or column)."""
    size = len(name.encode())
    if size > POSTGRESQL_MAX_IDENTIFIER_BYTES:
        raise ConfigError(
            f"the {what} {name!r} is {size} bytes long; PostgreSQL keeps only "
            f"{POSTGRESQL_MAX_IDENTIFIER_BYTES} bytes of a name and would silently cut it "
            f"(two long names would then share one table): choose a name of at most "
            f"{POSTGRESQL_MAX_IDENTIFIER_BYTES} bytes"
        )


def _index_name(table_name: str, block_column: str) -> str:
    """``{table}_{column}_idx``, or when that is over 63 bytes, its head with a hash of
    the whole name: cutting alone made two tables' index names collide, and ``CREATE
    INDEX IF NOT EXISTS`` then skipped the second table's index without an error."""
    name = f"{table_name}_{block_column}_idx"
    encoded = name.encode()
    if len(encoded) <= POSTGRESQL_MAX_IDENTIFIER_BYTES:
        return name
    suffix = f"_{hashlib.sha256(encoded).hexdigest()[:12]}_idx"
    head = encoded[: POSTGRESQL_MAX_IDENTIFIER_BYTES - len(suffix)].decode(errors="ignore")
    return head + suffix


def _check_dsn(where: str, dsn: str) -> None:
    """A DSN libpq can parse, with a valid port: checked now, not at the first connect."""
    try:
        params = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        # libpq's own message may quote the DSN, password included: not repeated here.
        raise ConfigError(
            f"{where}['dsn'] is not a valid PostgreSQL connection string; write key=value "
            "pairs ('host=db port=5432 dbname=x') or a postgresql://user@host:port/db URL"
        ) from None
    for port in str(params.get("port", "")).split(","):
        if port.strip() and (not port.strip().isdigit() or not 1 <= int(port) <= 65535):
            raise ConfigError(
                f"{where}['dsn'] has port {port!r}; a TCP port is a number from 1 to 65535"
            )


def _connect_timeout(where: str, config: dict[str, Any]) -> int:
    """Whole seconds for libpq: the ``connect_timeout`` key, else the dsn's own, else 10.

    libpq counts whole seconds and reads 0 as "wait forever": a fraction is rounded up,
    so 0.5 waits 1 s rather than hanging (``int(0.5)`` would be 0)."""
    if "connect_timeout" in config or "dsn" not in config:
        value = timeout_seconds(where, "connect_timeout", config.get("connect_timeout", 10))
    else:
        text = psycopg.conninfo.conninfo_to_dict(config["dsn"]).get("connect_timeout", "10")
        try:
            number = float(str(text))
        except ValueError:
            raise ConfigError(
                f"{where}['dsn'] has connect_timeout={text!r}; it must be a number of seconds"
            ) from None
        value = timeout_seconds(f"{where}['dsn']", "connect_timeout", number)
    return max(1, math.ceil(value))


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _destination_error(exc: psycopg.Error, action: str) -> DestinationError:
    return DestinationError(
        f"PostgreSQL {action} failed: {_first_line(exc)}", getattr(exc, "sqlstate", None)
    )


def _os_user() -> str:
    """The user libpq connects as when none is given: the OS user."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "<unknown OS user>"
