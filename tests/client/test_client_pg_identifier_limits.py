"""PostgreSQL cuts identifiers to 63 bytes without a word: three different long table
names used to write into one table, and two tables' derived index names collided so
the second table silently got no index. Names PostgreSQL would alter are refused,
naming the limit; derived index names are made to fit and stay distinct."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest
from oracle import Destination, connected, pg_config
from psycopg import sql

from amp.client import Client
from amp.devserver import DevServer
from amp.errors import ConfigError, FatalLoadError
from kit import PG_DSN

pytestmark = pytest.mark.timeout(60)

QUERY = "SELECT block_num, hash FROM eth_firehose.blocks"


def _tables_like(pattern: str) -> list[str]:
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT tablename FROM pg_tables WHERE tablename LIKE %s", (pattern,)
        ).fetchall()
    return [row[0] for row in rows]


@pytest.fixture(scope="module")
def server() -> Iterator[DevServer]:
    with DevServer(port=0, seed=4, initial_blocks=5) as srv:
        yield srv


DESTINATION = Destination("postgresql", config=pg_config())


@pytest.fixture
def stem(postgres: str) -> Iterator[str]:
    """A unique name stem; every table starting with it is dropped afterwards."""
    name = f"amp_idl_{uuid.uuid4().hex[:8]}"
    yield name
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        for table in _tables_like(f"{name}%"):
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(table)))


def _config_error_of(client: Client, table: str, stream: bool = False) -> ConfigError:
    with pytest.raises((ConfigError, FatalLoadError)) as raised:
        list(client.sql(QUERY).load("dest", table, stream=stream))
    error: BaseException | None = raised.value
    while error is not None and not isinstance(error, ConfigError):
        error = error.__cause__
    assert isinstance(error, ConfigError), repr(raised.value)
    return error


@pytest.mark.parametrize("stream", [False, True], ids=["batch", "stream"])
def test_table_names_over_63_bytes_are_refused(server: DevServer, stem: str, stream: bool) -> None:
    long_names = [f"{stem}_{'x' * 60}_{suffix}" for suffix in ("one", "two", "three")]
    with connected(server, DESTINATION) as client:
        for name in long_names:
            message = str(_config_error_of(client, name, stream))
            assert "63" in message and name in message, message
        multibyte = f"{stem}_{'é' * 28}"  # 45 characters, 64 bytes
        message = str(_config_error_of(client, multibyte, stream))
        assert "63" in message and "bytes" in message, message
        message = str(_config_error_of(client, f"{'s' * 64}.{stem}", stream))
        assert "63" in message and "schema" in message, message
    assert _tables_like(f"{stem}%") == [], "a refused name still created a table"


def test_long_table_names_get_distinct_indexes(server: DevServer, stem: str) -> None:
    # Both names fit, but "<name>_block_num_idx" does not: cut to 63 bytes, the index name
    # of the 63-byte table was the table's own name, so CREATE INDEX IF NOT EXISTS
    # skipped it ("relation already exists") and the table had no block index.
    first = f"{stem}_{'y' * (63 - len(stem) - 1)}"
    second = first[:-1]
    assert len(first) == 63 and len(second) == 62
    with connected(server, DESTINATION) as client:
        for table in (first, second):
            list(client.sql(QUERY).load("dest", table))
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE tablename IN (%s, %s)",
            (first, second),
        ).fetchall()
    by_table = {table: (index, definition) for table, index, definition in rows}
    assert set(by_table) == {first, second}, f"a table got no block index: {rows}"
    assert by_table[first][0] != by_table[second][0]
    for index, definition in by_table.values():
        assert len(index.encode()) <= 63 and "(block_num)" in definition, (index, definition)
