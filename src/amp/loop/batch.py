"""A batch query into one destination transaction: all rows or none."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from amp.errors import (
    DestinationError,
    FatalLoadError,
    LoadStopped,
    ProtocolError,
    ServerError,
)
from amp.flight.seam import Transport
from amp.loaders.base import DataLoader, LoadMode, Transaction
from amp.loop.target import Target
from amp.monitoring.loads import LoadMonitor, loads
from amp.streaming.reader import batch_events
from amp.streaming.resilience import Edge
from amp.streaming.results import LoadResult
from amp.streaming.types import BlockRange

log = logging.getLogger("amp.streaming")


def batch_load(
    transport: Transport,
    loader: DataLoader[Any],
    table: str,
    sql: str,
    mode: LoadMode,
    stop_event: threading.Event | None = None,
    server_edge: Edge | None = None,
) -> Iterator[LoadResult]:
    """Run ``sql`` as a batch query into ``table`` in one transaction.

    A transient failure on either edge rolls back and runs the whole query again (the
    destination edge retries the attempt; a server failure counts on the server edge's
    breaker). The results (one per server batch, then ``operation: 'commit'``) are
    yielded once the transaction has committed, so every success reported is durable.
    A stop before the commit rolls everything back and yields nothing.

    A loader that cannot roll back (``undoes_writes`` false) gets each write retried on
    its own instead, since running the query again would write its rows twice; any other
    failure still starts the query over (at-least-once, said in a warning).
    """
    policy = loader.retry_policy()
    writes = loader.retry_policy()
    written = 0  # rows written by attempts that a loader without rollback cannot undo
    server = (server_edge or Edge("server", loader.resilience_config, loader.clock)).policy()
    target = Target(loader, table, mode)
    stop = stop_event or threading.Event()
    policy.stop = writes.stop = server.stop = stop  # a stop ends any wait to retry
    monitor = LoadMonitor(table, 0)
    monitor.watch("server", server)
    monitor.watch("destination", policy)
    writes.on_retry = policy.on_retry
    commit_seconds = 0.0

    def write(batch: pa.RecordBatch, block_range: BlockRange | None) -> None:
        nonlocal written
        if loader.undoes_writes:  # a failure rolls back; the whole attempt runs again
            loader.write(table, batch, block_range)
            return
        writes.call(lambda: loader.write(table, batch, block_range), what="loading batch")
        written += batch.num_rows

    def starting_over() -> None:
        nonlocal written
        if written:
            log.warning(
                "the batch query into %s starts over; the %d rows already written stay (the "
                "%s loader cannot roll back), so they will be there twice",
                table,
                written,
                loader.loader_type,
            )
            written = 0

    def attempt() -> list[LoadResult]:
        nonlocal commit_seconds
        loader.ensure_connected()
        loader.claim_stream(table, 0)
        source = server.call(lambda: transport.execute(sql, streaming=False), what="loading batch")
        results: list[LoadResult] = []
        started = time.monotonic()
        try:
            target.prepare(source.schema)
            with loader.transaction() as tx:
                try:
                    for index, event in enumerate(batch_events(source.messages(stop))):
                        batch_started = time.monotonic()
                        monitor.progressed()
                        write(
                            target.rows(event.batch, None),
                            event.ranges[0] if event.ranges else None,
                        )
                        results.append(
                            LoadResult(
                                True,
                                event.batch.num_rows,
                                table,
                                loader.loader_type,
                                time.monotonic() - batch_started,
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
                    # stopped: the stream ended early on purpose; rolled back below
                if stop.is_set():
                    tx.rollback()
                    return []
                loader.finish_writes()
                commit_started = time.monotonic()
                _commit(tx, table, mode)
                commit_seconds = time.monotonic() - commit_started
        finally:
            source.close()
        total = sum(result.rows_loaded for result in results)
        results.append(
            LoadResult(
                True,
                0,
                table,
                loader.loader_type,
                time.monotonic() - started,
                metadata={"operation": "commit", "total_rows": total},
            )
        )
        return results

    loads.start(monitor)
    done = False
    try:
        while True:
            try:  # destination failures are retried here, server failures below
                results = policy.call(
                    attempt,
                    what="loading batch",
                    before_retry=starting_over,
                    passes=(ServerError, ProtocolError),
                )
                break
            except (ServerError, ProtocolError) as exc:
                server.pause(server.failure(exc, "loading batch"))
                starting_over()
        done = bool(results)  # empty: stopped before the commit, rolled back
        if done:
            blocks = [r["end"] for x in results for r in x.metadata.get("block_ranges", ())]
            rows = sum(x.rows_loaded for x in results)
            monitor.committed(rows, 0, commit_seconds, max(blocks, default=None), True)
    except LoadStopped:
        return  # stopped while waiting to retry: nothing was committed
    except FatalLoadError as exc:
        monitor.failed(exc)
        yield LoadResult.fatal(table, loader.loader_type, exc)
        raise
    except Exception as exc:
        monitor.failed(exc)
        raise
    finally:
        loader.release_stream()  # the client keeps the loader open between loads
        monitor.ended(done)
    yield from results


def _commit(tx: Transaction, table: str, mode: LoadMode) -> None:
    """Commit the batch; a COMMIT of unknown outcome in append mode stops the load."""
    try:
        tx.commit()
    except DestinationError as exc:
        if not exc.commit_outcome_unknown or mode is LoadMode.OVERWRITE:
            raise  # not applied, or running it again replaces the table: retry
        raise FatalLoadError(
            f"FATAL: the COMMIT of a batch load into {table} failed ({exc}); it may or "
            "may not have been applied, and appending again could duplicate every "
            "row. Stopping client to prevent data loss: check the table, then load "
            "again (mode='overwrite' is safe to repeat)."
        ) from exc
