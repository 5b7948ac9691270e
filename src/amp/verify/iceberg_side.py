"""``amp verify`` of an Iceberg table: its rows of a block range, read with pyiceberg.

Why through a row filter: pyiceberg prunes data files by their column statistics, so a
range is read from the files that can hold its blocks only, projected on the compared
columns; the table's block bounds come from the same statistics (manifests), not from
reading rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from amp.errors import DestinationError
from amp.loaders.iceberg.loader import IcebergLoader, blocks_between


class IcebergSide:
    """One Iceberg table's catalog, read-only (a load may run meanwhile: each read sees
    the table's latest committed snapshot)."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.loader = IcebergLoader(config, "verify")
        self.loader.connect()

    def columns(self, table: str) -> list[str]:
        found = self.loader.table(table, refresh=True)
        return [] if found is None else [column.name for column in found.schema().columns]

    def bounds(self, table: str, block_column: str) -> tuple[int, int] | None:
        found = self.loader.table(table, refresh=True)
        if found is None or found.current_snapshot() is None:
            return None
        files = found.inspect.files()
        if files.num_rows == 0:
            return None
        metrics = files.column("readable_metrics").combine_chunks().field(block_column)
        lows = [value for value in metrics.field("lower_bound").to_pylist() if value is not None]
        highs = [value for value in metrics.field("upper_bound").to_pylist() if value is not None]
        return (int(min(lows)), int(max(highs))) if lows and highs else None

    def batches(
        self, table: str, columns: list[str], block_column: str, first: int, last: int
    ) -> Iterator[pa.RecordBatch]:
        found = self.loader.table(table, refresh=True)
        if found is None:
            raise DestinationError(f"Iceberg table {table} does not exist")
        scan = found.scan(
            row_filter=blocks_between(block_column, first, last), selected_fields=tuple(columns)
        )
        yield from scan.to_arrow_batch_reader()

    def close(self) -> None:
        self.loader.close()
