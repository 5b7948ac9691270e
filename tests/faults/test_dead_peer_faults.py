"""Black-holed connections to PostgreSQL and to the Amp server: a peer that goes silent
without closing anything.

A real forwarding proxy (``tcpproxy.TcpProxy``) sits between amp and PostgreSQL or the dev
server; mid-load the path goes silent, either as a stall (nothing moves on any
connection, new ones are accepted and never answered, until the client notices and the
test resumes it) or as a silence of the open connections only (a dead NAT mapping: the
client recovers only by reconnecting). Each edge must notice within its
``dead_peer_timeout``, report a transient error, retry, and finish the load exactly equal
to the chain. Without the bound each of these loads would hang until the watchdog. The
bound used here is small; the elapsed time is checked loosely (the machine is shared),
the outcome exactly.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import pytest
from faultkit import (
    Destination,
    assert_contiguous_loads,
    fast_resilience,
    log_trigger,
    messages_of,
)

from amp.client import Client, LoadResult
from amp.devserver import DevServer
from amp.errors import DestinationError
from amp.loaders.postgresql import PostgreSQLLoader
from amp.streaming.classify import ErrorClassifier
from kit import LOGS_QUERY as QUERY
from kit import PG_HOST, PG_PORT, assert_table_equals_chain, drive, require_postgres
from tcpproxy import SILENCES, StallClock, TcpProxy, assert_noticed_within

pytestmark = pytest.mark.timeout(120)

CONNECTION = "dest"
BOUND = 2.0  # dead_peer_timeout of these tests, in seconds
LOOSE_LIMIT = 20.0  # detection must come well before this, even on a loaded machine
FIRST_RETRY = "Retry attempt 1/"


@pytest.fixture(autouse=True)
def info_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="amp")


@pytest.fixture
def pg_proxy() -> Iterator[TcpProxy]:
    require_postgres()
    proxy = TcpProxy(PG_HOST, PG_PORT)
    proxy.start()
    yield proxy
    proxy.stop()


@pytest.fixture
def server_proxy(srv: DevServer) -> Iterator[TcpProxy]:
    proxy = TcpProxy(srv.host, srv.port)
    proxy.start()
    yield proxy
    proxy.stop()


def _retries(caplog: pytest.LogCaptureFixture) -> list[str]:
    return messages_of(caplog.records, "for transient error:")


# -- PostgreSQL -------------------------------------------------------------------------------


def _pg_through(proxy: TcpProxy, extra: str = "") -> str:
    return f"host=127.0.0.1 port={proxy.port} dbname=test user=postgres {extra}".strip()


@pytest.mark.parametrize("how", SILENCES)
def test_silent_postgres_connection_is_dropped_within_bound_and_load_completes(
    srv: DevServer,
    client: Client,
    postgres: Destination,
    pg_proxy: TcpProxy,
    caplog: pytest.LogCaptureFixture,
    how: str,
) -> None:
    """The path goes silent after the first microbatch: the next one's COPY or COMMIT
    waits for a reply that never comes. With "silence" the old session lives on in
    PostgreSQL holding the stream's lock, so the new session must end it first."""
    table = postgres.new_table()
    postgres.configure(
        client, CONNECTION, fast_resilience(), dsn=_pg_through(pg_proxy), dead_peer_timeout=BOUND
    )
    clock = StallClock(pg_proxy, how)

    with log_trigger(FIRST_RETRY, clock.noticed) as trigger:
        results = drive(
            client.sql(QUERY).load(CONNECTION, table, stream=True),
            srv.chain,
            (),
            lambda _: clock.go_silent(),
        ).results

    assert trigger.fired == 1
    retry = assert_noticed_within(clock, _retries(caplog), BOUND * 0.9, LOOSE_LIMIT)
    assert "dead_peer_timeout" in retry, retry
    assert pg_proxy.accepted == 2, "expected one connection before the silence, one after"
    ended = messages_of(caplog.records, "Ending this load's previous PostgreSQL session")
    assert len(ended) == (1 if how == "silence" else 0), ended
    assert_contiguous_loads(results, srv)
    assert_table_equals_chain(postgres, table, srv.chain)


