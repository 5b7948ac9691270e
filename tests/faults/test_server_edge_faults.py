"""The server edge of a streaming load: transient statuses are retried, dropped streams
resume after the last committed microbatch, permanent statuses stop the load at once."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator

import pytest
from faultkit import (
    Destination,
    assert_contiguous_loads,
    expect_fatal,
    fast_resilience,
    log_trigger,
    messages_of,
    microbatch_message_layout,
    oracle_keys,
)

from amp.client import Client, LoadResult
from amp.devserver import DevServer
from kit import LOGS_QUERY, assert_table_equals_chain, block_range, drive

CONNECTION = "dest"


@pytest.fixture(autouse=True)
def info_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="amp")


# -- 1. transient server statuses ------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "status", "times"),
    [
        ("get_flight_info", "UNAVAILABLE", 2),
        ("do_get", "RESOURCE_EXHAUSTED", 1),
        ("get_flight_info", "DEADLINE_EXCEEDED", 1),
        ("do_get", "DEADLINE_EXCEEDED", 1),
        ("do_get", "INTERNAL", 1),
        ("do_get", "UNAVAILABLE", 1),
    ],
)
def test_transient_server_status_is_retried_and_load_equals_chain(
    srv: DevServer,
    client: Client,
    destination: Destination,
    caplog: pytest.LogCaptureFixture,
    method: str,
    status: str,
    times: int,
) -> None:
    table = destination.new_table()
    destination.configure(client, CONNECTION, fast_resilience())
    srv.faults.fail_next(method, status, times=times)

    results = drive(client.sql(LOGS_QUERY).load(CONNECTION, table, stream=True), srv.chain).results

    assert_contiguous_loads(results, srv)
    assert_table_equals_chain(destination, table, srv.chain)
    retries = messages_of(caplog.records, "for transient error:")
    assert retries, "the fault was not retried"
    assert retries[0].startswith("Retry attempt 1/5 for transient error:"), retries
    assert status in retries[0]
    assert len(retries) == times, retries
    backoffs = messages_of(caplog.records, "Backing off for")
    assert len(backoffs) == times
    assert all(m.startswith("Backing off for ") and m.endswith(" seconds...") for m in backoffs)
    logged = [r for r in caplog.records if r.getMessage().startswith(("Retry", "Backing"))]
    assert {r.levelno for r in logged} == {logging.INFO}


def test_consecutive_get_flight_info_failures_count_up(
    srv: DevServer, client: Client, destination: Destination, caplog: pytest.LogCaptureFixture
) -> None:
    table = destination.new_table()
    destination.configure(client, CONNECTION, fast_resilience())
    srv.faults.fail_next("get_flight_info", "UNAVAILABLE", times=2)

    drive(client.sql(LOGS_QUERY).load(CONNECTION, table, stream=True), srv.chain)

    retries = messages_of(caplog.records, "for transient error:")
    assert [m.split(" for ")[0] for m in retries] == ["Retry attempt 1/5", "Retry attempt 2/5"]
    assert_table_equals_chain(destination, table, srv.chain)


# -- 2. a stream cut mid-microbatch ----------------------------------------------------------

MAX_INTERVAL = 100
ROWS_PER_MESSAGE = 200


@pytest.fixture
def cut_server() -> Iterator[DevServer]:
    with DevServer(
        port=0,
        seed=3,
        max_interval=MAX_INTERVAL,
        rows_per_message=ROWS_PER_MESSAGE,
        initial_blocks=400,
    ) as server:
        yield server


def _plan_cuts(layout: list[int], cuts: list[int]) -> list[tuple[int, int]]:
    """Where each cut lands, as (microbatch index, data messages of it already sent),
    given that every new stream resumes after the last completed microbatch; fails the
    test setup unless every cut falls between two data messages of one microbatch."""
    landed = []
    resume_at = 0
    for cut in cuts:
        sent = 1  # the schema message
        index = resume_at
        while sent + layout[index] <= cut:
            sent += layout[index]
            index += 1
        inside = cut - sent
        assert 0 < inside < layout[index] - 1, (
            f"test setup: a cut after {cut} messages does not land inside microbatch "
            f"{index}'s data (layout {layout})"
        )
        landed.append((index, inside))
        resume_at = index
    return landed


@pytest.mark.parametrize(
    "cuts",
    [[4], [12, 12, 12], [4, 10, 12]],
    ids=["once", "three-times-same-count", "three-different-counts"],
)
def test_stream_cut_mid_microbatch_resumes_without_loss_or_duplicate(
    cut_server: DevServer,
    destination: Destination,
    caplog: pytest.LogCaptureFixture,
    cuts: list[int],
) -> None:
    srv = cut_server
    layout = microbatch_message_layout(srv, MAX_INTERVAL, ROWS_PER_MESSAGE)
    landed = _plan_cuts(layout, cuts)
    if len(set(cuts)) == 1:
        srv.faults.cut_stream_after(messages=cuts[0], times=len(cuts))
    else:
        for cut in cuts:
            srv.faults.cut_stream_after(messages=cut)
    client = Client(srv.url)
    table = destination.new_table()
    destination.configure(client, CONNECTION, fast_resilience())
    committed: list[tuple[int, int]] = []
    results_so_far: list[LoadResult] = []

    def check_committed(result: LoadResult) -> None:
        # After each microbatch the destination holds exactly the rows reported so far:
        # a partial microbatch that had been committed before a cut would show here.
        block = block_range(result)
        expected = len(oracle_keys(srv, block["start"], block["end"]))
        assert result.rows_loaded == expected, (block, result.rows_loaded, expected)
        total = sum(r.rows_loaded for r in results_so_far) + result.rows_loaded
        committed.append((destination.count(table, client, CONNECTION), total))
        results_so_far.append(result)

    try:
        results = drive(
            client.sql(LOGS_QUERY).load(CONNECTION, table, stream=True),
            srv.chain,
            on_result=check_committed,
        ).results
    finally:
        client.close()

    ranges = assert_contiguous_loads(results, srv)
    assert len(ranges) == len(layout), "a microbatch was loaded twice or not at all"
    assert [seen for seen, _ in committed] == [total for _, total in committed], committed
    cut_retries = messages_of(caplog.records, "stream cut after")
    assert len(cut_retries) == len(cuts), cut_retries
    assert all(m.startswith("Retry attempt ") for m in cut_retries)
    if len(cuts) > 1:
        assert len(set(landed)) == len(cuts), f"cuts must hit different points: {landed}"
    assert_table_equals_chain(destination, table, srv.chain)


# -- 3. permanent errors stop at once ---------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "query", "status"),
    [
        (("get_flight_info", "INVALID_ARGUMENT"), LOGS_QUERY, "INVALID_ARGUMENT"),
        (("get_flight_info", "UNAUTHENTICATED"), LOGS_QUERY, "UNAUTHENTICATED"),
        (("get_flight_info", "PERMISSION_DENIED"), LOGS_QUERY, "PERMISSION_DENIED"),
        (("do_get", "INVALID_ARGUMENT"), LOGS_QUERY, "INVALID_ARGUMENT"),
        (None, "SELECT count(*) FROM eth_firehose.logs", "INVALID_ARGUMENT"),
        (None, "SELECT * FROM eth_firehose.no_such_table", "NOT_FOUND"),
    ],
    ids=[
        "invalid-argument",
        "unauthenticated",
        "permission-denied",
        "do-get-invalid",
        "not-incremental",
        "unknown-table",
    ],
)
def test_permanent_server_error_fails_at_once(
    srv: DevServer,
    client: Client,
    destination: Destination,
    caplog: pytest.LogCaptureFixture,
    fault: tuple[str, str] | None,
    query: str,
    status: str,
) -> None:
    table = destination.new_table()
    destination.configure(client, CONNECTION, fast_resilience())
    if fault is not None:
        srv.faults.fail_next(*fault)

    _, error = expect_fatal(
        client.sql(query).load(CONNECTION, table, stream=True), srv, "FATAL: Permanent error"
    )

    assert status in str(error)
    assert "Stopping client to prevent data loss" in str(error)
    assert not messages_of(caplog.records, "Retry attempt"), "a permanent error was retried"
    assert not messages_of(caplog.records, "Backing off")
    fatal_logs = [r for r in caplog.records if r.getMessage().startswith("FATAL:")]
    assert [r.levelno for r in fatal_logs] == [logging.ERROR]
    if destination.exists(table):
        assert destination.count(table) == 0


# -- 4. retries exhausted ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "method",
    [
        "get_flight_info",
        # A DoGet that fails every time must exhaust the retries as well; a GetFlightInfo
        # that succeeds in between is not progress (no microbatch completed).
        "do_get",
    ],
)
def test_retries_exhausted_is_fatal(
    srv: DevServer,
    client: Client,
    destination: Destination,
    caplog: pytest.LogCaptureFixture,
    method: str,
) -> None:
    table = destination.new_table()
    destination.configure(client, CONNECTION, fast_resilience(max_retries=3))
    srv.faults.fail_next(method, "UNAVAILABLE", times=10)

    _, error = expect_fatal(
        client.sql(LOGS_QUERY).load(CONNECTION, table, stream=True),
        srv,
        "FATAL: Max retries (3) exceeded. Stopping client to prevent data loss. Last error: ",
    )

    assert "UNAVAILABLE" in str(error)
    retries = messages_of(caplog.records, "for transient error:")
    assert [m.split(" for ")[0] for m in retries] == [
        "Retry attempt 1/3",
        "Retry attempt 2/3",
        "Retry attempt 3/3",
    ]
    if destination.exists(table):
        assert destination.count(table) == 0


def test_repeated_stream_cuts_without_progress_exhaust_retries(
    srv: DevServer, client: Client, destination: Destination, caplog: pytest.LogCaptureFixture
) -> None:
    """A stream that drops before completing any microbatch, again and again, is not
    progress: after max_retries the load must stop (not loop at 'Retry attempt 1/3')."""
    table = destination.new_table()
    destination.configure(client, CONNECTION, fast_resilience(max_retries=3))
    srv.faults.cut_stream_after(messages=2, times=10)

    expect_fatal(
        client.sql(LOGS_QUERY).load(CONNECTION, table, stream=True),
        srv,
        "FATAL: Max retries (3) exceeded.",
    )
    retries = messages_of(caplog.records, "for transient error:")
    assert len(retries) == 3, retries
    if destination.exists(table):
        assert destination.count(table) == 0


# -- keep-alives, and a reorg while the stream is down ----------------------------------------


def test_keepalives_in_a_slow_microbatch_then_a_cut_lose_nothing(
    destination: Destination, caplog: pytest.LogCaptureFixture
) -> None:
    """Zero-row keep-alives (ranges_complete false) while a slow microbatch runs, and the
    stream cut right after two of them, before any row of the microbatch arrived."""
    with DevServer(
        port=0,
        seed=5,
        initial_blocks=30,
        max_interval=10,
        rows_per_message=10_000,
        keepalive_interval=0.02,
    ) as srv:
        srv.faults.set_latency(0.25)  # > the server's 0.1 s poll: two keep-alives
        srv.faults.cut_stream_after(messages=3)  # schema, then keep-alives only
        client = Client(srv.url)
        table = destination.new_table()
        destination.configure(client, CONNECTION, fast_resilience())
        try:
            results = drive(
                client.sql(LOGS_QUERY).load(CONNECTION, table, stream=True), srv.chain
            ).results
        finally:
            client.close()
        ranges = assert_contiguous_loads(results, srv)
        assert len(ranges) == 3
        assert len(messages_of(caplog.records, "stream cut after 3 messages")) == 1
        assert_table_equals_chain(destination, table, srv.chain)


def test_reorg_while_the_stream_is_down_is_applied_on_resume(
    srv: DevServer, client: Client, destination: Destination, caplog: pytest.LogCaptureFixture
) -> None:
    """The stream drops in the second microbatch; before the client reconnects, a reorg
    replaces blocks from the middle of the first (committed) one. The amp-resume cursor
    now names a forked block: the server walks back, the client deletes the reorged rows
    and the table ends equal to the new canonical chain."""
    layout = microbatch_message_layout(srv, 50, 100)
    srv.faults.cut_stream_after(messages=1 + layout[0] + 2)
    fork_at = srv.chain.first_block + 40
    depth = srv.chain.head - fork_at + 1
    table = destination.new_table()
    destination.configure(client, CONNECTION, fast_resilience())
    old_keys = set(oracle_keys(srv))
    first_end = srv.chain.first_block + 49
    old_reorged_rows = len(oracle_keys(srv, fork_at, first_end))  # before the reorg

    with log_trigger("Retry attempt 1/", lambda: srv.chain.reorg(depth)) as trigger:
        results = drive(
            client.sql(LOGS_QUERY).load(CONNECTION, table, stream=True), srv.chain
        ).results

    assert trigger.fired == 1
    operations = [r.metadata["operation"] for r in results]
    assert operations[:2] == ["load", "reorg"], operations
    reorg = results[1].metadata
    assert reorg["invalidated_range"]["start"] == fork_at, reorg
    assert block_range(results[0])["end"] == first_end
    assert reorg["rows_deleted"] == old_reorged_rows
    loads = [block_range(r) for r in results[2:]]
    assert loads[0]["start"] == fork_at
    for previous, current in itertools.pairwise(loads):
        assert current["start"] == previous["end"] + 1
    assert loads[-1]["end"] == srv.chain.head
    assert set(oracle_keys(srv)) != old_keys, "the reorg changed nothing: test setup"
    assert_table_equals_chain(destination, table, srv.chain)
