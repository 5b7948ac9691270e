"""The destination table of one load, and how its rows record their block."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from amp.errors import FatalLoadError
from amp.loaders.base import DataLoader, LoadMode
from amp.loaders.blocks import RANGE_END, add_range_columns, block_column, with_range_columns
from amp.streaming.state import RowsDelete
from amp.streaming.types import BlockRange


@dataclass
class Bounds:
    """The blocks one worker of a parallel load owns: ``lower..upper`` inclusive,
    ``upper=None`` for the live worker. Its rows outside are dropped and its deletes
    never reach past them, so workers whose microbatches overlap at a seam never touch
    each other's rows."""

    lower: int
    upper: int | None

    def clip(self, start: int, end: int) -> tuple[int, int] | None:
        """``start..end`` cut to the bounds, None when nothing is left."""
        low = max(start, self.lower)
        high = end if self.upper is None else min(end, self.upper)
        return (low, high) if low <= high else None

    def reached(self, block: int) -> bool:
        """Whether a committed position at ``block`` completes the bounds."""
        return self.upper is not None and block >= self.upper


@dataclass
class Target:
    """Where a load writes: ``column`` is the block column reorgs delete by; a query
    without one gets ``_amp_block_start``/``_amp_block_end`` (``adds_range``)."""

    loader: DataLoader[Any]
    table: str
    mode: LoadMode
    schema: pa.Schema | None = None
    column: str = ""
    adds_range: bool = False
    bounds: Bounds | None = None

    def prepare(self, schema: pa.Schema) -> None:
        """Create or check the table for rows of ``schema`` (the loader's own transaction)."""
        own = block_column(schema)
        if own is None and self.bounds is not None:
            raise FatalLoadError(
                "FATAL: a parallel load splits the query's rows by block, but the query "
                "selects no block column (_block_num or block_num); add block_num to the "
                "SELECT list"
            )
        self.adds_range = own is None
        self.column = own if own is not None else RANGE_END
        table_schema = with_range_columns(schema) if self.adds_range else schema
        self.loader.prepare_table(self.table, table_schema, self.mode, self.column)
        self.schema = schema

    def rows(self, batch: pa.RecordBatch, block_range: BlockRange | None) -> pa.RecordBatch:
        if self.adds_range:
            return add_range_columns(batch, block_range)
        bounds = self.bounds
        if bounds is None or batch.num_rows == 0:
            return batch
        if block_range is not None and bounds.clip(block_range.start, block_range.end) == (
            block_range.start,
            block_range.end,
        ):
            return batch  # the whole microbatch is inside: nothing to drop
        blocks = batch.column(self.column)
        keep = pc.greater_equal(blocks, pa.scalar(bounds.lower, blocks.type))
        if bounds.upper is not None:
            keep = pc.and_(keep, pc.less_equal(blocks, pa.scalar(bounds.upper, blocks.type)))
        return batch.filter(keep)

    def rows_delete(self, start: int, end: int) -> RowsDelete | None:
        """The loader's delete of the rows of ``start..end`` this load owns, for the
        state store to run when it opens a microbatch; None when it owns none of them."""
        span = (start, end) if self.bounds is None else self.bounds.clip(start, end)
        if span is None:
            return None
        return self.loader.rows_delete(self.table, self.column, span[0], span[1])

    def owned_range(self, block_range: BlockRange) -> BlockRange | None:
        """The blocks of ``block_range`` this load owns: all of them, or for a parallel
        worker those inside its bounds (None: none). The hash stays the microbatch's:
        it identifies the content the owned part depends on. Why: a worker records as
        processed only blocks it owns, so two workers never take each other's
        microbatch for a duplicate (two streams that start at the dataset's first block
        send the same microbatches)."""
        if self.bounds is None:
            return block_range
        span = self.bounds.clip(block_range.start, block_range.end)
        if span is None:
            return None
        if span == (block_range.start, block_range.end):
            return block_range
        return replace(block_range, start=span[0], end=span[1])

    def written_range(self, block_range: BlockRange) -> BlockRange:
        """The blocks whose rows a write of ``block_range`` holds (``owned_range``, with
        the end block's hash only when the end is kept). Why: a destination that records
        which blocks a write covers (Kafka retracts what a covered block no longer has)
        must never claim a neighbouring worker's blocks at a seam."""
        owned = self.owned_range(block_range)
        if owned is None:
            return block_range  # no row of it is written
        return owned if owned.end == block_range.end else replace(owned, hash=None)

    def delete_blocks(self, start: int, end: int) -> int:
        """Delete the rows of blocks ``start..end`` this load owns (all without bounds)."""
        span = (start, end) if self.bounds is None else self.bounds.clip(start, end)
        if span is None:
            return 0
        return self.loader.delete_blocks(self.table, self.column, span[0], span[1])
