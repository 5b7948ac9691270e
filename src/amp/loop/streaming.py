"""The load loop of one stream: server events in, destination transactions out.

This is the single place where reorgs, microbatches, retries, checkpoints and duplicate
checks meet (the sinker's Flush/Revert loop):

- **Flush.** Rows are written as their messages arrive (the network and the destination
  work at the same time) into the transaction of a ``Unit``. The server's
  ``ranges_complete`` marker ends a microbatch; when the unit is due, the processed
  ranges of its microbatches and the checkpoint of its last are written in the same
  transaction (one statement on PostgreSQL), and it commits. Near the chain head a unit
  is one microbatch; while catching up (the server already has the next message
  waiting) consecutive microbatches share one, bounded by ``CommitGrouping``. The
  results of a unit are yielded once it has committed.
- **Open.** Before its first row a microbatch is looked up among the processed ranges
  and its blocks' rows deleted (unless it is a duplicate): one statement on PostgreSQL.
  Once a unit's second microbatch finds nothing processed and no row after it, the
  unit's later microbatches need neither (nothing else writes the stream), so a
  catching-up unit writes one COPY stream through them with no statement between.
- **Replay.** A unit keeps its batches, so any destination failure rolls back and
  writes the unit again whole in a fresh transaction, after deleting its blocks' rows,
  so that even a commit whose outcome was unknown cannot leave them twice. A loader
  that can neither roll back nor delete by block (``can_replay`` false) has only the
  failed call run again: at-least-once.
- **Revert.** A reorg deletes the invalidated blocks and checkpoints the fork point in
  one transaction; a loader that cannot delete stops the load there, unless it keeps
  forked rows on purpose (``keeps_forked_rows``).
- **Edges.** The server edge (query, stream) and the destination edge (every write and
  commit) each have their own retry loop, circuit breaker and rate limiter.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Generator, Iterator
from typing import Any

import pyarrow as pa

from amp.errors import (
    FatalLoadError,
    LoadStopped,
    ProtocolError,
    ServerError,
    StreamEndedError,
)
from amp.flight.seam import MessageSource, Transport
from amp.loaders.base import DataLoader, LoadMode
from amp.loop.blockhash import read_block_hash
from amp.loop.delivery import Delivery
from amp.loop.grouping import CommitGrouping
from amp.loop.target import Bounds, Target
from amp.loop.unit import Microbatch, Unit
from amp.monitoring.loads import LoadMonitor, loads
from amp.streaming.checkpoint import CheckpointConfig, CheckpointState
from amp.streaming.idempotency import IdempotencyConfig
from amp.streaming.reader import Data, MicrobatchReader, Reorg, StreamEvent
from amp.streaming.resilience import Edge
from amp.streaming.results import LoadResult
from amp.streaming.types import BlockRange

log = logging.getLogger("amp.streaming")


class StreamingLoad:
    """One streaming load of one stream (connection, table, worker): ``results()``
    yields until stopped, a fatal error, or the caller stops iterating; whatever is
    not committed is rolled back on any exit."""

    def __init__(
        self,
        transport: Transport,
        loader: DataLoader[Any],
        table: str,
        sql: str,
        *,
        mode: LoadMode = LoadMode.APPEND,
        streaming_header: bool | None = None,
        resume_from: BlockRange | None = None,
        stop_event: threading.Event | None = None,
        delivery: Delivery | None = None,
        server_edge: Edge | None = None,
        worker_id: int = 0,
        grouping: CommitGrouping | None = None,
        bounds: Bounds | None = None,
        labels: dict[str, Any] | None = None,
        setup_lock: threading.Lock | None = None,
        reach_below: Callable[[int], int] | None = None,
    ) -> None:
        self.transport = transport
        self.target = Target(loader, table, mode, bounds=bounds)
        # A parallel load's worker: what its results carry, the lock that keeps workers'
        # table and state creation apart (concurrent CREATE ... IF NOT EXISTS can fail),
        # and who decides when a reorg reaches below its first block (see _revert).
        self.labels = labels or {}
        self.setup_lock = setup_lock or threading.Lock()
        self.reach_below = reach_below
        self.sql = sql
        self.streaming_header = streaming_header
        self.stop_event = stop_event or threading.Event()
        self.clock = loader.clock
        self.grouping = grouping or CommitGrouping()
        self.destination = loader.retry_policy(worker_id)
        edge = server_edge or Edge("server", loader.resilience_config, loader.clock)
        self.server = edge.policy(worker_id)
        self.destination.stop = self.server.stop = self.stop_event
        self.delivery = delivery or Delivery(
            loader, table, CheckpointConfig(), IdempotencyConfig(), worker_id
        )
        # Where the destination's committed state ends: the stream resumes after it.
        self.committed: BlockRange | None = resume_from
        # What /metrics and /healthz know of this load (registered once it runs).
        self.monitor = LoadMonitor(table, worker_id, bounds.upper if bounds else None)
        self.monitor.watch("server", self.server)
        self.monitor.watch("destination", self.destination)

    def stop(self) -> None:
        """Ask the load to stop at the next microbatch boundary (safe from a signal handler)."""
        self.stop_event.set()

    def _result(self, rows: int, started: float, metadata: dict[str, Any]) -> LoadResult:
        loader = self.target.loader
        return LoadResult(
            True,
            rows,
            self.target.table,
            loader.loader_type,
            time.monotonic() - started,
            metadata={**metadata, **self.labels},
        )

    # -- start ---------------------------------------------------------------------------

    def _start(self) -> None:
        with self.setup_lock:
            self._start_alone()

    def _start_alone(self) -> None:
        loader = self.target.loader
        loader.ensure_connected()
        loader.claim_stream(self.target.table, self.delivery.worker_id)
        delivery = self.delivery
        if not delivery.active:
            return
        with loader.transaction():
            delivery.prepare()
            if self.target.mode is LoadMode.OVERWRITE:
                delivery.forget()
        with loader.transaction():
            checkpoint = delivery.resume_point()
        if checkpoint is not None:
            self.committed = checkpoint

    def _clean_up_if_due(self) -> None:
        if self.delivery.cleanup_due:

            def clean() -> None:
                with self.target.loader.transaction():
                    self.delivery.cleanup()

            self.destination.call(clean, what="cleaning old processed ranges")

    # -- the server edge ---------------------------------------------------------------

    def results(self) -> Iterator[LoadResult]:
        loader = self.target.loader
        monitor = loads.start(self.monitor)
        try:
            self.destination.call(self._start, what="preparing the destination")
            if self.finished():
                return
            self._clean_up_if_due()
            while not self.stop_event.is_set():
                try:
                    finished = yield from self._run_stream()
                except (ServerError, ProtocolError) as exc:
                    self.server.pause(self.server.failure(exc, "reading the stream"))
                    continue
                if finished:
                    return
        except LoadStopped:
            return  # stopped while waiting to retry: nothing uncommitted is kept
        except FatalLoadError as exc:
            monitor.failed(exc)  # before the result: its reader may stop iterating there
            failed = LoadResult.fatal(self.target.table, loader.loader_type, exc)
            failed.metadata.update(self.labels)  # a parallel worker's failure names it
            yield failed
            raise
        except Exception as exc:  # not a load failure (a bug): the load is dead all the same
            monitor.failed(exc)
            raise
        finally:
            monitor.ended(self.finished())

    def _run_stream(self) -> Generator[LoadResult, None, bool]:
        """One server stream from the committed position; returns True when the load is
        done (stopped), False to reconnect (after a reorg that needs earlier rows)."""
        last = self.committed
        resume = None
        if last is not None:  # the amp-resume value of a checkpoint there (none: no hash)
            resume = CheckpointState((last,)).to_resume_watermark() or None
        source = self.server.call(
            lambda: self.transport.execute(
                self.sql, streaming=self.streaming_header, resume=resume
            ),
            what="querying the server",
            success_ends_retries=False,  # only a committed microbatch is progress
        )
        try:
            if self.target.schema is None:
                self.destination.call(
                    lambda: self._prepare(source.schema), what="preparing the destination table"
                )
            events = MicrobatchReader(last).events(source.messages(self.stop_event))
            return (yield from self._consume(events, source))
        finally:
            source.close()

    def finished(self) -> bool:
        """Whether the committed position completes a bounded worker's blocks."""
        bounds, committed = self.target.bounds, self.committed
        return bounds is not None and committed is not None and bounds.reached(committed.end)

    def _prepare(self, schema: pa.Schema) -> None:
        with self.setup_lock:
            self.target.prepare(schema)
        loader = self.target.loader
        if self.target.adds_range and loader.deletes_blocks and not loader.finds_range_starts:
            raise FatalLoadError(
                "FATAL: the query selects no block column (_block_num or block_num), and the "
                f"{loader.loader_type} loader cannot find the microbatch boundaries that a "
                "reorg of such rows needs. Add _block_num to the SELECT list."
            )

    # -- the loop ------------------------------------------------------------------------

    def _consume(
        self, events: Iterator[StreamEvent], source: MessageSource
    ) -> Generator[LoadResult, None, bool]:
        unit: Unit | None = None
        try:
            for event in events:
                if isinstance(event, Reorg):
                    if unit is not None:  # a reorg comes between microbatches: flush first
                        yield from self._flush(unit, source)
                        unit = None
                    if (yield from self._revert(event)):
                        return False
                    continue
                unit = unit or Unit(self)
                if isinstance(event, Data):
                    unit.add(event)
                    continue
                unit.end(event)
                if self._commit_due(unit, source):
                    yield from self._flush(unit, source)
                    unit = None
                    if self.stop_event.is_set() or self.finished():
                        return True
                    self._clean_up_if_due()
        finally:
            if unit is not None:
                unit.abandon()
        if self.stop_event.is_set():
            return True
        raise StreamEndedError(
            f"the server ended a streaming query (loading {self.target.table}) without an "
            "error; a streaming query only ends on error, so amp reconnects and resumes",
        )

    def _commit_due(self, unit: Unit, source: MessageSource) -> bool:
        grouping = self.grouping
        return (
            not grouping.enabled
            or self.stop_event.is_set()
            or not source.ready()  # nothing waiting: near the head, commit at once
            or self._reaches_end(unit)
            or unit.rows >= grouping.max_rows
            or time.monotonic() - unit.started >= grouping.max_seconds
        )

    def _reaches_end(self, unit: Unit) -> bool:
        """A bounded worker commits at its last block and reads no further."""
        bounds = self.target.bounds
        return (
            bounds is not None and bool(unit.done) and bounds.reached(unit.done[-1].block_range.end)
        )

    def _flush(self, unit: Unit, source: MessageSource) -> Iterator[LoadResult]:
        """Commit the unit, then report each of its microbatches."""
        started = time.monotonic()
        unit.commit()
        seconds = time.monotonic() - started
        self.server.progress()
        self.committed = unit.done[-1].block_range
        self.monitor.committed(
            sum(m.rows for m in unit.done if m.duplicate is None),
            len(unit.done),
            seconds,
            self.committed.end,
            caught_up=not source.ready(),  # nothing more from the server: at its head
        )
        for microbatch in unit.done:
            yield self._microbatch_result(microbatch)

    def _microbatch_result(self, microbatch: Microbatch) -> LoadResult:
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

    # -- reorgs --------------------------------------------------------------------------

    def _revert(self, reorg: Reorg) -> Generator[LoadResult, None, bool]:
        """Delete the invalidated rows, forget their ranges and checkpoint the fork point,
        in one transaction. Rows keyed only by their microbatch's range are deleted by
        whole microbatches; returns True when the stream must restart to fetch the
        earlier blocks of the first of them again."""
        loader = self.target.loader
        started = time.monotonic()
        network = reorg.invalidated.network
        start, end = reorg.invalidated.start, reorg.invalidated.end
        if loader.deletes_blocks:
            fork = self._fork_point(reorg)
            restart = fork.end + 1 < start if fork is not None else start > 0
            if restart:
                start = fork.end + 1 if fork is not None else 0
        else:
            self._refuse_to_keep_forked_rows(reorg)
            fork, restart = _block_before(reorg), False
        bounds = self.target.bounds
        if bounds is not None and start < bounds.lower and self.reach_below is not None:
            # May wait for other workers, raises when it cannot; says where ours now start.
            bounds.lower = self.reach_below(start)

        def revert() -> int:
            with loader.transaction():
                count = self.target.delete_blocks(start, end) if loader.deletes_blocks else 0
                self.delivery.record_reorg(network, start, fork.hash if fork else None)
            return count

        deleted = self.destination.call(revert, what="invalidating reorged blocks")
        self.committed = fork
        self.monitor.reorged(deleted, fork.end if fork is not None else None)
        if loader.deletes_blocks:
            log.info(
                "Reorg on %s: blocks %d..%d invalidated, %d rows deleted from %s",
                network,
                start,
                end,
                deleted,
                self.target.table,
            )
        else:
            log.warning(
                "Reorg on %s: blocks %d..%d invalidated; their rows stay in %s (the %s "
                "loader cannot delete rows by block, and keeps_forked_rows is set)",
                network,
                start,
                end,
                self.target.table,
                loader.loader_type,
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

    def _refuse_to_keep_forked_rows(self, reorg: Reorg) -> None:
        """A loader without delete_blocks() would keep the rows of replaced blocks: the
        load stops, unless the loader says its readers handle reorgs."""
        loader = self.target.loader
        if loader.keeps_forked_rows:
            return
        gone = reorg.invalidated
        raise FatalLoadError(
            f"FATAL: a reorg replaced blocks {gone.start}..{gone.end} on {gone.network}, and "
            f"the {loader.loader_type} loader cannot delete rows by block (it defines no "
            f"delete_blocks()), so {self.target.table} would keep rows that are no longer "
            "on the chain. Stopping the load. Give the loader a delete_blocks() method "
            "(docs/loaders.md), or set keeps_forked_rows = True on it if the readers of "
            "its destination handle reorgs themselves."
        )

    def _fork_point(self, reorg: Reorg) -> BlockRange | None:
        """The last block the destination keeps (with its hash), None for none.

        For rows with a block column that is the block before the invalidated range.
        Rows keyed by their microbatch's range are deleted by whole microbatches: when
        one straddles the fork, the kept part ends before it, and that block's hash is
        read from the server (protocol §4: the dataset's ``blocks`` table).
        """
        start = reorg.invalidated.start
        network = reorg.invalidated.network
        if self.target.adds_range:
            first = self.destination.call(
                lambda: self._first_range_start(start), what="finding microbatch boundaries"
            )
            if first is not None and first < start:
                if first == 0:
                    return None
                number = first - 1
                block_hash = self.server.call(
                    lambda: read_block_hash(self.transport, self.sql, network, number),
                    what=f"reading the hash of block {number}",
                )
                return BlockRange(network, number, number, hash=block_hash)
        return _block_before(reorg)

    def _first_range_start(self, block: int) -> int | None:
        loader = self.target.loader
        with loader.transaction():
            return loader.first_range_start(self.target.table, block)


def _block_before(reorg: Reorg) -> BlockRange | None:
    """The last block a reorg keeps, with the hash the server gave for it; None when
    the reorg replaces everything from genesis."""
    start = reorg.invalidated.start
    if start == 0:
        return None
    network = reorg.invalidated.network
    return BlockRange(network, start - 1, start - 1, hash=reorg.incoming.prev_hash)
