"""A unit of work of the load loop: the microbatches that share one destination
transaction, their batches kept for a replay, and how they are opened, written,
replayed and committed (``StreamingLoad`` in ``amp.loop.streaming`` drives it)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from amp.loaders.base import Transaction
from amp.streaming.reader import Data, MicrobatchEnd
from amp.streaming.state import ProcessedRange
from amp.streaming.types import BlockRange

if TYPE_CHECKING:
    from amp.loop.streaming import StreamingLoad

log = logging.getLogger("amp.streaming")


@dataclass
class Microbatch:
    """Everything up to one ``ranges_complete`` marker: its range and its rows so far."""

    block_range: BlockRange
    started: float = field(default_factory=time.monotonic)
    batches: list[pa.RecordBatch] = field(default_factory=list)
    duplicate: ProcessedRange | None = None
    # The transaction its duplicate check and block delete ran in (None: not yet).
    opened_in: Transaction | None = None

    @property
    def rows(self) -> int:
        return sum(batch.num_rows for batch in self.batches)


class Unit:
    """One destination transaction's worth of work: the complete microbatches waiting
    for its commit, then the open one. It owns that transaction; every operation runs
    through the destination edge, and a failed one rolls back and replays the unit."""

    def __init__(self, load: StreamingLoad) -> None:
        self.load = load
        self.loader = load.target.loader
        self.tx: Transaction | None = None
        self.done: list[Microbatch] = []
        self.open: Microbatch | None = None
        self.rows = 0
        self.started = time.monotonic()
        self._fresh()

    def _fresh(self) -> None:
        """What the open transaction knows, forgotten when it ends."""
        self.opened = 0  # microbatches opened in it
        # No processed range and no row after this block (except its own writes).
        self.clear_after: int | None = None

    # -- what the loop asks ---------------------------------------------------------------

    def add(self, event: Data) -> None:
        assert event.block_range is not None
        microbatch = self.open or Microbatch(event.block_range)
        self.open = microbatch
        batch = self.load.target.rows(event.batch, event.block_range)
        microbatch.batches.append(batch)
        self.rows += batch.num_rows
        self._run(lambda: self._write(microbatch, batch), "loading batch")

    def end(self, event: MicrobatchEnd) -> None:
        microbatch = self.open or Microbatch(event.block_range)
        self.open = None
        self.done.append(microbatch)
        self._run(lambda: self._finish(microbatch), "loading batch")

    def commit(self) -> None:
        def replay_and_commit() -> None:
            self._replay()
            self._commit()

        self.load.destination.call(
            self._commit,
            what="committing",
            before_retry=self.abandon,
            retry_operation=replay_and_commit if self.loader.can_replay else None,
        )

    def abandon(self) -> None:
        """Roll back whatever the unit's transaction holds (safe to repeat)."""
        if self.tx is not None:
            self.tx.rollback()
            self.tx = None
        self._fresh()

    # -- destination operations -----------------------------------------------------------

    def _run(self, operation: Any, what: str) -> None:
        """``operation`` through the destination edge. A retry replays the whole unit
        when the loader can do so exactly; otherwise only the failed call runs again
        (rows a failed write did write stay: at-least-once)."""
        self.load.destination.call(
            operation,
            what=what,
            before_retry=self.abandon,
            retry_operation=self._replay if self.loader.can_replay else None,
        )

    def _transaction(self) -> Transaction:
        if self.tx is None:
            self.tx = self.loader.transaction()
        return self.tx

    def _open(self, microbatch: Microbatch, replay: bool) -> None:
        """Its duplicate check, then (unless a duplicate) make writing it idempotent by
        deleting whatever rows its blocks already have: a replay, a range the server
        sent again, or any write to a destination without transactions. A microbatch
        after ``clear_after`` needs neither."""
        tx = self._transaction()
        load = self.load
        block_range = microbatch.block_range
        microbatch.opened_in = tx
        self.opened += 1
        if self.clear_after is not None and block_range.start > self.clear_after:
            microbatch.duplicate = None
            return
        owned = load.target.owned_range(block_range)
        if owned is None:  # none of its blocks is this worker's: nothing to look up
            microbatch.duplicate = None
            return
        delete = None
        if self.loader.deletes_blocks and (
            replay or load.delivery.idempotent or not self.loader.transactional
        ):
            delete = load.target.rows_delete(block_range.start, block_range.end)
        microbatch.duplicate = load.delivery.open(owned, load.target.adds_range, delete)
        if self.opened == 2 and load.delivery.idempotent:
            self._look_ahead(block_range)

    def _look_ahead(self, block_range: BlockRange) -> None:
        """Whether the unit's later microbatches can skip the open: nothing processed and
        no row after ``block_range``. Asked at a unit's second microbatch, so a unit of
        one (near the head) pays nothing for it; the stream's single writer (its claim)
        and the reader's rule that a unit's ranges only move forward keep it true."""
        load = self.load
        rows_after = self.loader.has_rows_after(
            load.target.table, load.target.column, block_range.end
        )
        if rows_after is False and not load.delivery.processed_after(block_range):
            self.clear_after = block_range.end

    def _write(self, microbatch: Microbatch, batch: pa.RecordBatch) -> None:
        if microbatch.opened_in is None or microbatch.opened_in is not self.tx:
            self._open(microbatch, replay=False)
        if microbatch.duplicate is None:
            target = self.load.target
            target.loader.write(target.table, batch, target.written_range(microbatch.block_range))

    def _finish(self, microbatch: Microbatch) -> None:
        """A microbatch without rows is still opened (its duplicate check); its
        processed range waits for the unit's commit."""
        if microbatch.opened_in is None or microbatch.opened_in is not self.tx:
            self._open(microbatch, replay=False)

    def _replay(self) -> None:
        """A fresh transaction holding everything the unit held."""
        self.abandon()
        for microbatch in self.done:
            self._open(microbatch, replay=True)
            self._write_all(microbatch)
        if self.open is not None:
            self._open(self.open, replay=True)
            self._write_all(self.open)

    def _write_all(self, microbatch: Microbatch) -> None:
        if microbatch.duplicate is None:
            target = self.load.target
            written = target.written_range(microbatch.block_range)
            for batch in microbatch.batches:
                target.loader.write(target.table, batch, written)

    def _commit(self) -> None:
        tx = self._transaction()
        # Only the blocks this load owns are recorded as processed: two parallel workers
        # must never take each other's microbatch for a duplicate.
        target = self.load.target
        written = [
            (owned, m.batches)
            for m in self.done
            if m.duplicate is None and (owned := target.owned_range(m.block_range)) is not None
        ]
        self.load.delivery.save_unit(written, self.done[-1].block_range)
        tx.commit()
        self.tx = None
        self._fresh()
