"""Bad input fails at once with ConfigError (a ValueError) and a message that says what
to fix; unreachable services fail with DestinationError / ServerError, without secrets."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from oracle import pg_config

from amp.client import Client
from amp.devserver import DevServer
from amp.errors import ConfigError, DestinationError, FatalLoadError, ServerError

pytestmark = pytest.mark.timeout(60)

PASSWORD = "s3cr3t-Hunter2-pw"
QUERY = "SELECT * FROM eth_firehose.blocks"


@pytest.fixture(scope="module")
def server() -> Iterator[DevServer]:
    with DevServer(port=0, seed=1, initial_blocks=20) as srv:
        yield srv


@pytest.fixture
def client(server: DevServer, tmp_path: Path) -> Iterator[Client]:
    """Two configured connections: 'warehouse' (PostgreSQL) and 'local' (DuckDB)."""
    amp_client = Client(server.url)
    try:
        amp_client.configure_connection("warehouse", "postgresql", pg_config())
        amp_client.configure_connection("local", "duckdb", {"database": str(tmp_path / "x.db")})
        yield amp_client
    finally:
        amp_client.close()


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


def test_unknown_connection_names_the_configured_ones(client: Client) -> None:
    with pytest.raises(ConfigError) as raised:
        client.sql(QUERY).load("warehous", "blocks")
    message = str(raised.value)
    assert "'warehous'" in message
    assert "warehouse" in message and "local" in message, message
    assert "did you mean 'warehouse'" in message, message
    with pytest.raises(ConfigError, match="configure_connection"):
        client.sql(QUERY).load("nowhere", "blocks", stream=True)


def test_unknown_loader_lists_the_available_ones(client: Client) -> None:
    with pytest.raises(ConfigError) as raised:
        client.configure_connection("pg", "postgres", pg_config())
    message = str(raised.value)
    assert "'postgres'" in message
    assert "duckdb" in message and "postgresql" in message, message
    assert "pg" not in client.list_connections()


def test_misspelled_config_key_suggests_the_right_one(client: Client) -> None:
    config = pg_config()
    config["databse"] = config.pop("database")
    with pytest.raises(ConfigError) as raised:
        client.configure_connection("pg", "postgresql", config)
    message = str(raised.value)
    assert "'databse'" in message and "did you mean 'database'" in message, message
    with pytest.raises(ConfigError, match="did you mean 'database'"):
        client.configure_connection("dd", "duckdb", {"databse": ":memory:"})


@pytest.mark.parametrize(
    ("loader", "config", "key"),
    [
        ("postgresql", pg_config(port="5432"), "port"),
        ("postgresql", pg_config(host=["127.0.0.1"]), "host"),
        ("postgresql", pg_config(text_nul="drop"), "text_nul"),
        ("duckdb", {"database": 42}, "database"),
        ("duckdb", {"database": ":memory:", "threads": "4"}, "threads"),
    ],
    ids=["pg-port-str", "pg-host-list", "pg-text-nul", "duckdb-database-int", "duckdb-threads"],
)
def test_value_of_the_wrong_type(
    client: Client, loader: str, config: dict[str, Any], key: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        client.configure_connection("bad", loader, config)
    assert repr(key) in str(raised.value), str(raised.value)
    assert "bad" not in client.list_connections()


def test_unknown_load_option(client: Client) -> None:
    with pytest.raises(ConfigError) as raised:
        client.sql(QUERY).load("local", "blocks", mdoe="append")
    message = str(raised.value)
    assert "'mdoe'" in message and "did you mean 'mode'" in message, message
    with pytest.raises(ConfigError, match="batch_size"):
        client.sql(QUERY).load("local", "blocks", stream=True, batch_size=10)


def test_mode_upsert_is_refused(client: Client) -> None:
    for stream in (False, True):
        with pytest.raises(ConfigError) as raised:
            client.sql(QUERY).load("local", "blocks", stream=stream, mode="upsert")
        message = str(raised.value)
        assert "'upsert'" in message and "append" in message and "overwrite" in message


def test_empty_query_is_refused(client: Client) -> None:
    with pytest.raises(ConfigError):
        client.sql("   ")


def _unreachable(**extra: Any) -> dict[str, Any]:
    return pg_config(port=1, password=PASSWORD, connect_timeout=5, **extra)


def test_unreachable_database_names_host_and_port_not_the_password(client: Client) -> None:
    client.configure_connection("down", "postgresql", _unreachable())
    loader = client._get_loader("down")
    assert PASSWORD not in repr(loader)
    with pytest.raises(DestinationError) as raised:
        loader.connect()
    message = str(raised.value)
    assert "127.0.0.1" in message and ":1/" in message, message
    assert PASSWORD not in message, message


def test_unreachable_database_fails_the_load_without_the_password(server: DevServer) -> None:
    """Through a load (retries off so that it fails at once): the load stops with a
    FatalLoadError caused by the DestinationError; neither message shows the password."""
    client = Client(server.url)
    try:
        config = _unreachable(resilience={"retry": {"max_retries": 0}})
        client.configure_connection("down", "postgresql", config)
        for stream in (False, True):
            run = client.sql(QUERY).load("down", "blocks", stream=stream)
            results = []
            with pytest.raises(FatalLoadError) as raised:
                results.extend(run)
            cause = raised.value.__cause__
            assert isinstance(cause, DestinationError), repr(cause)
            for message in (str(raised.value), str(cause), *(r.error or "" for r in results)):
                assert "127.0.0.1" in message and ":1/" in message, message
                assert PASSWORD not in message, message
            assert [r.success for r in results] == [False]
    finally:
        client.close()


def test_unreachable_dsn_hides_the_password(client: Client) -> None:
    dsn = f"postgresql://postgres:{PASSWORD}@127.0.0.1:1/test?connect_timeout=5"
    client.configure_connection("dsn", "postgresql", {"dsn": dsn})
    loader = client._get_loader("dsn")
    assert PASSWORD not in repr(loader)
    with pytest.raises(DestinationError) as raised:
        loader.connect()
    assert "127.0.0.1:1" in str(raised.value)
    assert PASSWORD not in str(raised.value)


def test_unreachable_server_raises_server_error_unavailable() -> None:
    client = Client("grpc://127.0.0.1:1")
    try:
        with pytest.raises(ServerError) as raised:
            client.sql(QUERY).to_arrow()
        assert raised.value.status == "UNAVAILABLE"
        assert "127.0.0.1:1" in str(raised.value)
    finally:
        client.close()


@pytest.mark.parametrize(
    "url", ["127.0.0.1:1602", "localhost:1602", "http://localhost:1602", "", "grpc:/localhost"]
)
def test_url_without_grpc_scheme_is_refused(url: str) -> None:
    with pytest.raises(ConfigError, match="grpc://"):
        Client(url)
