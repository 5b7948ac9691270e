"""Helpers of the fault-injection suite: configs, destinations, oracle checks, triggers.

Everything here talks to real services: PostgreSQL at 127.0.0.1:5432, DuckDB files in
``tmp_path``, the dev server in-process. Faults are driven from the results loop (the
shared ``kit.drive``) or from logging handlers, never by sleeping.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import psycopg
import pyarrow.compute as pc

from amp.client import Client, LoadResult, LoadRun
from amp.devserver import DevServer
from amp.errors import FatalLoadError
from faultlib import RESILIENCE_LOGGER as RESILIENCE_LOGGER
from faultlib import LogTrigger as LogTrigger
from faultlib import log_trigger as log_trigger
from kit import SqlDestination, block_range, collect

Key = tuple[int, int, bytes]


def fast_resilience(
    *,
    max_retries: int = 5,
    circuit_breaker: Mapping[str, Any] | None = None,
    back_pressure: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Resilience settings that keep every backoff and adaptive delay in milliseconds."""
    return {
        "retry": {
            "initial_backoff_ms": 5,
            "max_backoff_ms": 50,
            "jitter": False,
            "max_retries": max_retries,
        },
        "circuit_breaker": dict(circuit_breaker or {"timeout_ms": 50}),
        "back_pressure": dict(back_pressure or {"max_delay_ms": 50}),
    }


# -- destinations -------------------------------------------------------------------------


