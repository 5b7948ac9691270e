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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from amp.streaming.state import ProcessedRange
from amp.streaming.types import BlockRange

Rows = list[tuple[Any, ...]]
Execute = Callable[[str, Sequence[Any]], Rows]


@dataclass(frozen=True)
class SqlDialect:
    """What differs between the SQL destinations for the state tables."""

    name: str
    placeholder: str  # '%s' (psycopg) or '?' (duckdb)
    json_type: str  # 'JSONB' or 'JSON'

    def sql(self, statement: str) -> str:
        """``statement`` written with ``%s`` placeholders, in this dialect."""
        return statement if self.placeholder == "%s" else statement.replace("%s", self.placeholder)


POSTGRESQL = SqlDialect("postgresql", "%s", "JSONB")
DUCKDB = SqlDialect("duckdb", "?", "JSON")


def _valid_prefix(prefix: str) -> str:
    if not prefix.replace("_", "").isalnum() or not prefix[0].isalpha():
        raise ValueError(
            f"table_prefix must be letters, digits and underscores starting with a letter, "
            f"got {prefix!r}"
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
        self.prefix = _valid_prefix(prefix)
        self.checkpoints = f"{self.prefix}checkpoints"
        self.history = f"{self.prefix}checkpoint_history"
        self.processed = f"{self.prefix}processed_ranges"

    def _run(self, statement: str, params: Sequence[Any] = ()) -> Rows:
        return self.execute(self.dialect.sql(statement), params)

    # -- tables ----------------------------------------------------------------------

    def create_checkpoint_tables(self) -> None:
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

    # -- checkpoints -----------------------------------------------------------------

    def load_checkpoint(self, connection: str, table: str, worker_id: int) -> dict[str, Any] | None:
        rows = self._run(
            f"SELECT checkpoint_data FROM {self.checkpoints} "
            "WHERE connection_name = %s AND table_name = %s AND worker_id = %s",
            (connection, table, worker_id),
        )
        if not rows:
            return None
        data = rows[0][0]
        return json.loads(data) if isinstance(data, str | bytes) else dict(data)

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
        self._run(
            f"INSERT INTO {self.checkpoints} (connection_name, table_name, worker_id, "
            "checkpoint_data, timestamp) VALUES (%s, %s, %s, %s, %s) "
            "ON CONFLICT (connection_name, table_name, worker_id) DO UPDATE SET "
            "checkpoint_data = excluded.checkpoint_data, timestamp = excluded.timestamp",
            (connection, table, worker_id, json.dumps(data), _naive_utc(timestamp)),
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

    def overlapping_ranges(
        self, connection: str, table: str, block_range: BlockRange
    ) -> list[ProcessedRange]:
        """Processed ranges of this network that share a block with ``block_range``."""
        rows = self._run(
            f"SELECT network, start_block, end_block, end_hash, processed_at, batch_hash "
            f"FROM {self.processed} WHERE connection_name = %s AND table_name = %s "
            "AND network = %s AND start_block <= %s AND end_block >= %s",
            (connection, table, block_range.network, block_range.end, block_range.start),
        )
        return [ProcessedRange(*row) for row in rows]

    def mark_processed(
        self,
        connection: str,
        table: str,
        block_range: BlockRange,
        processed_at: datetime,
        batch_hash: str | None,
    ) -> None:
        self._run(
            f"INSERT INTO {self.processed} (connection_name, table_name, network, start_block, "
            "end_block, end_hash, processed_at, batch_hash) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
            (
                connection,
                table,
                block_range.network,
                block_range.start,
                block_range.end,
                block_range.hash or "",
                _naive_utc(processed_at),
                batch_hash,
            ),
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


def _naive_utc(moment: datetime) -> datetime:
    """TIMESTAMP columns hold UTC without a zone (the guide's schema)."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment
