"""Idempotency: every microbatch range is applied once, even when the server replays it.

A processed range is identified by network, start, end *and the hash of its end block*:
after a reorg the same numbers with a new hash are new data, not a duplicate.

Modes. amp always uses the strongest mode the destination offers; ``mode`` (the guide's
key) is accepted for compatibility and checked, never a way to ask for less:
- ``transactional`` (PostgreSQL, DuckDB, Kafka producer transactions): duplicate check,
  rows, processed-range mark and checkpoint commit in one destination transaction;
  nothing can be half-applied.
- ``tracking`` (Redis): rows are written under deterministic keys (network, range, end
  hash, row position), so a replay after a crash rewrites the same keys; the range is
  marked only after the rows are durable.
``'auto'`` and ``'tracking'`` take the destination's mode (``tracking`` on a
transactional destination still marks inside the transaction: that is tracking and
more); ``'transactional'`` on a destination without transactions is a ConfigError at
configure time, since amp cannot give what it asks for.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import duckdb
import pyarrow as pa

from amp.config import check_keys, number_at_least, typed
from amp.errors import ConfigError
from amp.streaming.state_sql import DUCKDB, POSTGRESQL, SqlStateStore, check_table_prefix

log = logging.getLogger("amp.streaming.idempotency")

MODES = ("auto", "transactional", "tracking")


@dataclass(frozen=True)
class IdempotencyConfig:
    """``config['idempotency']``: off unless ``enabled``."""

    enabled: bool = False
    mode: str = "auto"
    table_prefix: str = "amp_"
    verification_hash: bool = False
    cleanup_days: float = 30

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> IdempotencyConfig:
        if data is None:
            return cls()
        check_keys(
            "idempotency config",
            data,
            ("enabled", "mode", "table_prefix", "verification_hash", "cleanup_days"),
        )
        config = cls(**data)
        where = "idempotency config"
        typed(where, "enabled", config.enabled, bool)
        typed(where, "verification_hash", config.verification_hash, bool)
        check_table_prefix(where, config.table_prefix)
        number_at_least(where, "cleanup_days", config.cleanup_days, 0)
        if config.mode not in MODES:
            raise ConfigError(
                f"idempotency config['mode'] must be one of {', '.join(MODES)}, got {config.mode!r}"
            )
        return config

    def mode_in_effect(self, destination: str, transactional_destination: bool) -> str:
        """The mode amp uses on ``destination`` (see the module docstring); ConfigError
        when ``mode`` asks for transactions the destination does not have."""
        if self.mode == "transactional" and not transactional_destination:
            raise ConfigError(
                f"idempotency config['mode'] is 'transactional', but the {destination} "
                "destination has no transactions: amp keeps it exactly-once by 'tracking' "
                "(deterministic keys, the range marked after the rows). Set mode to "
                "'auto' or 'tracking'"
            )
        return "transactional" if transactional_destination else "tracking"


def batch_hash(batches: Iterable[pa.RecordBatch]) -> str:
    """SHA-256 of a microbatch's rows, independent of how the server split them."""
    batches = list(batches)
    digest = hashlib.sha256()
    if batches:
        table = pa.Table.from_batches(batches).combine_chunks()
        for batch in table.to_batches():
            digest.update(batch.serialize())
    return digest.hexdigest()


class DatabaseProcessedRangesStore:
    """The processed-ranges table in a PostgreSQL (psycopg) or DuckDB connection.

    The guide's manual cleanup::

        store = DatabaseProcessedRangesStore(config, db_connection)
        deleted = store.cleanup_old_ranges('my_postgres', 'blocks', days=30)
    """

    def __init__(self, config: Mapping[str, Any] | IdempotencyConfig | None, db_connection: Any):
        settings = (
            config
            if isinstance(config, IdempotencyConfig)
            else IdempotencyConfig.from_dict(
                {
                    k: v
                    for k, v in (config or {}).items()
                    if k in IdempotencyConfig.__dataclass_fields__
                }
            )
        )
        self.connection = db_connection
        dialect = DUCKDB if isinstance(db_connection, duckdb.DuckDBPyConnection) else POSTGRESQL
        self.state = SqlStateStore(dialect, self._execute, settings.table_prefix)

    def _execute(self, statement: str, params: Any) -> list[tuple[Any, ...]]:
        if self.state.dialect is DUCKDB:
            return self.connection.execute(statement, list(params)).fetchall()
        with self.connection.cursor() as cursor:
            cursor.execute(statement, params)
            rows = cursor.fetchall() if cursor.description is not None else []
        if not getattr(self.connection, "autocommit", True):
            self.connection.commit()
        return rows

    def cleanup_old_ranges(self, connection_name: str, table_name: str, days: float) -> int:
        """Delete processed ranges older than ``days``; returns how many."""
        deleted = self.state.cleanup_old_ranges(connection_name, table_name, days)
        log.info(
            "Deleted %d processed ranges older than %s days for connection=%s, table=%s",
            deleted,
            days,
            connection_name,
            table_name,
        )
        return deleted
