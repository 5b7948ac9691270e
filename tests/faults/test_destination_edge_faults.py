"""The destination edge of a streaming load over a real PostgreSQL made to fail: a killed
backend, a lock timeout, the server unreachable behind a proxy. Each time the open
microbatch is rolled back, rewritten whole after reconnecting, and the table ends equal
to the chain."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from faultkit import (
    SERIALIZATION_FAILURE,
    TERMINATE_SELF,
    Destination,
    FailOnce,
    add_check_constraint,
    assert_contiguous_loads,
    fast_resilience,
    log_trigger,
    messages_of,
    oracle_keys,
)

from amp.client import Client, LoadResult
from amp.devserver import DevServer
from amp.errors import FatalLoadError
from kit import LOGS_QUERY, PG_DSN, PG_HOST, PG_PORT, assert_table_equals_chain, collect, drive
from tcpproxy import TcpProxy

CONNECTION = "pg"


@pytest.fixture(autouse=True)
def info_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="amp")


def _backend_pid(client: Client) -> int:
    loader: Any = client._get_loader(CONNECTION)
    return int(loader.connection.info.backend_pid)


def test_terminated_backend_mid_stream_reconnects_and_rewrites_microbatch(
    srv: DevServer,
    client: Client,
    postgres: Destination,
    pg_admin: psycopg.Connection[Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    table = postgres.new_table()
    postgres.configure(client, CONNECTION, fast_resilience())
    pids: list[int] = []

    def kill_after_first(result: LoadResult) -> None:
        if pids:
            return
        pid = _backend_pid(client)
        pids.append(pid)
        (found,) = pg_admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = %s AND application_name = 'amp'",
            (pid,),
        ).fetchone()  # type: ignore[misc]
        assert found == 1, "the loader's backend is not in pg_stat_activity as 'amp'"
        # With a timeout, pg_terminate_backend waits until the backend is gone.
        (killed,) = pg_admin.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,)).fetchone()  # type: ignore[misc]
        assert killed is True

    results = drive(
        client.sql(LOGS_QUERY).load(CONNECTION, table, stream=True),
        srv.chain,
        on_result=kill_after_first,
    ).results

    assert_contiguous_loads(results, srv)
    assert_table_equals_chain(postgres, table, srv.chain)
    retries = messages_of(caplog.records, "for transient error:")
    assert retries and retries[0].startswith("Retry attempt 1/5 for transient error:"), retries
    assert len(pids) == 1


def test_lock_timeout_is_retried_until_lock_released(
    srv: DevServer,
    client: Client,
    postgres: Destination,
    caplog: pytest.LogCaptureFixture,
) -> None:
    table = postgres.new_table()
    postgres.configure(
        client,
        CONNECTION,
        fast_resilience(),
        dsn=f"{PG_DSN} options='-c lock_timeout=100'",
    )
    locker = psycopg.connect(PG_DSN, autocommit=False, application_name="amp-faults-locker")
    locked: list[bool] = []

    def lock_after_first(result: LoadResult) -> None:
        if not locked:
            locker.execute(f'LOCK TABLE "{table}" IN ACCESS EXCLUSIVE MODE')
            locked.append(True)

    def release() -> None:
        locker.rollback()

    try:
        with log_trigger("Retry attempt 1/", release) as trigger:
            results = drive(
                client.sql(LOGS_QUERY).load(CONNECTION, table, stream=True),
                srv.chain,
                on_result=lock_after_first,
            ).results
    finally:
        locker.close()

    assert locked and trigger.fired == 1
    retries = messages_of(caplog.records, "for transient error:")
    assert len(retries) == 1, retries
    assert "lock timeout" in retries[0], retries
    assert_contiguous_loads(results, srv)
    assert_table_equals_chain(postgres, table, srv.chain)


@pytest.fixture
def proxy() -> Iterator[TcpProxy]:
    forwarding = TcpProxy(PG_HOST, PG_PORT)
    forwarding.start()
    yield forwarding
    forwarding.stop()


def test_unreachable_postgres_behind_proxy_is_retried_until_back(
    srv: DevServer,
    client: Client,
    postgres: Destination,
    proxy: TcpProxy,
    caplog: pytest.LogCaptureFixture,
) -> None:
    table = postgres.new_table()
    postgres.configure(
        client,
        CONNECTION,
        fast_resilience(max_retries=8),
        dsn=f"host=127.0.0.1 port={proxy.port} dbname=test user=postgres",
    )
    outages: list[int] = []

    def cut_after_first(result: LoadResult) -> None:
        if not outages:
            outages.append(result.metadata["block_ranges"][0]["end"])
            proxy.stop()

    with log_trigger("Retry attempt 3/", proxy.start) as trigger:
        results = drive(
            client.sql(LOGS_QUERY).load(CONNECTION, table, stream=True),
            srv.chain,
            on_result=cut_after_first,
        ).results

    assert outages and trigger.fired == 1
    assert proxy.running
    retries = messages_of(caplog.records, "for transient error:")
    assert [m.split(" for ")[0] for m in retries] == [
        "Retry attempt 1/8",
        "Retry attempt 2/8",
        "Retry attempt 3/8",
    ], retries
    # The first failure is the dropped connection, the next ones refused reconnects.
    assert "cannot connect" in retries[1], retries[1]
    assert proxy.accepted == 2, "expected one connection before the outage and one after"
    assert_contiguous_loads(results, srv)
    assert_table_equals_chain(postgres, table, srv.chain)


@pytest.mark.parametrize(
    ("action", "words"),
    [(TERMINATE_SELF, "administrator command"), (SERIALIZATION_FAILURE, "injected conflict")],
    ids=["backend-terminated", "serialization-failure"],
)
def test_failure_in_the_middle_of_a_microbatch_rewrites_it_whole(
    srv: DevServer,
    client: Client,
    postgres: Destination,
    pg_admin: psycopg.Connection[Any],
    caplog: pytest.LogCaptureFixture,
    action: str,
    words: str,
) -> None:
    """A row trigger fails the transaction once, at a row several data messages into the
    second microbatch: every batch of it written so far must be written again."""
    table = postgres.new_table()
    postgres.configure(client, CONNECTION, fast_resilience())
    fail_block = srv.chain.first_block + 50 + 40  # 2nd microbatch (50 blocks), 4/5 through
    trigger = FailOnce(pg_admin, table, fail_block, action)

    def arm_after_first(result: LoadResult) -> None:
        if result.metadata["block_ranges"][0]["start"] == srv.chain.first_block:
            trigger.arm()

    try:
        results = drive(
            client.sql(LOGS_QUERY).load(CONNECTION, table, stream=True),
            srv.chain,
            on_result=arm_after_first,
        ).results
        assert trigger.fired(), "the trigger never fired: the fault was not injected"
        assert_table_equals_chain(postgres, table, srv.chain)
    finally:
        trigger.disarm()

    retries = messages_of(caplog.records, "for transient error:")
    assert len(retries) == 1 and words in retries[0], retries
    ranges = assert_contiguous_loads(results, srv)
    assert any(r["start"] <= fail_block <= r["end"] for r in ranges)


def test_destination_retries_exhausted_keeps_only_complete_microbatches(
    srv: DevServer,
    client: Client,
    postgres: Destination,
    proxy: TcpProxy,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """PostgreSQL stays unreachable: after max_retries the load stops with the guide's
    FATAL message, and the table holds exactly the microbatches committed before."""
    table = postgres.new_table()
    postgres.configure(
        client,
        CONNECTION,
        fast_resilience(max_retries=3),
        dsn=f"host=127.0.0.1 port={proxy.port} dbname=test user=postgres",
    )
    loaded: list[LoadResult] = []

    def cut_after_first(result: LoadResult) -> None:
        if not loaded:
            loaded.append(result)
            proxy.stop()

    driven, error = collect(
        client.sql(LOGS_QUERY).load(CONNECTION, table, stream=True),
        srv.chain,
        on_result=cut_after_first,
    )
    results = driven.results

    assert isinstance(error, FatalLoadError), error
    assert str(error).startswith(
        "FATAL: Max retries (3) exceeded. Stopping client to prevent data loss. Last error: "
    ), error
    assert [r.success for r in results] == [True, False]
    assert results[-1].error == str(error)
    assert len(messages_of(caplog.records, "for transient error:")) == 3
    first = loaded[0].metadata["block_ranges"][0]
    proxy.start()
    assert sorted(postgres.keys(table)) == sorted(oracle_keys(srv, first["start"], first["end"]))


def test_permanent_destination_error_mid_stream_stops_and_keeps_committed_rows(
    srv: DevServer,
    client: Client,
    destination: Destination,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """After the first microbatch a CHECK constraint starts refusing rows from the middle
    of the second one: no retry, FATAL, and only the first microbatch stays."""
    table = destination.new_table()
    destination.configure(client, CONNECTION, fast_resilience())
    first: list[dict[str, Any]] = []

    def constrain_after_first(result: LoadResult) -> None:
        if first or not result.success:
            return
        block = result.metadata["block_ranges"][0]
        first.append(block)
        add_check_constraint(destination, client, CONNECTION, table, block["end"] + 20)

    driven, error = collect(
        client.sql(LOGS_QUERY).load(CONNECTION, table, stream=True),
        srv.chain,
        on_result=constrain_after_first,
    )
    results = driven.results

    assert isinstance(error, FatalLoadError), error
    assert [r.success for r in results] == [True, False], [r.metadata for r in results]
    client._get_loader(CONNECTION).close()
    expected = oracle_keys(srv, first[0]["start"], first[0]["end"])
    assert sorted(destination.keys(table)) == sorted(expected), "a partial microbatch stayed"
    assert str(error).startswith("FATAL: Permanent error"), error
    assert not messages_of(caplog.records, "Retry attempt")
