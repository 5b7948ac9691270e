"""The load loop: stream events in, destination transactions out, one LoadResult each.

This is the single place where reorgs, microbatches, retries, checkpoints and duplicate
checks meet. A microbatch is written as its messages arrive (the network
and the destination work at the same time) inside one destination transaction, which
commits only at the server's ``ranges_complete`` marker. Its batches are kept until
then, so a failed transaction can be rolled back and written again whole.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import pyarrow as pa

from amp.errors import DestinationError, FatalLoadError, ProtocolError, ServerError
from amp.flight.transport import FlightTransport, MessageStream
from amp.loaders import Loader, LoadMode
from amp.loaders.blocks import RANGE_END, add_range_columns, block_column, with_range_columns
from amp.streaming.checkpoint import CheckpointConfig
from amp.streaming.delivery import Delivery
from amp.streaming.idempotency import IdempotencyConfig
from amp.streaming.reader import Data, MicrobatchEnd, MicrobatchReader, Reorg, batch_events
from amp.streaming.state import ProcessedRange
from amp.streaming.types import BlockRange

log = logging.getLogger("amp.streaming")

# Ranges of committed microbatches remembered for reorgs of queries without a block
# column (see StreamingLoad._apply_reorg).
_RECENT_RANGES = 100_000


@dataclass
class LoadResult:
    """The outcome of one microbatch, reorg or batch, as the guide's examples read it."""

    success: bool
    rows_loaded: int
    table_name: str
    loader_type: str
    duration: float
    error: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def fatal(cls, table: str, loader_type: str, error: FatalLoadError) -> LoadResult:
        """The failed result reported before a FatalLoadError is raised."""
        return cls(False, 0, table, loader_type, 0.0, str(error), {"operation": "fatal"})


class _StreamEnded(Exception):
    """A streaming query's stream ended without an error: reconnect and resume."""


@dataclass(frozen=True)
class _Restart:
    """Reconnect the stream after the committed position."""


@dataclass
class _Target:
    """The destination table and how its rows record their block."""

    loader: Loader
    table: str
    mode: LoadMode
    schema: pa.Schema | None = None
    column: str = ""
    adds_range: bool = False

    def prepare(self, schema: pa.Schema) -> None:
        own = block_column(schema)
        self.adds_range = own is None
        self.column = own if own is not None else RANGE_END
        table_schema = with_range_columns(schema) if self.adds_range else schema
        self.loader.prepare_table(self.table, table_schema, self.mode, self.column)
        self.schema = schema

    def rows(self, batch: pa.RecordBatch, block_range: BlockRange | None) -> pa.RecordBatch:
        return add_range_columns(batch, block_range) if self.adds_range else batch


@dataclass
class _Microbatch:
    """The open microbatch: its range, its rows so far, and what its transaction holds."""

    block_range: BlockRange
    started: float = field(default_factory=time.monotonic)
    batches: list[pa.RecordBatch] = field(default_factory=list)
    opened: bool = False  # the transaction is begun and checked for duplicates
    duplicate: ProcessedRange | None = None

    @property
    def rows(self) -> int:
        return sum(batch.num_rows for batch in self.batches)


