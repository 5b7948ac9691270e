"""Values that used to be accepted and then failed (or hung, or overflowed) in the middle
of a load are refused by ``Client.configure_connection`` with a ConfigError naming the key.

Nothing here needs a running destination: configuring only checks values."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest
from oracle import pg_config

from amp.client import Client
from amp.errors import ConfigError

pytestmark = pytest.mark.timeout(60)

DAY_MS = 86_400_000


@pytest.fixture
def client() -> Iterator[Client]:
    amp_client = Client("grpc://127.0.0.1:1")  # never contacted: configuring is offline
    try:
        yield amp_client
    finally:
        amp_client.close()


def _refused(client: Client, loader: str, config: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as raised:
        client.configure_connection("bad", loader, config)
    assert "bad" not in client.list_connections()
    return str(raised.value)


def _redis(**extra: Any) -> dict[str, Any]:
    return {"host": "127.0.0.1", "port": 6379, **extra}


def _kafka(**extra: Any) -> dict[str, Any]:
    return {"bootstrap_servers": "127.0.0.1:9092", "topic": "amp_t", **extra}


BAD_PREFIXES = ["x; DROP TABLE users; --", "", "1abc", "amp-", "amp ", "ämp_", "a" * 37]


@pytest.mark.parametrize("section", ["checkpoint", "idempotency"])
@pytest.mark.parametrize("prefix", BAD_PREFIXES, ids=lambda p: repr(p)[:20])
def test_table_prefix_must_be_a_short_plain_identifier(
    client: Client, section: str, prefix: str
) -> None:
    config = pg_config(**{section: {"enabled": True, "table_prefix": prefix}})
    message = _refused(client, "postgresql", config)
    assert f"{section} config['table_prefix']" in message, message
    assert "[A-Za-z_][A-Za-z0-9_]*" in message or "63" in message, message


def test_a_long_table_prefix_names_postgresqls_limit(client: Client) -> None:
    config = pg_config(checkpoint={"enabled": True, "table_prefix": "p" * 55})
    message = _refused(client, "postgresql", config)
    assert "63" in message and "at most 36" in message, message


@pytest.mark.parametrize("prefix", ["amp_", "_x", "A1", "p" * 36])
def test_good_table_prefixes_are_accepted(client: Client, prefix: str) -> None:
    client.configure_connection(
        "ok",
        "postgresql",
        pg_config(
            checkpoint={"enabled": True, "table_prefix": prefix},
            idempotency={"enabled": True, "table_prefix": prefix},
        ),
    )


@pytest.mark.parametrize("days", [math.nan, math.inf, -1], ids=["nan", "inf", "negative"])
def test_cleanup_days_must_be_finite(client: Client, days: float) -> None:
    message = _refused(client, "postgresql", pg_config(idempotency={"cleanup_days": days}))
    assert "'cleanup_days'" in message, message


@pytest.mark.parametrize(
    ("loader", "config", "key"),
    [
        ("postgresql", pg_config(port=-1), "port"),
        ("postgresql", pg_config(port=0), "port"),
        ("postgresql", pg_config(port=99999), "port"),
        ("postgresql", {"dsn": "host=127.0.0.1 port=99999 dbname=test"}, "dsn"),
        ("postgresql", {"dsn": "host=127.0.0.1 port=5432,-1 dbname=test"}, "dsn"),
        ("postgresql", {"dsn": "host='127.0.0.1 password=s3cret"}, "dsn"),
        ("postgresql", pg_config(connect_timeout=-1), "connect_timeout"),
        ("postgresql", pg_config(connect_timeout=0), "connect_timeout"),
        ("postgresql", pg_config(connect_timeout=math.nan), "connect_timeout"),
        ("postgresql", pg_config(connect_timeout=math.inf), "connect_timeout"),
        ("postgresql", pg_config(connect_timeout=1e300), "connect_timeout"),
        ("postgresql", {"dsn": "host=127.0.0.1 dbname=test connect_timeout=0"}, "connect_timeout"),
        ("postgresql", {"dsn": "host=127.0.0.1 dbname=test connect_timeout=-2"}, "connect_timeout"),
        ("postgresql", {"dsn": "host=127.0.0.1 dbname=test connect_timeout=soon"}, "dsn"),
        ("postgresql", pg_config(dead_peer_timeout=0), "dead_peer_timeout"),
        ("postgresql", pg_config(dead_peer_timeout=-1), "dead_peer_timeout"),
        ("postgresql", pg_config(dead_peer_timeout=math.nan), "dead_peer_timeout"),
        ("postgresql", pg_config(dead_peer_timeout=math.inf), "dead_peer_timeout"),
        ("postgresql", pg_config(dead_peer_timeout=1e300), "dead_peer_timeout"),
        ("postgresql", pg_config(dead_peer_timeout="30"), "dead_peer_timeout"),
        ("postgresql", pg_config(dead_peer_timeout=True), "dead_peer_timeout"),
        ("postgresql", pg_config(dead_peer_timeout=None), "dead_peer_timeout"),
        ("redis", _redis(port=-1), "port"),
        ("redis", _redis(port=99999), "port"),
        ("redis", _redis(db=-1), "db"),
        ("redis", {"url": "redis://127.0.0.1:99999/0"}, "url"),
        ("redis", _redis(socket_timeout=-1), "socket_timeout"),
        ("redis", _redis(socket_timeout=math.nan), "socket_timeout"),
        ("redis", _redis(socket_timeout="10"), "socket_timeout"),
        ("redis", _redis(socket_timeout=0), "socket_timeout"),
        ("redis", _redis(dead_peer_timeout=0), "dead_peer_timeout"),
        ("redis", _redis(dead_peer_timeout=math.nan), "dead_peer_timeout"),
        ("redis", _redis(dead_peer_timeout=86_401), "dead_peer_timeout"),
        ("kafka", _kafka(dead_peer_timeout=-3), "dead_peer_timeout"),
        ("kafka", _kafka(dead_peer_timeout=math.inf), "dead_peer_timeout"),
        ("kafka", _kafka(bootstrap_servers="127.0.0.1:99999"), "bootstrap_servers"),
        ("kafka", _kafka(bootstrap_servers="a:9092,b:-1"), "bootstrap_servers"),
        ("kafka", _kafka(timeout=math.nan), "timeout"),
        ("kafka", _kafka(timeout=1e300), "timeout"),
        ("duckdb", {"threads": 0}, "threads"),
        ("duckdb", {"threads": -4}, "threads"),
        ("duckdb", {"threads": 10**9}, "threads"),
        ("duckdb", {"memory_limit": "lots"}, "memory_limit"),
        ("duckdb", {"memory_limit": "4XB"}, "memory_limit"),
        ("duckdb", {"memory_limit": "-1GB"}, "memory_limit"),
        ("duckdb", {"memory_limit": ""}, "memory_limit"),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_out_of_range_connection_values(
    client: Client, loader: str, config: dict[str, Any], key: str
) -> None:
    message = _refused(client, loader, config)
    assert f"[{key!r}]" in message, message
    assert "s3cret" not in message, message


@pytest.mark.parametrize(
    "config",
    [{"threads": 1, "memory_limit": "4GB"}, {"memory_limit": "512MiB"}, {"memory_limit": "80%"}],
)
def test_good_duckdb_settings_are_accepted(client: Client, config: dict[str, Any]) -> None:
    client.configure_connection("ok", "duckdb", {"database": ":memory:", **config})


@pytest.mark.parametrize(
    ("section", "data", "key"),
    [
        ("retry", {"initial_backoff_ms": 1e300, "max_backoff_ms": 1e300}, "initial_backoff_ms"),
        ("retry", {"initial_backoff_ms": 1e300}, "initial_backoff_ms"),
        ("retry", {"max_backoff_ms": DAY_MS + 1}, "max_backoff_ms"),
        ("retry", {"backoff_multiplier": 1e300}, "backoff_multiplier"),
        ("circuit_breaker", {"timeout_ms": 1e300}, "timeout_ms"),
        ("back_pressure", {"max_delay_ms": 1e300}, "max_delay_ms"),
        ("back_pressure", {"initial_delay_ms": DAY_MS + 1}, "initial_delay_ms"),
    ],
)
def test_resilience_times_have_a_sane_upper_bound(
    client: Client, section: str, data: dict[str, Any], key: str
) -> None:
    message = _refused(client, "postgresql", pg_config(resilience={section: data}))
    assert f"[{key!r}]" in message, message


def test_sub_second_connect_timeout_is_rounded_up_never_zero(client: Client, postgres: str) -> None:
    # int(0.5) == 0, which libpq reads as "wait forever".
    client.configure_connection("pg", "postgresql", pg_config(connect_timeout=0.5))
    loader = client._get_loader("pg")
    loader.connect()
    assert loader.connection.info.get_parameters().get("connect_timeout") == "1"
