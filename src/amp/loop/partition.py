"""One partition of a parallel load, loaded by one worker, in whichever process it runs.

``PartitionWorker.load`` runs a partition through ``StreamingLoad``, the same loop as a
single load, bounded to its blocks (``Bounds``): its stream starts after block
``start - 1`` with an ``amp-resume`` cursor (protocol §4), its rows outside the
partition are dropped, its deletes never leave it, and it ends after the microbatch that
reaches its last block. Its checkpoint (worker id = partition number) commits with its
rows. A reorg that its stream reports below its first block waits until the partitions
holding those blocks are settled, then the worker takes the blocks over from the fork
(deletes and reloads them itself): a finished partition never sees the reorg.

What a worker shares with the rest of its load goes through ``Coordination``: its
results, its final status, and waiting for other partitions to settle. Threads of one
process share memory (``amp.loop.parallel.ThreadCoordination``); tasks on a Dask cluster
share the scheduler (``amp.cluster.coordination``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

from amp.errors import AmpError, FatalLoadError, LoadStopped
from amp.flight.seam import Transport
from amp.loaders.base import DataLoader
from amp.loop.blockhash import block_cursor, chain_head
from amp.loop.delivery import Delivery
from amp.loop.grouping import CommitGrouping
from amp.loop.streaming import StreamingLoad
from amp.loop.target import Bounds
from amp.monitoring.loads import LoadMonitor, loads
from amp.streaming.checkpoint import CheckpointStore
from amp.streaming.parallel import ParallelConfig, Partition
from amp.streaming.resilience import Edge, RetryPolicy
from amp.streaming.results import LoadResult
from amp.streaming.types import BlockRange

log = logging.getLogger("amp.parallel")

# How often a partition that starts past the chain head looks for its first block again.
HEAD_POLL_SECONDS = 1.0
# A partition's status once it is settled: nobody will write its blocks in this run.
SETTLED = ("done", "failed", "stopped")


@dataclass
class PartitionState:
    """What the run knows of one partition (the CLI's progress reads it)."""

    partition: Partition
    status: str = "pending"  # pending, running, done, failed, stopped
    committed: int | None = None  # last committed block
    rows: int = 0
    error: str | None = None
    # Tasks submitted for it on a cluster (more than one: its worker processes died).
    submissions: int = 0


class Coordination(Protocol):
    """How one partition's worker meets the rest of its load."""

    def publish(self, result: LoadResult) -> None:
        """Hand a result (a committed microbatch, a reorg, a failure) to the caller."""

    def settle(self, worker_id: int, status: str) -> None:
        """Partition ``worker_id`` is through for this run (one of SETTLED)."""

    def wait_settled(self, worker_ids: Sequence[int], stop: threading.Event) -> dict[int, str]:
        """Wait until each of ``worker_ids`` is settled; their statuses. Raises
        LoadStopped when ``stop`` is set first."""


@dataclass(kw_only=True)
class RunBasis:
    """What a parallel run streams and stops with, the same for the submitting process
    (``ParallelRun``) and every partition in any process (``PartitionContext``)."""

    transport: Transport
    table: str
    sql: str
    header: bool | None
    config: ParallelConfig
    grouping: CommitGrouping
    server_edge: Edge
    stop_event: threading.Event
    setup_lock: threading.Lock = field(default_factory=threading.Lock)

    def basis(self) -> dict[str, Any]:
        """This run's basis as keywords, to build the other side's object from."""
        return {f.name: getattr(self, f.name) for f in fields(RunBasis)}


@dataclass(kw_only=True)
class PartitionContext(RunBasis):
    """What every partition of one run shares, in any process."""

    # The plan's bounded partitions: the takeover after a deep reorg needs their bounds.
    partitions: tuple[Partition, ...]
    # Block H as read when the plan was made (the live worker starts after it).
    handoff_cursor: BlockRange | None = None


class PartitionWorker:
    """Loads partitions of one run, one at a time, with the loader it is given."""

    def __init__(self, context: PartitionContext, coordination: Coordination) -> None:
        self.context = context
        self.coordination = coordination

    def stoppable(self, policy: RetryPolicy) -> RetryPolicy:
        """A retry loop whose waits end when the load is stopped (LoadStopped)."""
        policy.stop = self.context.stop_event
        return policy

    def settle_stopped(self, state: PartitionState) -> None:
        """``state``'s partition ends this run without starting (the run was stopped)."""
        state.status = "stopped"
        self.coordination.settle(state.partition.worker_id, state.status)

    def settle_failed(self, state: PartitionState, exc: AmpError) -> None:
        """``state``'s partition fails before it starts."""
        self._failed(state, exc)
        self.coordination.settle(state.partition.worker_id, state.status)

    def load(
        self,
        loader: DataLoader[Any],
        state: PartitionState,
        committed: BlockRange | None,
    ) -> None:
        """Load ``state``'s partition from ``committed`` (its checkpoint's last range),
        updating ``state``; settles it, whatever ends it."""
        try:
            self._load(loader, state, committed)
        finally:
            if state.status not in SETTLED:
                state.status = "stopped"
            self.coordination.settle(state.partition.worker_id, state.status)

    def _load(
        self, loader: DataLoader[Any], state: PartitionState, committed: BlockRange | None
    ) -> None:
        context = self.context
        partition = state.partition
        state.status = "running"
        lower = partition.start
        if committed is not None:  # it took over blocks below after a reorg (_take_over)
            lower = max(context.config.min_block, min(lower, committed.end + 1))
        labels = {
            "worker_id": partition.worker_id,
            "partition": {"start": partition.start, "end": partition.end},
        }
        cursor = context.handoff_cursor if partition.live else None
        if committed is None and cursor is None and partition.start > 0:
            try:
                cursor = self._start_cursor(partition)
            except LoadStopped:
                state.status = "stopped"
                return
            except FatalLoadError as exc:  # the partition fails; the others go on
                monitor = loads.start(LoadMonitor(context.table, partition.worker_id))
                monitor.failed(exc)  # /healthz: it failed before its loop began
                failed = LoadResult.fatal(context.table, loader.loader_type, exc)
                failed.metadata.update(labels)
                self.coordination.publish(failed)
                self._failed(state, exc)
                return
            if cursor is None and context.stop_event.is_set():
                state.status = "stopped"
                return
        delivery = Delivery(
            loader,
            context.table,
            loader.checkpoint_config,
            loader.idempotency_config,
            partition.worker_id,
        )
        load = StreamingLoad(
            context.transport,
            loader,
            context.table,
            context.sql,
            streaming_header=context.header,
            resume_from=cursor,
            stop_event=context.stop_event,
            delivery=delivery,
            server_edge=context.server_edge,
            worker_id=partition.worker_id,
            grouping=context.grouping,
            bounds=Bounds(lower, partition.end),
            labels=labels,
            setup_lock=context.setup_lock,
            reach_below=lambda block: self._take_over(loader, partition, block),
        )
        try:
            for result in load.results():
                if result.success:
                    state.rows += result.rows_loaded
                    ranges = result.metadata.get("block_ranges") or ()
                    if ranges:
                        state.committed = int(ranges[-1]["end"])
                self.coordination.publish(result)
            stopped = context.stop_event.is_set() and not load.finished()
            state.status = "stopped" if stopped else "done"
        except LoadStopped:
            state.status = "stopped"
        except AmpError as exc:
            self._failed(state, exc)
        finally:
            loader.release_stream()

    def _take_over(self, loader: DataLoader[Any], partition: Partition, block: int) -> int:
        """A reorg seen by ``partition``'s stream reaches ``block``, below its first block:
        blocks that partitions below it loaded, and that they may never see again (a
        finished partition reads no more; a bounded load has no live worker to catch
        them). Once no partition below can still write them, this worker takes them over:
        deletes and reloads them itself. Returns its new first block (never below
        min_block: the blocks before are not this load's)."""
        context = self.context
        log.warning(
            "%s: a reorg reaches block %d, below its first block; it waits for the "
            "partitions below to finish, then reloads from there",
            partition.describe(),
            block,
        )
        # The partitions below this one that hold blocks from ``block`` on.
        reached = [
            other.worker_id
            for other in context.partitions
            if other.worker_id < partition.worker_id
            and other.end is not None
            and other.end >= block
        ]
        statuses = self.coordination.wait_settled(reached, context.stop_event)
        failed = [number for number, status in statuses.items() if status == "failed"]
        if failed:
            raise FatalLoadError(
                f"FATAL: a reorg reaches block {block}, below {partition.describe()}, while "
                f"{len(failed)} partition(s) below it failed; rerun the load to finish them "
                "and this worker will reload from the fork (with a live worker, a larger "
                "reorg_buffer keeps reorgs above the hand-off)"
            )
        # Those blocks were written by other workers: what this loader keeps in memory of
        # the table's state (Kafka's mirror) has not seen them.
        self.stoppable(loader.retry_policy(partition.worker_id)).call(
            lambda: loader.reload_state(context.table),
            what="reading the state the partitions below committed",
        )
        return max(block, context.config.min_block)

    def _start_cursor(self, partition: Partition) -> BlockRange | None:
        """Block ``start - 1`` as the cursor the partition's stream starts after (protocol
        §4), or None for a stream from the dataset's first block (a block below the
        chain head that does not exist is before it). Past the head (``max_block``
        beyond it) the block's hash does not exist yet: wait for it, reading again
        every ``HEAD_POLL_SECONDS`` (None when the load is stopped meanwhile)."""
        context = self.context
        config = context.config
        number = partition.start - 1
        policy = self.stoppable(context.server_edge.policy(partition.worker_id))

        def read() -> BlockRange | None:
            return policy.call(
                lambda: block_cursor(context.transport, config.dataset, number),
                what=f"reading block {number}",
            )

        cursor = read()
        if cursor is not None:
            return cursor
        head = policy.call(
            lambda: chain_head(context.transport, config.table_name, config.block_column),
            what="reading the chain head",
        )
        if head is not None and head >= number:
            log.info(
                "%s starts at the dataset's first block (there is no block %d)",
                partition.describe(),
                number,
            )
            return None
        log.info(
            "%s waits for block %d, past the chain head, to start after it",
            partition.describe(),
            number,
        )
        while not context.stop_event.wait(HEAD_POLL_SECONDS):
            cursor = read()
            if cursor is not None:
                return cursor
        return None

    def _failed(self, state: PartitionState, exc: AmpError) -> None:
        state.status = "failed"
        state.error = str(exc)
        if self.context.config.stop_on_error:
            self.context.stop_event.set()  # before anyone hears of the failure
        log.error("%s failed: %s", state.partition.describe(), exc)


def checkpoint_store(loader: DataLoader[Any]) -> CheckpointStore | None:
    """The connection's checkpoints, or None when it keeps none."""
    config = loader.checkpoint_config
    if not config.enabled:
        return None
    return CheckpointStore(loader.state_store(config.table_prefix), loader.connection_name)  # type: ignore[attr-defined]


def committed_position(loader: DataLoader[Any], table: str, worker_id: int) -> BlockRange | None:
    """The last range of partition ``worker_id``'s checkpoint (None: none yet, or the
    connection keeps no checkpoints). One call, for the caller's retry loop."""
    store = checkpoint_store(loader)
    if store is None:
        return None
    loader.ensure_connected()
    with loader.transaction():
        state = store.load(table, worker_id)
    return state.last_range() if state is not None else None
