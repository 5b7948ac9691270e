"""Delivery state in the destination's own SQL database: checkpoints and processed ranges.

Why in the destination: the state is written in the same transaction as the rows it
describes, so after any crash the rows and the state agree. One implementation serves
every SQL loader; a ``SqlDialect`` holds what differs (placeholders, JSON type).

Tables (``prefix`` defaults to ``amp_``)::

    {prefix}checkpoints          the current checkpoint per (connection, table, worker)
    {prefix}checkpoint_history   superseded checkpoints, kept for audit (reorgs)
    {prefix}processed_ranges     every processed microbatch range, with its end hash
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from amp.errors import ConfigError
from amp.streaming.state import (
    CheckpointWrite,
    ProcessedRange,
    RangeMark,
    RowsDelete,
    StoredCheckpoint,
    open_by_lookup,
)
from amp.streaming.types import BlockRange

Rows = list[tuple[Any, ...]]
Execute = Callable[[str, Sequence[Any]], Rows]

# Marks per INSERT: 8 values each, far below PostgreSQL's 65,535 parameters a statement.
_MARKS_PER_STATEMENT = 1_000


@dataclass(frozen=True)
class SqlDialect:
    """What differs between the SQL destinations for the state tables."""

    name: str
    placeholder: str  # '%s' (psycopg) or '?' (duckdb)
    json_type: str  # 'JSONB' or 'JSON'
    # Whether a statement may carry INSERT/DELETE in WITH: then the statements of one
    # step (open a microbatch, save a unit) go to the server as one, one round trip.
    writable_cte: bool = False
    # Run first in a transaction that creates tables, where several processes may create
    # the same ones at once (PostgreSQL: CREATE TABLE IF NOT EXISTS is not safe against a
    # concurrent creator; it fails on pg_type's unique index). None: one writing process.
    ddl_lock: str | None = None

    def sql(self, statement: str) -> str:
        """``statement`` written with ``%s`` placeholders, in this dialect."""
        return statement if self.placeholder == "%s" else statement.replace("%s", self.placeholder)


# A transaction-level advisory lock every amp DDL on a PostgreSQL database takes first.
PG_DDL_LOCK_KEY = int.from_bytes(b"amp-ddl", "big")
POSTGRESQL = SqlDialect(
    "postgresql",
    "%s",
    "JSONB",
    writable_cte=True,
    ddl_lock=f"SELECT pg_advisory_xact_lock({PG_DDL_LOCK_KEY})",
)
DUCKDB = SqlDialect("duckdb", "?", "JSON")


# PostgreSQL keeps NAMEDATALEN - 1 = 63 bytes of an identifier and silently drops the
# rest, so two longer names that share their first 63 bytes name one table.
POSTGRESQL_MAX_IDENTIFIER_BYTES = 63

_PREFIX = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def state_object_names(prefix: str) -> tuple[str, ...]:
    """Every table and index name the state store derives from ``prefix``."""
    return (
        f"{prefix}checkpoints",
        f"{prefix}checkpoint_history",
        f"{prefix}processed_ranges",
        f"idx_{prefix}processed_ranges_lookup",
        f"idx_{prefix}processed_ranges_end",
    )


_LONGEST_SUFFIX = max(len(name) for name in state_object_names(""))
MAX_TABLE_PREFIX = POSTGRESQL_MAX_IDENTIFIER_BYTES - _LONGEST_SUFFIX


def check_table_prefix(where: str, prefix: object) -> str:
    """``prefix`` when it is a plain identifier short enough for every derived name.

    Why so strict: the prefix is spliced into SQL as is (it names tables, it is no
    value), and every destination must keep each derived name whole; PostgreSQL's
    63-byte limit binds first, so it applies everywhere.
    """
    if not isinstance(prefix, str) or not _PREFIX.fullmatch(prefix):
        raise ConfigError(
            f"{where}['table_prefix'] must be a plain identifier matching "
            f"[A-Za-z_][A-Za-z0-9_]* (letters, digits, underscores), got {prefix!r}"
        )
    if len(prefix) > MAX_TABLE_PREFIX:
        longest = max(state_object_names(prefix), key=len)
        raise ConfigError(
            f"{where}['table_prefix'] is {len(prefix)} characters; it may have at most "
            f"{MAX_TABLE_PREFIX} so that every state table and index name (the longest is "
            f"{longest!r}) fits PostgreSQL's {POSTGRESQL_MAX_IDENTIFIER_BYTES}-byte "
            "identifier limit, past which names are cut and state tables collide"
        )
    return prefix


class SqlStateStore:
    """Checkpoint and processed-range rows, read and written through ``execute``.

    ``execute(sql, params)`` runs inside the loader's open transaction (or its own when
    none is open) and returns the rows of a query, if any.
    """

    def __init__(self, dialect: SqlDialect, execute: Execute, prefix: str = "amp_") -> None:
        self.dialect = dialect
        self.execute = execute
        self.prefix = check_table_prefix("state store", prefix)
        self.checkpoints = f"{self.prefix}checkpoints"
        self.history = f"{self.prefix}checkpoint_history"
        self.processed = f"{self.prefix}processed_ranges"

    def _run(self, statement: str, params: Sequence[Any] = ()) -> Rows:
        return self.execute(self.dialect.sql(statement), params)

    # -- tables ----------------------------------------------------------------------

    def _lock_ddl(self) -> None:
        if self.dialect.ddl_lock is not None:
            self._run(self.dialect.ddl_lock)

    def create_checkpoint_tables(self) -> None:
        self._lock_ddl()
        json_type = self.dialect.json_type
        self._run(
            f"CREATE TABLE IF NOT EXISTS {self.checkpoints} ("
            "connection_name VARCHAR(255) NOT NULL, table_name VARCHAR(255) NOT NULL, "
            "worker_id INT NOT NULL DEFAULT 0, "
            f"checkpoint_data {json_type} NOT NULL, timestamp TIMESTAMP NOT NULL, "
            f"metadata {json_type}, "
            "PRIMARY KEY (connection_name, table_name, worker_id))"
        )
        self._run(
            f"CREATE TABLE IF NOT EXISTS {self.history} ("
            "connection_name VARCHAR(255) NOT NULL, table_name VARCHAR(255) NOT NULL, "
            "worker_id INT NOT NULL DEFAULT 0, "
            f"checkpoint_data {json_type} NOT NULL, timestamp TIMESTAMP NOT NULL, "
            f"metadata {json_type}, archived_at TIMESTAMP NOT NULL)"
        )

    def create_processed_ranges_table(self) -> None:
        self._lock_ddl()
        self._run(
            f"CREATE TABLE IF NOT EXISTS {self.processed} ("
            "connection_name VARCHAR(255) NOT NULL, table_name VARCHAR(255) NOT NULL, "
            "network VARCHAR(50) NOT NULL, start_block BIGINT NOT NULL, "
            "end_block BIGINT NOT NULL, end_hash VARCHAR(66) NOT NULL DEFAULT '', "
            "processed_at TIMESTAMP NOT NULL, batch_hash VARCHAR(64), "
            "PRIMARY KEY (connection_name, table_name, network, start_block, end_block, end_hash))"
        )
        self._run(
            f"CREATE INDEX IF NOT EXISTS idx_{self.processed}_lookup ON {self.processed} "
            "(connection_name, table_name, network, start_block)"
        )
        # By end block: the ranges overlapping a microbatch, or reaching past a block,
        # are found without reading every older range of the table (which the lookup
        # index alone does, and a long load keeps a month of them).
        self._run(
            f"CREATE INDEX IF NOT EXISTS idx_{self.processed}_end ON {self.processed} "
            "(connection_name, table_name, network, end_block)"
        )

    def _exists(self, name: str) -> bool:
        """Whether state table ``name`` exists (an operator may list a destination that
        never kept state: that is no state, not an error)."""
        return bool(
            self._run(
                "SELECT 1 FROM information_schema.tables "
                "WHERE table_schema = current_schema() AND table_name = %s",
                (name,),
            )
        )

    @staticmethod
    def _where(connection: str | None, table: str | None) -> tuple[str, tuple[Any, ...]]:
        conditions, params = ["1 = 1"], []
        if connection is not None:
            conditions.append("connection_name = %s")
            params.append(connection)
        if table is not None:
            conditions.append("table_name = %s")
            params.append(table)
        return " AND ".join(conditions), tuple(params)

    # -- checkpoints -----------------------------------------------------------------

    def list_checkpoints(
        self, connection: str | None = None, table: str | None = None
    ) -> list[StoredCheckpoint]:
        if not self._exists(self.checkpoints):
            return []
        where, params = self._where(connection, table)
        rows = self._run(
            f"SELECT connection_name, table_name, worker_id, checkpoint_data "
            f"FROM {self.checkpoints} WHERE {where} "
            "ORDER BY connection_name, table_name, worker_id",
            params,
        )
        return [
            StoredCheckpoint(name, stream, int(worker), _json(data))
            for name, stream, worker, data in rows
        ]

    def load_checkpoint(self, connection: str, table: str, worker_id: int) -> dict[str, Any] | None:
        rows = self._run(
            f"SELECT checkpoint_data FROM {self.checkpoints} "
            "WHERE connection_name = %s AND table_name = %s AND worker_id = %s",
            (connection, table, worker_id),
        )
        if not rows:
            return None
        return _json(rows[0][0])

    def save_checkpoint(
        self,
        connection: str,
        table: str,
        worker_id: int,
        data: dict[str, Any],
        timestamp: datetime,
        archive_previous: bool = False,
    ) -> None:
        """Upsert the current checkpoint; ``archive_previous`` first copies the one it
        replaces into the history table (kept for audit)."""
        if archive_previous:
            self._run(
                f"INSERT INTO {self.history} (connection_name, table_name, worker_id, "
                "checkpoint_data, timestamp, metadata, archived_at) "
                "SELECT connection_name, table_name, worker_id, checkpoint_data, timestamp, "
                f"metadata, %s FROM {self.checkpoints} "
                "WHERE connection_name = %s AND table_name = %s AND worker_id = %s",
                (_naive_utc(timestamp), connection, table, worker_id),
            )
        self._run(*self._upsert(connection, table, CheckpointWrite(worker_id, data, timestamp)))

    def _upsert(
        self, connection: str, table: str, checkpoint: CheckpointWrite
    ) -> tuple[str, tuple[Any, ...]]:
        return (
            f"INSERT INTO {self.checkpoints} (connection_name, table_name, worker_id, "
            "checkpoint_data, timestamp) VALUES (%s, %s, %s, %s, %s) "
            "ON CONFLICT (connection_name, table_name, worker_id) DO UPDATE SET "
            "checkpoint_data = excluded.checkpoint_data, timestamp = excluded.timestamp",
            (
                connection,
                table,
                checkpoint.worker_id,
                json.dumps(checkpoint.data),
                _naive_utc(checkpoint.timestamp),
            ),
        )

    def delete_checkpoint(self, connection: str, table: str, worker_id: int | None = None) -> int:
        if worker_id is None:
            rows = self._run(
                f"DELETE FROM {self.checkpoints} WHERE connection_name = %s AND table_name = %s "
                "RETURNING 1",
                (connection, table),
            )
        else:
            rows = self._run(
                f"DELETE FROM {self.checkpoints} WHERE connection_name = %s AND table_name = %s "
                "AND worker_id = %s RETURNING 1",
                (connection, table, worker_id),
            )
        return len(rows)

    # -- processed ranges ------------------------------------------------------------

    def count_ranges(self, table: str, connection: str | None = None) -> dict[str, int]:
        if not self._exists(self.processed):
            return {}
        where, params = self._where(connection, table)
        rows = self._run(
            f"SELECT connection_name, count(*) FROM {self.processed} WHERE {where} "
            "GROUP BY connection_name ORDER BY connection_name",
            params,
        )
        return {name: int(count) for name, count in rows}

    def _lookup(
        self, connection: str, table: str, block_range: BlockRange
    ) -> tuple[str, tuple[Any, ...]]:
        return (
            "SELECT network, start_block, end_block, end_hash, processed_at, batch_hash "
            f"FROM {self.processed} WHERE connection_name = %s AND table_name = %s "
            "AND network = %s AND start_block <= %s AND end_block >= %s",
            (connection, table, block_range.network, block_range.end, block_range.start),
        )

    def overlapping_ranges(
        self, connection: str, table: str, block_range: BlockRange
    ) -> list[ProcessedRange]:
        """Processed ranges of this network that share a block with ``block_range``."""
        return [
            ProcessedRange(*row) for row in self._run(*self._lookup(connection, table, block_range))
        ]

    def open_range(
        self, connection: str, table: str, block_range: BlockRange, delete: RowsDelete | None
    ) -> list[ProcessedRange]:
        """The lookup and the delete as one statement where the dialect and the loader
        allow: the delete's own condition says "unless this exact range is processed",
        which is what ``open_by_lookup`` decides after a separate lookup."""
        if delete is None or delete.sql is None or not self.dialect.writable_cte:
            found = self.overlapping_ranges(connection, table, block_range)
            return open_by_lookup(found, block_range, delete)
        lookup, lookup_params = self._lookup(connection, table, block_range)
        statement = (
            f"WITH deleted AS ({delete.sql} AND NOT EXISTS (SELECT 1 FROM {self.processed} "
            "WHERE connection_name = %s AND table_name = %s AND network = %s "
            f"AND start_block = %s AND end_block = %s AND end_hash = %s)) {lookup}"
        )
        exact = (
            connection,
            table,
            block_range.network,
            block_range.start,
            block_range.end,
            block_range.hash or "",
        )
        # Not through dialect.sql(): the loader wrote its part in its own style already.
        rows = self.execute(statement, (*delete.params, *exact, *lookup_params))
        return [ProcessedRange(*row) for row in rows]

    def ranges_after(self, connection: str, table: str, network: str, block: int) -> bool:
        # The last entry of the end-block index, whatever the statistics say (a range
        # condition was planned as a scan of every range of the table without them).
        rows = self._run(
            f"SELECT end_block FROM {self.processed} WHERE connection_name = %s "
            "AND table_name = %s AND network = %s ORDER BY end_block DESC LIMIT 1",
            (connection, table, network),
        )
        return bool(rows) and rows[0][0] > block

    def mark_processed(
        self,
        connection: str,
        table: str,
        block_range: BlockRange,
        processed_at: datetime,
        batch_hash: str | None,
    ) -> None:
        self.save_unit(connection, table, [RangeMark(block_range, processed_at, batch_hash)], None)

    def save_unit(
        self,
        connection: str,
        table: str,
        marks: Sequence[RangeMark],
        checkpoint: CheckpointWrite | None,
    ) -> None:
        """One statement for the marks and the checkpoint where the dialect allows (the
        upsert carries the INSERT in WITH), else one each."""
        statements = [
            self._insert_marks(connection, table, marks[first : first + _MARKS_PER_STATEMENT])
            for first in range(0, len(marks), _MARKS_PER_STATEMENT)
        ]
        if checkpoint is not None:
            upsert, params = self._upsert(connection, table, checkpoint)
            if statements and self.dialect.writable_cte:
                insert, marked = statements.pop()
                upsert, params = f"WITH marked AS ({insert}) {upsert}", (*marked, *params)
            statements.append((upsert, params))
        for statement, params in statements:
            self._run(statement, params)

    def _insert_marks(
        self, connection: str, table: str, marks: Sequence[RangeMark]
    ) -> tuple[str, tuple[Any, ...]]:
        values = ", ".join(["(%s, %s, %s, %s, %s, %s, %s, %s)"] * len(marks))
        params: list[Any] = []
        for mark in marks:
            block_range = mark.block_range
            params += (connection, table, block_range.network, block_range.start)
            params += (block_range.end, block_range.hash or "", _naive_utc(mark.processed_at))
            params.append(mark.batch_hash)
        return (
            f"INSERT INTO {self.processed} (connection_name, table_name, network, start_block, "
            f"end_block, end_hash, processed_at, batch_hash) VALUES {values} "
            "ON CONFLICT DO NOTHING",
            tuple(params),
        )

    def forget_ranges_from(self, connection: str, table: str, network: str, start: int) -> int:
        """Remove processed ranges that end at or after ``start`` (a reorg invalidated
        their blocks); returns how many."""
        rows = self._run(
            f"DELETE FROM {self.processed} WHERE connection_name = %s AND table_name = %s "
            "AND network = %s AND end_block >= %s RETURNING 1",
            (connection, table, network, start),
        )
        return len(rows)

    def forget_ranges(self, connection: str, table: str) -> int:
        rows = self._run(
            f"DELETE FROM {self.processed} WHERE connection_name = %s AND table_name = %s "
            "RETURNING 1",
            (connection, table),
        )
        return len(rows)

    def cleanup_old_ranges(self, connection: str, table: str, days: float) -> int:
        cutoff = _naive_utc(datetime.now(UTC) - timedelta(days=days))
        rows = self._run(
            f"DELETE FROM {self.processed} WHERE connection_name = %s AND table_name = %s "
            "AND processed_at < %s RETURNING 1",
            (connection, table, cutoff),
        )
        return len(rows)


def _json(data: Any) -> dict[str, Any]:
    """A JSON column's value: text (DuckDB) or already decoded (psycopg's JSONB)."""
    return json.loads(data) if isinstance(data, str | bytes) else dict(data)


def _naive_utc(moment: datetime) -> datetime:
    """TIMESTAMP columns hold UTC without a zone (the guide's schema)."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment
