"""DuckDB loader: embedded (a file or ``:memory:``), Arrow scanned in place by DuckDB.

Why register-and-insert: DuckDB reads a registered Arrow batch without copying it, and
``INSERT ... SELECT`` runs inside DuckDB's own transaction, so a microbatch is atomic.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Sequence
from typing import Any

import duckdb
import pyarrow as pa

from amp.config import typed
from amp.errors import ConfigError, DestinationError
from amp.loaders.base import Loader, LoadMode
from amp.streaming.state_sql import DUCKDB, SqlStateStore
from amp.streaming.types import BlockRange

_VIEW = "__amp_incoming"


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _qualified(table: str) -> str:
    return ".".join(_quote(part) for part in table.split(".", 1))


class DuckDBLoader(Loader):
    """Loads into DuckDB. Keys: ``database`` (a path or ':memory:'), ``read_only`` is not
    offered: a loader writes."""

    loader_type = "duckdb"
    transactional = True
    config_keys = frozenset({"database", "threads", "memory_limit"})

    def __init__(self, config: dict[str, Any], connection_name: str = "") -> None:
        super().__init__(config, connection_name)
        self.database = typed(
            "duckdb config", "database", self.config.get("database", ":memory:"), str
        )
        if "threads" in self.config:
            typed("duckdb config", "threads", self.config["threads"], int)
        if "memory_limit" in self.config:
            typed("duckdb config", "memory_limit", self.config["memory_limit"], str)
        self._conn: duckdb.DuckDBPyConnection | None = None
        self._in_transaction = False
        self._lock = threading.Lock()

    def describe(self) -> str:
        return f"duckdb:///{self.database}"

    @property
    def connected(self) -> bool:
        return self._conn is not None

    def connect(self) -> None:
        if self._conn is not None:
            return
        settings = {}
        if "threads" in self.config:
            settings["threads"] = self.config["threads"]
        if "memory_limit" in self.config:
            settings["memory_limit"] = self.config["memory_limit"]
        try:
            self._conn = duckdb.connect(self.database, config=settings)
        except duckdb.Error as exc:
            raise DestinationError(
                f"cannot open DuckDB database {self.database!r}: {exc}; check the path and that "
                "no other process holds it open for writing"
            ) from exc

    def close(self) -> None:
        self.rollback()
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None

    @property
    def connection(self) -> duckdb.DuckDBPyConnection:
        if self._conn is None:
            self.connect()
        assert self._conn is not None
        return self._conn

    def prepare_table(
        self, table: str, schema: pa.Schema, mode: LoadMode, block_column: str
    ) -> None:
        conn = self.connection
        target = _qualified(table)
        empty = schema.empty_table()
        try:
            conn.execute("BEGIN TRANSACTION")
            if mode is LoadMode.OVERWRITE:
                conn.execute(f"DROP TABLE IF EXISTS {target}")
            conn.register(_VIEW, empty)
            conn.execute(f"CREATE TABLE IF NOT EXISTS {target} AS SELECT * FROM {_VIEW} LIMIT 0")
            conn.unregister(_VIEW)
            columns = {row[0] for row in conn.execute(f"DESCRIBE {target}").fetchall()}
            missing = [name for name in schema.names if name not in columns]
            if missing:
                raise ConfigError(
                    f"table {table} exists without the column(s) {', '.join(missing)} that the "
                    "query returns; load with mode='overwrite', choose another table, or alter it"
                )
            index = _quote(f"{table.rsplit('.', 1)[-1]}_{block_column}_idx")
            conn.execute(f"CREATE INDEX IF NOT EXISTS {index} ON {target} ({_quote(block_column)})")
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(Exception):
                conn.execute("ROLLBACK")
            raise

    def begin(self) -> None:
        if self._in_transaction:
            raise DestinationError("begin() while a transaction is already open")
        self._run("BEGIN TRANSACTION", "BEGIN")
        self._in_transaction = True

    def write(
        self, table: str, batch: pa.RecordBatch, block_range: BlockRange | None = None
    ) -> int:
        conn = self.connection
        columns = ", ".join(_quote(name) for name in batch.schema.names)
        try:
            conn.register(_VIEW, batch)
            try:
                conn.execute(
                    f"INSERT INTO {_qualified(table)} ({columns}) SELECT {columns} FROM {_VIEW}"
                )
            finally:  # in an aborted transaction this fails too: keep the first error
                with contextlib.suppress(duckdb.Error):
                    conn.unregister(_VIEW)
        except duckdb.Error as exc:
            raise DestinationError(f"DuckDB insert into {table} failed: {exc}") from exc
        return batch.num_rows

    def delete_blocks(self, table: str, block_column: str, start: int, end: int) -> int:
        result = self._run(
            f"DELETE FROM {_qualified(table)} WHERE {_quote(block_column)} BETWEEN ? AND ?",
            f"deleting blocks {start}..{end} of {table}",
            (start, end),
        )
        row = result.fetchone() if result is not None else None
        return int(row[0]) if row else 0

    def commit(self) -> None:
        self._run("COMMIT", "COMMIT")
        self._in_transaction = False

    def rollback(self) -> None:
        if self._conn is not None and self._in_transaction:
            with contextlib.suppress(Exception):
                self._conn.execute("ROLLBACK")
        self._in_transaction = False

    def state_store(self, prefix: str) -> SqlStateStore:
        """Checkpoint and processed-range tables, written in this loader's transaction."""
        return SqlStateStore(DUCKDB, self._execute_state, prefix)

    def _execute_state(self, statement: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        result = self._run(statement, "delivery state statement", tuple(params))
        return result.fetchall() if result is not None else []

    def _run(self, statement: str, action: str, parameters: tuple[Any, ...] = ()) -> Any:
        try:
            return self.connection.execute(statement, parameters)
        except duckdb.Error as exc:
            raise DestinationError(f"DuckDB {action} failed: {exc}") from exc
