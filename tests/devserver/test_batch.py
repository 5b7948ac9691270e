"""Protocol §2, batch queries: schema, data with one running range, one complete marker, end."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pyarrow.compute as pc
import pyarrow.flight as flight
import pytest
from flightclient import (
    Message,
    WireRange,
    assert_same_rows,
    connect,
    flight_info,
    hex_hash,
    messages_table,
    rows_of_blocks,
    run_batch,
)

from amp.devserver import DevServer
from amp.devserver.datagen import GENESIS_UNIX_SECONDS, SECONDS_PER_BLOCK, TABLE_SCHEMAS

HEX_HASH = re.compile(r"^0x[0-9a-f]{64}$")


def _whole_chain_range(srv: DevServer) -> WireRange:
    first, head = srv.chain.first_block, srv.chain.head
    return WireRange(
        network="mainnet",
        start=first,
        end=head,
        hash=hex_hash(srv.chain.canonical_hash(head)),
        prev_hash=hex_hash(srv.chain.canonical_hash(first - 1)),
        timestamp=GENESIS_UNIX_SECONDS + head * SECONDS_PER_BLOCK,
    )


def _assert_batch_shape(messages: list[Message], ranges: list[WireRange]) -> None:
    """Data messages ``{"ranges": ranges, "ranges_complete": false}``, then exactly one
    zero-row message with ``ranges_complete: true``, last."""
    assert messages, "a batch stream ends with a complete marker"
    *data, marker = messages
    for message in data:
        assert set(message.metadata) == {"ranges", "ranges_complete"}
        assert message.metadata["ranges_complete"] is False
        assert message.ranges == ranges
    assert marker.metadata["ranges_complete"] is True
    assert marker.num_rows == 0
    assert marker.ranges == ranges


@pytest.mark.parametrize("table", sorted(TABLE_SCHEMAS))
def test_select_star_returns_canonical_rows_with_one_range_then_one_marker(
    amp_devserver: DevServer, client: flight.FlightClient, table: str
) -> None:
    schema, messages = run_batch(client, f"SELECT * FROM eth_firehose.{table}")
    assert schema.equals(TABLE_SCHEMAS[table])
    _assert_batch_shape(messages, [_whole_chain_range(amp_devserver)])
    assert sum(message.num_rows for message in messages) > 0
    assert_same_rows(
        messages_table(schema, messages), amp_devserver.chain.canonical_table(table), table
    )


def test_range_is_in_wire_form_with_hex_hashes(
    amp_devserver: DevServer, client: flight.FlightClient
) -> None:
    _, messages = run_batch(client, "SELECT * FROM eth_firehose.blocks")
    for message in messages:
        (entry,) = message.metadata["ranges"]
        assert entry["network"] == "mainnet"
        assert entry["numbers"] == {"start": 0, "end": 99}
        assert HEX_HASH.match(entry["hash"]), entry
        assert HEX_HASH.match(entry["prev_hash"]), entry
        assert entry["prev_hash"] == "0x" + "00" * 32  # the parent of genesis


def test_range_hash_and_timestamp_match_the_blocks_table(
    amp_devserver: DevServer, client: flight.FlightClient
) -> None:
    """``hash`` is block end's hash, ``timestamp`` its unix seconds (from the data itself)."""
    _, messages = run_batch(client, "SELECT * FROM eth_firehose.logs")
    block_range = messages[-1].ranges[0]
    blocks = amp_devserver.chain.canonical_table("blocks").to_pylist()
    by_number = {row["block_num"]: row for row in blocks}
    assert block_range.hash == hex_hash(by_number[99]["hash"])
    assert block_range.timestamp == int(by_number[99]["timestamp"].timestamp())
    assert by_number[0]["parent_hash"] == b"\x00" * 32


def test_query_without_table_has_no_ranges(client: flight.FlightClient) -> None:
    schema, messages = run_batch(client, "SELECT 1 AS one")
    _assert_batch_shape(messages, [])
    assert messages_table(schema, messages)["one"].to_pylist() == [1]


@pytest.mark.parametrize("table", sorted(TABLE_SCHEMAS))
def test_aggregate_batch_query_counts_the_canonical_rows(
    amp_devserver: DevServer, client: flight.FlightClient, table: str
) -> None:
    schema, messages = run_batch(client, f"SELECT count(*) AS n FROM eth_firehose.{table}")
    _assert_batch_shape(messages, [_whole_chain_range(amp_devserver)])
    expected = amp_devserver.chain.canonical_table(table).num_rows
    assert messages_table(schema, messages)["n"].to_pylist() == [expected]


def test_group_by_batch_query(amp_devserver: DevServer, client: flight.FlightClient) -> None:
    sql = "SELECT block_num, count(*) AS n FROM eth_firehose.transactions GROUP BY block_num"
    schema, messages = run_batch(client, sql)
    got = dict(zip(*messages_table(schema, messages).to_pydict().values(), strict=True))
    oracle = amp_devserver.chain.canonical_table("transactions")["block_num"].value_counts()
    assert got == {row["values"]: row["counts"] for row in oracle.to_pylist()}


