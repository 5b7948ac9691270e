"""A parallel streaming load: partitions loaded side by side, then live streaming.

``ParallelLoad`` keeps the plan (the partitions and the hand-off block, stored in the
destination with the checkpoints, see ``parallel_plan``), finds what is left to do from
each partition's checkpoint, and hands the partitions to an executor: worker threads in
this process (``ThreadExecutor``, the default) or tasks on a Dask cluster
(``amp.cluster.executor``). Each partition is loaded by ``PartitionWorker``
(``amp.loop.partition``), the same loop as a single load bounded to its blocks; the
live worker (``max_block=None``) always runs here, in the submitting process.

Threads suffice on one machine: the network reads and the destinations' drivers release
the GIL, and a destination connection per worker is the unit of parallelism. They share
one breaker per edge (the server, the destination) and each has its own rate limiter.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from amp.errors import ConfigError, FatalLoadError, LoadStopped
from amp.loaders.base import DataLoader, LoadMode
from amp.loop.parallel_plan import Plan, PlanStore, check_same, new_plan
from amp.loop.partition import (
    PartitionContext,
    PartitionState,
    PartitionWorker,
    RunBasis,
    checkpoint_store,
)
from amp.loop.target import Bounds
from amp.streaming.parallel import Partition
from amp.streaming.resilience import RetryPolicy
from amp.streaming.results import LoadResult
from amp.streaming.types import BlockRange

__all__ = ["ParallelLoad", "ParallelRun", "PartitionState", "ThreadExecutor"]

log = logging.getLogger("amp.parallel")


@dataclass(kw_only=True)
class ParallelRun(RunBasis):
    """Everything the submitting process's side of a parallel load shares."""

    loaders: Callable[[int], DataLoader[Any]]  # worker index -> its loader (0: the connection's)
    states: dict[int, PartitionState] = field(default_factory=dict)


@dataclass
class Work:
    """What is left of a plan: the bounded partitions to load (in order) and the live
    one, with each partition's committed position (its checkpoint's last range)."""

    context: PartitionContext
    todo: list[Partition]
    live: Partition | None
    positions: dict[int, BlockRange]


class Executor(Protocol):
    """Runs the partitions of ``work``: yields their results as they commit, updates
    ``run.states``, and returns when every partition is settled (or the run stopped)."""

    def run(self, run: ParallelRun, work: Work) -> Iterator[LoadResult]: ...


class ParallelLoad:
    """``results()`` yields every worker's results until all partitions are done (or
    for ever with a live worker); ``stop()`` ends every worker at a microbatch boundary."""

    def __init__(self, run: ParallelRun, mode: LoadMode, executor: Executor | None = None) -> None:
        if mode is not LoadMode.APPEND:
            raise ConfigError(
                "a parallel load appends only; mode='overwrite' would let each worker drop "
                "the others' rows. Drop or truncate the table first, then load"
            )
        self.run = run
        self.stop_event = run.stop_event
        self.executor = executor if executor is not None else ThreadExecutor()
        self._resumable = True  # False when the connection keeps no checkpoints

    @property
    def states(self) -> dict[int, PartitionState]:
        return self.run.states

    def stop(self) -> None:
        self.stop_event.set()

    # -- start ----------------------------------------------------------------------------

    def _plan(self, loader: DataLoader[Any]) -> tuple[Plan, dict[int, BlockRange]]:
        """The stored plan (or a new one, stored) and each partition's checkpoint."""
        run = self.run
        checkpoints = checkpoint_store(loader)
        policy = self._stoppable(loader.retry_policy(0))

        def end_stale_writes() -> None:
            loader.ensure_connected()
            loader.end_stale_writes(run.table)

        policy.call(end_stale_writes, what="ending what a stopped load left open")
        if checkpoints is None:
            log.warning(
                "Parallel load without checkpoints: a restart loads every partition again; "
                "enable 'checkpoint' on the connection to resume where it stopped"
            )
            self._resumable = False
            plan = self._stoppable(run.server_edge.policy(0)).call(
                lambda: new_plan(run.config, run.transport), what="planning"
            )
            return plan, {}
        store = PlanStore(checkpoints, run.table)

        def read() -> tuple[Plan | None, dict[int, BlockRange]]:
            loader.ensure_connected()
            positions: dict[int, BlockRange] = {}
            # Two transactions: the plan is kept under its own table name, and a Kafka
            # transaction holds the state of one table only.
            with run.setup_lock:
                with loader.transaction():
                    checkpoints.ensure_tables()
                    stored = store.load()
                if stored is None:
                    return None, positions
                with loader.transaction():
                    for partition in stored.partitions:
                        state = checkpoints.load(run.table, partition.worker_id)
                        last = state.last_range() if state is not None else None
                        if last is not None:
                            positions[partition.worker_id] = last
            return stored, positions

        stored, positions = policy.call(read, what="reading the parallel plan")
        if stored is not None:
            check_same(stored, run.config, run.table)
            log.info("Resuming the stored parallel plan of %s", run.table)
            return stored, positions
        plan = self._stoppable(run.server_edge.policy(0)).call(
            lambda: new_plan(run.config, run.transport), what="planning"
        )

        def save() -> None:
            with run.setup_lock, loader.transaction():
                store.save(plan)

        policy.call(save, what="saving the parallel plan")
        return plan, {}

    # -- results ----------------------------------------------------------------------

    def _stoppable(self, policy: RetryPolicy) -> RetryPolicy:
        """A retry loop whose waits end when the load is stopped (LoadStopped)."""
        policy.stop = self.stop_event
        return policy

    def results(self) -> Iterator[LoadResult]:
        run = self.run
        try:
            plan, positions = self._plan(run.loaders(0))
        except LoadStopped:
            return
        todo: list[Partition] = []
        for partition in plan.bounded:
            state = PartitionState(partition)
            committed = positions.get(partition.worker_id)
            state.committed = committed.end if committed is not None else None
            if committed is not None and Bounds(partition.start, partition.end).reached(
                committed.end
            ):
                state.status = "done"
            else:
                todo.append(partition)  # in order: a partition's lower neighbours first
            run.states[partition.worker_id] = state
        live = plan.live
        if live is not None:
            run.states[live.worker_id] = PartitionState(live)
        context = PartitionContext(
            **run.basis(), partitions=plan.bounded, handoff_cursor=plan.handoff_cursor
        )
        yield from self.executor.run(run, Work(context, todo, live, positions))
        failed = [s for s in run.states.values() if s.status == "failed"]
        if failed:
            raise FatalLoadError(self._failure_message(failed))

    def _failure_message(self, failed: list[PartitionState]) -> str:
        """Which partitions failed, which others stopped unfinished, and how to resume."""
        run = self.run
        lines = "; ".join(f"{s.partition.describe()}: {s.error}" for s in failed)
        message = (
            f"FATAL: {len(failed)} partition(s) of the parallel load of {run.table} failed "
            f"({lines})"
        )
        stopped = [s.partition.describe() for s in run.states.values() if s.status == "stopped"]
        if stopped:
            message += f"; stopped unfinished: {', '.join(stopped)}"
        if self._resumable:
            return (
                f"{message}. What they committed stays; run the same load again (same "
                "ParallelConfig) to resume the unfinished partitions from their checkpoints"
            )
        return (
            f"{message}. This load keeps no checkpoints, so running it again loads every "
            "partition again: load into a new table, or enable 'checkpoint' on the "
            "connection before the next load"
        )


