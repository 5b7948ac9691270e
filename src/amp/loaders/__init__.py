"""Destinations amp loads into, found by name (``'postgresql'``, ``'duckdb'``, ...).

Your own destination: subclass ``amp.loaders.base.DataLoader`` and register it with
``register_loader('name')`` (docs/loaders.md).
"""

from __future__ import annotations

from typing import Any

from amp.loaders.base import DataLoader, LoadMode
from amp.loaders.duckdb import DuckDBLoader
from amp.loaders.iceberg.loader import IcebergLoader
from amp.loaders.kafka import KafkaLoader
from amp.loaders.postgresql import PostgreSQLLoader
from amp.loaders.redis import RedisLoader
from amp.loaders.registry import LOADERS, loader_class, register_built_in, register_loader

__all__ = [
    "LOADERS",
    "DataLoader",
    "LoadMode",
    "describe_destination",
    "loader_class",
    "register_loader",
]

for _built_in in (PostgreSQLLoader, DuckDBLoader, RedisLoader, KafkaLoader, IcebergLoader):
    register_built_in(_built_in)

try:  # the 'delta' extra (delta-rs)
    from amp.loaders.delta.loader import DeltaLakeLoader as _Delta
except ImportError as _missing:
    if _missing.name != "deltalake":
        raise
    from amp.loaders.delta.extra import DeltaLakeNotInstalled as _Delta  # type: ignore[assignment]
register_built_in(_Delta)


def describe_destination(loader: DataLoader[Any], table: str) -> str:
    """Where a load's rows go, for the line logged at its start: the destination with its
    host, port and database (defaults resolved) and the table; never a password."""
    return f"loading into {loader.describe()}, {loader.describe_table(table)}"
