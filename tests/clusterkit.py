"""A real Dask cluster for tests: ``distributed.LocalCluster`` with worker processes,
every listener on 127.0.0.1, no dashboard; and killing its workers.

A worker process is killed with SIGKILL (no goodbye to the scheduler, its sockets closed
by the kernel, as when a machine's process is OOM-killed); its nanny starts a new one.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import dask
import distributed
from distributed import LocalCluster

# Every task may be lost to a dead worker this many times before Dask gives up on it
# (KilledWorker; amp then submits it again): the kill tests lose a task more than once.
ALLOWED_FAILURES = 10


@dataclass
class DaskCluster:
    cluster: LocalCluster
    client: distributed.Client

    @property
    def address(self) -> str:
        return str(self.cluster.scheduler_address)

    def worker_pids(self) -> dict[str, int]:
        """Worker address -> the PID of its worker process."""
        return dict(self.client.run(os.getpid, on_error="ignore"))  # a dying one: left out

    def kill_worker_running(self, key_prefix: str) -> str | None:
        """SIGKILL the worker process running a task whose key starts with
        ``key_prefix``; its address (None: no such task is running now)."""
        processing = self.client.processing()
        pids = self.worker_pids()
        for address, keys in processing.items():
            if any(str(key).startswith(key_prefix) for key in keys) and address in pids:
                os.kill(pids[address], signal.SIGKILL)
                return address
        return None


@contextlib.contextmanager
def start_cluster(workers: int, allowed_failures: int = ALLOWED_FAILURES) -> Iterator[DaskCluster]:
    with dask.config.set({"distributed.scheduler.allowed-failures": allowed_failures}):
        cluster = LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            # Its HTTP endpoints (health, metrics) on a free port, not on 8787.
            scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
            silence_logs=40,  # ERROR: a killed worker's nanny warns at length
        )
    client = distributed.Client(cluster, set_as_default=False)
    try:
        yield DaskCluster(cluster, client)
    finally:
        client.close()
        cluster.close()


def load_killing_workers(
    results: Iterable[Any], cluster: DaskCluster, kills: int, every: int = 5
) -> tuple[list[Any], int]:
    """Iterate a load's results; after every ``every``-th, SIGKILL the worker process
    running one of its partitions, until ``kills`` kills landed. Returns the results and
    how many kills landed (each in a partition's task while it ran)."""
    seen: list[Any] = []
    landed = 0
    for result in results:
        assert result.success, result.error
        seen.append(result)
        due = landed < kills and len(seen) % every == 0
        if due and cluster.kill_worker_running("amp-partition-") is not None:
            landed += 1
    return seen, landed
