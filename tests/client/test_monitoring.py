"""Metrics and /healthz scraped over HTTP (urllib) while real loads run: the dev server,
real PostgreSQL, faults injected by the dev server and acted on from the loop's own log
records (no sleeps)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from oracle import Destination, pg_config
from prometheus_client.parser import text_string_to_metric_families

from amp.client import LoadResult
from amp.devserver import DevServer
from amp.errors import FatalLoadError
from amp.monitoring import MetricsServer, loads, serve_metrics
from faultlib import log_trigger
from kit import LOGS_QUERY, caught_up, collect, connected, drive

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

FAST = {
    "retry": {"initial_backoff_ms": 5, "max_backoff_ms": 50, "jitter": False, "max_retries": 5},
    "circuit_breaker": {"failure_threshold": 2, "timeout_ms": 50},
}


@pytest.fixture
def srv() -> Iterator[DevServer]:
    """200 blocks in microbatches of 50."""
    with DevServer(port=0, seed=7, initial_blocks=200, max_interval=50) as server:
        yield server


@pytest.fixture
def metrics() -> Iterator[MetricsServer]:
    loads.forget()  # loads of earlier tests in this process are not this test's
    server = serve_metrics(0)
    yield server
    server.close()
    loads.forget()


def scrape(server: MetricsServer) -> Samples:
    with urllib.request.urlopen(f"{server.url}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, table: str, **labels: str) -> float | None:
    key = (name, tuple(sorted({"table": table, "worker": "0", **labels}.items())))
    return samples.get(key)


def health(server: MetricsServer) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"{server.url}/healthz", timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def the_load(body: dict[str, Any], table: str) -> dict[str, Any]:
    found = [entry for entry in body["loads"] if entry["table"] == table]
    assert len(found) == 1, body
    return found[0]


def config(**extra: Any) -> dict[str, Any]:
    # One commit per microbatch, so that each result's counters are exact.
    return pg_config(commit_grouping={"enabled": False}, **extra)


def test_counters_during_and_after_a_streaming_load(
    srv: DevServer, pg_destination: Destination, metrics: MetricsServer
) -> None:
    table = pg_destination.new_table("mon")
    seen: list[tuple[int, int, float | None, float | None, int, dict[str, Any]]] = []
    rows_so_far = 0

    def during(result: LoadResult) -> None:
        nonlocal rows_so_far
        rows_so_far += result.rows_loaded
        samples = scrape(metrics)
        status, body = health(metrics)
        seen.append(
            (
                rows_so_far,
                len(seen) + 1,
                value(samples, "amp_rows_loaded_total", table),
                value(samples, "amp_microbatches_total", table),
                status,
                the_load(body, table),
            )
        )

    with connected(srv, "pg", "postgresql", config()) as client:
        run = client.sql(LOGS_QUERY).load("pg", table, stream=True)
        driven = drive(run, srv.chain, on_result=during)
    assert len(driven.loads()) == 4 and len(seen) == 4
    for rows, microbatches, rows_metric, microbatches_metric, status, entry in seen:
        assert rows_metric == rows and microbatches_metric == microbatches
        assert status == 200 and entry["state"] == "running" and entry["healthy"], entry
    assert seen[-1][5]["committed_block"] == srv.chain.head
    assert seen[-1][5]["head_lag"] == 0  # the server had nothing more: at its head

    after = scrape(metrics)
    loaded = pg_destination.count(table)
    assert loaded > 0
    assert value(after, "amp_rows_loaded_total", table) == loaded
    assert value(after, "amp_microbatches_total", table) == 4
    assert value(after, "amp_reorgs_total", table) == 0
    assert value(after, "amp_retries_total", table, edge="server") == 0
    assert value(after, "amp_commit_duration_seconds_count", table) == 4
    assert value(after, "amp_last_commit_timestamp_seconds", table) is not None
    status, body = health(metrics)  # stopped on request: not unhealthy
    assert status == 200 and the_load(body, table)["state"] == "stopped", body


def test_a_reorg_counts_its_deleted_rows(
    srv: DevServer, pg_destination: Destination, metrics: MetricsServer
) -> None:
    from kit import Reorg, assert_reorgs_reported

    table = pg_destination.new_table("mon")
    change = Reorg(3, mine=2)
    with connected(srv, "pg", "postgresql", config()) as client:
        run = client.sql(LOGS_QUERY).load("pg", table, stream=True)
        driven = drive(run, srv.chain, [change])
    assert_reorgs_reported(driven, [change])
    samples = scrape(metrics)
    assert value(samples, "amp_reorgs_total", table) == 1
    assert value(samples, "amp_rows_deleted_total", table) == change.rows_replaced
    loaded = sum(r.rows_loaded for r in driven.loads())
    assert value(samples, "amp_rows_loaded_total", table) == loaded


def test_breaker_gauge_and_healthz_during_a_server_outage(
    srv: DevServer, pg_destination: Destination, metrics: MetricsServer
) -> None:
    """Looked at as the breaker opens; it stays open for a minute, so what is seen does
    not depend on how fast the scrape is; then the load is stopped during its wait."""
    table = pg_destination.new_table("mon")
    during: list[tuple[Samples, int, dict[str, Any]]] = []
    holding = {**FAST, "circuit_breaker": {"failure_threshold": 2, "timeout_ms": 60_000}}

    with connected(srv, "pg", "postgresql", config(resilience=holding)) as client:
        run = client.sql(LOGS_QUERY).load("pg", table, stream=True)

        def look() -> None:
            status, body = health(metrics)
            during.append((scrape(metrics), status, the_load(body, table)))
            run.stop()  # ends the wait for the breaker

        srv.faults.fail_next("get_flight_info", "UNAVAILABLE", times=2)
        with log_trigger("Circuit breaker OPEN after", look):
            results = list(run)
    assert results == [] and len(during) == 1
    samples, status, entry = during[0]
    assert value(samples, "amp_circuit_breaker_open", table, edge="server") == 1
    assert value(samples, "amp_circuit_breaker_open", table, edge="destination") == 0
    # Seen as the 2nd failure opens the breaker, before its retry is decided.
    assert value(samples, "amp_retries_total", table, edge="server") == 1
    assert status == 503 and entry["problem"] == "the server circuit breaker is OPEN", entry

    after = scrape(metrics)
    assert value(after, "amp_retries_total", table, edge="server") == 2
    assert value(after, "amp_circuit_breaker_open", table, edge="server") is None  # ended
    status, body = health(metrics)
    assert status == 200 and the_load(body, table)["state"] == "stopped", body


def test_breaker_gauge_reads_zero_after_recovery_while_running(
    srv: DevServer, pg_destination: Destination, metrics: MetricsServer
) -> None:
    table = pg_destination.new_table("mon")
    srv.faults.fail_next("get_flight_info", "UNAVAILABLE", times=3)
    looked: list[tuple[Samples, int]] = []

    def at_head(result: LoadResult) -> bool:
        if caught_up(result, srv.chain):
            looked.append((scrape(metrics), health(metrics)[0]))
            return True
        return False

    with connected(srv, "pg", "postgresql", config(resilience=FAST)) as client:
        run = client.sql(LOGS_QUERY).load("pg", table, stream=True)
        drive(run, srv.chain, on_result=at_head)
    samples, status = looked[0]
    assert value(samples, "amp_circuit_breaker_open", table, edge="server") == 0
    assert status == 200


def test_healthz_503_after_a_fatal(
    srv: DevServer, pg_destination: Destination, metrics: MetricsServer
) -> None:
    table = pg_destination.new_table("mon")
    srv.faults.fail_next("get_flight_info", "INVALID_ARGUMENT")  # permanent: FATAL
    with connected(srv, "pg", "postgresql", config(resilience=FAST)) as client:
        run = client.sql(LOGS_QUERY).load("pg", table, stream=True)
        driven, error = collect(run, srv.chain)
    assert isinstance(error, FatalLoadError), error
    assert [r.success for r in driven.results] == [False]
    status, body = health(metrics)
    entry = the_load(body, table)
    assert status == 503 and not body["healthy"]
    assert entry["state"] == "failed" and entry["problem"].startswith(
        "stopped with a FATAL error: FATAL: Permanent error"
    ), entry


def test_a_finished_batch_load_is_healthy(
    srv: DevServer, pg_destination: Destination, metrics: MetricsServer
) -> None:
    table = pg_destination.new_table("mon")
    with connected(srv, "pg", "postgresql", config()) as client:
        results = list(client.sql(LOGS_QUERY).load("pg", table))
    loaded = pg_destination.count(table)
    assert sum(r.rows_loaded for r in results) == loaded
    samples = scrape(metrics)
    assert value(samples, "amp_rows_loaded_total", table) == loaded
    assert value(samples, "amp_microbatches_total", table) == 0
    status, body = health(metrics)
    assert status == 200 and the_load(body, table)["state"] == "done", body


def test_stall_rule_uses_the_chain_head(
    srv: DevServer, pg_destination: Destination, metrics: MetricsServer
) -> None:
    """With stall_seconds=0 a load behind the head is stalled at once, and one at the
    head never is: the head comes from the table's head source (the CLI's tracker)."""
    table = pg_destination.new_table("mon")
    strict = serve_metrics(0, stall_seconds=0)
    statuses: list[tuple[int, int | None]] = []

    def look(result: LoadResult) -> None:
        status, body = health(strict)
        statuses.append((status, the_load(body, table)["head_lag"]))

    try:
        with (
            loads.watching_head(table, lambda: srv.chain.head),
            connected(srv, "pg", "postgresql", config()) as client,
        ):
            run = client.sql(LOGS_QUERY).load("pg", table, stream=True)
            drive(run, srv.chain, on_result=look)
    finally:
        strict.close()
    head = srv.chain.head
    assert [lag for _, lag in statuses] == [head - 49, head - 99, head - 149, 0]
    assert [status for status, _ in statuses] == [503, 503, 503, 200]


def test_serve_metrics_checks_its_arguments() -> None:
    from amp.errors import ConfigError

    with pytest.raises(ConfigError, match="metrics port"):
        serve_metrics(70000)
    with pytest.raises(ConfigError, match="stall_seconds must be >= 0"):
        serve_metrics(0, stall_seconds=-1)
