"""Delivery state as keyed JSON documents, for destinations that keep values, not tables.

Why one implementation: Redis and Kafka's state topic both hold checkpoints and processed
ranges as documents under keys; what differs is only how a document is stored. The
rules (what a checkpoint's key is, what archiving keeps, which ranges overlap, what a
reorg or a cleanup forgets) live here once, over a ``DocumentBackend`` that can read
committed documents and stage writes in the destination's open transaction.

Read your own writes: inside a transaction every read sees the documents staged by it
(a write replaces, ``None`` deletes); a rollback discards them, a commit makes them
durable together with the rows. Outside a transaction a write is committed at once, on
its own.

Keys (``DocKey``), each a tuple starting ``(prefix, kind, connection, table)``::

    (prefix, "checkpoint", conn, table, worker)                        a checkpoint
    (prefix, "checkpoint_history", conn, table, worker, archived_at)   a superseded one
    (prefix, "processed", conn, table, network, start, end, end_hash)  a processed range
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from amp.streaming.state import (
    CheckpointWrite,
    ProcessedRange,
    RangeMark,
    RowsDelete,
    StoredCheckpoint,
    open_by_lookup,
)
from amp.streaming.types import BlockRange

DocKey = tuple[Any, ...]
Document = dict[str, Any]

CHECKPOINT = "checkpoint"
CHECKPOINT_HISTORY = "checkpoint_history"
PROCESSED = "processed"


def checkpoint_key(prefix: str, connection: str, table: str, worker_id: int) -> DocKey:
    return (prefix, CHECKPOINT, connection, table, worker_id)


def history_key(
    prefix: str, connection: str, table: str, worker_id: int, archived_at: str
) -> DocKey:
    return (prefix, CHECKPOINT_HISTORY, connection, table, worker_id, archived_at)


def processed_key(prefix: str, connection: str, table: str, record: Mapping[str, Any]) -> DocKey:
    """The key of a processed-range document (``ProcessedRange.record``)."""
    return (
        prefix,
        PROCESSED,
        connection,
        table,
        record["network"],
        record["start"],
        record["end"],
        record["end_hash"],
    )


class DocumentBackend(Protocol):
    """How one destination stores documents (the loader, or an adapter over it)."""

    def committed_document(self, table: str, key: DocKey) -> Document | None:
        """The committed document at ``key``, or None."""

    def committed_documents(
        self, table: str, prefix: str, kind: str, connection: str, min_end: int | None = None
    ) -> dict[DocKey, Document]:
        """Every committed document of ``kind`` for (``connection``, ``table``).
        ``min_end`` (processed ranges only) is a hint: ranges ending before it may be left
        out."""

    def listed_documents(
        self, prefix: str, kind: str, connection: str | None, table: str | None
    ) -> dict[DocKey, Document]:
        """Every committed document of ``kind``, of ``connection`` and ``table`` when
        given (None: any): what an operator lists, across tables."""

    def staged_documents(self, table: str) -> dict[DocKey, Document | None] | None:
        """The open transaction's staged writes, in write order (the store adds to it and
        the loader writes it at commit, after the rows); None outside a transaction."""

    def apply_documents(self, table: str, changes: Mapping[DocKey, Document | None]) -> None:
        """Outside a transaction: write ``changes`` now, all together."""


class DocumentStateStore:
    """The ``StateStore`` of a document destination (see the module docstring)."""

    def __init__(self, backend: DocumentBackend, prefix: str) -> None:
        self.backend = backend
        self.prefix = prefix

    # -- reads and writes through the open transaction -----------------------------------

    def _get(self, table: str, key: DocKey) -> Document | None:
        staged = self.backend.staged_documents(table)
        if staged is not None and key in staged:
            return staged[key]
        return self.backend.committed_document(table, key)

    def _visible(
        self, table: str, kind: str, connection: str, min_end: int | None = None
    ) -> dict[DocKey, Document]:
        documents = self.backend.committed_documents(table, self.prefix, kind, connection, min_end)
        staged = self.backend.staged_documents(table)
        for key, value in (staged or {}).items():
            if key[:4] != (self.prefix, kind, connection, table):
                continue
            if value is None:
                documents.pop(key, None)
            else:
                documents[key] = value
        return documents

    def _put(self, table: str, changes: Mapping[DocKey, Document | None]) -> None:
        if not changes:
            return
        staged = self.backend.staged_documents(table)
        if staged is None:
            self.backend.apply_documents(table, changes)
            return
        for key, value in changes.items():
            staged.pop(key, None)  # keep the order of the latest writes
            staged[key] = value

    # -- StateStore ----------------------------------------------------------------------

    def create_checkpoint_tables(self) -> None:
        """Documents need no tables."""

    def create_processed_ranges_table(self) -> None:
        """Documents need no tables."""

    def list_checkpoints(
        self, connection: str | None = None, table: str | None = None
    ) -> list[StoredCheckpoint]:
        found = self.backend.listed_documents(self.prefix, CHECKPOINT, connection, table)
        listed = [
            StoredCheckpoint(key[2], key[3], int(key[4]), dict(document))
            for key, document in found.items()
        ]
        return sorted(listed, key=lambda c: (c.connection, c.table, c.worker_id))

    def count_ranges(self, table: str, connection: str | None = None) -> dict[str, int]:
        counts: dict[str, int] = {}
        for key in self.backend.listed_documents(self.prefix, PROCESSED, connection, table):
            counts[key[2]] = counts.get(key[2], 0) + 1
        return dict(sorted(counts.items()))

    def load_checkpoint(self, connection: str, table: str, worker_id: int) -> dict[str, Any] | None:
        document = self._get(table, checkpoint_key(self.prefix, connection, table, worker_id))
        return dict(document) if document is not None else None

    def save_checkpoint(
        self,
        connection: str,
        table: str,
        worker_id: int,
        data: dict[str, Any],
        timestamp: datetime,
        archive_previous: bool = False,
    ) -> None:
        """Replace the checkpoint; ``archive_previous`` first keeps the one it replaces
        as a history document (for audit after a reorg)."""
        key = checkpoint_key(self.prefix, connection, table, worker_id)
        changes: dict[DocKey, Document | None] = {}
        if archive_previous:
            previous = self._get(table, key)
            if previous is not None:
                archived_at = timestamp.isoformat()
                history = history_key(self.prefix, connection, table, worker_id, archived_at)
                changes[history] = {"checkpoint": previous, "archived_at": archived_at}
        changes[key] = data
        self._put(table, changes)

    def delete_checkpoint(self, connection: str, table: str, worker_id: int | None = None) -> int:
        doomed: dict[DocKey, Document | None] = {
            key: None
            for key in self._visible(table, CHECKPOINT, connection)
            if worker_id is None or key[4] == worker_id
        }
        self._put(table, doomed)
        return len(doomed)

    def overlapping_ranges(
        self, connection: str, table: str, block_range: BlockRange
    ) -> list[ProcessedRange]:
        found = []
        ranges = self._visible(table, PROCESSED, connection, min_end=block_range.start)
        for record in ranges.values():
            if (
                record["network"] == block_range.network
                and record["end"] >= block_range.start
                and record["start"] <= block_range.end
            ):
                found.append(ProcessedRange.from_record(record))
        return found

    def mark_processed(
        self,
        connection: str,
        table: str,
        block_range: BlockRange,
        processed_at: datetime,
        batch_hash: str | None,
    ) -> None:
        record = ProcessedRange.record(block_range, processed_at, batch_hash)
        self._put(table, {processed_key(self.prefix, connection, table, record): record})

    def open_range(
        self, connection: str, table: str, block_range: BlockRange, delete: RowsDelete | None
    ) -> list[ProcessedRange]:
        found = self.overlapping_ranges(connection, table, block_range)
        return open_by_lookup(found, block_range, delete)

    def ranges_after(self, connection: str, table: str, network: str, block: int) -> bool:
        ranges = self._visible(table, PROCESSED, connection, min_end=block + 1)
        return any(r["network"] == network and r["end"] > block for r in ranges.values())

    def save_unit(
        self,
        connection: str,
        table: str,
        marks: Sequence[RangeMark],
        checkpoint: CheckpointWrite | None,
    ) -> None:
        for mark in marks:
            self.mark_processed(
                connection, table, mark.block_range, mark.processed_at, mark.batch_hash
            )
        if checkpoint is not None:
            self.save_checkpoint(
                connection, table, checkpoint.worker_id, checkpoint.data, checkpoint.timestamp
            )

    def _forget(self, connection: str, table: str, doomed: Callable[[Document], bool]) -> int:
        changes: dict[DocKey, Document | None] = {
            key: None
            for key, record in self._visible(table, PROCESSED, connection).items()
            if doomed(record)
        }
        self._put(table, changes)
        return len(changes)

    def forget_ranges_from(self, connection: str, table: str, network: str, start: int) -> int:
        """Forget the ranges of ``network`` that end at or after ``start`` (a reorg
        invalidated their blocks); returns how many."""
        return self._forget(
            connection, table, lambda r: r["network"] == network and r["end"] >= start
        )

    def forget_ranges(self, connection: str, table: str) -> int:
        return self._forget(connection, table, lambda r: True)

    def cleanup_old_ranges(self, connection: str, table: str, days: float) -> int:
        cutoff = datetime.now(UTC) - timedelta(days=days)
        return self._forget(
            connection, table, lambda r: datetime.fromisoformat(r["processed_at"]) < cutoff
        )
