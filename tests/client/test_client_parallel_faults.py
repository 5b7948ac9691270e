"""Parallel streaming loads through faults: server streams cut or ended mid-partition, a
PostgreSQL outage that all workers see through one shared circuit breaker, a partition
whose start cursor cannot be read. Each load must end equal to the canonical chain over
``[min_block, max_block]`` (the failed partition after a rerun)."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import pytest
from oracle import Destination, connected

from amp.client import LoadResult
from amp.devserver import DevServer
from amp.devserver.faults import StreamFaults
from amp.errors import FatalLoadError
from amp.streaming.resilience import CircuitState
from faultlib import RESILIENCE_LOGGER, log_trigger
from kit import PG_HOST, PG_PORT, assert_table_equals_chain
from parallelkit import split
from tcpproxy import TcpProxy

pytestmark = pytest.mark.timeout(120)

QUERY = "SELECT * FROM eth_firehose.logs"
RETRY = "for transient error"


def fast(destination: Destination, opens_after: int = 3, **extra: Any) -> Destination:
    """``destination`` with checkpoints, a commit per microbatch and millisecond retries
    (a breaker that opens after ``opens_after`` consecutive failures and probes after
    100 ms)."""
    config = {
        **destination.config,
        "checkpoint": {"enabled": True},
        "commit_grouping": {"enabled": False},
        "resilience": {
            "retry": {
                "initial_backoff_ms": 5,
                "max_backoff_ms": 50,
                "jitter": False,
                "max_retries": 10,
            },
            "circuit_breaker": {"failure_threshold": opens_after, "timeout_ms": 100},
            "back_pressure": {"max_delay_ms": 50},
        },
        **extra,
    }
    return replace(destination, config=config)


def retries(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if RETRY in r.getMessage()]


@pytest.mark.parametrize("fault", ["cut", "ended"])
def test_partitions_whose_server_streams_break_resume_exactly(
    destination: Destination, fault: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Six streams break after 4 messages (schema, one microbatch, the next one's data):
    dropped with UNAVAILABLE, or ended cleanly. Every partition reconnects from what it
    committed; nothing is lost or loaded twice at the break or at a seam."""
    caplog.set_level(logging.INFO, logger=RESILIENCE_LOGGER)
    table = destination.new_table("par")
    with (
        DevServer(port=0, seed=31, initial_blocks=1_600, max_interval=50) as srv,
        # The server breaker stays closed: with millisecond retries its open periods
        # would soon exhaust a worker's budget for waiting on it (that is not tested here).
        connected(srv, fast(destination, opens_after=50)) as client,
    ):
        arm = srv.faults.cut_stream_after if fault == "cut" else srv.faults.end_stream_after
        arm(4, times=6)
        results = list(
            client.sql(QUERY).load("dest", table, stream=True, parallel_config=split(3, 0, 1_499))
        )
        assert all(r.success for r in results), [r.error for r in results if not r.success]
        assert srv.faults.take_stream_faults() == StreamFaults(), "a fault was never used"
        assert_table_equals_chain(destination, table, srv.chain, "logs", blocks=(0, 1_499))
        # Batch reads of a partition's start block (3 messages) use up a fault unharmed;
        # the others broke a partition's stream, which was retried. Every worker's
        # failure counts in the connection's one server breaker.
        failures = retries(caplog)
        assert len(failures) >= 4, [r.getMessage() for r in failures]
        assert client.server_edge("dest").breaker.total_failures == len(failures)
        assert client._get_loader("dest").circuit_breaker.total_failures == 0


def test_a_destination_outage_is_seen_by_all_workers_through_one_breaker(
    pg_destination: Destination, caplog: pytest.LogCaptureFixture
) -> None:
    """PostgreSQL's network path goes down after the first committed microbatch and comes
    back when the breaker opens. The connection's breaker (the one the guide monitors)
    counts every worker's failures; each worker has a rate limiter of its own."""
    caplog.set_level(logging.INFO, logger=RESILIENCE_LOGGER)
    table = pg_destination.new_table("par")
    proxy = TcpProxy(PG_HOST, PG_PORT)
    proxy.start()
    destination = fast(pg_destination, host="127.0.0.1", port=proxy.port)
    try:
        with (
            DevServer(port=0, seed=32, initial_blocks=1_600, max_interval=50) as srv,
            connected(srv, destination) as client,
            log_trigger("Circuit breaker OPEN after", proxy.start) as reopened,
        ):
            run = client.sql(QUERY).load(
                "dest", table, stream=True, parallel_config=split(3, 0, 1_499)
            )
            results: list[LoadResult] = []
            for result in run:
                assert result.success, result.error
                if not results:
                    proxy.stop()  # every worker's connection drops, reconnects are refused
                results.append(result)
            assert reopened.fired == 1
            loader = client._get_loader("dest")
            breaker = loader.circuit_breaker
            failures = retries(caplog)
            assert breaker.times_opened >= 1 and breaker.state is CircuitState.CLOSED
            assert breaker.total_failures == len(failures), (
                "the connection's breaker missed some worker's failures"
            )
            failing = {r.threadName for r in failures}
            assert len(failing) >= 2, f"only {failing} saw the outage"
            assert sorted(loader.edge._limiters) == [0, 1, 2]  # one rate limiter per worker
            assert {p.status for p in run.partitions.values()} == {"done"}
        assert_table_equals_chain(pg_destination, table, srv.chain, "logs", blocks=(0, 1_499))
        assert proxy.accepted > 3, "no worker connected again after the outage"
    finally:
        proxy.stop()


def test_a_partition_whose_start_block_cannot_be_read_fails_alone(
    destination: Destination,
) -> None:
    """One thread, partitions 10..109 and 110..209. Reading block 9 (partition 0's
    cursor) fails for good: partition 0 fails, partition 1 is still loaded by the same
    thread, the load ends naming partition 0, and a rerun loads it exactly."""
    table = destination.new_table("par")
    config = split(1, 10, 209, partition_size=100)
    with (
        DevServer(port=0, seed=33, initial_blocks=300, max_interval=40) as srv,
        connected(srv, fast(destination)) as client,
    ):
        srv.faults.fail_next("get_flight_info", "FAILED_PRECONDITION")
        run = client.sql(QUERY).load("dest", table, stream=True, parallel_config=config)
        results: list[LoadResult] = []
        with pytest.raises(FatalLoadError, match=r"partition 0 \(blocks 10\.\.109\)") as failed:
            results.extend(run)
        assert "run the same load again" in str(failed.value)
        [fatal] = [r for r in results if not r.success]
        assert fatal.metadata["worker_id"] == 0 and "reading block 9" in str(fatal.error)
        assert run.partitions is not None
        assert {w: p.status for w, p in run.partitions.items()} == {0: "failed", 1: "done"}
        assert_table_equals_chain(destination, table, srv.chain, "logs", blocks=(110, 209))

        rerun = list(client.sql(QUERY).load("dest", table, stream=True, parallel_config=config))
        assert {r.metadata["worker_id"] for r in rerun} == {0}
        assert_table_equals_chain(destination, table, srv.chain, "logs", blocks=(10, 209))