class StreamingLoad:
    """One streaming load: ``results()`` yields until stopped, a fatal error, or the
    caller stops iterating; the open transaction is rolled back on any exit.

    Both edges are resilient. The server edge: a failed query or a stream that drops is
    retried with backoff (through the breaker) and resumed with ``amp-resume`` after the
    last committed microbatch; the partial one is rolled back, never committed twice.
    The destination edge: every write and commit passes the rate limiter, the breaker
    and the retries; a failed transaction is rolled back and the microbatch written
    again, after deleting its blocks' rows, so even a commit whose outcome was unknown
    cannot leave them twice.
    """

    def __init__(
        self,
        transport: FlightTransport,
        loader: Loader,
        table: str,
        sql: str,
        *,
        mode: LoadMode = LoadMode.APPEND,
        streaming_header: bool | None = None,
        resume_from: BlockRange | None = None,
        stop_event: threading.Event | None = None,
        delivery: Delivery | None = None,
    ) -> None:
        self.transport = transport
        self.target = _Target(loader, table, mode)
        self.sql = sql
        self.streaming_header = streaming_header
        self.stop_event = stop_event or threading.Event()
        self.clock = loader.clock
        self.destination = loader.retry_policy()
        self.server = loader.retry_policy()
        self.delivery = delivery or Delivery(loader, table, CheckpointConfig(), IdempotencyConfig())
        self._recent: deque[BlockRange] = deque(maxlen=_RECENT_RANGES)
        self._in_transaction = False
        # Where the destination's committed state ends: the stream resumes after it.
        self.committed: BlockRange | None = resume_from

    def stop(self) -> None:
        """Ask the load to stop at the next microbatch boundary (safe from a signal handler)."""
        self.stop_event.set()

    def _resume_header(self, last: BlockRange | None) -> dict[str, Any] | None:
        if last is None or last.hash is None:
            return None
        return {last.network: {"number": last.end, "hash": last.hash}}

    def _result(self, rows: int, started: float, metadata: dict[str, Any]) -> LoadResult:
        return LoadResult(
            success=True,
            rows_loaded=rows,
            table_name=self.target.table,
            loader_type=self.target.loader.loader_type,
            duration=time.monotonic() - started,
            metadata=metadata,
        )

    def _start(self) -> None:
        loader = self.target.loader
        loader.connect()
        if self.target.mode is LoadMode.OVERWRITE:
            self.delivery.forget()
        self.delivery.prepare()
        checkpoint = self.delivery.resume_point()
        if checkpoint is not None:
            self.committed = checkpoint
        if self.committed is not None:
            self._recent.append(self.committed)  # the first known microbatch boundary

    def results(self) -> Iterator[LoadResult]:
        loader = self.target.loader
        try:
            self.destination.call(
                self._start, what="preparing the destination", before_retry=self._rollback
            )
            while not self.stop_event.is_set():
                try:
                    restart = yield from self._run_stream(self.committed)
                except (ServerError, ProtocolError, _StreamEnded) as exc:
                    self._rollback()
                    self.clock.sleep(self.server.failure(exc, "reading the stream"))
                    continue
                if restart is None:
                    return
        except FatalLoadError as exc:
            yield LoadResult.fatal(self.target.table, loader.loader_type, exc)
            raise
        finally:
            self._rollback()

    def _run_stream(self, last: BlockRange | None) -> Iterator[LoadResult]:
        """One server stream from ``last``; returns where to restart, or None when done."""
        stream = self.server.call(
            lambda: self.transport.execute(
                self.sql, streaming=self.streaming_header, resume=self._resume_header(last)
            ),
            what="querying the server",
            success_ends_retries=False,  # only a completed microbatch is progress
        )
        try:
            if self.target.schema is None:
                self.destination.call(
                    lambda: self.target.prepare(stream.schema),
                    what="preparing the destination table",
                    before_retry=self._rollback,
                )
            return (yield from self._consume(stream, MicrobatchReader(last)))
        finally:
            stream.close()

    # -- destination operations, each retried whole -------------------------------------

    def _rollback(self) -> None:
        self.target.loader.rollback()
        self._in_transaction = False

    def _begin(self) -> None:
        if not self._in_transaction:
            self.target.loader.begin()
            self._in_transaction = True

    def _commit(self) -> None:
        self._begin()
        self.target.loader.commit()
        self._in_transaction = False

    def _open(self, microbatch: _Microbatch, replay: bool) -> None:
        """Begin its transaction; skip it if already processed; else make writing it
        idempotent by deleting whatever rows its blocks already have (a replay, a range
        the server sent again, or any write to a destination without transactions)."""
        self._begin()
        block_range = microbatch.block_range
        microbatch.duplicate = self.delivery.find_duplicate(block_range, self.target.adds_range)
        loader = self.target.loader
        if microbatch.duplicate is None and (
            replay or self.delivery.idempotent or not loader.transactional
        ):
            loader.delete_blocks(
                self.target.table, self.target.column, block_range.start, block_range.end
            )
        microbatch.opened = True

    def _append(self, microbatch: _Microbatch, batch: pa.RecordBatch) -> None:
        if not microbatch.opened:
            self._open(microbatch, replay=False)
        if microbatch.duplicate is None:
            self.target.loader.write(self.target.table, batch, microbatch.block_range)

    def _replay(self, microbatch: _Microbatch) -> None:
        """A fresh transaction holding every batch of the microbatch so far."""
        self._open(microbatch, replay=True)
        if microbatch.duplicate is None:
            for batch in microbatch.batches:
                self.target.loader.write(self.target.table, batch, microbatch.block_range)

    def _finish(self, microbatch: _Microbatch) -> None:
        if not microbatch.opened:
            self._open(microbatch, replay=False)
        if microbatch.duplicate is not None:
            self._rollback()
            return
        self.delivery.record(microbatch.block_range, microbatch.batches)
        self._commit()

    def _replay_and_finish(self, microbatch: _Microbatch) -> None:
        self._replay(microbatch)
        self._finish(microbatch)

    def _failed(self, microbatch: _Microbatch) -> None:
        self._rollback()
        microbatch.opened = False

    def _consume(self, stream: MessageStream, reader: MicrobatchReader) -> Iterator[LoadResult]:
        loader = self.target.loader
        microbatch: _Microbatch | None = None
        for event in reader.events(stream.messages(self.stop_event)):
            if isinstance(event, Data):
                assert event.block_range is not None
                if microbatch is None:
                    microbatch = _Microbatch(event.block_range)
                rows = self.target.rows(event.batch, event.block_range)
                microbatch.batches.append(rows)
                self.destination.call(
                    partial(self._append, microbatch, rows),
                    before_retry=partial(self._failed, microbatch),
                    retry_operation=partial(self._replay, microbatch),
                )
            elif isinstance(event, MicrobatchEnd):
                current = microbatch or _Microbatch(event.block_range)
                microbatch = None
                self.destination.call(
                    partial(self._finish, current),
                    before_retry=partial(self._failed, current),
                    retry_operation=partial(self._replay_and_finish, current),
                )
                self.server.success()
                self._recent.append(event.block_range)
                self.committed = event.block_range
                yield self._microbatch_result(current)
                self.destination.call(
                    self.delivery.cleanup_if_due,
                    what="cleaning old processed ranges",
                    before_retry=self._rollback,
                )
                if self.stop_event.is_set():
                    return None
            elif isinstance(event, Reorg):
                restart = yield from self._apply_reorg(event)
                if restart:
                    return _Restart()
        if self.stop_event.is_set():
            return None
        raise _StreamEnded(
            f"the server ended a streaming query (after {loader.loader_type} load of "
            f"{self.target.table}); streaming queries only end on error"
        )

    def _microbatch_result(self, microbatch: _Microbatch) -> LoadResult:
        ranges = [microbatch.block_range.to_dict()]
        if microbatch.duplicate is not None:
            self.delivery.check_content(
                microbatch.duplicate, microbatch.block_range, microbatch.batches
            )
            return self._result(
                0,
                microbatch.started,
                {"operation": "skip_duplicate", "block_ranges": ranges, "ranges_complete": True},
            )
        return self._result(
            microbatch.rows,
            microbatch.started,
            {"operation": "load", "block_ranges": ranges, "ranges_complete": True},
        )

    def _apply_reorg(self, reorg: Reorg) -> Iterator[LoadResult]:
        """Delete the invalidated rows, forget their ranges and checkpoint the fork point,
        in one transaction. Rows keyed only by their microbatch range are deleted by whole
        microbatches; returns True when the stream must restart to fetch them again."""
        loader = self.target.loader
        started = time.monotonic()
        network = reorg.invalidated.network
        start, end = reorg.invalidated.start, reorg.invalidated.end
        parent_hash = reorg.incoming.prev_hash
        restart = False
        if self.target.adds_range:
            known_from = self._recent[0].start if self._recent else None
            if known_from is None or start < known_from:
                raise FatalLoadError(
                    f"FATAL: a reorg invalidates blocks from {start}, before the microbatches "
                    "this load knows the boundaries of; the query's rows carry no block "
                    "number, so they cannot be invalidated exactly. Stopping client to "
                    "prevent data loss. Add _block_num to the SELECT list."
                )
            straddling = next((r for r in self._recent if r.end >= start), None)
            if straddling is not None and straddling.start < start:
                start, parent_hash, restart = straddling.start, straddling.prev_hash, True

        def invalidate() -> int:
            self._begin()
            count = loader.delete_blocks(self.target.table, self.target.column, start, end)
            self.delivery.record_reorg(network, start, parent_hash)
            self._commit()
            return count

        deleted = self.destination.call(
            invalidate, what="invalidating reorged blocks", before_retry=self._rollback
        )
        while self._recent and self._recent[-1].end >= start:
            self._recent.pop()
        self.committed = (
            BlockRange(network, start - 1, start - 1, hash=parent_hash) if start > 0 else None
        )
        if self.committed is not None:
            self._recent.append(self.committed)
        log.info(
            "Reorg on %s: blocks %d..%d invalidated, %d rows deleted from %s",
            network,
            start,
            end,
            deleted,
            self.target.table,
        )
        yield self._result(
            0,
            started,
            {
                "operation": "reorg",
                "invalidated_range": BlockRange(network, start, end).to_dict(),
                "rows_deleted": deleted,
            },
        )
        return restart


