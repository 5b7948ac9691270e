"""Helpers of the delivery suite: destinations read back, loads driven from their results.

A destination is correct when it holds exactly the dev server's canonical rows
(``SimulatedChain.canonical_table``): no row missing, none twice, none of a forked block.
Loads are driven from their own results, never by sleeping: the dev server sends
nothing until the chain changes, so "the last result ended at the head" is stable.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pyarrow as pa
import pyarrow.compute as pc

from amp.client import Client, LoadResult, LoadRun
from amp.devserver import DevServer
from amp.devserver.chain import SimulatedChain
from amp.streaming.types import hex_hash

PG_HOST = "127.0.0.1"
PG_PORT = 5432
PG_DSN = f"host={PG_HOST} port={PG_PORT} dbname=test user=postgres"
QUERY = "SELECT * FROM eth_firehose.logs"
# The compared columns; the first two are the key of a log row.
COLUMNS = ("block_num", "log_index", "block_hash", "tx_hash", "data", "_block_num")
STATE_TABLES = ("checkpoints", "checkpoint_history", "processed_ranges")
# A load that never catches up (reloading forever) fails instead of hanging.
MAX_RESULTS = 500

Row = tuple[Any, ...]


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


def normalise(value: Any) -> Any:
    """A driver value as plain Python, comparable with Arrow's ``to_pylist``."""
    if isinstance(value, Decimal):
        assert value == value.to_integral_value(), f"non-integral decimal {value}"
        return int(value)
    if isinstance(value, memoryview | bytearray):
        return bytes(value)
    return value


