"""Comparing a destination table with the server's query, one block range at a time.

How: the blocks from the first to the last are walked in windows. For each window both
sides are read (streamed, in batches) and reduced to one (block, row hash) pair per row;
the window's row count and checksum (``amp.verify.rowhash``) are compared first. Only a
window that differs is drilled into: the per-block counts and checksums name the blocks
that differ, and in those blocks the rows are compared as multisets of row hashes:

- a row the server returns more often than the destination holds it: missing;
- a row the destination holds more often than the server returns it: duplicate;
- a row the destination holds that the server does not return at all (a forked block's
  row, an edited value): extra, once per copy.

Why windows sized by rows: memory is bounded by one window's hashes (16 bytes a row a
side), never the table. The next window's width in blocks is adapted to the rows the
last one had, aiming at ``range_rows`` rows (growing at most 8-fold a step, so one dense
region cannot blow the bound up much).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from amp.errors import ConfigError
from amp.loaders.blocks import BLOCK_COLUMNS
from amp.verify.destinations import DestinationSide
from amp.verify.rowhash import Hashes, checksum, comparable, row_hashes
from amp.verify.source import ServerSide

log = logging.getLogger("amp.verify")

Blocks = npt.NDArray[np.uint64]
DEFAULT_RANGE_ROWS = 100_000
_FIRST_WINDOW_BLOCKS = 16
_MAX_GROWTH = 8


@dataclass
class DifferingRange:
    """Consecutive blocks that differ, with what differs in them."""

    first_block: int
    last_block: int
    server_rows: int = 0
    destination_rows: int = 0
    missing_rows: int = 0
    duplicate_rows: int = 0
    extra_rows: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class VerifyReport:
    """The outcome of one verification. ``ranges``: the differing block ranges, in order."""

    table: str
    block_column: str
    columns: list[str]
    skipped_columns: list[str]
    first_block: int | None
    last_block: int | None
    server_rows: int = 0
    destination_rows: int = 0
    windows: int = 0
    ranges: list[DifferingRange] = field(default_factory=list)

    @property
    def missing_rows(self) -> int:
        return sum(span.missing_rows for span in self.ranges)

    @property
    def duplicate_rows(self) -> int:
        return sum(span.duplicate_rows for span in self.ranges)

    @property
    def extra_rows(self) -> int:
        return sum(span.extra_rows for span in self.ranges)

    @property
    def equal(self) -> bool:
        return not self.ranges

    def add_block(self, block: int, difference: DifferingRange) -> None:
        """Count one differing block, extending the last range when it is the next block."""
        last = self.ranges[-1] if self.ranges else None
        if last is None or last.last_block != block - 1:
            last = DifferingRange(block, block)
            self.ranges.append(last)
        last.last_block = block
        last.server_rows += difference.server_rows
        last.destination_rows += difference.destination_rows
        last.missing_rows += difference.missing_rows
        last.duplicate_rows += difference.duplicate_rows
        last.extra_rows += difference.extra_rows

    def as_dict(self) -> dict[str, object]:
        return {
            "equal": self.equal,
            "table": self.table,
            "first_block": self.first_block,
            "last_block": self.last_block,
            "block_column": self.block_column,
            "columns": self.columns,
            "skipped_columns": self.skipped_columns,
            "server_rows": self.server_rows,
            "destination_rows": self.destination_rows,
            "windows": self.windows,
            "missing_rows": self.missing_rows,
            "duplicate_rows": self.duplicate_rows,
            "extra_rows": self.extra_rows,
            "ranges": [span.as_dict() for span in self.ranges],
        }


@dataclass
class _Side:
    """One side's rows of a window: block numbers and row hashes, in arrival order."""

    blocks: Blocks
    hashes: Hashes

    @property
    def rows(self) -> int:
        return len(self.hashes)


def _reduce(batches: Iterator[pa.RecordBatch], block_column: str, columns: list[str]) -> _Side:
    blocks, hashes = [], []
    for batch in batches:
        if batch.num_rows == 0:
            continue
        numbers = batch.column(block_column).cast(pa.uint64())
        blocks.append(np.asarray(numbers.to_numpy(zero_copy_only=False), dtype=np.uint64))
        hashes.append(row_hashes(batch, columns))
    if not blocks:
        empty = np.zeros(0, dtype=np.uint64)
        return _Side(empty, empty)
    return _Side(np.concatenate(blocks), np.concatenate(hashes))


def _counted(side: _Side) -> dict[tuple[int, int], int]:
    """How many times each (block, row hash) occurs."""
    pairs = np.stack([side.blocks, side.hashes], axis=1)
    unique, counts = np.unique(pairs, axis=0, return_counts=True)
    return {(int(b), int(h)): int(n) for (b, h), n in zip(unique, counts, strict=True)}


def _differing_blocks(server: _Side, destination: _Side) -> list[int]:
    """Blocks whose row count or checksum differs between the sides, ascending."""
    totals: dict[int, list[int]] = {}
    for sign, side in ((1, server), (-1, destination)):
        order = np.argsort(side.blocks, kind="stable")
        blocks, hashes = side.blocks[order], side.hashes[order]
        if not len(blocks):
            continue
        starts = np.flatnonzero(np.r_[True, blocks[1:] != blocks[:-1]])
        counts = np.diff(np.r_[starts, len(blocks)])
        with np.errstate(over="ignore"):
            sums = np.add.reduceat(hashes, starts)
        for block, count, total in zip(blocks[starts], counts, sums, strict=True):
            entry = totals.setdefault(int(block), [0, 0])
            entry[0] += sign * int(count)
            entry[1] = (entry[1] + sign * int(total)) % (1 << 64)
    return sorted(block for block, (count, total) in totals.items() if count or total)