@pytest.mark.parametrize("where", ["key", "dsn"])
def test_postgres_that_accepts_and_never_answers_fails_connect_despite_fractional_timeout(
    pg_proxy: TcpProxy, where: str
) -> None:
    """``connect_timeout: 0.5`` once became ``int(0.5) == 0``, libpq's "wait forever": a
    server that accepts and then stalls hung the load. Now it is 1 s (psycopg waits at
    least 2 s), from the key or from the dsn alike, and the failure is transient."""
    pg_proxy.stall()
    if where == "key":
        config = {"dsn": _pg_through(pg_proxy), "connect_timeout": 0.5}
    else:
        config = {"dsn": _pg_through(pg_proxy, "connect_timeout=0.5")}
    loader = PostgreSQLLoader({**config, "dead_peer_timeout": BOUND})
    assert loader.connect_timeout == 1
    started = time.monotonic()
    with pytest.raises(DestinationError, match="cannot connect") as raised:
        loader.connect()
    elapsed = time.monotonic() - started
    assert 0.9 <= elapsed < LOOSE_LIMIT, f"connect gave up after {elapsed:.2f} s"
    assert ErrorClassifier.is_transient(raised.value)
    assert not loader.connected


# -- the server edge ---------------------------------------------------------------------------


@pytest.mark.parametrize("how", SILENCES)
def test_silent_server_stream_ends_unavailable_within_bound_and_load_completes(
    srv: DevServer,
    postgres: Destination,
    server_proxy: TcpProxy,
    caplog: pytest.LogCaptureFixture,
    how: str,
) -> None:
    """Once the load has caught up, the path to the server goes silent and new blocks
    are mined behind it: the stream, rightly quiet while it waits for blocks, cannot
    tell by itself. gRPC keepalive pings go unanswered, the call ends UNAVAILABLE and
    is retried with amp-resume; without pings this waits forever."""
    table = postgres.new_table()
    first_head = srv.chain.head
    amp = Client(f"grpc://127.0.0.1:{server_proxy.port}", dead_peer_timeout=BOUND)
    clock = StallClock(server_proxy, how)

    def silent_at_head_then_mine(result: LoadResult) -> None:
        if result.metadata["block_ranges"][0]["end"] == first_head:
            clock.go_silent()
            srv.chain.mine(50)

    try:
        postgres.configure(amp, CONNECTION, fast_resilience())
        with log_trigger(FIRST_RETRY, clock.noticed) as trigger:
            results = drive(
                amp.sql(QUERY).load(CONNECTION, table, stream=True),
                srv.chain,
                (),
                silent_at_head_then_mine,
            ).results
    finally:
        amp.close()

    assert trigger.fired == 1
    # A ping may be due at once: detection takes from half the bound to the whole bound.
    retry = assert_noticed_within(clock, _retries(caplog), BOUND / 2 * 0.9, LOOSE_LIMIT)
    assert "UNAVAILABLE" in retry, retry
    assert server_proxy.accepted == 2, "expected one connection before the silence, one after"
    assert srv.chain.head == first_head + 50
    assert_contiguous_loads(results, srv)
    assert_table_equals_chain(postgres, table, srv.chain)


def test_server_refusing_frequent_pings_is_retried_and_named(
    postgres: Destination, caplog: pytest.LogCaptureFixture
) -> None:
    """A server with gRPC's default ping policy (not the protocol's promise; amp assumes
    the Amp server answers pings at any rate) ends a quiet stream with GOAWAY
    ``too_many_pings``: an UNAVAILABLE, retried with amp-resume, whose message says how
    to stop pinging."""
    table = postgres.new_table()
    with DevServer(port=0, seed=7, initial_blocks=50, max_interval=50, strict_pings=True) as srv:
        amp = Client(srv.url, dead_peer_timeout=1.0)
        target = srv.chain.head + 10
        try:
            postgres.configure(amp, CONNECTION, fast_resilience())
            run = amp.sql(QUERY).load(CONNECTION, table, stream=True)
            # The load waits at the head, pinging, until the server's GOAWAY; new blocks
            # come only after that, so the retry must resume to reach them.
            with log_trigger(FIRST_RETRY, lambda: srv.chain.mine(10)) as trigger:
                results = []
                try:
                    for result in run:
                        results.append(result)
                        if result.metadata["block_ranges"][0]["end"] == target:
                            break
                finally:
                    run.close()
        finally:
            amp.close()
        assert trigger.fired == 1
        retry = _retries(caplog)[0]
        assert "UNAVAILABLE" in retry and "Too many pings" in retry, retry
        assert "dead_peer_timeout=None" in retry, retry
        assert_contiguous_loads(results, srv)
        assert_table_equals_chain(postgres, table, srv.chain)
