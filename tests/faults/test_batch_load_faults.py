"""Batch loads (``stream=False``): one destination transaction, all rows or none. A
transient fault reruns the whole query; a permanent one leaves nothing half-written."""

from __future__ import annotations

import logging
from typing import Any

import psycopg
import pytest
from faultkit import (
    SERIALIZATION_FAILURE,
    TERMINATE_SELF,
    Destination,
    FailOnce,
    add_check_constraint,
    fast_resilience,
    log_trigger,
    messages_of,
    oracle_keys,
)

from amp.client import Client, LoadResult
from amp.devserver import DevServer
from amp.errors import FatalLoadError
from kit import LOGS_QUERY, assert_table_equals_chain

CONNECTION = "dest"


@pytest.fixture(autouse=True)
def info_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="amp")


def _batch_load(client: Client, table: str, query: str = LOGS_QUERY) -> list[LoadResult]:
    return list(client.sql(query).load(CONNECTION, table, stream=False))


def _failed_batch_load(client: Client, table: str) -> tuple[list[LoadResult], FatalLoadError]:
    results: list[LoadResult] = []
    with pytest.raises(FatalLoadError) as raised:
        for result in client.sql(LOGS_QUERY).load(CONNECTION, table, stream=False):
            results.append(result)
    assert isinstance(raised.value, RuntimeError)
    assert len(results) == 1 and results[0].success is False, [r.metadata for r in results]
    assert results[0].error == str(raised.value)
    return results, raised.value


@pytest.mark.parametrize(
    "fault",
    ["get_flight_info UNAVAILABLE", "do_get UNAVAILABLE", "do_get RESOURCE_EXHAUSTED", "cut"],
)
def test_transient_fault_in_batch_load_reruns_it_whole(
    srv: DevServer,
    client: Client,
    destination: Destination,
    caplog: pytest.LogCaptureFixture,
    fault: str,
) -> None:
    table = destination.new_table()
    destination.configure(client, CONNECTION, fast_resilience())
    if fault == "cut":
        # Schema plus four data messages reach the destination before the stream drops.
        srv.faults.cut_stream_after(messages=5)
    else:
        method, status = fault.split()
        srv.faults.fail_next(method, status)

    results = _batch_load(client, table)

    expected = len(oracle_keys(srv))
    assert all(r.success for r in results)
    assert results[-1].metadata == {"operation": "commit", "total_rows": expected}
    assert sum(r.rows_loaded for r in results) == expected
    assert len(messages_of(caplog.records, "for transient error:")) == 1
    assert_table_equals_chain(destination, table, srv.chain)


@pytest.mark.parametrize(
    "action", [TERMINATE_SELF, SERIALIZATION_FAILURE], ids=["backend-terminated", "conflict"]
)
def test_transient_destination_failure_mid_batch_load_reruns_it_whole(
    srv: DevServer,
    client: Client,
    postgres: Destination,
    pg_admin: psycopg.Connection[Any],
    caplog: pytest.LogCaptureFixture,
    action: str,
) -> None:
    """PostgreSQL fails the load's transaction once, at a block in the middle of the
    chain: the whole query runs again and every row ends in the table once."""
    table = postgres.new_table()
    postgres.configure(client, CONNECTION, fast_resilience())
    _batch_load(client, table, "SELECT * FROM eth_firehose.logs WHERE block_num < 0")
    assert postgres.count(table) == 0
    trigger = FailOnce(pg_admin, table, srv.chain.first_block + 120, action)
    trigger.arm()
    try:
        results = _batch_load(client, table)
        assert trigger.fired(), "the trigger never fired: the fault was not injected"
        assert_table_equals_chain(postgres, table, srv.chain)
    finally:
        trigger.disarm()
    assert results[-1].metadata == {"operation": "commit", "total_rows": len(oracle_keys(srv))}
    assert len(messages_of(caplog.records, "for transient error:")) == 1


def test_permanent_server_error_after_a_partial_attempt_leaves_nothing(
    srv: DevServer, client: Client, destination: Destination
) -> None:
    """The first attempt writes some batches, then the stream drops; the rerun is refused
    with INVALID_ARGUMENT: the table keeps only what it held before the load."""
    table = destination.new_table()
    destination.configure(client, CONNECTION, fast_resilience())
    _batch_load(client, table, "SELECT * FROM eth_firehose.logs WHERE block_num < 20")
    before = sorted(destination.keys(table))
    assert before == sorted(oracle_keys(srv, srv.chain.first_block, 19))
    srv.faults.cut_stream_after(messages=5)

    with log_trigger(
        "Retry attempt 1/",
        lambda: srv.faults.fail_next("get_flight_info", "INVALID_ARGUMENT"),
    ) as trigger:
        _, error = _failed_batch_load(client, table)

    assert trigger.fired == 1
    assert str(error).startswith("FATAL: Permanent error loading batch (not retryable).")
    assert "INVALID_ARGUMENT" in str(error)
    assert sorted(destination.keys(table)) == before


def test_permanent_destination_error_mid_load_rolls_everything_back(
    srv: DevServer, client: Client, destination: Destination, caplog: pytest.LogCaptureFixture
) -> None:
    """Rows of blocks 0..99 are accepted, the first row of block 100 violates a CHECK
    constraint: the whole load is rolled back, no retry, the old rows stay untouched."""
    table = destination.new_table()
    destination.configure(client, CONNECTION, fast_resilience())
    _batch_load(client, table, "SELECT * FROM eth_firehose.logs WHERE block_num < 100")
    before = sorted(destination.keys(table, client, CONNECTION))
    assert before == sorted(oracle_keys(srv, srv.chain.first_block, 99))
    add_check_constraint(destination, client, CONNECTION, table, 100)

    _, error = _failed_batch_load(client, table)

    client._get_loader(CONNECTION).close()
    assert sorted(destination.keys(table)) == before, "the failed load left rows behind"
    # A constraint violation is permanent: stop at once, name it, retry nothing.
    assert str(error).startswith("FATAL: Permanent error loading batch (not retryable)."), error
    assert "CHECK constraint" in str(error) or "check constraint" in str(error), error
    assert not messages_of(caplog.records, "Retry attempt")


def test_batch_load_after_failed_one_equals_chain(
    srv: DevServer, client: Client, destination: Destination
) -> None:
    """After a load that failed permanently, a new load writes every row exactly once."""
    table = destination.new_table()
    destination.configure(client, CONNECTION, fast_resilience())
    srv.faults.cut_stream_after(messages=5)
    with log_trigger(
        "Retry attempt 1/", lambda: srv.faults.fail_next("do_get", "PERMISSION_DENIED")
    ):
        _failed_batch_load(client, table)
    _batch_load(client, table)
    assert_table_equals_chain(destination, table, srv.chain)
