"""A unit's part of one Delta table, and the single predicate its commit deletes by.

Why a predicate that may be wider than the deletes: delta-rs's one commit that both
deletes and appends (a predicate overwrite) requires every appended row to match its
predicate. The unit's delete ranges cover its rows in the usual case (each microbatch's
blocks are deleted before they are written); where they do not, the predicate is
widened only over blocks proven to hold no committed row the loop did not ask to
delete: after a block for which ``has_rows_after`` answered False in this transaction,
or a span whose count of such rows is zero. Otherwise the commit is refused. The
widening never reaches past the unit's own rows' blocks: those are the stream's own
(a parallel worker's rows and deletes stay inside its partition), so a commit that
delta-rs rebases past other workers' concurrent commits never deletes their rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from amp.errors import DestinationError


@dataclass
class Pending:
    """One Delta table's part of the open transaction."""

    batches: list[pa.Table] = field(default_factory=list)
    deletes: list[tuple[str, int, int]] = field(default_factory=list)  # column, start, end
    clear_after: dict[str, int] = field(default_factory=dict)  # column -> proven empty after
    committed_deleted: int = 0  # committed rows the deletes remove (delete_blocks counted)


def between(column: str, start: int, end: int) -> ds.Expression:
    return (ds.field(column) >= start) & (ds.field(column) <= end)


def inside(blocks: pa.ChunkedArray, ranges: list[tuple[int, int]]) -> pa.ChunkedArray:
    """Which of ``blocks`` lie in one of ``ranges``."""
    found = None
    for start, end in ranges:
        hit = pc.and_(pc.greater_equal(blocks, start), pc.less_equal(blocks, end))
        found = hit if found is None else pc.or_(found, hit)
    assert found is not None
    return found


def sql_name(column: str) -> str:
    return '"' + column.replace('"', '""') + '"'


def unit_predicate(
    part: Pending, data: pa.Table | None, count: Callable[[int, int], int], what: str
) -> str:
    """The SQL predicate of ``part``'s deletes, widened to cover ``data`` only where
    proven safe (see the module doc). ``count(low, high)`` counts the committed rows of
    blocks ``low..high`` outside the deletes."""
    column = part.deletes[0][0]
    if any(col != column for col, _, _ in part.deletes):
        raise DestinationError("one unit deleted by two block columns")
    ranges = [(start, end) for _, start, end in part.deletes]
    terms = [f"({sql_name(column)} BETWEEN {start} AND {end})" for start, end in ranges]
    if data is None or not len(data):
        return " OR ".join(terms)
    loose = data.filter(pc.invert(inside(data[column], ranges)))[column]
    if len(loose):
        low, high = int(pc.min(loose).as_py()), int(pc.max(loose).as_py())
        proven = part.clear_after.get(column)
        found = 0 if proven is not None and low > proven else count(low, high)
        if found:
            raise DestinationError(
                f"{what} already holds {found} row(s) of blocks {low}..{high} that this "
                "unit writes without deleting them first; one Delta commit cannot add "
                "these rows without deleting those. Enable idempotency, or reset the stream"
            )
        # Never wider than the unit's own rows: a parallel load's other workers commit
        # rows outside them meanwhile, and delta-rs may rebase this commit past theirs.
        terms.append(f"({sql_name(column)} BETWEEN {low} AND {high})")
    return " OR ".join(terms)
