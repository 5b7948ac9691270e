"""The submitting side of a parallel load on a Dask cluster.

``DaskExecutor.run`` submits one task per unfinished bounded partition
(``task.run_partition``), streams the live partition itself in a thread (it never ends,
so it is no task a cluster should hold), and yields every partition's results as the
tasks publish them. A task whose worker process died (Dask's ``KilledWorker``, after its
own re-runs) is submitted again, up to the retry config's ``max_retries`` more times: it
resumes from the checkpoint the dead one committed. ``stop()`` (and Ctrl-C) reach the
tasks through the run's owner variable; they stop at their next microbatch boundary.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

from amp.cluster import distributed_module
from amp.cluster.coordination import DaskCoordination, run_key
from amp.cluster.task import PartitionTask, TaskOutcome, run_partition
from amp.errors import ConfigError
from amp.loop.parallel import Finished, ParallelRun, Work
from amp.loop.partition import PartitionState, PartitionWorker
from amp.redact import redact_url
from amp.streaming.parallel import Partition
from amp.streaming.results import LoadResult

log = logging.getLogger("amp.parallel")

# How often the submitter looks for results and finished tasks.
POLL_SECONDS = 0.2
# How long a closing run waits for its tasks to stop at a microbatch boundary.
STOP_WAIT_SECONDS = 120.0


@dataclass(frozen=True)
class TaskTemplate:
    """What every task of a load shares (PartitionTask without its partition)."""

    server_url: str
    auth_token: str | None
    dead_peer_timeout: float | None
    connection: str
    loader: str
    loader_module: str
    connection_config: dict[str, Any]
    max_attempts: int  # submissions of one partition after worker deaths


class DaskExecutor:
    """Runs bounded partitions as tasks on the cluster of ``target`` (a scheduler
    address, or a ``distributed.Client`` the caller keeps open)."""

    def __init__(self, target: Any, template: TaskTemplate) -> None:
        self._dask = distributed_module()
        self.target = target
        self.template = template

    def _client(self) -> tuple[Any, bool]:
        """The Dask client, and whether this run opened it (and closes it)."""
        if not isinstance(self.target, str):
            return self.target, False
        try:
            return self._dask.Client(self.target, timeout="10s", set_as_default=False), True
        except OSError as exc:
            raise ConfigError(
                f"cannot reach the Dask scheduler at {redact_url(self.target)}: {exc}; start "
                "it (dask scheduler) or pass the address it listens on"
            ) from exc

    def run(self, run: ParallelRun, work: Work) -> Iterator[LoadResult]:
        client, owned = self._client()
        try:
            yield from _Submission(self, client, run, work).results()
        finally:
            if owned:
                client.close()


class _Submission:
    """One run of a load's partitions on the cluster."""

    def __init__(self, executor: DaskExecutor, client: Any, run: ParallelRun, work: Work) -> None:
        self.dask = executor._dask
        self.template = executor.template
        self.client = client
        self.run = run
        self.work = work
        self.token = uuid.uuid4().hex
        self.key = run_key(self.template.connection, run.table)
        self.coordination = DaskCoordination(self.token, client)
        self.futures: dict[int, Any] = {}
        self.pending: list[Partition] = list(work.todo)  # in order, not submitted yet
        self.attempts: dict[int, int] = {}
        self.local: queue.Queue[LoadResult | Finished] = queue.Queue()
        self.signalled = False

    def _task(self, partition: Partition) -> PartitionTask:
        template, run = self.template, self.run
        return PartitionTask(
            server_url=template.server_url,
            auth_token=template.auth_token,
            dead_peer_timeout=template.dead_peer_timeout,
            connection=template.connection,
            loader=template.loader,
            loader_module=template.loader_module,
            connection_config=template.connection_config,
            table=run.table,
            sql=run.sql,
            header=run.header,
            config=replace(run.config, executor="threads"),
            partitions=self.work.context.partitions,
            partition=partition,
            token=self.token,
            run_key=self.key,
            grouping=run.grouping,
        )

    def _fill(self) -> None:
        """Keep ``num_workers`` partitions submitted (the tasks leave their worker's thread
        slot, so the cluster's thread count does not bound them: this does)."""
        if self.run.stop_event.is_set():
            return
        while self.pending and len(self.futures) < self.run.config.num_workers:
            self._submit(self.pending.pop(0))

    def _submit(self, partition: Partition) -> None:
        number = partition.worker_id
        attempt = self.attempts.get(number, 0) + 1
        self.attempts[number] = attempt
        self.futures[number] = self.client.submit(
            run_partition,
            self._task(partition),
            key=f"amp-partition-{number}-{self.token[:8]}-{attempt}",
            pure=False,
        )
        state = self.run.states[number]
        state.status = "running"
        state.submissions = attempt

    def results(self) -> Iterator[LoadResult]:
        run, work = self.run, self.work
        self.dask.Variable(self.key, client=self.client).set(self.token)
        for number, state in run.states.items():
            if state.status == "done":
                self.coordination.settle(number, "done")
        self._fill()
        log.info(
            "Submitted %d partition(s) of %s to the Dask scheduler at %s (%d at a time)",
            len(work.todo),
            run.table,
            redact_url(str(self.client.scheduler.address)),
            run.config.num_workers,
        )
        live = self._start_live()
        try:
            while self.futures or live is not None:
                yield from self._new_results()
                self._collect_finished()
                self._fill()
                if live is not None and not live.is_alive():
                    live = None
                if run.stop_event.is_set():
                    self._signal_stop()
                if self.futures or live is not None:
                    threading.Event().wait(POLL_SECONDS)
            yield from self._new_results()
        finally:
            run.stop_event.set()
            self._signal_stop()
            self._wait_for_tasks()
            if live is not None:
                live.join()
            try:
                self.coordination.forget(list(run.states))
            except (OSError, RuntimeError) as exc:  # RuntimeError: the Dask client closed
                log.debug("could not remove the run's Dask variables: %s", exc)

    def _start_live(self) -> threading.Thread | None:
        """The live partition streams here, in a thread of its own (it never ends)."""
        live = self.work.live
        if live is None:
            return None
        run = self.run
        worker = PartitionWorker(self.work.context, self.coordination)

        def stream() -> None:
            error: BaseException | None = None
            try:
                loader = run.loaders(0)
                worker.load(
                    loader, run.states[live.worker_id], self.work.positions.get(live.worker_id)
                )
            except BaseException as exc:
                error = exc
            finally:
                self.local.put(Finished(live.worker_id, error))

        thread = threading.Thread(target=stream, daemon=True, name="amp-worker-live")
        thread.start()
        return thread

    def _new_results(self) -> Iterator[LoadResult]:
        """Results the tasks (and the live thread) published; a crash of the live thread
        (a bug) is raised."""
        for result in self.coordination.take_results():
            self._account(result)
            yield result
        while True:
            try:
                item = self.local.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, Finished) and item.error is not None:
                raise item.error

    def _account(self, result: LoadResult) -> None:
        """A task's state lives in its process: the submitter's copy follows its results."""
        number = result.metadata.get("worker_id")
        state = self.run.states.get(number) if isinstance(number, int) else None
        if state is None or not result.success or state.partition.live:
            return  # the live thread updates its own state
        state.rows += result.rows_loaded
        ranges = result.metadata.get("block_ranges") or ()
        if ranges:
            state.committed = int(ranges[-1]["end"])

    def _collect_finished(self) -> None:
        for number, future in list(self.futures.items()):
            if not future.done():
                continue
            del self.futures[number]
            state = self.run.states[number]
            if future.status == "finished":
                self._finished(state, future.result())
            elif future.status == "cancelled":  # before exception(), which raises then
                self._failed(state, "the Dask scheduler dropped its task (restarted or lost?)")
            elif isinstance(future.exception(), self.dask.KilledWorker):
                self._worker_died(state, future)
            else:
                error = future.exception()
                self._failed(state, f"its task raised {type(error).__name__}: {error}")

    def _finished(self, state: PartitionState, outcome: TaskOutcome) -> None:
        state.status = outcome.status
        if outcome.committed is not None:
            state.committed = max(state.committed or outcome.committed, outcome.committed)
        if outcome.status == "failed":
            self._failed(state, outcome.error or "failed")

    def _worker_died(self, state: PartitionState, future: Any) -> None:
        number = state.partition.worker_id
        attempts = self.attempts[number]
        if attempts < self.template.max_attempts and not self.run.stop_event.is_set():
            log.warning(
                "%s: its worker process died (%s); submitting it again (attempt %d of %d), "
                "it resumes from its checkpoint",
                state.partition.describe(),
                future.exception(),
                attempts + 1,
                self.template.max_attempts,
            )
            self._submit(state.partition)
            return
        if self.run.stop_event.is_set():
            state.status = "stopped"
            self.coordination.settle(number, "stopped")
            return
        self._failed(
            state,
            f"its worker processes died {attempts} times (Dask: {future.exception()}); a "
            "partition that kills its workers may exhaust their memory: give workers more, "
            "or use a smaller partition_size",
        )

    def _failed(self, state: PartitionState, error: str) -> None:
        state.status = "failed"
        state.error = error
        self.coordination.settle(state.partition.worker_id, "failed")
        log.error("%s failed: %s", state.partition.describe(), error)
        if self.run.config.stop_on_error:
            self.run.stop_event.set()

    def _signal_stop(self) -> None:
        """Tell the tasks to stop at their next microbatch boundary (once)."""
        if self.signalled:
            return
        self.signalled = True
        try:
            self.dask.Variable(self.key, client=self.client).set(f"{self.token}:stop")
        except (OSError, RuntimeError) as exc:  # RuntimeError: the Dask client is closed
            log.warning("could not tell the Dask tasks to stop: %s", exc)

    def _wait_for_tasks(self) -> None:
        """After a stop: let the tasks end their microbatch, then collect them."""
        if not self.futures:
            return
        deadline = time.monotonic() + STOP_WAIT_SECONDS
        pending = list(self.futures.values())
        while any(not future.done() for future in pending):
            if time.monotonic() >= deadline:
                log.warning(
                    "%d Dask task(s) did not stop within %g s; cancelling them",
                    sum(not future.done() for future in pending),
                    STOP_WAIT_SECONDS,
                )
                self.client.cancel(pending)
                break
            threading.Event().wait(POLL_SECONDS)
        for result in self.coordination.take_results():
            self._account(result)
        self._collect_finished()
        for number in list(self.futures):
            self.run.states[number].status = "stopped"
        self.futures.clear()
