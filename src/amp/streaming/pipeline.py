"""The load loop: stream events in, destination transactions out, one LoadResult each.

This is the single place where reorgs, microbatches and (later) retries, checkpoints
and duplicate checks meet. A microbatch is written as its messages arrive (the network
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
from typing import Any

import pyarrow as pa

from amp.flight.transport import FlightTransport, MessageStream
from amp.loaders import Loader, LoadMode
from amp.loaders.blocks import RANGE_END, add_range_columns, block_column, with_range_columns
from amp.streaming.reader import Data, MicrobatchEnd, MicrobatchReader, Reorg, batch_events
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


@dataclass(frozen=True)
class _Restart:
    """Reconnect the stream after ``after`` (None: from the first block)."""

    after: BlockRange | None


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


class StreamingLoad:
    """One streaming load: ``results()`` yields until stopped, the stream fails, or the
    caller stops iterating; the open transaction is rolled back on any exit."""

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
    ) -> None:
        self.transport = transport
        self.target = _Target(loader, table, mode)
        self.sql = sql
        self.streaming_header = streaming_header
        self.resume_from = resume_from
        self.stop_event = stop_event or threading.Event()
        self._recent: deque[BlockRange] = deque(maxlen=_RECENT_RANGES)

    def stop(self) -> None:
        """Ask the load to stop at the next microbatch boundary (safe from a signal handler)."""
        self.stop_event.set()

    def _resume_header(self, last: BlockRange | None) -> dict[str, Any] | None:
        if last is None or last.hash is None:
            return None
        return {last.network: {"number": last.end, "hash": last.hash}}

    def results(self) -> Iterator[LoadResult]:
        loader = self.target.loader
        loader.connect()
        last = self.resume_from
        try:
            while not self.stop_event.is_set():
                stream = self.transport.execute(
                    self.sql, streaming=self.streaming_header, resume=self._resume_header(last)
                )
                try:
                    if self.target.schema is None:
                        self.target.prepare(stream.schema)
                    restart = yield from self._consume(stream, MicrobatchReader(last))
                finally:
                    loader.rollback()
                    stream.close()
                if restart is None:
                    return
                last = restart.after
        finally:
            loader.rollback()

    def _consume(self, stream: MessageStream, reader: MicrobatchReader) -> Iterator[LoadResult]:
        """Apply one server stream; returns where to restart, or None when done."""
        loader = self.target.loader
        pending: list[pa.RecordBatch] = []
        started = time.monotonic()
        for event in reader.events(stream.messages(self.stop_event)):
            if isinstance(event, Data):
                if not pending:
                    loader.begin()
                    started = time.monotonic()
                pending.append(event.batch)
                loader.write(self.target.table, self.target.rows(event.batch, event.block_range))
            elif isinstance(event, MicrobatchEnd):
                if not pending:
                    loader.begin()
                    started = time.monotonic()
                loader.commit()
                rows = sum(batch.num_rows for batch in pending)
                pending = []
                self._recent.append(event.block_range)
                yield LoadResult(
                    success=True,
                    rows_loaded=rows,
                    table_name=self.target.table,
                    loader_type=loader.loader_type,
                    duration=time.monotonic() - started,
                    metadata={
                        "operation": "load",
                        "block_ranges": [event.block_range.to_dict()],
                        "ranges_complete": True,
                    },
                )
                if self.stop_event.is_set():
                    return None
            elif isinstance(event, Reorg):
                restart = yield from self._apply_reorg(event)
                if restart is not None:
                    return restart
        return None

    def _apply_reorg(self, reorg: Reorg) -> Iterator[LoadResult]:
        """Delete the invalidated rows in one transaction; for rows keyed by microbatch
        range, widen to whole microbatches and return where to restart the stream."""
        loader = self.target.loader
        started = time.monotonic()
        start = reorg.invalidated.start
        restart: _Restart | None = None
        if self.target.adds_range:
            straddling = next((r for r in self._recent if r.end >= start), None)
            if straddling is not None and straddling.start < start:
                # Its rows carry only the microbatch range: delete it whole, fetch it again.
                start = straddling.start
                before = straddling.start - 1
                restart = _Restart(
                    BlockRange(straddling.network, before, before, hash=straddling.prev_hash)
                    if before >= 0 and straddling.prev_hash is not None
                    else None
                )
        loader.begin()
        deleted = loader.delete_blocks(
            self.target.table, self.target.column, start, reorg.invalidated.end
        )
        loader.commit()
        while self._recent and self._recent[-1].end >= start:
            self._recent.pop()
        log.info(
            "Reorg on %s: blocks %d..%d invalidated, %d rows deleted from %s",
            reorg.invalidated.network,
            start,
            reorg.invalidated.end,
            deleted,
            self.target.table,
        )
        yield LoadResult(
            success=True,
            rows_loaded=0,
            table_name=self.target.table,
            loader_type=loader.loader_type,
            duration=time.monotonic() - started,
            metadata={
                "operation": "reorg",
                "invalidated_range": BlockRange(
                    reorg.invalidated.network, start, reorg.invalidated.end
                ).to_dict(),
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

    One LoadResult per server batch as it is written (``metadata['committed']`` False),
    then a final one when the transaction commits (``operation: 'commit'``). A stop
    before the commit rolls everything back.
    """
    loader.connect()
    target = _Target(loader, table, mode)
    stream = transport.execute(sql, streaming=False)
    total = 0
    started = time.monotonic()
    try:
        target.prepare(stream.schema)
        loader.begin()
        for index, event in enumerate(batch_events(stream.messages(stop_event))):
            if stop_event is not None and stop_event.is_set():
                loader.rollback()
                return
            batch_started = time.monotonic()
            loader.write(table, target.rows(event.batch, None))
            total += event.batch.num_rows
            yield LoadResult(
                success=True,
                rows_loaded=event.batch.num_rows,
                table_name=table,
                loader_type=loader.loader_type,
                duration=time.monotonic() - batch_started,
                metadata={
                    "operation": "load",
                    "batch_index": index,
                    "block_ranges": [r.to_dict() for r in event.ranges],
                    "committed": False,
                },
            )
        if stop_event is not None and stop_event.is_set():
            return
        loader.commit()
        yield LoadResult(
            success=True,
            rows_loaded=0,
            table_name=table,
            loader_type=loader.loader_type,
            duration=time.monotonic() - started,
            metadata={"operation": "commit", "total_rows": total, "committed": True},
        )
    finally:
        loader.rollback()
        stream.close()