@dataclass
class Finished:
    worker: int
    error: BaseException | None = None


class ThreadCoordination:
    """Coordination of worker threads of one process: a queue and shared statuses."""

    def __init__(self) -> None:
        self.out: queue.Queue[LoadResult | Finished] = queue.Queue()
        self._settled = threading.Condition()
        self._statuses: dict[int, str] = {}

    def publish(self, result: LoadResult) -> None:
        self.out.put(result)

    def settle(self, worker_id: int, status: str) -> None:
        with self._settled:
            self._statuses[worker_id] = status
            self._settled.notify_all()

    def wait_settled(self, worker_ids: Sequence[int], stop: threading.Event) -> dict[int, str]:
        with self._settled:
            while not all(number in self._statuses for number in worker_ids):
                if stop.is_set():
                    raise LoadStopped("stopped while waiting for the partitions below")
                # Bounded: stop() may come from a signal handler, which cannot notify.
                self._settled.wait(0.5)
            return {number: self._statuses[number] for number in worker_ids}


class ThreadExecutor:
    """``num_workers`` threads take the bounded partitions in order, one at a time; one
    more thread streams live. Each thread has its own loader (``run.loaders(index)``)."""

    def run(self, run: ParallelRun, work: Work) -> Iterator[LoadResult]:
        coordination = ThreadCoordination()
        for number, state in run.states.items():
            if state.status == "done":
                coordination.settle(number, "done")
        worker = PartitionWorker(work.context, coordination)
        pending: queue.SimpleQueue[Partition] = queue.SimpleQueue()
        for partition in work.todo:
            pending.put(partition)

        def backfill(index: int) -> None:
            error: BaseException | None = None
            try:
                loader = run.loaders(index)
                while not run.stop_event.is_set():
                    try:
                        partition = pending.get_nowait()
                    except queue.Empty:
                        break
                    state = run.states[partition.worker_id]
                    worker.load(loader, state, work.positions.get(partition.worker_id))
            except BaseException as exc:  # reported to the caller's thread
                error = exc
            finally:
                coordination.out.put(Finished(index, error))

        def stream_live(index: int, live: Partition) -> None:
            error: BaseException | None = None
            try:
                state = run.states[live.worker_id]
                worker.load(run.loaders(index), state, work.positions.get(live.worker_id))
            except BaseException as exc:
                error = exc
            finally:
                coordination.out.put(Finished(index, error))

        count = min(run.config.num_workers, len(work.todo))
        threads = [
            threading.Thread(target=backfill, args=(i,), daemon=True, name=f"amp-worker-{i}")
            for i in range(count)
        ]
        if work.live is not None:
            threads.append(
                threading.Thread(
                    target=stream_live,
                    args=(count, work.live),
                    daemon=True,
                    name="amp-worker-live",
                )
            )
        yield from drain(run, coordination.out, threads)


def drain(
    run: ParallelRun, out: queue.Queue[LoadResult | Finished], threads: list[threading.Thread]
) -> Iterator[LoadResult]:
    """Start ``threads`` and yield what they put on ``out`` until each has put its
    ``Finished``; a thread's crash (a bug, not a load failure) stops the others and is
    raised here once they ended."""
    for thread in threads:
        thread.start()
    running = len(threads)
    crashed: BaseException | None = None
    try:
        while running:
            item = out.get()
            if isinstance(item, Finished):
                running -= 1
                if item.error is not None and crashed is None:
                    crashed = item.error
                    run.stop_event.set()
                continue
            yield item
    finally:
        run.stop_event.set()
        for thread in threads:
            thread.join()
    if crashed is not None:
        raise crashed
