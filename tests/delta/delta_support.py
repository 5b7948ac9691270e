"""Read a Delta destination back with delta-rs and compare it with the canonical chain.

Every test writes under pytest's ``tmp_path`` (``table_path``), so runs never share a
table. Rows are compared as ``(block_num, log_index, block_hash, data)``: the key of a
log, its block's hash (a forked row differs there) and a binary column.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
from deltalake import DeltaTable

from amp.devserver.chain import SimulatedChain
from kit.chain import arrow_rows, assert_equals_canonical

ROW_COLUMNS = ("block_num", "log_index", "block_hash", "data")
TABLE = "logs"


def delta_config(
    table_path: Path | str, *, checkpoint: bool = False, idempotency: bool = False, **extra: Any
) -> dict[str, Any]:
    config: dict[str, Any] = {"table_path": str(table_path), **extra}
    if checkpoint:
        config["checkpoint"] = {"enabled": True}
    if idempotency:
        config["idempotency"] = {"enabled": True}
    return config


def read_table(table_path: Path | str, table: str = TABLE) -> pa.Table:
    """The table's rows at its latest version, read by delta-rs."""
    return DeltaTable(f"{table_path}/{table}").to_pyarrow_table()


def assert_exact(
    table_path: Path | str,
    chain: SimulatedChain,
    table: str = TABLE,
    upto: int | None = None,
    blocks: Any = None,
) -> int:
    """The Delta table holds exactly the canonical logs, each once; returns how many."""
    rows = arrow_rows(read_table(table_path, table), ROW_COLUMNS)
    return assert_equals_canonical(
        rows, chain, "logs", ROW_COLUMNS, 2, f"Delta table {table}", upto=upto, blocks=blocks
    )


def read_with_duckdb(table_path: Path | str, table: str = TABLE) -> pa.Table:
    """The table's rows read by DuckDB's own Parquet reader over the files of the
    latest version as delta-rs lists them (DuckDB's delta extension needs a download;
    its Parquet reader is built in). An independent reader of the data files."""
    files = DeltaTable(f"{table_path}/{table}").file_uris()
    connection = duckdb.connect()
    try:
        return connection.sql(
            "SELECT * FROM read_parquet($files)", params={"files": files}
        ).to_arrow_table()
    finally:
        connection.close()


def amp_commits(table_path: Path | str, table: str = TABLE) -> list[dict[str, Any]]:
    """The commit infos of the table that carry amp's state, oldest first."""
    history = DeltaTable(f"{table_path}/{table}").history()
    return sorted((h for h in history if "amp" in h), key=lambda h: int(h["version"]))
