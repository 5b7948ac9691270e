"""Every column of logs, transactions and blocks survives the trip into PostgreSQL and
DuckDB without loss: UInt64 up to 2**64-1, Decimal128(38,0) beyond 10**37, FixedSizeBinary
hashes, NUL bytes inside binaries and text, empty binaries, nulls, log_index near 2**32,
nanosecond timestamps (whole seconds here, so microsecond columns hold them exactly)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pyarrow as pa
import pytest
from oracle import Destination, column_filter, connected, pg_config

from amp.devserver import DevServer
from kit import Reorg, assert_table_equals_chain, drive
from kit.chain import arrow_rows, assert_rows_equal
from kit.sql import TABLE_KEYS, destination_rows

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def server() -> Iterator[DevServer]:
    with DevServer(port=0, seed=1, initial_blocks=300, max_interval=100) as srv:
        yield srv


def _all_columns(schema: pa.Schema, name: str) -> tuple[str, ...]:
    keys = TABLE_KEYS[name]
    return (*keys, *(column for column in schema.names if column not in keys))


def _present(table: pa.Table, column: str, predicate: Callable[[Any], bool], what: str) -> None:
    """The oracle really holds the edge case the test is about."""
    assert column_filter(table, column, predicate), f"the chain has no {what} in {column}"


def _assert_edge_cases_present(table: pa.Table, name: str) -> None:
    def has_nul(value: Any) -> bool:
        return (
            isinstance(value, bytes | str)
            and ("\x00" if isinstance(value, str) else b"\x00") in value
        )

    if name == "logs":
        _present(table, "log_index", lambda v: v >= 2**32 - 10, "log_index near 2**32")
        _present(table, "data", lambda v: v == b"", "empty binary")
        _present(table, "data", has_nul, "NUL byte")
        _present(table, "tx_hash", has_nul, "NUL byte")
        for topic in ("topic0", "topic1", "topic2", "topic3"):
            _present(table, topic, lambda v: v is None, "null")
    elif name == "transactions":
        _present(table, "nonce", lambda v: v >= 2**64 - 3, "UInt64 near 2**64")
        _present(table, "gas_price", lambda v: v is not None and v >= 10**37, "decimal >= 1e37")
        _present(table, "gas_price", lambda v: v is None, "null")
        _present(table, "max_fee_per_gas", lambda v: v is not None and v >= 10**37, ">= 1e37")
        _present(table, "input", lambda v: v == b"", "empty binary")
        _present(table, "input", has_nul, "NUL byte")
        _present(table, "revert_reason", has_nul, "NUL in text")
        _present(table, "value", lambda v: v is not None and len(v) >= 77, "78-digit uint256")
        _present(table, "value", lambda v: v is None, "null")
        _present(table, "to", lambda v: v is None, "null")
    else:
        _present(table, "difficulty", lambda v: v >= 10**37, "decimal >= 1e37")
        _present(table, "total_difficulty", lambda v: v is None, "null")
        _present(table, "extra_data", lambda v: v == b"", "empty binary")
        _present(table, "nonce", lambda v: v >= 2**63, "UInt64 above 2**63")


@pytest.mark.parametrize("name", ["logs", "transactions", "blocks"])
def test_every_column_round_trips(server: DevServer, destination: Destination, name: str) -> None:
    canonical = server.chain.canonical_table(name)
    _assert_edge_cases_present(canonical, name)
    table = destination.new_table(name)
    with connected(server, destination) as client:
        list(client.sql(f"SELECT * FROM eth_firehose.{name}").load("dest", table))
    assert destination.columns(table) == canonical.schema.names
    assert_table_equals_chain(
        destination, table, server.chain, name, columns=_all_columns(canonical.schema, name)
    )


@pytest.mark.parametrize("name", ["logs", "transactions"])
def test_every_column_round_trips_when_streamed(destination: Destination, name: str) -> None:
    """The streaming path (per-microbatch transactions, a reorg) is just as lossless."""
    table = destination.new_table(name)
    with (
        DevServer(port=0, seed=4, initial_blocks=300, max_interval=100) as srv,
        connected(srv, destination) as client,
    ):
        run = client.sql(f"SELECT * FROM eth_firehose.{name}").load("dest", table, stream=True)
        drive(run, srv.chain, [Reorg(5, mine=10, table=name)])
        canonical = srv.chain.canonical_table(name)
        _assert_edge_cases_present(canonical, name)
        assert_table_equals_chain(
            destination, table, srv.chain, name, columns=_all_columns(canonical.schema, name)
        )


def test_postgresql_column_types(server: DevServer, pg_destination: Destination) -> None:
    """UInt64 → NUMERIC(20,0), FixedSizeBinary/Binary → BYTEA, Decimal128(38,0) →
    NUMERIC(38,0), ns timestamps → TIMESTAMPTZ; text as BYTEA under text_nul='bytea'."""
    table = pg_destination.new_table("txs")
    with connected(server, pg_destination) as client:
        list(client.sql("SELECT * FROM eth_firehose.transactions").load("dest", table))
    rows = pg_destination.query(
        "SELECT column_name, data_type, numeric_precision, numeric_scale "
        "FROM information_schema.columns WHERE table_schema = 'public' AND table_name = %s",
        (table,),
    )
    types = {name: (kind, precision, scale) for name, kind, precision, scale in rows}
    assert types["nonce"] == ("numeric", 20, 0)
    assert types["block_num"] == ("numeric", 20, 0)
    assert types["gas_price"] == ("numeric", 38, 0)
    assert types["block_hash"][0] == "bytea"
    assert types["input"][0] == "bytea"
    assert types["timestamp"][0] == "timestamp with time zone"
    assert types["revert_reason"][0] == "bytea"
    assert types["tx_index"][0] in ("bigint", "integer", "numeric")


def test_postgresql_text_nul_strip(server: DevServer, pg_destination: Destination) -> None:
    """``text_nul='strip'`` keeps text columns as TEXT and removes only the NUL bytes."""
    table = pg_destination.new_table("txs")
    strip = Destination("postgresql", config=pg_config(text_nul="strip"))
    with connected(server, strip) as client:
        list(client.sql("SELECT * FROM eth_firehose.transactions").load("dest", table))
    canonical = server.chain.canonical_table("transactions")
    columns = ("block_num", "tx_index", "revert_reason", "value")
    expected = [
        (block, tx, None if reason is None else reason.replace("\x00", ""), value)
        for block, tx, reason, value in arrow_rows(canonical, columns)
    ]
    actual = destination_rows(pg_destination, table, columns, canonical.schema)
    assert all(isinstance(row[2], str | None) for row in actual), "revert_reason is not TEXT"
    assert_rows_equal(actual, expected, columns, f"strip-mode table {table}")
    assert any(row[2] and "Error(" in row[2] for row in actual)