def batch_load(
    transport: FlightTransport,
    loader: Loader,
    table: str,
    sql: str,
    mode: LoadMode,
    stop_event: threading.Event | None = None,
) -> Iterator[LoadResult]:
    """A batch query into one destination transaction: all rows or none.

    A transient failure on either edge rolls back and runs the whole query again. The
    results (one per server batch, then ``operation: 'commit'``) are yielded once the
    transaction has committed, so every success reported is durable. A stop before the
    commit rolls everything back and yields nothing.
    """
    policy = loader.retry_policy()
    target = _Target(loader, table, mode)
    stop = stop_event or threading.Event()

    def attempt() -> list[LoadResult]:
        loader.connect()
        stream = transport.execute(sql, streaming=False)
        results: list[LoadResult] = []
        started = time.monotonic()
        try:
            target.prepare(stream.schema)
            loader.begin()
            try:
                for index, event in enumerate(batch_events(stream.messages(stop))):
                    batch_started = time.monotonic()
                    loader.write(
                        table,
                        target.rows(event.batch, None),
                        event.ranges[0] if event.ranges else None,
                    )
                    results.append(
                        LoadResult(
                            success=True,
                            rows_loaded=event.batch.num_rows,
                            table_name=table,
                            loader_type=loader.loader_type,
                            duration=time.monotonic() - batch_started,
                            metadata={
                                "operation": "load",
                                "batch_index": index,
                                "block_ranges": [r.to_dict() for r in event.ranges],
                            },
                        )
                    )
            except ServerError:
                if not stop.is_set():
                    raise
                # stopped: the stream ended early on purpose; the rollback below applies
            if stop.is_set():
                loader.rollback()
                return []
            try:
                loader.commit()
            except DestinationError as exc:
                if not exc.commit_outcome_unknown or mode is LoadMode.OVERWRITE:
                    raise  # not applied, or running it again replaces the table: retry
                raise FatalLoadError(
                    f"FATAL: the COMMIT of a batch load into {table} failed ({exc}); it may or "
                    "may not have been applied, and appending again could duplicate every "
                    "row. Stopping client to prevent data loss: check the table, then load "
                    "again (mode='overwrite' is safe to repeat)."
                ) from exc
        finally:
            stream.close()
        total = sum(result.rows_loaded for result in results)
        results.append(
            LoadResult(
                success=True,
                rows_loaded=0,
                table_name=table,
                loader_type=loader.loader_type,
                duration=time.monotonic() - started,
                metadata={"operation": "commit", "total_rows": total},
            )
        )
        return results

    try:
        results = policy.call(attempt, what="loading batch", before_retry=loader.rollback)
    except FatalLoadError as exc:
        yield LoadResult.fatal(table, loader.loader_type, exc)
        raise
    finally:
        loader.rollback()
    yield from results
