"""Helpers of the loop suite: scripted microbatches of a small chain, and the rows a
real PostgreSQL table holds."""

from __future__ import annotations

import psycopg
import pyarrow as pa

from amp.flight.scripted import ScriptedTransport, ScriptItem, data
from amp.flight.scripted import end as marker
from amp.loaders.postgresql import PostgreSQLLoader
from amp.loop import CommitGrouping, Delivery, StreamingLoad
from amp.streaming.checkpoint import CheckpointConfig
from amp.streaming.idempotency import IdempotencyConfig
from amp.streaming.types import BlockRange
from kit import PG_DSN

PG = {"dsn": PG_DSN}
SCHEMA = pa.schema([pa.field("_block_num", pa.uint64()), pa.field("v", pa.int64())])

Admin = psycopg.Connection[tuple[object, ...]]


def block_hash(block: int, fork: int = 0) -> str:
    if block < 0:  # the parent of genesis
        return "0x" + "0" * 64
    return "0x" + f"{block + fork * 1_000_000:064x}"


def block_range(start: int, end: int, fork: int = 0, parent_fork: int | None = None) -> BlockRange:
    parent = fork if parent_fork is None else parent_fork
    return BlockRange("mainnet", start, end, block_hash(end, fork), block_hash(start - 1, parent))


def microbatch(start: int, end: int, fork: int = 0, **kw: int) -> list[ScriptItem]:
    """One message with a row per block (``v`` = block * 10 + fork), then its end."""
    rows = block_range(start, end, fork, **kw)
    blocks = list(range(start, end + 1))
    batch = pa.RecordBatch.from_arrays(
        [pa.array(blocks, pa.uint64()), pa.array([b * 10 + fork for b in blocks], pa.int64())],
        schema=SCHEMA,
    )
    return [data(batch, rows), marker(rows)]


def table_rows(admin: Admin, table: str) -> list[tuple[int, int]]:
    rows = admin.execute(f'SELECT _block_num::bigint, v FROM "{table}" ORDER BY 1').fetchall()
    return [(int(b), int(v)) for b, v in rows]  # type: ignore[call-overload]


def scripted_load(
    table: str,
    scripts: list[list[ScriptItem]],
    grouping: CommitGrouping,
    checkpoint: CheckpointConfig | None = None,
    idempotency: IdempotencyConfig | None = None,
) -> tuple[StreamingLoad, ScriptedTransport, PostgreSQLLoader]:
    """A streaming load of ``scripts`` into ``table`` (checkpoints on unless told)."""
    transport = ScriptedTransport(SCHEMA, scripts)
    loader = PostgreSQLLoader(PG, connection_name="scripted")
    loader.configure_resilience(loader.resilience_config)
    delivery = Delivery(
        loader,
        table,
        checkpoint or CheckpointConfig(enabled=True),
        idempotency or IdempotencyConfig(),
    )
    load = StreamingLoad(
        transport, loader, table, "SELECT * FROM x.y", delivery=delivery, grouping=grouping
    )
    return load, transport, loader


def drain(
    load: StreamingLoad,
    until: int,
    seen: list[int] | None = None,
    admin: Admin | None = None,
    table: str = "",
) -> list[str]:
    """Iterate until ``until`` results; with ``seen``, record the committed row count at
    each result (what a reader of the destination sees when the result arrives)."""
    operations = []
    results = load.results()
    try:
        for result in results:
            assert result.success, result.error
            operations.append(result.metadata["operation"])
            if seen is not None and admin is not None:
                seen.append(len(table_rows(admin, table)))
            if len(operations) == until:
                break
    finally:
        results.close()
        load.target.loader.close()
    return operations
