"""What delivery state a destination keeps: the interface the pipeline writes through.

A loader that can keep checkpoints and processed ranges offers ``state_store(prefix)``
returning a ``StateStore``; its writes join the loader's open transaction (or its
MULTI/EXEC, or its producer transaction), so state and rows land together.
"""

from __future__ import annotations

from collections.abc import Mapping
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


class StateStore(Protocol):
    def create_checkpoint_tables(self) -> None: ...

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

    def forget_ranges_from(self, connection: str, table: str, network: str, start: int) -> int: ...

    def forget_ranges(self, connection: str, table: str) -> int: ...

    def cleanup_old_ranges(self, connection: str, table: str, days: float) -> int: ...