@dataclass
class Destination:
    """One test's destination: a PostgreSQL table (shared database) or a DuckDB file.

    SQL passed to ``query``/``execute`` uses ``%s`` placeholders for both kinds. Every
    PostgreSQL table in ``created`` is dropped at teardown, and the rows of ``table`` in
    the shared ``amp_*`` state tables are deleted.
    """

    kind: str
    table: str
    name: str
    duckdb_path: Path | None = None
    admin: psycopg.Connection[Any] | None = None
    created: list[str] = field(default_factory=list)

    def config(self, **features: Any) -> dict[str, Any]:
        """The connection config with amp's delivery features (``checkpoint=...``)."""
        if self.kind == "postgresql":
            base: dict[str, Any] = {"host": PG_HOST, "port": PG_PORT, "database": "test"}
            base["user"] = "postgres"
        else:
            assert self.duckdb_path is not None
            base = {"database": str(self.duckdb_path)}
        return {**base, **features}

    def query(self, statement: str, params: Sequence[Any] = ()) -> list[Row]:
        if self.kind == "postgresql":
            assert self.admin is not None
            with self.admin.cursor() as cur:
                cur.execute(statement, params)  # type: ignore[arg-type]
                return cur.fetchall() if cur.description is not None else []
        assert self.duckdb_path is not None
        conn = duckdb.connect(str(self.duckdb_path))
        try:
            result = conn.execute(statement.replace("%s", "?"), list(params))
            return result.fetchall() if result.description is not None else []
        finally:
            conn.close()

    def execute(self, statement: str, params: Sequence[Any] = ()) -> None:
        self.query(statement, params)

    def exists(self, table: str) -> bool:
        if self.kind == "postgresql":
            row = self.query("SELECT to_regclass(%s) IS NOT NULL", (table,))[0]
            return bool(row[0])
        rows = self.query(
            "SELECT 1 FROM information_schema.tables "
            "WHERE table_schema = current_schema() AND table_name = %s",
            (table,),
        )
        return bool(rows)

    def columns(self, table: str) -> list[str]:
        rows = self.query(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND table_name = %s "
            "ORDER BY ordinal_position",
            (table,),
        )
        return [row[0] for row in rows]

    def primary_key(self, table: str) -> list[str]:
        rows = self.query(
            "SELECT k.column_name FROM information_schema.table_constraints c "
            "JOIN information_schema.key_column_usage k ON k.constraint_name = c.constraint_name "
            "AND k.table_name = c.table_name "
            "AND k.table_schema = c.table_schema "
            "WHERE c.table_schema = current_schema() AND c.table_name = %s "
            "AND c.constraint_type = 'PRIMARY KEY' "
            "ORDER BY k.ordinal_position",
            (table,),
        )
        return [row[0] for row in rows]

    def rows(self, columns: Sequence[str] = COLUMNS) -> list[Row]:
        quoted = ", ".join(f'"{name}"' for name in columns)
        return [
            tuple(normalise(v) for v in row)
            for row in self.query(f'SELECT {quoted} FROM "{self.table}"')
        ]

    # -- delivery state ----------------------------------------------------------------

    def checkpoint(self, prefix: str = "amp_") -> dict[str, Any] | None:
        """This table's checkpoint row (worker 0) with ``checkpoint_data`` parsed."""
        if not self.exists(f"{prefix}checkpoints"):
            return None
        rows = self.query(
            f"SELECT connection_name, table_name, worker_id, checkpoint_data, timestamp "
            f"FROM {prefix}checkpoints WHERE connection_name = %s AND table_name = %s",
            (self.name, self.table),
        )
        assert len(rows) <= 1, f"several checkpoints for one table and worker: {rows}"
        if not rows:
            return None
        connection, table, worker, data, stamp = rows[0]
        return {
            "connection_name": connection,
            "table_name": table,
            "worker_id": worker,
            "checkpoint_data": json.loads(data) if isinstance(data, str) else data,
            "timestamp": stamp,
        }

    def checkpoint_count(self, prefix: str = "amp_") -> int:
        if not self.exists(f"{prefix}checkpoints"):
            return 0
        rows = self.query(
            f"SELECT count(*) FROM {prefix}checkpoints WHERE table_name = %s", (self.table,)
        )
        return int(rows[0][0])

    def history(self, prefix: str = "amp_") -> list[dict[str, Any]]:
        """This table's archived checkpoints, oldest first (``checkpoint_data`` parsed)."""
        if not self.exists(f"{prefix}checkpoint_history"):
            return []
        rows = self.query(
            f"SELECT checkpoint_data FROM {prefix}checkpoint_history "
            "WHERE connection_name = %s AND table_name = %s ORDER BY archived_at",
            (self.name, self.table),
        )
        return [json.loads(r[0]) if isinstance(r[0], str) else r[0] for r in rows]

    def processed(self, prefix: str = "amp_") -> list[tuple[int, int, str, str | None]]:
        """This table's processed ranges as (start, end, end_hash, batch_hash), sorted."""
        if not self.exists(f"{prefix}processed_ranges"):
            return []
        rows = self.query(
            f"SELECT start_block, end_block, end_hash, batch_hash FROM {prefix}processed_ranges "
            "WHERE connection_name = %s AND table_name = %s AND network = 'mainnet' "
            "ORDER BY start_block, end_block, end_hash",
            (self.name, self.table),
        )
        return [(int(a), int(b), str(h), c) for a, b, h, c in rows]

    def cleanup(self) -> None:
        """Drop this test's PostgreSQL tables and its rows in the shared state tables."""
        if self.kind != "postgresql" or self.admin is None:
            return
        if self.admin.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            self.admin.rollback()
        for state in STATE_TABLES:
            if self.exists(f"amp_{state}"):
                self.execute(f"DELETE FROM amp_{state} WHERE table_name = %s", (self.table,))
        for table in [self.table, *self.created]:
            self.execute(f'DROP TABLE IF EXISTS "{table}"')


# -- comparison with the chain -----------------------------------------------------------


def canonical_rows(chain: SimulatedChain, upto: int | None = None) -> list[Row]:
    """The canonical log rows (``COLUMNS``), of blocks ``<= upto`` when given."""
    table = chain.canonical_table("logs")
    if upto is not None:
        table = table.filter(pc.less_equal(table.column("block_num"), pa.scalar(upto, pa.uint64())))
    values = [table.column(name).to_pylist() for name in COLUMNS]
    return list(zip(*values, strict=True))


def canonical_count(chain: SimulatedChain, start: int, end: int) -> int:
    numbers = chain.canonical_table("logs").column("block_num")
    mask = pc.and_(pc.greater_equal(numbers, start), pc.less_equal(numbers, end))
    return int(pc.sum(pc.cast(mask, pa.int64())).as_py() or 0)


