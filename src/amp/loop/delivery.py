"""The delivery state of one load: its checkpoint and processed ranges, kept in step
with its rows inside the destination's transactions.

Delivery opens no transaction of its own: every method runs inside the transaction the
loop holds, through the loader's state store, so state and rows commit together. Per
microbatch: ``open`` (the duplicate check and the idempotent delete of its blocks' rows,
one statement on PostgreSQL) before writing; per unit of work, at its commit:
``save_unit`` (the processed ranges of its microbatches and the checkpoint of its last,
again one statement on PostgreSQL); per reorg: ``record_reorg``. At start, ``prepare``
and ``resume_point``.

Why so few statements: on a loopback PostgreSQL each statement costs about 0.1 ms of
round trip and execution, as much as writing a hundred rows; psycopg's pipeline mode
was measured slower than plain statements for two or three of them, so statements are
merged in SQL (a DELETE or INSERT in WITH) instead (docs/benchmarks.md).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from amp.errors import FatalLoadError
from amp.loaders.base import DataLoader
from amp.streaming.checkpoint import CheckpointConfig, CheckpointState, CheckpointStore
from amp.streaming.idempotency import IdempotencyConfig, batch_hash
from amp.streaming.state import CheckpointWrite, ProcessedRange, RangeMark, RowsDelete, StateStore
from amp.streaming.types import BlockRange

log = logging.getLogger("amp.streaming.delivery")

_CLEANUP_EVERY_SECONDS = 3600.0


class Delivery:
    """Checkpoint and idempotency of one (connection, table, worker)."""

    def __init__(
        self,
        loader: DataLoader[Any],
        table: str,
        checkpoint: CheckpointConfig,
        idempotency: IdempotencyConfig,
        worker_id: int = 0,
    ) -> None:
        self.loader = loader
        self.table = table
        self.worker_id = worker_id
        self.idempotency_config = idempotency
        self.idempotent = idempotency.enabled
        self.checkpoints: CheckpointStore | None = None
        self.ranges: StateStore | None = None
        if not (checkpoint.enabled or idempotency.enabled):
            return
        stores: dict[str, StateStore] = {}  # one per prefix: one statement can write both

        def store_for(prefix: str) -> StateStore:
            if prefix not in stores:
                stores[prefix] = loader.state_store(prefix)  # type: ignore[attr-defined]
            return stores[prefix]

        if checkpoint.enabled:
            self.checkpoints = CheckpointStore(
                store_for(checkpoint.table_prefix), loader.connection_name
            )
        if idempotency.enabled:
            self.ranges = store_for(idempotency.table_prefix)
        self._last_cleanup: float | None = None  # None: clean up on the first chance

    @property
    def active(self) -> bool:
        return self.checkpoints is not None or self.ranges is not None

    def prepare(self) -> None:
        """Create the state tables."""
        if self.checkpoints is not None:
            self.checkpoints.ensure_tables()
        if self.ranges is not None:
            self.ranges.create_processed_ranges_table()

    def forget(self) -> None:
        """Drop this table's checkpoint and processed ranges (an overwrite starts afresh)."""
        if self.checkpoints is not None:
            self.checkpoints.delete(self.table, self.worker_id)
        if self.ranges is not None:
            self.ranges.forget_ranges(self.loader.connection_name, self.table)

    def resume_point(self) -> BlockRange | None:
        """The last committed position from the checkpoint (logging the guide's lines)."""
        if self.checkpoints is None:
            return None
        checkpoint = self.checkpoints.load_for_resume(self.table, self.worker_id)
        return checkpoint.last_range() if checkpoint is not None else None

    # -- inside a microbatch transaction -----------------------------------------------

    def open(
        self, block_range: BlockRange, range_keyed: bool, delete: RowsDelete | None
    ) -> ProcessedRange | None:
        """Open a microbatch: the processed record of exactly this range (numbers and end
        hash), if any; unless there is one, ``delete`` (when given) of its blocks' rows.

        A lookup that fails raises: an error is never taken for "not processed".
        """
        if self.ranges is None:
            if delete is not None:
                delete.run()
            return None
        overlapping = self.ranges.open_range(
            self.loader.connection_name, self.table, block_range, delete
        )
        for processed in overlapping:
            if processed.is_exactly(block_range):
                return processed
        if range_keyed and any(p.start < block_range.start for p in overlapping):
            raise FatalLoadError(
                f"FATAL: blocks {block_range.start}..{block_range.end} arrived again with "
                "different microbatch boundaries, and the query's rows carry no block number, "
                "so the rows of the earlier microbatch cannot be replaced exactly. Add "
                "_block_num to the SELECT list (or enable checkpoints so the load resumes "
                "exactly where it stopped)."
            )
        return None

    def processed_after(self, block_range: BlockRange) -> bool:
        """Whether any processed range of this table reaches past ``block_range``."""
        if self.ranges is None:
            return False
        return self.ranges.ranges_after(
            self.loader.connection_name, self.table, block_range.network, block_range.end
        )

    def check_content(
        self, duplicate: ProcessedRange, block_range: BlockRange, batches: Sequence[pa.RecordBatch]
    ) -> None:
        if not self.idempotency_config.verification_hash or duplicate.batch_hash is None:
            return
        incoming = batch_hash(batches)
        if incoming != duplicate.batch_hash:
            log.warning(
                "Duplicate range %s:%d-%d has different content: stored batch hash %s, "
                "incoming %s (same ranges, different data)",
                block_range.network,
                block_range.start,
                block_range.end,
                duplicate.batch_hash,
                incoming,
            )

    def save_unit(
        self, microbatches: Sequence[tuple[BlockRange, Sequence[pa.RecordBatch]]], last: BlockRange
    ) -> None:
        """At a unit's commit, in its transaction: record ``microbatches`` (those written,
        not the duplicates) as processed and checkpoint ``last``, the unit's last."""
        now = datetime.now(UTC)
        marks: list[RangeMark] = []
        if self.ranges is not None:
            verify = self.idempotency_config.verification_hash
            marks = [
                RangeMark(block_range, now, batch_hash(batches) if verify else None)
                for block_range, batches in microbatches
            ]
        checkpoint = None
        if self.checkpoints is not None:
            state = CheckpointState((last,), now, self.worker_id, False)
            checkpoint = CheckpointWrite(self.worker_id, state.to_dict(), now)
        connection = self.loader.connection_name
        if self.ranges is not None and (
            self.checkpoints is None or self.checkpoints.state is self.ranges
        ):
            self.ranges.save_unit(connection, self.table, marks, checkpoint)
            return
        if self.ranges is not None:
            self.ranges.save_unit(connection, self.table, marks, None)
        if self.checkpoints is not None:
            self.checkpoints.state.save_unit(connection, self.table, (), checkpoint)

    def record_reorg(self, network: str, start: int, parent_hash: str | None) -> None:
        """Blocks from ``start`` are gone: forget their ranges; checkpoint the fork point
        (the checkpoint it replaces goes to the history table)."""
        if self.ranges is not None:
            self.ranges.forget_ranges_from(self.loader.connection_name, self.table, network, start)
        if self.checkpoints is None:
            return
        if start == 0 or parent_hash is None:  # nothing before the fork: start afresh
            self.checkpoints.delete(self.table, self.worker_id)
            return
        fork = BlockRange(network, start - 1, start - 1, hash=parent_hash)
        self.checkpoints.save(
            self.table, CheckpointState((fork,), datetime.now(UTC), self.worker_id, True)
        )

    @property
    def cleanup_due(self) -> bool:
        """Whether old processed ranges are due for deletion (at start, then hourly)."""
        if self.ranges is None:
            return False
        last = self._last_cleanup
        return last is None or time.monotonic() - last >= _CLEANUP_EVERY_SECONDS

    def cleanup(self) -> None:
        """Delete processed ranges older than ``cleanup_days`` (in the open transaction)."""
        if self.ranges is None:
            return
        self._last_cleanup = time.monotonic()
        deleted = self.ranges.cleanup_old_ranges(
            self.loader.connection_name, self.table, self.idempotency_config.cleanup_days
        )
        if deleted:
            log.info(
                "Cleaned up %d processed ranges older than %s days",
                deleted,
                self.idempotency_config.cleanup_days,
            )
