"""``to_arrow()`` and ``stream()`` of batch queries, and the client's introspection:
``list_connections()``, ``get_available_loaders()``, ``_get_loader(name)``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest
from oracle import pg_config

from amp.client import Client
from amp.devserver import DevServer
from amp.errors import ConfigError, ServerError
from amp.loaders import LOADERS
from amp.loaders.duckdb import DuckDBLoader
from amp.loaders.postgresql import PostgreSQLLoader
from kit.sql import TABLE_KEYS

TABLES = ("logs", "transactions", "blocks")


@pytest.fixture(scope="module")
def server() -> Iterator[DevServer]:
    # Small messages, so that a result arrives as many record batches.
    with DevServer(port=0, seed=1, initial_blocks=300, rows_per_message=500) as srv:
        yield srv


@pytest.fixture
def client(server: DevServer) -> Iterator[Client]:
    amp_client = Client(server.url)
    try:
        yield amp_client
    finally:
        amp_client.close()


def _sorted(table: pa.Table, name: str) -> pa.Table:
    return table.sort_by([(key, "ascending") for key in TABLE_KEYS[name]])


@pytest.mark.parametrize("name", TABLES)
def test_to_arrow_equals_the_canonical_chain(server: DevServer, client: Client, name: str) -> None:
    canonical = server.chain.canonical_table(name)
    table = client.sql(f"SELECT * FROM eth_firehose.{name}").to_arrow()
    assert table.schema == canonical.schema
    assert table.num_rows == canonical.num_rows
    assert _sorted(table, name).equals(_sorted(canonical, name))


@pytest.mark.parametrize("name", TABLES)
def test_stream_yields_batches_that_concatenate_to_the_chain(
    server: DevServer, client: Client, name: str
) -> None:
    canonical = server.chain.canonical_table(name)
    batches = list(client.sql(f"SELECT * FROM eth_firehose.{name}").stream())
    assert all(isinstance(batch, pa.RecordBatch) for batch in batches)
    assert all(batch.num_rows > 0 for batch in batches)
    if canonical.num_rows > 500:
        assert len(batches) > 1, "expected the result split over several messages"
    table = pa.Table.from_batches(batches, schema=canonical.schema)
    assert _sorted(table, name).equals(_sorted(canonical, name))


def test_to_arrow_of_a_streaming_query_runs_it_as_a_batch(
    server: DevServer, client: Client
) -> None:
    """The guide's queries end in ``SETTINGS stream = true``; ``to_arrow()`` and
    ``stream()`` must still return (the amp-stream header turns streaming off)."""
    query = "SELECT * FROM eth_firehose.blocks SETTINGS stream = true"
    canonical = server.chain.canonical_table("blocks")
    assert _sorted(client.sql(query).to_arrow(), "blocks").equals(_sorted(canonical, "blocks"))
    batches = list(client.sql(query).stream())
    table = pa.Table.from_batches(batches, schema=canonical.schema)
    assert _sorted(table, "blocks").equals(_sorted(canonical, "blocks"))


def test_to_arrow_of_a_projection_and_filter(server: DevServer, client: Client) -> None:
    canonical = server.chain.canonical_table("logs")
    table = client.sql(
        "SELECT block_num, log_index, data FROM eth_firehose.logs WHERE block_num < 50"
    ).to_arrow()
    expected = canonical.filter(pa.compute.less(canonical["block_num"], 50)).select(
        ["block_num", "log_index", "data"]
    )
    assert _sorted(table, "logs").equals(_sorted(expected, "logs"))


def test_to_arrow_of_an_empty_result_keeps_the_schema(client: Client) -> None:
    table = client.sql("SELECT block_num, hash FROM eth_firehose.blocks WHERE false").to_arrow()
    assert table.num_rows == 0
    assert table.schema.names == ["block_num", "hash"]


def test_bad_sql_raises_server_error_invalid_argument(client: Client) -> None:
    with pytest.raises(ServerError) as raised:
        client.sql("SELEC * FROM eth_firehose.blocks").to_arrow()
    assert raised.value.status == "INVALID_ARGUMENT"
    with pytest.raises(ServerError) as missing:
        list(client.sql("SELECT * FROM eth_firehose.nope").stream())
    assert missing.value.status in ("NOT_FOUND", "INVALID_ARGUMENT")


def test_connections_and_loaders(client: Client, tmp_path: Path) -> None:
    assert client.list_connections() == {}
    loaders = client.get_available_loaders()
    assert {"duckdb", "postgresql"} <= set(loaders), loaders
    assert loaders == sorted(LOADERS), "every registered loader, sorted by name"
    loaders.append("mutated")  # a copy: the caller cannot change the registry
    assert "mutated" not in client.get_available_loaders()

    client.configure_connection("warehouse", "postgresql", pg_config())
    client.configure_connection("local", "duckdb", {"database": str(tmp_path / "a.db")})
    assert client.list_connections() == {"warehouse": "postgresql", "local": "duckdb"}

    warehouse = client._get_loader("warehouse")
    local = client._get_loader("local")
    assert isinstance(warehouse, PostgreSQLLoader) and warehouse.loader_type == "postgresql"
    assert isinstance(local, DuckDBLoader) and local.loader_type == "duckdb"
    assert local.database == str(tmp_path / "a.db")
    assert warehouse.connection_name == "warehouse"
    assert not warehouse.connected and not local.connected  # opened by the first load
    assert client._get_loader("warehouse") is warehouse  # the live loader, not a copy

    # Reconfiguring a name replaces its loader.
    client.configure_connection("local", "duckdb", {"database": str(tmp_path / "b.db")})
    assert client._get_loader("local") is not local
    assert client._get_loader("local").database == str(tmp_path / "b.db")  # type: ignore[attr-defined]
    assert client.list_connections() == {"warehouse": "postgresql", "local": "duckdb"}

    with pytest.raises(ConfigError, match="warehouse"):
        client._get_loader("warehous")
