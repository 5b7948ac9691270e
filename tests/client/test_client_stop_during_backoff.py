"""``stop()`` while a load waits to retry ends it at once: a backoff of minutes is not sat
out, nothing uncommitted is kept, and a rerun finishes exactly.

Synchronisation: the policy logs "Backing off for ..." when a wait begins; a log handler
turns that line into an event, so the stop lands inside the wait without any sleep.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import pytest
from oracle import Destination, connected

from amp.client import LoadResult, LoadRun
from amp.devserver import DevServer
from amp.streaming.parallel import ParallelConfig
from faultlib import log_trigger
from kit import assert_table_equals_chain

pytestmark = pytest.mark.timeout(60)

QUERY = "SELECT * FROM eth_firehose.logs"
# A first retry 10 minutes away: without the stop the test would time out.
SLOW_RETRIES = {"retry": {"initial_backoff_ms": 600_000, "max_backoff_ms": 600_000}}


@contextmanager
def _backing_off() -> Iterator[threading.Event]:
    """An event set when a retry wait begins (the policy logs "Backing off for ...")."""
    seen = threading.Event()
    with log_trigger("Backing off for", seen.set, once=False):
        yield seen


def _stop_when_backing_off(run: LoadRun, seen: threading.Event) -> list[LoadResult]:
    """Iterate ``run`` on a thread, stop it once it waits to retry; its results."""
    results: list[LoadResult] = []
    worker = threading.Thread(target=lambda: results.extend(run), daemon=True)
    worker.start()
    assert seen.wait(30), "the load never began to wait for a retry"
    run.stop()
    worker.join(30)  # a bound, not a synchronisation: the stop must end it well before
    assert not worker.is_alive(), "stop() did not end the wait to retry"
    return results


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "batch"])
def test_stop_ends_a_server_backoff_at_once(pg_destination: Destination, stream: bool) -> None:
    table = pg_destination.new_table("stop")
    config: dict[str, Any] = {**pg_destination.config, "resilience": SLOW_RETRIES}
    with (
        DevServer(port=0, seed=2, initial_blocks=50) as srv,
        connected(srv, replace(pg_destination, config=config)) as client,
        _backing_off() as seen,
    ):
        srv.faults.fail_next("get_flight_info", "UNAVAILABLE", times=1)
        results = _stop_when_backing_off(client.sql(QUERY).load("dest", table, stream=stream), seen)
        assert results == []
        assert not pg_destination.exists(table) or pg_destination.count(table) == 0
        # The fault is spent: a rerun loads everything, once.
        if stream:
            rerun = client.sql(QUERY).load("dest", table, stream=True)
            for result in rerun:
                ranges = result.metadata.get("block_ranges") or []
                if ranges and ranges[-1]["end"] == srv.chain.head:
                    break
            rerun.close()
        else:
            list(client.sql(QUERY).load("dest", table))
        assert_table_equals_chain(pg_destination, table, srv.chain, "logs")


def test_stop_ends_every_parallel_workers_backoff(pg_destination: Destination) -> None:
    table = pg_destination.new_table("stop")
    config: dict[str, Any] = {
        **pg_destination.config,
        "resilience": SLOW_RETRIES,
        "checkpoint": {"enabled": True},
    }
    parallel = ParallelConfig(
        num_workers=2, table_name="eth_firehose.blocks", min_block=0, max_block=199
    )
    with (
        DevServer(port=0, seed=2, initial_blocks=300, max_interval=50) as srv,
        connected(srv, replace(pg_destination, config=config)) as client,
        _backing_off() as seen,
    ):
        srv.faults.fail_next("do_get", "UNAVAILABLE", times=2)
        run = client.sql(QUERY).load("dest", table, stream=True, parallel_config=parallel)
        _stop_when_backing_off(run, seen)
        assert run.partitions is not None
        # a worker that had not taken its partition yet when stopped leaves it pending
        assert {s.status for s in run.partitions.values()} <= {"stopped", "done", "pending"}
        # A worker stopped before its DoGet leaves the second failure armed: disarm it.
        srv.faults.clear()
        # A rerun continues from the checkpoints and ends with blocks 0..199 exactly.
        list(client.sql(QUERY).load("dest", table, stream=True, parallel_config=parallel))
        assert_table_equals_chain(pg_destination, table, srv.chain, "logs", blocks=(0, 199))