def assert_equals_chain(dest: Destination, chain: SimulatedChain, upto: int | None = None) -> int:
    """The destination holds exactly the canonical rows (of blocks ``<= upto``); returns
    their number."""
    actual = dest.rows()
    expected = canonical_rows(chain, upto)
    keys = Counter(row[:2] for row in actual)
    twice = sorted(key for key, n in keys.items() if n > 1)
    assert not twice, f"{len(twice)} (block_num, log_index) keys loaded twice, e.g. {twice[:5]}"
    have, want = Counter(actual), Counter(expected)
    missing = sorted({row[:2] for row in (want - have).elements()})
    extra = sorted({row[:2] for row in (have - want).elements()})
    assert not missing and not extra, (
        f"{dest.kind} {dest.table} differs from the canonical chain: {len(missing)} rows "
        f"missing (e.g. {missing[:5]}), {len(extra)} unexpected (e.g. {extra[:5]})"
    )
    assert expected, "the comparison needs canonical rows"
    return len(expected)


def assert_processed_canonical(dest: Destination, chain: SimulatedChain) -> None:
    """Every processed range ends at a block that is canonical now (a reorg forgets the
    ranges of the blocks it replaced)."""
    for start, end, end_hash, _ in dest.processed():
        assert end_hash == hex_hash(chain.canonical_hash(end)), (
            f"processed range {start}..{end} still recorded with a forked end hash"
        )


# -- driving loads ------------------------------------------------------------------------


def block_range(result: LoadResult) -> dict[str, Any]:
    ranges = result.metadata.get("block_ranges")
    assert isinstance(ranges, list) and len(ranges) == 1, f"bad block_ranges: {result.metadata}"
    return ranges[0]


def operation(result: LoadResult) -> str:
    return str(result.metadata.get("operation"))


def caught_up(result: LoadResult, chain: SimulatedChain) -> bool:
    """A committed (or skipped) microbatch that ends at the canonical head."""
    if operation(result) not in ("load", "skip_duplicate"):
        return False
    end = block_range(result)
    head = chain.head
    return end["end"] == head and end["hash"] == hex_hash(chain.canonical_hash(head))


Action = Callable[[SimulatedChain], object]
OnResult = Callable[[LoadResult, Client], bool | None]


@dataclass
class Session:
    """One run of a load ("a restart" is a new Session with the same name and config)."""

    client: Client
    run: LoadRun
    results: list[LoadResult] = field(default_factory=list)

    def loads(self) -> list[LoadResult]:
        return [r for r in self.results if operation(r) == "load"]

    def of(self, kind: str) -> list[LoadResult]:
        return [r for r in self.results if operation(r) == kind]


@contextmanager
def session(
    srv: DevServer, dest: Destination, config: Mapping[str, Any], mode: str = "append"
) -> Iterator[Session]:
    """A new client with ``dest`` configured as ``dest.name``, streaming ``QUERY`` into
    ``dest.table``; the run and the client are closed on exit."""
    client = Client(srv.url)
    try:
        client.configure_connection(dest.name, dest.kind, dict(config))
        options = {"mode": mode} if mode != "append" else {}
        run = client.sql(QUERY).load(dest.name, dest.table, stream=True, **options)
        current = Session(client, run)
        try:
            yield current
        finally:
            run.close()
    finally:
        client.close()


def drive(
    current: Session,
    chain: SimulatedChain,
    actions: Sequence[Action] = (),
    on_result: OnResult | None = None,
) -> Session:
    """Iterate the load; each time it has caught up with the head apply the next action,
    return once it caught up after the last one (or when ``on_result`` returns True)."""
    remaining = list(actions)
    for result in current.run:
        current.results.append(result)
        assert result.success, f"the load reported a failure: {result.error}"
        if on_result is not None and on_result(result, current.client):
            return current
        if caught_up(result, chain):
            if not remaining:
                return current
            remaining.pop(0)(chain)
        assert len(current.results) < MAX_RESULTS, "the load does not catch up with the head"
    raise AssertionError("the streaming load ended by itself; it only ends when stopped")


def load_to_head(
    srv: DevServer,
    dest: Destination,
    config: Mapping[str, Any],
    actions: Sequence[Action] = (),
    on_result: OnResult | None = None,
    mode: str = "append",
) -> Session:
    """A whole run: start, drive to the head (through ``actions``), stop."""
    with session(srv, dest, config, mode) as current:
        return drive(current, srv.chain, actions, on_result)
