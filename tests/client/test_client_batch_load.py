"""Batch loads (``load(..., stream=False)``): one transaction, the canonical chain exactly,
and the append / overwrite modes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from oracle import Destination, connected, pg_config

from amp.client import LoadResult
from amp.devserver import DevServer
from amp.errors import AmpError
from kit import assert_table_equals_chain

TABLES = ("logs", "transactions", "blocks")


@pytest.fixture(scope="module")
def server() -> Iterator[DevServer]:
    """Read-only for the tests of this module: nobody mines or reorgs it."""
    with DevServer(port=0, seed=1, initial_blocks=300, max_interval=100) as srv:
        yield srv


def _check_results(results: list[LoadResult], table: str, rows: int) -> None:
    assert results, "a batch load yielded no result"
    assert all(r.success for r in results), [r.error for r in results if not r.success]
    assert all(r.table_name == table for r in results)
    *loads, last = results
    assert last.metadata.get("operation") == "commit", last.metadata
    assert last.metadata.get("total_rows") == rows, (
        f"commit says {last.metadata.get('total_rows')} rows, the canonical chain has {rows}"
    )
    assert all(r.metadata.get("operation") == "load" for r in loads)
    assert sum(r.rows_loaded for r in loads) == rows


@pytest.mark.parametrize("name", TABLES)
def test_batch_load_equals_canonical_chain(
    server: DevServer, destination: Destination, name: str
) -> None:
    table = destination.new_table(name)
    with connected(server, destination) as client:
        results = list(client.sql(f"SELECT * FROM eth_firehose.{name}").load("dest", table))
        assert all(r.loader_type == destination.kind for r in results)
    rows = assert_table_equals_chain(destination, table, server.chain, name)
    _check_results(results, table, rows)


@pytest.mark.parametrize("name", TABLES)
def test_overwrite_replaces_and_append_appends(
    server: DevServer, destination: Destination, name: str
) -> None:
    table = destination.new_table(name)
    query = f"SELECT * FROM eth_firehose.{name}"
    with connected(server, destination) as client:
        list(client.sql(query).load("dest", table))
        list(client.sql(query).load("dest", table, mode="append"))
        assert_table_equals_chain(destination, table, server.chain, name, copies=2)

        results = list(client.sql(query).load("dest", table, mode="overwrite"))
        rows = assert_table_equals_chain(destination, table, server.chain, name)
        _check_results(results, table, rows)

        list(client.sql(query).load("dest", table, mode="append"))
        assert_table_equals_chain(destination, table, server.chain, name, copies=2)


def test_overwrite_replaces_a_table_of_another_shape(
    server: DevServer, destination: Destination
) -> None:
    """``overwrite`` replaces the table itself, not only its rows."""
    table = destination.new_table("shape")
    with connected(server, destination) as client:
        list(client.sql("SELECT block_num, hash FROM eth_firehose.blocks").load("dest", table))
        list(client.sql("SELECT * FROM eth_firehose.logs").load("dest", table, mode="overwrite"))
    assert_table_equals_chain(destination, table, server.chain, "logs")


def test_text_with_nul_fails_by_default_naming_the_column(
    server: DevServer, pg_destination: Destination
) -> None:
    """PostgreSQL text cannot hold NUL: the default ``text_nul='error'`` stops the load
    with an error naming the column, and nothing is written."""
    table = pg_destination.new_table("txs")
    config = pg_config()
    del config["text_nul"]
    strict = Destination("postgresql", config=config)
    with connected(server, strict) as client:
        run = client.sql("SELECT * FROM eth_firehose.transactions").load("dest", table)
        with pytest.raises(AmpError) as raised:
            for result in run:
                assert result.success is False and result.metadata["operation"] == "fatal", (
                    f"a load result before the failure: {result}"
                )
                assert "revert_reason" in (result.error or "")
    message = str(raised.value)
    assert "revert_reason" in message, message
    assert "text_nul" in message, message  # it says how to fix it
    assert pg_destination.count(table) == 0, "a failed batch load left rows behind"
