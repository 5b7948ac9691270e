"""A table left by an earlier attempt with other column types (TEXT made before
``text_nul='bytea'`` was set) is reported before loading, naming the column, both types
and the ways out, instead of failing somewhere inside COPY."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from oracle import Destination, connected, pg_config
from psycopg import sql

from amp.devserver import DevServer
from amp.errors import AmpError, ConfigError
from kit import PG_DSN

pytestmark = pytest.mark.timeout(60)

QUERY = "SELECT block_num, tx_hash, revert_reason FROM eth_firehose.transactions"


@pytest.fixture(scope="module")
def server() -> Iterator[DevServer]:
    with DevServer(port=0, seed=1, initial_blocks=20) as srv:
        yield srv


def _config_error(raised: BaseException) -> ConfigError:
    error: BaseException | None = raised
    while error is not None and not isinstance(error, ConfigError):
        error = error.__cause__
    assert isinstance(error, ConfigError), repr(raised)
    return error


@pytest.mark.parametrize("stream", [False, True], ids=["batch", "stream"])
def test_existing_text_column_where_bytea_is_needed_names_the_types_and_the_fix(
    server: DevServer, pg_destination: Destination, stream: bool
) -> None:
    table = pg_destination.new_table("types")
    strict = pg_config()
    del strict["text_nul"]
    with (
        connected(server, Destination("postgresql", config=strict)) as client,
        pytest.raises(AmpError, match="text_nul"),
    ):
        list(client.sql(QUERY).load("dest", table))
    assert pg_destination.count(table) == 0
    with (
        connected(server, Destination("postgresql", config=pg_config(text_nul="bytea"))) as client,
        pytest.raises(AmpError) as raised,
    ):
        list(client.sql(QUERY).load("dest", table, stream=stream))
    message = str(_config_error(raised.value))
    assert "'revert_reason'" in message and "text" in message and "BYTEA" in message, message
    assert "mode='overwrite'" in message and "drop" in message, message
    assert pg_destination.count(table) == 0


def test_compatible_existing_types_are_accepted(
    server: DevServer, pg_destination: Destination
) -> None:
    """A table made by hand with wider but binary-compatible types still loads."""
    table = pg_destination.new_table("types")
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                "CREATE TABLE {} (block_num NUMERIC, tx_hash BYTEA, revert_reason BYTEA, "
                "extra TEXT)"
            ).format(sql.Identifier(table))
        )
    with connected(server, pg_destination) as client:
        results = list(client.sql(QUERY).load("dest", table))
    assert all(result.success for result in results)
    assert pg_destination.count(table) == len(server.chain.canonical_table("transactions"))
