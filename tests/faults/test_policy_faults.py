"""The circuit breaker, the adaptive rate limiter, and turning resilience off, observed
through a streaming load's live monitoring objects and log lines."""

from __future__ import annotations

import itertools
import logging
from typing import Any

import pytest
from faultkit import (
    Destination,
    assert_contiguous_loads,
    expect_fatal,
    fast_resilience,
    log_trigger,
    messages_of,
)

from amp.client import Client, LoadResult
from amp.devserver import DevServer
from kit import LOGS_QUERY, assert_table_equals_chain, drive

CONNECTION = "dest"


@pytest.fixture(autouse=True)
def info_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="amp")


def _loader(client: Client) -> Any:
    return client._get_loader(CONNECTION)


# -- 6. circuit breaker -------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["get_flight_info", "do_get"])
def test_circuit_breaker_opens_rejects_probes_and_closes(
    srv: DevServer,
    client: Client,
    destination: Destination,
    caplog: pytest.LogCaptureFixture,
    method: str,
) -> None:
    """Three failures in a row with threshold 2: OPEN, a rejection, a failed probe (OPEN
    again), a rejection, a good probe, CLOSED after the second success."""
    table = destination.new_table()
    resilience = fast_resilience(
        max_retries=10, circuit_breaker={"failure_threshold": 2, "timeout_ms": 50}
    )
    resilience["retry"]["initial_backoff_ms"] = 1  # backoffs well under the 50 ms timeout
    destination.configure(client, CONNECTION, resilience)
    # Server faults: the server edge's breaker and limiter, never the destination's.
    breaker = client.server_edge(CONNECTION).breaker
    limiter = client.server_edge(CONNECTION).rate_limiter(0)
    destination_breaker = _loader(client).circuit_breaker
    seen_open: list[tuple[bool, int]] = []
    seen_closed: list[bool] = []
    srv.faults.fail_next(method, "UNAVAILABLE", times=3)

    with (
        log_trigger(
            "Circuit breaker OPEN after",
            lambda: seen_open.append((breaker.is_open(), limiter.get_current_delay())),
        ),
        log_trigger("Circuit breaker CLOSED", lambda: seen_closed.append(breaker.is_open())),
    ):
        results = drive(
            client.sql(LOGS_QUERY).load(CONNECTION, table, stream=True), srv.chain
        ).results

    breaker_logs = [
        (r.levelname, r.getMessage()) for r in caplog.records if "Circuit breaker" in r.message
    ]
    assert breaker_logs == [
        (
            "WARNING",
            "Circuit breaker OPEN after 2 consecutive failures. Rejecting requests for 50ms.",
        ),
        ("INFO", "Circuit breaker HALF-OPEN after 50ms timeout. Testing service recovery..."),
        ("WARNING", "Circuit breaker OPEN: recovery test failed. Rejecting requests for 50ms."),
        ("INFO", "Circuit breaker HALF-OPEN after 50ms timeout. Testing service recovery..."),
        ("INFO", "Circuit breaker CLOSED. Service recovered, resuming normal operation."),
    ], breaker_logs
    assert seen_open == [(True, 0)]  # the guide's monitoring calls, while it is open
    assert seen_closed == [False]
    # A rejection is no attempt: it waits for the probe (and logs that), no "Retry attempt".
    assert not messages_of(caplog.records, "is OPEN after")
    assert len(messages_of(caplog.records, "for the open circuit breaker")) == 2
    assert breaker.rejected_calls == 2
    assert destination_breaker.times_opened == 0  # a server outage is not the database's
    assert breaker.times_opened == 2
    assert not breaker.is_open()
    assert breaker.state.value == "CLOSED"
    assert_contiguous_loads(results, srv)
    assert_table_equals_chain(destination, table, srv.chain)


# -- 7. adaptive rate limiting ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "raises_delay"),
    [("RESOURCE_EXHAUSTED", True), ("DEADLINE_EXCEEDED", True), ("UNAVAILABLE", False)],
)
def test_rate_limits_raise_the_delay_and_successes_lower_it(
    srv: DevServer,
    client: Client,
    destination: Destination,
    status: str,
    raises_delay: bool,
) -> None:
    table = destination.new_table()
    destination.configure(client, CONNECTION, fast_resilience(back_pressure={"max_delay_ms": 50}))
    limiter = client.server_edge(CONNECTION).rate_limiter(0)  # server faults: server edge
    assert limiter.get_current_delay() == 0
    at_backoff: list[int] = []
    after_microbatch: list[int] = []
    srv.faults.fail_next("do_get", status, times=2)

    def record(result: LoadResult) -> None:
        after_microbatch.append(limiter.get_current_delay())

    with log_trigger(
        "Backing off for", lambda: at_backoff.append(limiter.get_current_delay()), once=False
    ):
        results = drive(
            client.sql(LOGS_QUERY).load(CONNECTION, table, stream=True), srv.chain, on_result=record
        ).results

    assert len(at_backoff) == 2
    if not raises_delay:
        assert at_backoff == [0, 0] and set(after_microbatch) == {0}
    else:
        assert at_backoff == [50, 50]  # capped at max_delay_ms
        assert 0 < after_microbatch[0] < 50, after_microbatch
        assert after_microbatch[-1] < after_microbatch[0], after_microbatch
        for before, after in itertools.pairwise(after_microbatch):
            assert after < before or after == before == 0, after_microbatch
    assert_contiguous_loads(results, srv)
    assert_table_equals_chain(destination, table, srv.chain)


# -- 8. resilience disabled -------------------------------------------------------------------

DISABLED = {
    "retry": {"enabled": False},
    "circuit_breaker": {"enabled": False},
    "back_pressure": {"enabled": False},
}


@pytest.mark.parametrize(
    ("method", "status"),
    [("do_get", "RESOURCE_EXHAUSTED"), ("get_flight_info", "UNAVAILABLE")],
)
def test_disabled_resilience_stops_on_a_single_transient_fault(
    srv: DevServer,
    client: Client,
    destination: Destination,
    caplog: pytest.LogCaptureFixture,
    method: str,
    status: str,
) -> None:
    table = destination.new_table()
    destination.configure(client, CONNECTION, DISABLED)
    breaker = client.server_edge(CONNECTION).breaker
    limiter = client.server_edge(CONNECTION).rate_limiter(0)
    srv.faults.fail_next(method, status, times=1)

    _, error = expect_fatal(
        client.sql(LOGS_QUERY).load(CONNECTION, table, stream=True),
        srv,
        "FATAL: Max retries (0) exceeded. Stopping client to prevent data loss. Last error: ",
    )

    assert status in str(error)
    assert not messages_of(caplog.records, "Retry attempt")
    assert not messages_of(caplog.records, "Circuit breaker")
    assert not breaker.is_open()
    assert breaker.times_opened == 0
    assert limiter.get_current_delay() == 0
    if destination.exists(table):
        assert destination.count(table) == 0
