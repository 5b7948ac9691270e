"""A silent Redis: a connection whose peer stops answering without closing anything.

A real forwarding proxy (``tcpproxy.TcpProxy``) sits between the loader and Redis. Mid-load
the path goes silent (stalled until the loader notices, or the open connections dead for
good while new ones work); the loader must give up on the connection within its
``dead_peer_timeout``, retry as a transient error on a new connection, and end with
exactly the canonical rows. A server that accepts and never answers fails ``connect``
within the bound too (a ``url`` once had no connect deadline at all).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from redis_support import Names, assert_exact, redis_config

from amp.client import Client
from amp.devserver import DevServer
from amp.errors import DestinationError
from amp.loaders.redis import RedisLoader
from amp.streaming.classify import ErrorClassifier
from kit import LOGS_QUERY as QUERY
from kit import REDIS_DB, REDIS_HOST, REDIS_PORT, caught_up
from tcpproxy import (
    SILENCES,
    StallClock,
    TcpProxy,
    assert_noticed_within,
    retries_telling,
    run_through_silence,
)

pytestmark = pytest.mark.timeout(120)

BOUND = 2.0  # dead_peer_timeout of these tests, in seconds
LOOSE_LIMIT = 20.0  # detection must come well before this, even on a loaded machine
FAST = {
    "retry": {"initial_backoff_ms": 5, "max_backoff_ms": 50, "jitter": False},
    "circuit_breaker": {"timeout_ms": 50},
    "back_pressure": {"max_delay_ms": 50},
}


@pytest.fixture
def proxy(redis_client: redis.Redis) -> Iterator[TcpProxy]:
    forwarding = TcpProxy(REDIS_HOST, REDIS_PORT)
    forwarding.start()
    yield forwarding
    forwarding.stop()


@pytest.fixture
def server() -> Iterator[DevServer]:
    """200 blocks in microbatches of 50: the path goes silent after the first."""
    with DevServer(port=0, seed=7, initial_blocks=200, max_interval=50) as srv:
        yield srv


@pytest.mark.parametrize("how", SILENCES)
def test_silent_redis_connection_is_dropped_within_bound_and_load_completes(
    server: DevServer, names: Names, redis_client: redis.Redis, proxy: TcpProxy, how: str
) -> None:
    clock = StallClock(proxy, how)
    config: dict[str, Any] = {
        **redis_config(),
        "port": proxy.port,
        "dead_peer_timeout": BOUND,
        # The lease is renewed every 20 minutes: no renewal shares the path in this test.
        "lease_seconds": 3600,
        # One commit per microbatch, so the silence falls between two of them.
        "commit_grouping": {"enabled": False},
        "resilience": FAST,
    }
    client = Client(server.url)
    client.configure_connection(names.connection, "redis", config)
    try:
        run = client.sql(QUERY).load(names.connection, names.table, stream=True)
        with retries_telling(clock) as retries:
            run_through_silence(run, clock, lambda result: caught_up(result, server.chain))
    finally:
        client.close()

    retry = assert_noticed_within(clock, retries, BOUND * 0.9, LOOSE_LIMIT)
    assert "Timeout" in retry, retry
    assert proxy.accepted == 2, "expected one connection before the silence, one after"
    assert_exact(redis_client, names.table, "hash", server.chain)


def test_redis_that_accepts_and_never_answers_fails_connect_within_bound(
    proxy: TcpProxy,
) -> None:
    proxy.stall()
    loader = RedisLoader(
        {"url": f"redis://127.0.0.1:{proxy.port}/{REDIS_DB}", "dead_peer_timeout": BOUND}
    )
    started = time.monotonic()
    with pytest.raises(DestinationError, match="cannot connect") as raised:
        loader.connect()
    elapsed = time.monotonic() - started
    assert BOUND * 0.9 <= elapsed < LOOSE_LIMIT, f"connect gave up after {elapsed:.2f} s"
    assert ErrorClassifier.is_transient(raised.value)
    assert not loader.connected


def _socket_settings(config: dict[str, Any]) -> dict[str, float]:
    """The deadline and TCP options of a real connection the loader opened."""
    loader = RedisLoader({"host": REDIS_HOST, "port": REDIS_PORT, "db": REDIS_DB, **config})
    loader.connect()
    try:
        connection = loader.client.connection_pool.get_connection()
        try:
            sock = connection._sock
            assert sock is not None
            return {
                "timeout": sock.gettimeout(),
                "keepalive": sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
                "idle": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
                "interval": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
                "count": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
                "user_timeout": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT),
            }
        finally:
            loader.client.connection_pool.release(connection)
    finally:
        loader.close()


def test_redis_sockets_get_a_deadline_keepalive_and_user_timeout(
    redis_client: redis.Redis,
) -> None:
    """The kernel side of the bound, read back from the socket: keepalive probes after
    half of dead_peer_timeout, three more over the other half, TCP_USER_TIMEOUT of the
    whole; the reply deadline is socket_timeout when given, else dead_peer_timeout
    (default 10 s for Redis)."""
    default = _socket_settings({})
    assert default == {
        "timeout": 10.0,
        "keepalive": 1,
        "idle": 5,
        "interval": 1,
        "count": 3,
        "user_timeout": 10_000,
    }
    bounded = _socket_settings({"dead_peer_timeout": 12})
    assert (bounded["timeout"], bounded["idle"], bounded["interval"]) == (12.0, 6, 2)
    assert bounded["user_timeout"] == 12_000
    own = _socket_settings({"dead_peer_timeout": 12, "socket_timeout": 3.5})
    assert own["timeout"] == 3.5
    assert own["user_timeout"] == 12_000
