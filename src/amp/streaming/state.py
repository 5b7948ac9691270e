"""What delivery state a destination keeps: the interface the pipeline writes through.

A loader that can keep checkpoints and processed ranges offers ``state_store(prefix)``
returning a ``StateStore``; its writes join the loader's open transaction (or its
MULTI/EXEC, or its producer transaction), so state and rows land together.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from amp.streaming.types import BlockRange


@dataclass(frozen=True)
class ProcessedRange:
    """A microbatch range recorded as processed (with the hash of its end block)."""

    network: str
    start: int
    end: int
    end_hash: str
    processed_at: datetime
    batch_hash: str | None

    @staticmethod
    def record(
        block_range: BlockRange, processed_at: datetime, batch_hash: str | None
    ) -> dict[str, Any]:
        """The JSON document of a processed range, for stores that keep documents."""
        return {
            "network": block_range.network,
            "start": block_range.start,
            "end": block_range.end,
            "end_hash": block_range.hash or "",
            "processed_at": processed_at.isoformat(),
            "batch_hash": batch_hash,
        }

    def is_exactly(self, block_range: BlockRange) -> bool:
        """Whether this is the record of ``block_range``: numbers and end hash."""
        return (self.network, self.start, self.end, self.end_hash) == (
            block_range.network,
            block_range.start,
            block_range.end,
            block_range.hash or "",
        )

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> ProcessedRange:
        return cls(
            record["network"],
            record["start"],
            record["end"],
            record["end_hash"],
            datetime.fromisoformat(record["processed_at"]),
            record.get("batch_hash"),
        )


@dataclass(frozen=True)
class RangeMark:
    """A microbatch range to record as processed (``batch_hash``: None unless verified)."""

    block_range: BlockRange
    processed_at: datetime
    batch_hash: str | None = None


@dataclass(frozen=True)
class CheckpointWrite:
    """A checkpoint document to upsert for one worker."""

    worker_id: int
    data: dict[str, Any]
    timestamp: datetime


@dataclass(frozen=True)
class RowsDelete:
    """Deleting the destination rows of one microbatch's blocks, as the state store may
    run it: ``run()`` deletes them (returning how many); ``sql``, where the destination
    speaks SQL, is the same DELETE as one statement in the loader's own placeholder
    style, ``params`` its values, so that a SQL store can join it to its own statement
    (one round trip instead of two)."""

    run: Callable[[], int]
    sql: str | None = None
    params: tuple[Any, ...] = ()


@dataclass(frozen=True)
class StoredCheckpoint:
    """A committed checkpoint document and the stream it belongs to, as listed for an
    operator (``amp checkpoints list``)."""

    connection: str
    table: str
    worker_id: int
    data: dict[str, Any]


class StateStore(Protocol):
    def create_checkpoint_tables(self) -> None: ...

    def list_checkpoints(
        self, connection: str | None = None, table: str | None = None
    ) -> list[StoredCheckpoint]:
        """Every committed checkpoint, of ``connection`` and ``table`` when given (None:
        any), ordered by connection, table and worker. Reads committed state only."""
        ...

    def count_ranges(self, table: str, connection: str | None = None) -> dict[str, int]:
        """How many processed ranges ``table`` has, per connection (only ``connection``
        when given); committed state only."""
        ...

    def create_processed_ranges_table(self) -> None: ...

    def load_checkpoint(
        self, connection: str, table: str, worker_id: int
    ) -> dict[str, Any] | None: ...

    def save_checkpoint(
        self,
        connection: str,
        table: str,
        worker_id: int,
        data: dict[str, Any],
        timestamp: datetime,
        archive_previous: bool = False,
    ) -> None: ...

    def delete_checkpoint(
        self, connection: str, table: str, worker_id: int | None = None
    ) -> int: ...

    def overlapping_ranges(
        self, connection: str, table: str, block_range: BlockRange
    ) -> list[ProcessedRange]: ...

    def mark_processed(
        self,
        connection: str,
        table: str,
        block_range: BlockRange,
        processed_at: datetime,
        batch_hash: str | None,
    ) -> None: ...

    def open_range(
        self, connection: str, table: str, block_range: BlockRange, delete: RowsDelete | None
    ) -> list[ProcessedRange]:
        """The processed ranges overlapping ``block_range``; and, unless one of them is
        exactly ``block_range``, ``delete`` of its rows (the two together: a microbatch
        is opened with one statement where the destination allows)."""
        ...

    def ranges_after(self, connection: str, table: str, network: str, block: int) -> bool:
        """Whether any processed range of ``network`` ends after ``block``."""
        ...

    def save_unit(
        self,
        connection: str,
        table: str,
        marks: Sequence[RangeMark],
        checkpoint: CheckpointWrite | None,
    ) -> None:
        """Record ``marks`` as processed and upsert ``checkpoint`` (when given), in the
        open transaction: what a unit of work writes at its commit."""
        ...

    def forget_ranges_from(self, connection: str, table: str, network: str, start: int) -> int: ...

    def forget_ranges(self, connection: str, table: str) -> int: ...

    def cleanup_old_ranges(self, connection: str, table: str, days: float) -> int: ...


def open_by_lookup(
    found: list[ProcessedRange], block_range: BlockRange, delete: RowsDelete | None
) -> list[ProcessedRange]:
    """``StateStore.open_range`` from a lookup already made: run ``delete`` unless
    ``found`` holds exactly ``block_range`` (a duplicate keeps its committed rows)."""
    if delete is not None and not any(p.is_exactly(block_range) for p in found):
        delete.run()
    return found
