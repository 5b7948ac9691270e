"""What ``dead_peer_timeout`` and ``connect_timeout`` turn into, read back from real
connections, and how ``Client`` checks its own ``dead_peer_timeout``.

The faults they guard against (a black-holed PostgreSQL, Redis, Kafka or Amp server) are
played through a real proxy in tests/faults, tests/redis and tests/kafka."""

from __future__ import annotations

import math
from typing import Any

import pytest

from amp.client import Client
from amp.errors import ConfigError
from amp.loaders.postgresql import PostgreSQLLoader
from kit import PG_DSN as PG_CONNINFO

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("value", [0, -2.5, math.nan, math.inf, 1e300, "5", True])
def test_client_dead_peer_timeout_is_checked(value: Any) -> None:
    with pytest.raises(ConfigError, match=r"Client\(\)\['dead_peer_timeout'\]"):
        Client("grpc://127.0.0.1:1", dead_peer_timeout=value)


@pytest.mark.parametrize("value", [None, 0.5, 30, 600])
def test_client_dead_peer_timeout_accepts_seconds_or_none(value: float | None) -> None:
    client = Client("grpc://127.0.0.1:1", dead_peer_timeout=value)
    try:
        assert client.transport.dead_peer_timeout == value
    finally:
        client.close()


def _libpq_settings(config: dict[str, Any]) -> dict[str, str]:
    """The connection parameters libpq used for a real connection of the loader."""
    loader = PostgreSQLLoader(config)
    loader.connect()
    try:
        return loader.connection.info.get_parameters()
    finally:
        loader.close()


def test_postgres_connections_get_tcp_keepalive_and_user_timeout(postgres: str) -> None:
    """Probes after half of dead_peer_timeout idle, three more over the other half, and
    unacknowledged data given up after all of it; a dsn's own settings win."""
    settings = _libpq_settings({"dsn": postgres, "dead_peer_timeout": 12})
    assert settings["keepalives"] == "1"
    assert settings["keepalives_idle"] == "6"
    assert settings["keepalives_interval"] == "2"
    assert settings["keepalives_count"] == "3"
    assert settings["tcp_user_timeout"] == "12000"

    own = _libpq_settings({"dsn": f"{postgres} keepalives_idle=7"})
    assert own["keepalives_idle"] == "7"
    assert own["tcp_user_timeout"] == "30000"  # the default bound, 30 s


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({}, 10),
        ({"connect_timeout": 2.2}, 3),
        ({"dsn_timeout": "3"}, 3),  # once overridden by the key's default of 10
        ({"dsn_timeout": "0.5"}, 1),
        ({"dsn_timeout": "3", "connect_timeout": 4}, 4),  # the key wins
    ],
)
def test_connect_timeout_comes_from_the_key_or_the_dsn_in_whole_seconds(
    postgres: str, config: dict[str, Any], expected: int
) -> None:
    dsn = PG_CONNINFO
    if "dsn_timeout" in config:
        dsn += f" connect_timeout={config.pop('dsn_timeout')}"
    assert _libpq_settings({"dsn": dsn, **config})["connect_timeout"] == str(expected)