def test_batch_sees_the_chain_as_it_is_now(amp_devserver: DevServer) -> None:
    chain = amp_devserver.chain
    chain.mine(7)
    chain.reorg(3)
    with connect(amp_devserver.url) as client:
        schema, messages = run_batch(client, "SELECT * FROM eth_firehose.transactions")
    _assert_batch_shape(messages, [_whole_chain_range(amp_devserver)])
    assert messages[-1].ranges[0].end == 106
    assert_same_rows(
        messages_table(schema, messages), chain.canonical_table("transactions"), "transactions"
    )


def test_batch_on_a_chain_starting_at_15_million() -> None:
    with (
        DevServer(port=0, seed=3, start_block=15_000_000, initial_blocks=30) as srv,
        connect(srv.url) as client,
    ):
        schema, messages = run_batch(client, "SELECT * FROM eth_firehose.logs")
        _assert_batch_shape(messages, [_whole_chain_range(srv)])
        assert messages[-1].ranges[0].start == 15_000_000
        assert messages[-1].ranges[0].end == 15_000_029
        assert_same_rows(
            messages_table(schema, messages), srv.chain.canonical_table("logs"), "logs"
        )


def test_batch_result_is_split_at_rows_per_message() -> None:
    with (
        DevServer(port=0, seed=1, initial_blocks=100, rows_per_message=100) as srv,
        connect(srv.url) as client,
    ):
        schema, messages = run_batch(client, "SELECT * FROM eth_firehose.logs")
        _assert_batch_shape(messages, [_whole_chain_range(srv)])
        data = messages[:-1]
        assert len(data) > 5
        assert all(0 < message.num_rows <= 100 for message in data)
        assert_same_rows(messages_table(schema, data), srv.chain.canonical_table("logs"), "logs")


def test_batch_on_an_empty_chain_is_an_empty_result() -> None:
    with DevServer(port=0, initial_blocks=0) as srv, connect(srv.url) as client:
        schema, messages = run_batch(client, "SELECT * FROM eth_firehose.blocks")
        assert schema.equals(TABLE_SCHEMAS["blocks"])
        assert messages[-1].complete
        assert sum(message.num_rows for message in messages) == 0


# A batch query answers over the whole chain at once, whatever the server's microbatch size:
# results that relate rows of different blocks must be complete.


@pytest.fixture
def small_interval_server() -> Iterator[DevServer]:
    with DevServer(port=0, seed=1, initial_blocks=100, max_interval=10) as srv:
        yield srv


def test_batch_join_across_blocks_is_complete(small_interval_server: DevServer) -> None:
    srv = small_interval_server
    sql = (
        "SELECT c.block_num AS child, p.block_num AS parent FROM eth_firehose.blocks c "
        "JOIN eth_firehose.blocks p ON c.parent_hash = p.hash"
    )
    with connect(srv.url) as client:
        schema, messages = run_batch(client, sql)
    pairs = messages_table(schema, messages).to_pylist()
    assert sorted((row["child"], row["parent"]) for row in pairs) == [
        (number, number - 1) for number in range(1, 100)
    ]


def test_batch_subquery_aggregate_is_over_the_whole_chain(
    small_interval_server: DevServer,
) -> None:
    srv = small_interval_server
    sql = (
        "SELECT block_num FROM eth_firehose.transactions "
        "WHERE block_num IN (SELECT max(block_num) FROM eth_firehose.transactions)"
    )
    with connect(srv.url) as client:
        schema, messages = run_batch(client, sql)
    expected = pc.max(srv.chain.canonical_table("transactions")["block_num"]).as_py()
    assert set(messages_table(schema, messages)["block_num"].to_pylist()) == {expected}


def test_batch_scalar_subquery_reads_its_table(small_interval_server: DevServer) -> None:
    """A subquery the optimizer leaves inside an expression still reads real rows."""
    srv = small_interval_server
    sql = (
        "SELECT * FROM eth_firehose.logs WHERE block_num = "
        "(SELECT block_num FROM eth_firehose.blocks WHERE block_num = 5)"
    )
    with connect(srv.url) as client:
        schema, messages = run_batch(client, sql)
    expected = rows_of_blocks(srv.chain.canonical_table("logs"), 5, 5)
    assert expected.num_rows > 0
    assert_same_rows(messages_table(schema, messages), expected, "logs")


def test_batch_rows_cross_microbatch_boundaries(small_interval_server: DevServer) -> None:
    srv = small_interval_server
    with connect(srv.url) as client:
        info = flight_info(client, "SELECT * FROM eth_firehose.transactions")
        assert info.schema.equals(TABLE_SCHEMAS["transactions"])
        schema, messages = run_batch(client, "SELECT * FROM eth_firehose.transactions")
    _assert_batch_shape(messages, [_whole_chain_range(srv)])
    assert_same_rows(
        messages_table(schema, messages),
        srv.chain.canonical_table("transactions"),
        "transactions",
    )


def test_batch_metadata_is_json_utf8(client: flight.FlightClient) -> None:
    _, messages = run_batch(client, "SELECT * FROM eth_firehose.blocks")
    for message in messages:
        assert message.raw_metadata is not None
        assert isinstance(json.loads(message.raw_metadata.decode("utf-8")), dict)