@dataclass
class Destination(SqlDestination):
    """A destination of the suite; while a DuckDB load runs, its rows are read through
    the loader's own database instance (``keys``)."""

    def connection_config(self, resilience: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
        config = self.loader_config()
        # Faults are injected, and rows counted, microbatch by microbatch: one commit each.
        config["commit_grouping"] = {"enabled": False}
        config.update(extra)
        config["resilience"] = dict(resilience)
        return config

    def configure(
        self, client: Client, name: str, resilience: Mapping[str, Any], **extra: Any
    ) -> None:
        client.configure_connection(name, self.kind, self.connection_config(resilience, **extra))

    def keys(self, table: str, client: Client | None = None, name: str = "") -> list[Key]:
        """Every committed row of ``table`` as (block_num, log_index, block_hash).

        For DuckDB, while a load runs, pass the client and connection name: the rows are
        read through a second connection of the loader's own database instance.
        """
        statement = f'SELECT block_num, log_index, block_hash FROM "{table}"'
        rows: list[tuple[Any, ...]] = []
        loader = client._get_loader(name) if client is not None else None
        if self.kind == "duckdb" and loader is not None and loader.connected:
            cursor = loader.connection.cursor()  # type: ignore[attr-defined]
            try:
                rows = cursor.execute(statement).fetchall()
            finally:
                cursor.close()
        else:
            rows = self.query(statement)
        return [(int(b), int(i), bytes(h)) for b, i, h in rows]

    def count(self, table: str, client: Client | None = None, name: str = "") -> int:
        return len(self.keys(table, client, name))


def add_check_constraint(
    destination: Destination, client: Client, connection: str, table: str, below: int
) -> None:
    """From now on rows of block ``below`` and later violate a CHECK constraint (a
    permanent destination error); the rows already there satisfy it."""
    if destination.kind == "postgresql":
        destination.execute(
            f'ALTER TABLE "{table}" ADD CONSTRAINT only_early CHECK (block_num < {below})'
        )
        return
    # DuckDB cannot add a CHECK constraint to a table: rebuild it with one, through the
    # loader's own connection (between transactions).
    conn: Any = client._get_loader(connection).connection
    columns = conn.execute(f'DESCRIBE "{table}"').fetchall()
    definition = ", ".join(f'"{name}" {kind}' for name, kind, *_ in columns)
    conn.execute(f'CREATE TABLE "{table}_new" ({definition}, CHECK (block_num < {below}))')
    conn.execute(f'INSERT INTO "{table}_new" SELECT * FROM "{table}"')
    conn.execute(f'DROP TABLE "{table}"')
    conn.execute(f'ALTER TABLE "{table}_new" RENAME TO "{table}"')


TERMINATE_SELF = "PERFORM pg_terminate_backend(pg_backend_pid())"
SERIALIZATION_FAILURE = "RAISE EXCEPTION 'injected conflict' USING ERRCODE = '40001'"


class FailOnce:
    """A PostgreSQL row trigger on ``table`` that runs ``action`` (say, terminating its own
    backend) once, at the first row of block ``block``. A sequence counts the firings:
    sequences are not transactional, so the rollback that follows does not re-arm it."""

    def __init__(self, admin: psycopg.Connection[Any], table: str, block: int, action: str) -> None:
        self.admin = admin
        self.table = table
        self.block = block
        self.action = action
        self.sequence = f"{table}_seq"
        self.function = f"{table}_fail"

    def arm(self) -> None:
        self.admin.execute(f'CREATE SEQUENCE "{self.sequence}"')
        self.admin.execute(
            f'CREATE FUNCTION "{self.function}"() RETURNS trigger LANGUAGE plpgsql AS $$ '
            f"BEGIN IF NEW.block_num = {self.block} AND nextval('\"{self.sequence}\"') = 1 "
            f"THEN {self.action}; END IF; RETURN NEW; END $$"
        )
        self.admin.execute(
            f'CREATE TRIGGER fail_once BEFORE INSERT ON "{self.table}" '
            f'FOR EACH ROW EXECUTE FUNCTION "{self.function}"()'
        )

    def fired(self) -> bool:
        row = self.admin.execute(f'SELECT is_called FROM "{self.sequence}"').fetchone()
        return bool(row and row[0])

    def disarm(self) -> None:
        self.admin.execute(f'DROP FUNCTION IF EXISTS "{self.function}"() CASCADE')
        self.admin.execute(f'DROP SEQUENCE IF EXISTS "{self.sequence}"')


# -- the oracle -----------------------------------------------------------------------------


def oracle_keys(srv: DevServer, start: int | None = None, end: int | None = None) -> list[Key]:
    """(block_num, log_index, block_hash) of the canonical logs, optionally of a range."""
    table = srv.chain.canonical_table("logs")
    if start is not None and end is not None:
        block = table.column("block_num")
        mask = pc.and_(pc.greater_equal(block, start), pc.less_equal(block, end))
        table = table.filter(mask)
    data = table.select(["block_num", "log_index", "block_hash"]).to_pydict()
    return list(zip(data["block_num"], data["log_index"], data["block_hash"], strict=True))


def microbatch_message_layout(srv: DevServer, max_interval: int, per_message: int) -> list[int]:
    """FlightData messages of each microbatch of a fresh ``SELECT *`` logs stream: the
    data messages (``per_message`` rows each) plus the ``ranges_complete`` marker."""
    layout = []
    first, head = srv.chain.first_block, srv.chain.head
    for start in range(first, head + 1, max_interval):
        rows = len(oracle_keys(srv, start, min(head, start + max_interval - 1)))
        layout.append(-(-rows // per_message) + 1)
    return layout


# -- driving a streaming load ----------------------------------------------------------------


def expect_fatal(run: LoadRun, srv: DevServer, prefix: str) -> tuple[LoadResult, FatalLoadError]:
    """The load must end with one failed LoadResult whose error starts with ``prefix``,
    then raise FatalLoadError (a RuntimeError) with the same message."""
    driven, error = collect(run, srv.chain)
    results = driven.results
    loaded = sum(r.rows_loaded for r in results)
    assert isinstance(error, FatalLoadError), (
        f"expected FatalLoadError, got {error!r} after {len(results)} result(s) "
        f"({loaded} rows loaded)"
    )
    assert isinstance(error, RuntimeError)
    failed = [r for r in results if not r.success]
    assert len(failed) == 1 and results[-1] is failed[0], [r.metadata for r in results]
    result = failed[0]
    assert result.error is not None and result.error.startswith(prefix), result.error
    assert result.error == str(error)
    assert result.metadata.get("operation") == "fatal"
    return result, error


def assert_contiguous_loads(results: list[LoadResult], srv: DevServer) -> list[dict[str, Any]]:
    """The 'load' results cover first_block..head once: contiguous, non-overlapping."""
    loads = [r for r in results if r.metadata.get("operation") == "load"]
    others = [r.metadata for r in results if r.metadata.get("operation") != "load"]
    assert not others, f"unexpected results besides loads: {others}"
    assert all(r.success for r in loads)
    ranges = [block_range(r) for r in loads]
    assert ranges, "no microbatch was loaded"
    assert ranges[0]["start"] == srv.chain.first_block
    for previous, current in itertools.pairwise(ranges):
        assert current["start"] == previous["end"] + 1, f"{previous} then {current}"
    assert ranges[-1]["end"] == srv.chain.head
    return ranges


# -- logging triggers -------------------------------------------------------------------------


def messages_of(records: list[logging.LogRecord], needle: str) -> list[str]:
    return [r.getMessage() for r in records if needle in r.getMessage()]
