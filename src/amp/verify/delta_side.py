"""``amp verify``'s reader of a Delta table (``--to deltalake:///path``), by block range.

Why delta-rs's dataset: it prunes the table's files by their statistics, so reading one
block range opens only the files that can hold it, and rows stream in batches. The
table's latest version is read once, when verify opens it, so every range is compared
against one snapshot even while a load keeps committing.
"""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from amp.errors import DestinationError

_BATCH_ROWS = 50_000


class DeltaSide:
    """The Delta tables under ``table_path`` (table ``t`` is ``<table_path>/t``)."""

    def __init__(self, table_path: str) -> None:
        self.table_path = table_path.rstrip("/")
        self._datasets: dict[str, ds.Dataset | None] = {}

    def _dataset(self, table: str) -> ds.Dataset | None:
        if table not in self._datasets:
            from deltalake import DeltaTable
            from deltalake.exceptions import DeltaError

            location = f"{self.table_path}/{table}"
            try:
                found = (
                    DeltaTable(location).to_pyarrow_dataset()
                    if DeltaTable.is_deltatable(location)
                    else None
                )
            except DeltaError as exc:
                raise DestinationError(f"cannot read the Delta table {location}: {exc}") from exc
            self._datasets[table] = found
        return self._datasets[table]

    def columns(self, table: str) -> list[str]:
        dataset = self._dataset(table)
        return [] if dataset is None else list(dataset.schema.names)

    def bounds(self, table: str, block_column: str) -> tuple[int, int] | None:
        dataset = self._dataset(table)
        if dataset is None:
            return None
        blocks = dataset.to_table(columns=[block_column])[block_column]
        if not len(blocks):
            return None
        low, high = pc.min_max(blocks).values()
        return int(low.as_py()), int(high.as_py())

    def batches(
        self, table: str, columns: list[str], block_column: str, first: int, last: int
    ) -> Iterator[pa.RecordBatch]:
        dataset = self._dataset(table)
        if dataset is None:
            return
        where = (ds.field(block_column) >= first) & (ds.field(block_column) <= last)
        yield from dataset.to_batches(columns=columns, filter=where, batch_size=_BATCH_ROWS)

    def close(self) -> None:
        self._datasets.clear()
