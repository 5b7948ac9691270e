"""Coordination of a parallel load's partitions through the Dask scheduler.

Tasks run in other processes, so what worker threads share in memory goes through the
scheduler's named primitives, all named after the run's token (a new one at each start
of the submitting process, so a superseded run's tasks never touch the new run's):

- ``amp-{token}-results``, a Queue: every partition's results, read by the submitter;
- ``amp-{token}-status-{n}``, a Variable, then ``amp-{token}-settled-{n}``, an Event:
  partition n is settled, with that status (a takeover after a deep reorg waits on it);
- ``amp-run-{connection}-{table}``, a Variable: the token of the run that owns the
  load, or ``{token}:stop``; a task whose token it no longer holds stops at its next
  microbatch boundary (the submitter stopped, or another one started the load again).

Waits use Event.wait with a timeout and polls of Queue(batch=True): a Variable or Queue
read that times out is logged as an error by the scheduler.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from types import TracebackType
from typing import Any

from amp.cluster import distributed_module
from amp.errors import LoadStopped
from amp.streaming.results import LoadResult

log = logging.getLogger("amp.parallel")

# How often a task looks at its run's owner variable.
WATCH_SECONDS = 1.0


def run_key(connection: str, table: str) -> str:
    """The name of the variable holding the token of the run that owns a load."""
    return f"amp-run-{connection}-{table}"


class DaskCoordination:
    """``amp.loop.partition.Coordination`` over the scheduler, through ``client`` (in a
    task, the worker's: ``distributed.get_client()``)."""

    def __init__(self, token: str, client: Any) -> None:
        self.token = token
        self._dask = distributed_module()
        self._client = client
        self._results = self._dask.Queue(f"amp-{token}-results", client=client)

    def _status(self, worker_id: int) -> Any:
        return self._dask.Variable(f"amp-{self.token}-status-{worker_id}", client=self._client)

    def _settled(self, worker_id: int) -> Any:
        return self._dask.Event(f"amp-{self.token}-settled-{worker_id}", client=self._client)

    def publish(self, result: LoadResult) -> None:
        self._results.put(result)

    def settle(self, worker_id: int, status: str) -> None:
        self._status(worker_id).set(status)
        self._settled(worker_id).set()

    def wait_settled(self, worker_ids: Sequence[int], stop: threading.Event) -> dict[int, str]:
        for number in worker_ids:
            settled = self._settled(number)
            while not settled.wait(0.5):
                if stop.is_set():
                    raise LoadStopped("stopped while waiting for the partitions below")
        return {number: str(self._status(number).get()) for number in worker_ids}

    def take_results(self) -> list[LoadResult]:
        """The results published since the last call (never waits)."""
        return list(self._results.get(batch=True))

    def forget(self, worker_ids: Sequence[int]) -> None:
        """Remove this run's primitives from the scheduler (the run is over)."""
        for number in worker_ids:
            self._status(number).delete()
            self._settled(number).clear()


class RunWatcher:
    """In a task: sets ``stop`` once the load's owner variable no longer holds this
    run's token (checked every WATCH_SECONDS while the task runs)."""

    def __init__(self, key: str, token: str, stop: threading.Event, client: Any) -> None:
        # The task's client, given explicitly: the watching thread is not the task's
        # thread, where Dask finds the worker's client by itself.
        self._variable = distributed_module().Variable(key, client=client)
        self._key = key
        self._token = token
        self._stop = stop
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True, name="amp-run-watch")

    def _watch(self) -> None:
        while not self._done.wait(WATCH_SECONDS):
            try:
                owner = self._variable.get(timeout=WATCH_SECONDS * 5)
            except Exception as exc:
                # Unreachable scheduler, timed-out read, a worker client that is closing:
                # Dask raises many kinds here, and each only means "not now".
                log.debug("reading %s failed (%s); looking again", self._key, exc)
                continue
            if owner != self._token:
                self._stop.set()
                return

    def __enter__(self) -> RunWatcher:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._done.set()
        self._thread.join()