def _window_differences(server: _Side, destination: _Side) -> Iterator[tuple[int, DifferingRange]]:
    """(block, what differs in it) for each differing block of a window."""
    blocks = _differing_blocks(server, destination)
    if not blocks:
        return
    wanted = np.array(blocks, dtype=np.uint64)
    server_rows = _counted(_only(server, wanted))
    destination_rows = _counted(_only(destination, wanted))
    found = {block: DifferingRange(block, block) for block in blocks}
    for key in server_rows.keys() | destination_rows.keys():
        expected, held = server_rows.get(key, 0), destination_rows.get(key, 0)
        difference = found[key[0]]
        difference.server_rows += expected
        difference.destination_rows += held
        if held < expected:
            difference.missing_rows += expected - held
        elif expected == 0:
            difference.extra_rows += held
        else:
            difference.duplicate_rows += held - expected
    for block in blocks:
        yield block, found[block]


def _only(side: _Side, blocks: Blocks) -> _Side:
    keep = np.isin(side.blocks, blocks)
    return _Side(side.blocks[keep], side.hashes[keep])


def compared_columns(
    server_schema: pa.Schema, destination_columns: list[str]
) -> tuple[list[str], list[str]]:
    """(columns compared, server columns left out and why), both sides' common columns
    by name; amp's ``_amp_*`` bookkeeping columns are never compared."""
    held = set(destination_columns)
    compared, skipped = [], []
    for server_field in server_schema:
        name = server_field.name
        if name not in held:
            skipped.append(f"{name} (not in the destination)")
        elif not comparable(server_field.type):
            skipped.append(f"{name} ({server_field.type} values have no canonical form)")
        else:
            compared.append(name)
    return sorted(compared), skipped


def choose_block_column(server_schema: pa.Schema, destination_columns: list[str]) -> str:
    for name in BLOCK_COLUMNS:
        if name in server_schema.names and pa.types.is_integer(server_schema.field(name).type):
            if name not in destination_columns:
                raise ConfigError(
                    f"amp verify: the destination table has no {name} column, the query's "
                    "block column; was it loaded from this query?"
                )
            return name
    raise ConfigError(
        "amp verify: the query selects no block number (_block_num or block_num); add "
        "one to the query so rows can be compared block range by block range"
    )


@dataclass
class Verification:
    """One comparison of ``table`` in ``destination`` with ``server``'s query."""

    server: ServerSide
    destination: DestinationSide
    table: str
    first_block: int | None = None
    last_block: int | None = None
    range_rows: int = DEFAULT_RANGE_ROWS
    on_window: Callable[[int, int, int], None] | None = None

    def run(self) -> VerifyReport:
        if self.range_rows < 1:
            raise ConfigError(f"amp verify: --range-rows must be >= 1, got {self.range_rows}")
        destination_columns = self.destination.columns(self.table)
        if not destination_columns:
            raise ConfigError(f"amp verify: the destination has no table {self.table!r}")
        schema = self.server.schema()
        block_column = choose_block_column(schema, destination_columns)
        columns, skipped = compared_columns(schema, destination_columns)
        first, last = self._bounds(block_column)
        report = VerifyReport(self.table, block_column, columns, skipped, first, last)
        if first is None or last is None:
            return report
        width = _FIRST_WINDOW_BLOCKS
        start = first
        while start <= last:
            end = min(last, start + width - 1)
            rows = self._window(report, start, end)
            start = end + 1
            growth = _MAX_GROWTH if rows == 0 else self.range_rows / rows
            width = max(1, int(width * min(_MAX_GROWTH, growth)))
        return report

    def _bounds(self, block_column: str) -> tuple[int | None, int | None]:
        first, last = self.first_block, self.last_block
        if first is not None and last is not None:
            return first, last
        spans = [
            span
            for span in (
                self.server.bounds(block_column),
                self.destination.bounds(self.table, block_column),
            )
            if span is not None
        ]
        if not spans:
            return first, last
        if first is None:
            first = min(span[0] for span in spans)
        if last is None:
            last = max(span[1] for span in spans)
        return first, last

    def _window(self, report: VerifyReport, start: int, end: int) -> int:
        """Compare blocks ``start..end``; the larger side's row count."""
        block_column, columns = report.block_column, report.columns
        server = _reduce(
            self.server.batches(columns, block_column, start, end), block_column, columns
        )
        held = _reduce(
            self.destination.batches(self.table, columns, block_column, start, end),
            block_column,
            columns,
        )
        report.windows += 1
        report.server_rows += server.rows
        report.destination_rows += held.rows
        if self.on_window is not None:
            self.on_window(start, end, max(server.rows, held.rows))
        if server.rows != held.rows or checksum(server.hashes) != checksum(held.hashes):
            log.debug("blocks %d..%d differ; comparing them block by block", start, end)
            for block, difference in _window_differences(server, held):
                report.add_block(block, difference)
        return max(server.rows, held.rows)
