"""Protocol §5: refused queries get the right gRPC status; accepted streaming shapes work."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.flight as flight
import pytest
from flightclient import (
    STREAM,
    call_options,
    connect,
    flight_info,
    open_stream,
    read_message,
    read_microbatches,
    read_until_end,
    rows_of_blocks,
    run_batch,
    ticket_of,
)

from amp.devserver import DevServer


@pytest.fixture
def server() -> Iterator[DevServer]:
    with DevServer(port=0, seed=1, initial_blocks=60, max_interval=20) as srv:
        yield srv


def _assert_still_serves(srv: DevServer) -> None:
    """Another client's good query still succeeds."""
    with connect(srv.url) as other:
        _, messages = run_batch(other, "SELECT count(*) AS n FROM eth_firehose.blocks")
    assert messages[0].batch.to_pydict() == {"n": [srv.chain.head - srv.chain.first_block + 1]}


@pytest.mark.parametrize(
    ("sql", "words"),
    [
        ("SELEC * FROM eth_firehose.logs", "invalid SQL"),
        ("SELECT * FROM eth_firehose.logs WHERE", "invalid SQL"),
        ("SELECT 1; SELECT 2", "single SQL statement"),
        ("", "empty SQL"),
        ("   ", "empty SQL"),
        (";", "empty SQL"),
        ("SELECT no_such_column FROM eth_firehose.logs", "no_such_column"),
    ],
)
@pytest.mark.parametrize("suffix", ["", STREAM], ids=["batch", "stream"])
def test_bad_sql_is_invalid_argument(server: DevServer, sql: str, words: str, suffix: str) -> None:
    with connect(server.url) as client:
        with pytest.raises(pa.ArrowInvalid, match="invalid argument") as raised:
            flight_info(client, sql + suffix)
        assert words in str(raised.value)
        assert " | Caused by: " in str(raised.value)
        _assert_still_serves(server)


def test_settings_clause_alone_is_empty_sql(server: DevServer) -> None:
    with connect(server.url) as client:
        with pytest.raises(pa.ArrowInvalid, match="empty SQL"):
            flight_info(client, "SETTINGS stream = true")
        _assert_still_serves(server)


NON_INCREMENTAL = [
    pytest.param("SELECT count(*) FROM eth_firehose.logs", "aggregate", id="count"),
    pytest.param(
        "SELECT block_num, count(*) FROM eth_firehose.logs GROUP BY block_num",
        "aggregate",
        id="group-by",
    ),
    pytest.param("SELECT max(block_num) AS m FROM eth_firehose.blocks", "aggregate", id="max"),
    pytest.param("SELECT DISTINCT address FROM eth_firehose.logs", "DISTINCT", id="distinct"),
    pytest.param(
        "SELECT block_num FROM eth_firehose.blocks UNION SELECT block_num FROM eth_firehose.logs",
        "DISTINCT",
        id="union",
    ),
    pytest.param("SELECT * FROM eth_firehose.logs LIMIT 10", "LIMIT", id="limit"),
    pytest.param("SELECT * FROM eth_firehose.logs ORDER BY block_num", "ORDER BY", id="order-by"),
    pytest.param(
        "SELECT block_num, row_number() OVER (PARTITION BY block_num ORDER BY log_index) AS n "
        "FROM eth_firehose.logs",
        "window function",
        id="window",
    ),
    pytest.param(
        "SELECT * FROM eth_firehose.logs "
        "WHERE block_num IN (SELECT max(block_num) FROM eth_firehose.blocks)",
        "aggregate",
        id="aggregate-in-in-subquery",
    ),
    pytest.param(
        "SELECT * FROM (SELECT * FROM eth_firehose.logs LIMIT 5) AS l",
        "LIMIT",
        id="limit-in-derived-table",
    ),
    pytest.param(
        "SELECT * FROM eth_firehose.logs "
        "WHERE block_num = (SELECT block_num FROM eth_firehose.blocks LIMIT 1)",
        "LIMIT",
        id="limit-in-scalar-subquery",
    ),
    pytest.param(
        "SELECT block_num, (SELECT count(*) FROM eth_firehose.blocks) AS n FROM eth_firehose.logs",
        "aggregate",
        id="aggregate-in-scalar-subquery",
    ),
]


