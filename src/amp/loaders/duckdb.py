"""DuckDB loader: embedded (a file or ``:memory:``), Arrow scanned in place by DuckDB.

Why register-and-insert: DuckDB reads a registered Arrow batch without copying it, and
``INSERT ... SELECT`` runs inside the transaction the load loop opened, so a commit (its
microbatches and their checkpoint) is atomic.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Sequence
from typing import Any

import duckdb
import pyarrow as pa

from amp.config import number_at_least, number_at_most, typed
from amp.errors import ConfigError, DestinationError, StreamOwnedError
from amp.loaders.base import DataLoader, LoadMode
from amp.loaders.blocks import RANGE_END, RANGE_START
from amp.loaders.columns import align
from amp.loaders.ownership import PROCESS_CLAIMS, Stream
from amp.streaming.state_sql import DUCKDB, SqlStateStore
from amp.streaming.types import BlockRange

_VIEW = "__amp_incoming"
_MEMORY = ("", ":memory:")
# DuckDB's words for a file another process holds (its only signal: an IOException).
_FILE_LOCKED = "Could not set lock on file"
_LOCK_HOLDER = re.compile(r"held in (.+?) \(PID (\d+)\)")


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _qualified(table: str) -> str:
    return ".".join(_quote(part) for part in table.split(".", 1))


_MAX_THREADS = 1024


def _check_memory_limit(value: object) -> None:
    """A size DuckDB accepts ('4GB', '512MiB', '80%'), asked of DuckDB itself on a
    throw-away in-memory database, so that a typo fails now, not when the load opens
    the destination."""
    where = "duckdb config"
    size: str = typed(where, "memory_limit", value, str)
    problem = "a negative size" if size.strip().startswith("-") else ""
    if not problem:
        try:
            duckdb.connect(":memory:", config={"memory_limit": size}).close()
        except duckdb.Error as exc:
            problem = str(exc).strip().splitlines()[0]
    if problem:
        raise ConfigError(
            f"{where}['memory_limit'] must be a size such as '4GB', '512MiB' or '80%', "
            f"got {value!r} ({problem})"
        )


class DuckDBLoader(DataLoader[dict[str, Any]]):
    """Loads into DuckDB. Keys: ``database`` (a path or ':memory:'), ``threads`` and
    ``memory_limit`` (DuckDB's own settings); ``read_only`` is not offered: a loader writes."""

    loader_type = "duckdb"
    transactional = True
    finds_range_starts = True
    config_keys = frozenset({"database", "threads", "memory_limit"})

    def __init__(self, config: dict[str, Any], connection_name: str = "") -> None:
        super().__init__(config, connection_name)
        self.database = typed(
            "duckdb config", "database", self.config.get("database", ":memory:"), str
        )
        if "threads" in self.config:
            threads = typed("duckdb config", "threads", self.config["threads"], int)
            number_at_least("duckdb config", "threads", threads, 1)
            number_at_most("duckdb config", "threads", threads, _MAX_THREADS)
        if "memory_limit" in self.config:
            _check_memory_limit(self.config["memory_limit"])
        self._conn: duckdb.DuckDBPyConnection | None = None
        self._in_transaction = False
        self._schemas: dict[str, pa.Schema] = {}  # the columns each table was prepared for

    def describe(self) -> str:
        location = self.database if self.database == ":memory:" else os.path.abspath(self.database)
        return f"duckdb:///{location}"

    one_writing_process = True  # DuckDB locks a database file to one writing process

    @property
    def private(self) -> bool:
        return self.database in _MEMORY

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
            owned = self._held_elsewhere(exc)
            if owned is not None:
                raise owned from exc
            raise DestinationError(
                f"cannot open DuckDB database {self.database!r}: {exc}; check the path and that "
                "no other process holds it open for writing"
            ) from exc

    def close(self) -> None:
        self.rollback()
        self.release_stream()
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None

    # -- one writer per stream --------------------------------------------------------

    def claim_stream(self, table: str, worker_id: int) -> None:
        """DuckDB lets one process write a file (see ``_held_elsewhere``); within this
        process, loaders of one file claim (file, table, worker) in a registry. An
        in-memory database is this loader's alone: nothing to claim."""
        if self.database in _MEMORY:
            return
        stream = Stream(self.connection_name, table, worker_id)
        key = ("duckdb", os.path.realpath(self.database), table, worker_id)
        PROCESS_CLAIMS.claim(key, stream, self, self.describe())

    def release_stream(self) -> None:
        PROCESS_CLAIMS.release(self)

    def _held_elsewhere(self, exc: duckdb.Error) -> StreamOwnedError | None:
        """The refusal when another process has the file open (DuckDB reports this only
        as an IOException whose text names the holder)."""
        if not isinstance(exc, duckdb.IOException):
            return None
        if _FILE_LOCKED not in str(exc):
            return None
        found = _LOCK_HOLDER.search(str(exc))
        holder = f"PID {found[2]}, {found[1]}" if found else "a process DuckDB did not name"
        return StreamOwnedError(
            f"FATAL: the DuckDB database {self.database!r} is open in another process "
            f"({holder}); DuckDB lets one process write a file, and two loads of one stream "
            "would write its rows twice, so this load stops. Stop the other process (or "
            "wait for it to end), or load into another database file.",
            holder,
        )

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
            self._schemas[table] = schema
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
        prepared = self._schemas.get(table)
        if prepared is not None:
            batch = align(batch, prepared, table)
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
        row = _only_row(result)
        return int(row[0]) if row else 0

    def has_rows_after(self, table: str, block_column: str, block: int) -> bool | None:
        result = self._run(
            f"SELECT max({_quote(block_column)}) FROM {_qualified(table)}",
            f"looking for rows after block {block}",
        )
        row = _only_row(result)
        return row is not None and row[0] is not None and row[0] > block

    def first_range_start(self, table: str, block: int) -> int | None:
        result = self._run(
            f"SELECT min({_quote(RANGE_START)}) FROM {_qualified(table)} "
            f"WHERE {_quote(RANGE_END)} >= ?",
            f"finding microbatch boundaries of {table}",
            (block,),
        )
        row = _only_row(result)
        return int(row[0]) if row and row[0] is not None else None

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


def _only_row(result: Any) -> tuple[Any, ...] | None:
    """The single row of a statement's result, read to its end: DuckDB 2 streams results,
    and one left unfinished refuses the connection's next statement."""
    rows = result.fetchall() if result is not None else []
    return tuple(rows[0]) if rows else None
