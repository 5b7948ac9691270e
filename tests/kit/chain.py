"""The dev server's chain as the tests' oracle, and the changes a test makes to it.

``SimulatedChain.canonical_table(name)`` is every canonical row right now; a destination
is correct when it holds exactly those. A ``ChainChange`` applies reorgs and new blocks
as one change (the server observes them together) and records what a load must report
for it: the fork height, the heads before and after, and how many rows the destination
held for the replaced blocks.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from amp.devserver.chain import SimulatedChain


def canonical_count(chain: SimulatedChain, start: int, end: int, table: str = "logs") -> int:
    """Canonical rows of ``table`` in blocks ``start..end`` right now."""
    numbers = chain.canonical_table(table).column("block_num")
    mask = pc.and_(pc.greater_equal(numbers, start), pc.less_equal(numbers, end))
    return int(pc.sum(pc.cast(mask, pa.int64())).as_py() or 0)


class ChainChange:
    """Reorgs and mined blocks, ``("reorg", depth)`` / ``("mine", count)`` in order,
    applied as one change of the chain when called."""

    def __init__(self, *steps: tuple[str, int], table: str = "logs") -> None:
        assert all(kind in ("reorg", "mine") for kind, _ in steps), steps
        self.steps = steps
        self.table = table
        self.fork_height = -1  # the lowest block replaced (-1: none)
        self.old_head = -1
        self.new_head = -1
        self.rows_replaced = 0

    def __repr__(self) -> str:
        return f"ChainChange{self.steps}"

    def __call__(self, chain: SimulatedChain) -> None:
        with chain.changed:  # one observation for the server
            self.old_head = head = chain.head
            forks = []
            for kind, count in self.steps:
                if kind == "reorg":
                    forks.append(head - count + 1)
                else:
                    head += count
            if forks:
                self.fork_height = min(forks)
                self.rows_replaced = canonical_count(
                    chain, self.fork_height, self.old_head, self.table
                )
            for kind, count in self.steps:
                if kind == "reorg":
                    chain.reorg(count)
                elif count:
                    chain.mine(count)
            self.new_head = chain.head

    def invalidated(self, max_interval: int) -> tuple[int, int]:
        """Protocol §3's invalidated range, ``[incoming.start, max(incoming.end,
        last.end)]``, for a load that had caught up and a server sending microbatches of
        at most ``max_interval`` blocks."""
        incoming_end = min(self.new_head, self.fork_height + max_interval - 1)
        return self.fork_height, max(incoming_end, self.old_head)


class Reorg(ChainChange):
    """A reorg of ``depth`` blocks, then ``mine`` new blocks."""

    def __init__(self, depth: int, mine: int = 0, table: str = "logs") -> None:
        super().__init__(("reorg", depth), ("mine", mine), table=table)
        self.depth = depth
        self.mine = mine


class Mine(ChainChange):
    def __init__(self, count: int) -> None:
        super().__init__(("mine", count))
        self.count = count


# -- rows as plain Python ---------------------------------------------------------------

Row = tuple[Any, ...]
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def epoch_ns(value: datetime) -> int:
    """A timezone-aware datetime as integer nanoseconds since the Unix epoch."""
    assert value.tzinfo is not None, f"timestamp {value!r} has no time zone"
    return (value - _EPOCH) // timedelta(microseconds=1) * 1000


def normalise(value: Any) -> Any:
    """A destination's or Arrow's value as plain Python, so that PostgreSQL's, DuckDB's
    and Arrow's representations compare: integral decimals → int, binaries → bytes,
    timestamps → nanoseconds since the epoch."""
    if isinstance(value, bool):
        return value
    if isinstance(value, Decimal):
        assert value == value.to_integral_value(), f"non-integral decimal {value}"
        return int(value)
    if isinstance(value, memoryview | bytearray):
        return bytes(value)
    if isinstance(value, datetime):
        return epoch_ns(value)
    return value


def column_values(column: pa.ChunkedArray) -> list[Any]:
    if pa.types.is_timestamp(column.type):
        column = pc.cast(column.cast(pa.timestamp("ns", tz=column.type.tz)), pa.int64())
    return [normalise(value) for value in column.to_pylist()]


def arrow_rows(table: pa.Table, columns: Sequence[str]) -> list[Row]:
    """Rows of an Arrow table projected on ``columns``, normalised."""
    values = [column_values(table.column(name)) for name in columns]
    return list(zip(*values, strict=True)) if values else []


Spans = tuple[int, int] | Sequence[tuple[int, int]]


def canonical_rows(
    chain: SimulatedChain,
    table: str,
    columns: Sequence[str],
    upto: int | None = None,
    blocks: Spans | None = None,
) -> list[Row]:
    """The canonical rows of ``table``, normalised: of blocks ``<= upto`` when given, and
    of blocks inside ``blocks`` (one ``(first, last)`` span or several: what a parallel
    load's partitions hold) when given."""
    rows = chain.canonical_table(table)
    numbers = rows.column("block_num")
    if upto is not None:
        rows = rows.filter(pc.less_equal(numbers, pa.scalar(upto, pa.uint64())))
        numbers = rows.column("block_num")
    if blocks is not None:
        spans = [blocks] if isinstance(blocks, tuple) else list(blocks)
        keep = pa.array([False] * rows.num_rows)
        for first, last in spans:
            inside = pc.and_(pc.greater_equal(numbers, first), pc.less_equal(numbers, last))
            keep = pc.or_(keep, inside)
        rows = rows.filter(keep)
    return arrow_rows(rows, columns)


# -- comparison -------------------------------------------------------------------------


def _short(value: Any) -> Any:
    if isinstance(value, bytes) and len(value) > 12:
        return value[:12].hex() + "…"
    if isinstance(value, str) and len(value) > 24:
        return value[:24] + "…"
    return value


def describe_difference(actual: list[Row], expected: list[Row], columns: Sequence[str]) -> str:
    actual_counts, expected_counts = Counter(actual), Counter(expected)
    missing = list((expected_counts - actual_counts).elements())
    extra = list((actual_counts - expected_counts).elements())
    lines = [f"{len(missing)} canonical row(s) missing, {len(extra)} unexpected row(s)"]
    for label, rows in (("missing", missing), ("unexpected", extra)):
        for row in sorted(rows, key=repr)[:3]:
            shown = {name: _short(value) for name, value in zip(columns, row, strict=True)}
            lines.append(f"  {label}: {shown}")
    return "\n".join(lines)


def assert_rows_equal(
    actual: list[Row], expected: list[Row], columns: Sequence[str], what: str
) -> None:
    """Equal as multisets, with a readable account of the first differences."""
    assert len(actual) == len(expected), (
        f"{what}: {len(actual)} rows, the canonical chain has {len(expected)}\n"
        + describe_difference(actual, expected, columns)
    )
    assert Counter(actual) == Counter(expected), f"{what}: rows differ\n" + describe_difference(
        actual, expected, columns
    )


def assert_copies(rows: list[Row], key_width: int, what: str, copies: int = 1) -> None:
    """Each key (the first ``key_width`` values) is there exactly ``copies`` times."""
    keys = Counter(row[:key_width] for row in rows)
    wrong = sorted((key, n) for key, n in keys.items() if n != copies)
    assert not wrong, (
        f"{what}: {len(wrong)} key(s) not present exactly {copies} time(s), e.g. {wrong[:5]}"
    )


def assert_equals_canonical(
    actual: list[Row],
    chain: SimulatedChain,
    table: str,
    columns: Sequence[str],
    key_width: int,
    what: str,
    upto: int | None = None,
    copies: int = 1,
    blocks: Spans | None = None,
) -> int:
    """``actual`` (rows projected on ``columns``, normalised) are exactly the canonical
    rows of ``table`` (of blocks ``<= upto``, inside ``blocks``), ``copies`` times each:
    none missing, none extra, no key (the first ``key_width`` columns) more often.
    Returns the number of canonical rows."""
    expected = canonical_rows(chain, table, columns, upto, blocks)
    assert expected, "the comparison needs canonical rows"
    assert_copies(actual, key_width, what, copies)
    assert_rows_equal(actual, expected * copies, columns, what)
    return len(expected)