@pytest.mark.parametrize(("sql", "operation"), NON_INCREMENTAL)
@pytest.mark.parametrize("how", ["settings", "header"])
def test_non_incremental_streaming_query_is_invalid_argument_naming_the_operation(
    server: DevServer, sql: str, operation: str, how: str
) -> None:
    with connect(server.url) as client:
        with pytest.raises(pa.ArrowInvalid, match="invalid argument") as raised:
            if how == "settings":
                flight_info(client, sql + STREAM)
            else:
                flight_info(client, sql, {"amp-stream": "true"})
        assert operation in str(raised.value)
        assert "not incremental" in str(raised.value)
        _assert_still_serves(server)


@pytest.mark.parametrize(("sql", "operation"), NON_INCREMENTAL)
def test_non_incremental_query_runs_as_a_batch(server: DevServer, sql: str, operation: str) -> None:
    with connect(server.url) as client:
        _, messages = run_batch(client, sql)
    assert messages[-1].complete


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM eth_firehose.no_such_table",
        "SELECT * FROM no_such_table",
        "SELECT * FROM other_dataset.logs",
    ],
)
@pytest.mark.parametrize("suffix", ["", STREAM], ids=["batch", "stream"])
def test_unknown_table_is_not_found(server: DevServer, sql: str, suffix: str) -> None:
    with connect(server.url) as client:
        with pytest.raises(pa.ArrowKeyError, match="not found"):
            flight_info(client, sql + suffix)
        _assert_still_serves(server)


def test_ticket_not_issued_by_the_server_is_invalid_argument(server: DevServer) -> None:
    with connect(server.url) as client:
        with pytest.raises(pa.ArrowInvalid, match="invalid argument"):
            client.do_get(flight.Ticket(b"made up"), call_options()).read_all()
        _assert_still_serves(server)


def test_descriptor_that_is_not_a_statement_query_is_invalid_argument(server: DevServer) -> None:
    with connect(server.url) as client:
        with pytest.raises(pa.ArrowInvalid, match="invalid argument"):
            client.get_flight_info(flight.FlightDescriptor.for_command(b"SELECT 1"), call_options())
        with pytest.raises(pa.ArrowInvalid, match="invalid argument"):
            client.get_flight_info(flight.FlightDescriptor.for_path("logs"), call_options())
        _assert_still_serves(server)


# -- accepted streaming shapes ---------------------------------------------------------------


def _stream_rows(srv: DevServer, sql: str) -> list[dict[str, Any]]:
    """Every row the stream sends up to the head, checking each microbatch's range."""
    with connect(srv.url) as client, open_stream(client, sql + STREAM) as reader:
        batches = read_until_end(reader, srv.chain.head)
    assert [(b.range.start, b.range.end) for b in batches] == [(0, 19), (20, 39), (40, 59)]
    rows = []
    for batch in batches:
        for row in batch.table().to_pylist():
            if "block_num" in row:
                assert batch.range.start <= row["block_num"] <= batch.range.end
            rows.append(row)
    return rows


