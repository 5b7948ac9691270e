"""The limit the benchmarks measure amp against: a bare binary COPY of Arrow rows, converted
as amp's PostgreSQL loader converts them (pgpq + psycopg, nothing around it)."""

from __future__ import annotations

from typing import Any

import pgpq
import psycopg
import pyarrow as pa

from amp.loaders.postgresql import _TableWriter


def copy_batches(
    conn: psycopg.Connection[Any], table: str, writer: _TableWriter, batches: list[pa.RecordBatch]
) -> None:
    """One binary COPY of ``batches`` (already converted by ``writer``) into ``table``, in
    the connection's open transaction."""
    encoder = pgpq.ArrowToPostgresBinaryEncoder(writer.copy_schema)
    with conn.cursor() as cur, cur.copy(f"COPY {table} FROM STDIN WITH (FORMAT BINARY)") as out:
        out.write(encoder.write_header())
        for batch in batches:
            out.write(encoder.write_batch(batch))
        out.write(encoder.finish())
