"""A partition as a Dask task: ``run_partition(PartitionTask)`` in a worker process.

The task builds its own connections from what the user configured (the loader's name and
config, the server URL and the token given to ``Client``), reads the partition's
checkpoint, and loads it with ``PartitionWorker``, the loop a worker thread runs. Dask
runs it again when its worker process dies; it then resumes from the checkpoint its
predecessor committed, so nothing is loaded twice or skipped.

Secrets travel inside the pickled task only as the user gave them (a password in the
connection config, a token passed to ``Client``); the task's repr, which Dask shows and
logs, names the partition only. A token from ``AMP_AUTH_TOKEN`` and a PostgreSQL
password from ``PGPASSWORD`` or a ``.pgpass`` are read on each worker from its own
environment.
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from amp.cluster import distributed_module
from amp.cluster.coordination import DaskCoordination, RunWatcher
from amp.connection import ConnectionSettings
from amp.errors import AmpError, LoadStopped, StreamOwnedError
from amp.flight.transport import FlightTransport
from amp.loaders.base import DataLoader
from amp.loop.grouping import CommitGrouping
from amp.loop.partition import PartitionContext, PartitionState, PartitionWorker, committed_position
from amp.streaming.parallel import ParallelConfig, Partition
from amp.streaming.resilience import Edge

log = logging.getLogger("amp.parallel")

# A task whose stream is held by another writer at its start (a superseded task that
# finishes its microbatch, a PostgreSQL session that ends) tries again for this long.
OWNED_WAIT_SECONDS = 60.0


@dataclass(frozen=True, repr=False)
class PartitionTask:
    """Everything a task needs, picklable; ``repr`` shows no secret."""

    server_url: str
    auth_token: str | None  # only as given to Client (None: the worker's AMP_AUTH_TOKEN)
    dead_peer_timeout: float | None
    connection: str
    loader: str
    loader_module: str  # imported first, so a user's loader registers itself
    connection_config: dict[str, Any]
    table: str
    sql: str
    header: bool | None
    config: ParallelConfig  # executor='threads': the task runs it in its own process
    partitions: tuple[Partition, ...]  # the plan's bounded partitions
    partition: Partition
    token: str
    run_key: str
    grouping: CommitGrouping = field(default_factory=CommitGrouping)

    def __repr__(self) -> str:
        return f"PartitionTask({self.partition.describe()} of {self.table!r})"


@dataclass(frozen=True)
class TaskOutcome:
    """What a task returns: how its partition ended in this attempt."""

    worker_id: int
    status: str  # done, failed, stopped
    committed: int | None
    error: str | None


def run_partition(task: PartitionTask) -> TaskOutcome:
    """Load ``task.partition`` until it is done, fails, or its run is stopped."""
    importlib.import_module(task.loader_module)
    settings = ConnectionSettings.parse(task.connection, task.loader, task.connection_config)
    settings = settings.for_parallel(task.config)
    transport = FlightTransport(task.server_url, task.auth_token, task.dead_peer_timeout)
    server_edge = Edge(f"server {task.server_url}", settings.resilience)
    stop = threading.Event()
    context = PartitionContext(
        transport=transport,
        table=task.table,
        sql=task.sql,
        header=task.header,
        config=task.config,
        grouping=task.grouping,
        server_edge=server_edge,
        stop_event=stop,
        partitions=task.partitions,
    )
    dask = distributed_module()
    dask_client = dask.get_client()  # the worker's, in the task's thread
    # Leave the worker's thread slot: a partition mostly waits (on the server, the
    # destination, or another writer's open transaction), and a task lost with its worker
    # must be able to start again at once, even on a worker whose slots are all taken by
    # partitions waiting for it (a Kafka reader waits for the dead task's transaction until
    # its successor fences it). The submitter bounds the partitions at once (num_workers).
    dask.secede()
    worker = PartitionWorker(context, DaskCoordination(task.token, dask_client))
    loader = settings.build(task.connection)
    state = PartitionState(task.partition)
    number = task.partition.worker_id
    try:
        with RunWatcher(task.run_key, task.token, stop, dask_client):
            try:
                _claim_stream(loader, task, stop)
                committed = worker.stoppable(loader.retry_policy(number)).call(
                    lambda: committed_position(loader, task.table, number),
                    what=f"reading the checkpoint of {task.partition.describe()}",
                )
            except LoadStopped:
                worker.settle_stopped(state)
            except AmpError as exc:  # the partition fails before it starts
                worker.settle_failed(state, exc)
            else:
                worker.load(loader, state, committed)
    finally:
        loader.close()
        transport.close()
    return TaskOutcome(number, state.status, state.committed, state.error)


def _claim_stream(loader: DataLoader[Any], task: PartitionTask, stop: threading.Event) -> None:
    """Claim the partition's stream for ``loader``, waiting (up to OWNED_WAIT_SECONDS)
    while another writer holds it: after the submitting process restarted, the task it
    superseded may still be writing its last microbatch. Raises LoadStopped when the run
    is stopped meanwhile, StreamOwnedError when the stream is still held after the wait."""
    number = task.partition.worker_id
    deadline = time.monotonic() + OWNED_WAIT_SECONDS
    policy = loader.retry_policy(number)
    policy.stop = stop
    while True:
        try:
            policy.call(lambda: _claim(loader, task.table, number), what="claiming its stream")
            return
        except StreamOwnedError:
            if time.monotonic() >= deadline:
                raise
            log.info("%s: its stream is still held; waiting", task.partition.describe())
        if stop.wait(1.0):
            raise LoadStopped("stopped while waiting for the stream")


def _claim(loader: DataLoader[Any], table: str, number: int) -> None:
    """Claim the stream, and keep it: the load's own claim finds it held by this loader
    (claims are idempotent), and everything before it (the checkpoint read) acts as
    that worker (a Kafka producer's transactional id names it)."""
    loader.ensure_connected()
    loader.claim_stream(table, number)