def _sorted(rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return sorted(tuple(row.values()) for row in rows)


def test_streaming_subquery_in_select(server: DevServer) -> None:
    sql = (
        "SELECT * FROM eth_firehose.logs WHERE tx_hash IN "
        "(SELECT tx_hash FROM eth_firehose.transactions WHERE status = 0)"
    )
    transactions = server.chain.canonical_table("transactions")
    failed = transactions.filter(pc.equal(transactions["status"], 0))["tx_hash"]
    logs = server.chain.canonical_table("logs")
    expected = logs.filter(pc.is_in(logs["tx_hash"], value_set=failed))
    assert expected.num_rows > 0
    assert _sorted(_stream_rows(server, sql)) == _sorted(expected.to_pylist())


def test_streaming_union_all(server: DevServer) -> None:
    sql = (
        "SELECT block_num, hash AS h, 'block' AS kind FROM eth_firehose.blocks "
        "UNION ALL SELECT block_num, block_hash AS h, 'tx' AS kind FROM eth_firehose.transactions"
    )
    blocks = server.chain.canonical_table("blocks")
    transactions = server.chain.canonical_table("transactions")
    expected = [
        {"block_num": row["block_num"], "h": row["hash"], "kind": "block"}
        for row in blocks.to_pylist()
    ] + [
        {"block_num": row["block_num"], "h": row["block_hash"], "kind": "tx"}
        for row in transactions.to_pylist()
    ]
    assert _sorted(_stream_rows(server, sql)) == _sorted(expected)


def test_streaming_qualified_column_names(server: DevServer) -> None:
    sql = (
        "SELECT l.block_num, l.log_index, l.address FROM eth_firehose.logs AS l "
        "WHERE l.topic0 IS NOT NULL AND l.block_num >= 5"
    )
    logs = server.chain.canonical_table("logs")
    expected = rows_of_blocks(logs, 5, 59)
    expected = expected.filter(pc.is_valid(expected["topic0"]))
    assert 0 < expected.num_rows < logs.num_rows
    got = _stream_rows(server, sql)
    assert _sorted(got) == _sorted(
        expected.select(["block_num", "log_index", "address"]).to_pylist()
    )


def test_streaming_join_of_logs_and_transactions(server: DevServer) -> None:
    sql = (
        'SELECT l.block_num, l.log_index, l.tx_hash, t.tx_index, t."from" AS sender, '
        "t.status FROM eth_firehose.logs l "
        "JOIN eth_firehose.transactions t ON l.tx_hash = t.tx_hash"
    )
    transactions = {
        row["tx_hash"]: row for row in server.chain.canonical_table("transactions").to_pylist()
    }
    expected = []
    for log in server.chain.canonical_table("logs").to_pylist():
        tx = transactions[log["tx_hash"]]
        assert tx["block_num"] == log["block_num"]
        expected.append(
            {
                "block_num": log["block_num"],
                "log_index": log["log_index"],
                "tx_hash": log["tx_hash"],
                "tx_index": tx["tx_index"],
                "sender": tx["from"],
                "status": tx["status"],
            }
        )
    got = _stream_rows(server, sql)
    assert got and set(got[0]) == set(expected[0])
    assert _sorted(got) == _sorted(expected)


def test_streaming_scalar_subquery_reads_its_table(server: DevServer) -> None:
    sql = (
        "SELECT * FROM eth_firehose.logs WHERE block_num = "
        "(SELECT block_num FROM eth_firehose.blocks WHERE block_num = 5)"
    )
    expected = rows_of_blocks(server.chain.canonical_table("logs"), 5, 5)
    assert expected.num_rows > 0
    assert _sorted(_stream_rows(server, sql)) == _sorted(expected.to_pylist())


def test_streaming_query_via_header_without_settings(server: DevServer) -> None:
    with connect(server.url) as client:
        info = flight_info(client, "SELECT block_num FROM eth_firehose.blocks", {"amp-stream": "1"})
        reader = client.do_get(ticket_of(info), call_options())
        try:
            batches = read_until_end(reader, 59)
        finally:
            reader.cancel()
    assert [b.range.end for b in batches] == [19, 39, 59]


def test_failure_mid_stream_is_internal_after_the_data_sent(server: DevServer) -> None:
    """Microbatches 0..19 and 20..39 run; 40..59 divides by zero: the stream fails with
    INTERNAL after the complete microbatches."""
    sql = "SELECT block_num, 1 / (CAST(block_num AS BIGINT) - 45) AS x FROM eth_firehose.blocks"
    with connect(server.url) as client, open_stream(client, sql + STREAM) as reader:
        batches = read_microbatches(reader, 2)
        with pytest.raises(flight.FlightInternalError, match="query execution failed"):
            read_message(reader)
        _assert_still_serves(server)
    assert [(b.range.start, b.range.end) for b in batches] == [(0, 19), (20, 39)]


def test_failure_in_a_batch_query_execution_is_an_error_status(server: DevServer) -> None:
    sql = "SELECT CAST(value AS BIGINT) AS v FROM eth_firehose.transactions"
    with connect(server.url) as client:
        info = flight_info(client, sql)
        with pytest.raises(flight.FlightInternalError, match="Caused by"):
            client.do_get(ticket_of(info), call_options()).read_all()
        _assert_still_serves(server)
