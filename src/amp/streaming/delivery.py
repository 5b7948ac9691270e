"""The delivery state of one load: its checkpoint and processed ranges, kept in step
with its rows inside the destination's transactions.

The pipeline calls, within the transaction of a microbatch: ``find_duplicate`` before
writing, ``record`` before committing; within the transaction of a reorg:
``record_reorg``. At start, ``resume_point`` says where the server should continue.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime

import pyarrow as pa

from amp.errors import FatalLoadError
from amp.loaders.base import Loader
from amp.streaming.checkpoint import CheckpointConfig, CheckpointState, CheckpointStore
from amp.streaming.idempotency import IdempotencyConfig, batch_hash
from amp.streaming.state import ProcessedRange, StateStore
from amp.streaming.types import BlockRange

log = logging.getLogger("amp.streaming.delivery")

_CLEANUP_EVERY_SECONDS = 3600.0


class Delivery:
    """Checkpoint and idempotency of one (connection, table, worker)."""

    def __init__(
        self,
        loader: Loader,
        table: str,
        checkpoint: CheckpointConfig,
        idempotency: IdempotencyConfig,
        worker_id: int = 0,
    ) -> None:
        self.loader = loader
        self.table = table
        self.worker_id = worker_id
        self.checkpoint_config = checkpoint
        self.idempotency_config = idempotency
        self.idempotent = idempotency.enabled
        self.checkpoints: CheckpointStore | None = None
        self.ranges: StateStore | None = None
        if not (checkpoint.enabled or idempotency.enabled):
            return
        store_for = loader.state_store  # type: ignore[attr-defined]  # checked at configure
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
        """Create the state tables and clean old processed ranges (own transaction)."""
        if not self.active:
            return
        self.loader.begin()
        try:
            if self.checkpoints is not None:
                self.checkpoints.ensure_tables()
            if self.ranges is not None:
                self.ranges.create_processed_ranges_table()
            self.loader.commit()
        except BaseException:
            self.loader.rollback()
            raise
        self.cleanup_if_due()

    def forget(self) -> None:
        """Drop this table's checkpoint and processed ranges (an overwrite starts afresh)."""
        if not self.active:
            return
        self.prepare()
        self.loader.begin()
        try:
            if self.checkpoints is not None:
                self.checkpoints.delete(self.table, self.worker_id)
            if self.ranges is not None:
                self.ranges.forget_ranges(self.loader.connection_name, self.table)
            self.loader.commit()
        except BaseException:
            self.loader.rollback()
            raise

    def resume_point(self) -> BlockRange | None:
        """The last committed position from the checkpoint (logging the guide's lines)."""
        if self.checkpoints is None:
            return None
        self.loader.begin()
        try:
            checkpoint = self.checkpoints.load_for_resume(self.table, self.worker_id)
        finally:
            self.loader.rollback()
        return checkpoint.last_range() if checkpoint is not None else None

    # -- inside a microbatch transaction -----------------------------------------------

    def find_duplicate(self, block_range: BlockRange, range_keyed: bool) -> ProcessedRange | None:
        """The processed record of exactly this range (numbers and end hash), if any.

        A lookup that fails raises: an error is never taken for "not processed".
        """
        if self.ranges is None:
            return None
        overlapping = self.ranges.overlapping_ranges(
            self.loader.connection_name, self.table, block_range
        )
        for processed in overlapping:
            if (processed.start, processed.end, processed.end_hash) == (
                block_range.start,
                block_range.end,
                block_range.hash or "",
            ):
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

    def record(self, block_range: BlockRange, batches: Sequence[pa.RecordBatch]) -> None:
        """Mark the range processed and save the checkpoint (same transaction)."""
        now = datetime.now(UTC)
        if self.ranges is not None:
            digest = batch_hash(batches) if self.idempotency_config.verification_hash else None
            self.ranges.mark_processed(
                self.loader.connection_name, self.table, block_range, now, digest
            )
        if self.checkpoints is not None:
            self.checkpoints.save(
                self.table, CheckpointState((block_range,), now, self.worker_id, False)
            )

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

    def cleanup_if_due(self) -> None:
        """Delete processed ranges older than ``cleanup_days``, at most once an hour."""
        if self.ranges is None:
            return
        now = time.monotonic()
        if self._last_cleanup is not None and now - self._last_cleanup < _CLEANUP_EVERY_SECONDS:
            return
        self._last_cleanup = now
        self.loader.begin()
        try:
            deleted = self.ranges.cleanup_old_ranges(
                self.loader.connection_name, self.table, self.idempotency_config.cleanup_days
            )
            self.loader.commit()
        except BaseException:
            self.loader.rollback()
            raise
        if deleted:
            log.info(
                "Cleaned up %d processed ranges older than %s days",
                deleted,
                self.idempotency_config.cleanup_days,
            )
