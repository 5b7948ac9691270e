"""Which column tells the block a row belongs to, so a reorg deletes exactly its rows.

A row's block is its ``_block_num`` (reserved in every Amp table) or ``block_num``. For a
query that selects neither, amp adds ``_amp_block_start``/``_amp_block_end``: the range
of the microbatch that delivered the row, and invalidation works by overlap.
"""

from __future__ import annotations

import pyarrow as pa

from amp.streaming.types import BlockRange

BLOCK_COLUMNS = ("_block_num", "block_num")
RANGE_START = "_amp_block_start"
RANGE_END = "_amp_block_end"


def block_column(schema: pa.Schema) -> str | None:
    """The schema's own block-number column, or None when the query selected none."""
    for name in BLOCK_COLUMNS:
        if name in schema.names and pa.types.is_integer(schema.field(name).type):
            return name
    return None


def with_range_columns(schema: pa.Schema) -> pa.Schema:
    return schema.append(pa.field(RANGE_START, pa.uint64(), nullable=False)).append(
        pa.field(RANGE_END, pa.uint64(), nullable=False)
    )


def add_range_columns(batch: pa.RecordBatch, block_range: BlockRange | None) -> pa.RecordBatch:
    """``batch`` with the microbatch range appended as two constant columns."""
    start = block_range.start if block_range is not None else 0
    end = block_range.end if block_range is not None else 0
    rows = batch.num_rows
    return pa.RecordBatch.from_arrays(
        [
            *batch.columns,
            pa.repeat(pa.scalar(start, pa.uint64()), rows),
            pa.repeat(pa.scalar(end, pa.uint64()), rows),
        ],
        schema=with_range_columns(batch.schema),
    )
