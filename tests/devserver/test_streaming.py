"""Protocol §2, streaming: microbatches of one range, completion markers, sizes, waiting."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import pyarrow.compute as pc
import pyarrow.flight as flight
import pytest
from flightclient import (
    STREAM,
    BackgroundStream,
    Destination,
    Microbatch,
    assert_same_rows,
    connect,
    flight_info,
    hex_hash,
    open_stream,
    read_message,
    read_microbatches,
    read_until_end,
    rows_of_blocks,
    ticket_of,
)

from amp.devserver import DevServer
from amp.devserver.chain import SimulatedChain
from amp.devserver.datagen import GENESIS_UNIX_SECONDS, SECONDS_PER_BLOCK, TABLE_SCHEMAS


def _expected_ranges(start: int, head: int, max_interval: int) -> list[tuple[int, int]]:
    """``end = min(head, start + max_interval - 1)``, then the next starts at ``end + 1``."""
    ranges = []
    while start <= head:
        end = min(head, start + max_interval - 1)
        ranges.append((start, end))
        start = end + 1
    return ranges


def _assert_canonical(batch: Microbatch, chain: SimulatedChain) -> None:
    """The range's ``hash`` is block end's canonical hash, ``prev_hash`` block start - 1's."""
    block_range = batch.range
    assert block_range.network == "mainnet"
    assert block_range.hash == hex_hash(chain.canonical_hash(block_range.end))
    assert block_range.prev_hash == hex_hash(chain.canonical_hash(block_range.start - 1))
    assert block_range.timestamp == GENESIS_UNIX_SECONDS + block_range.end * SECONDS_PER_BLOCK


def _assert_contiguous(batches: list[Microbatch]) -> None:
    for previous, following in itertools.pairwise(batches):
        assert following.range.start == previous.range.end + 1
        assert following.range.prev_hash == previous.range.hash


@pytest.fixture
def server() -> Iterator[DevServer]:
    with DevServer(port=0, seed=1, initial_blocks=100, max_interval=10) as srv:
        yield srv


@pytest.mark.parametrize("table", sorted(TABLE_SCHEMAS))
def test_microbatches_carry_the_canonical_rows_of_exactly_their_blocks(
    server: DevServer, table: str
) -> None:
    chain = server.chain
    oracle = chain.canonical_table(table)
    with (
        connect(server.url) as client,
        open_stream(client, f"SELECT * FROM eth_firehose.{table}{STREAM}") as reader,
    ):
        assert reader.schema.equals(TABLE_SCHEMAS[table])
        batches = read_until_end(reader, 99)
    assert [(b.range.start, b.range.end) for b in batches] == _expected_ranges(0, 99, 10)
    for batch in batches:
        assert all(not message.complete for message in batch.messages)
        assert all(message.num_rows > 0 for message in batch.messages)
        _assert_canonical(batch, chain)
        assert_same_rows(
            batch.table(), rows_of_blocks(oracle, batch.range.start, batch.range.end), table
        )
    _assert_contiguous(batches)


def test_first_microbatch_is_preceded_only_by_the_schema(server: DevServer) -> None:
    with (
        connect(server.url) as client,
        open_stream(client, "SELECT * FROM eth_firehose.blocks" + STREAM) as reader,
    ):
        first = read_message(reader)
        assert first is not None
        assert first.range.start == 0
        assert not first.complete
        assert first.num_rows == 10


def test_microbatch_sizes_follow_max_interval_as_blocks_arrive() -> None:
    with DevServer(port=0, seed=2, initial_blocks=25, max_interval=10) as srv:
        chain = srv.chain
        with (
            connect(srv.url) as client,
            open_stream(client, "SELECT * FROM eth_firehose.transactions" + STREAM) as reader,
        ):
            batches = read_until_end(reader, 24)
            assert [(b.range.start, b.range.end) for b in batches] == [(0, 9), (10, 19), (20, 24)]
            chain.mine(3)
            batches += read_until_end(reader, 27)
            assert batches[-1].range.start == 25
            chain.mine(15)
            batches += read_until_end(reader, 42)
            assert [(b.range.start, b.range.end) for b in batches[-2:]] == [(28, 37), (38, 42)]
        for batch in batches:
            _assert_canonical(batch, chain)
        _assert_contiguous(batches)


def test_max_interval_one_gives_one_block_per_microbatch() -> None:
    with DevServer(port=0, seed=1, initial_blocks=5, max_interval=1) as srv:
        with (
            connect(srv.url) as client,
            open_stream(client, "SELECT * FROM eth_firehose.logs" + STREAM) as reader,
        ):
            batches = read_until_end(reader, 4)
        assert [(b.range.start, b.range.end) for b in batches] == [(n, n) for n in range(5)]
        _assert_contiguous(batches)


def test_stream_starts_at_the_first_block_of_a_chain_at_15_million() -> None:
    first = 15_000_000
    with DevServer(port=0, seed=5, start_block=first, initial_blocks=25, max_interval=10) as srv:
        oracle = srv.chain.canonical_table("logs")
        with (
            connect(srv.url) as client,
            open_stream(client, "SELECT * FROM eth_firehose.logs" + STREAM) as reader,
        ):
            batches = read_until_end(reader, first + 24)
        assert [(b.range.start, b.range.end) for b in batches] == _expected_ranges(
            first, first + 24, 10
        )
        assert batches[0].range.prev_hash == hex_hash(srv.chain.canonical_hash(first - 1))
        for batch in batches:
            _assert_canonical(batch, srv.chain)
            assert_same_rows(
                batch.table(), rows_of_blocks(oracle, batch.range.start, batch.range.end), "logs"
            )
        _assert_contiguous(batches)


def test_nothing_is_sent_while_no_new_block_exists(server: DevServer) -> None:
    """With a deadline on the call, the read after the last available microbatch must time
    out: nothing (no keep-alive, no end of stream) is sent while waiting."""
    with (
        connect(server.url) as client,
        open_stream(client, "SELECT * FROM eth_firehose.blocks" + STREAM, timeout=2.0) as reader,
    ):
        read_until_end(reader, 99)
        with pytest.raises(flight.FlightTimedOutError):
            read_message(reader)


def test_stream_waits_then_sends_the_next_range_when_a_block_is_mined(server: DevServer) -> None:
    chain = server.chain
    with connect(server.url) as client:
        info = flight_info(client, "SELECT * FROM eth_firehose.logs" + STREAM)
        stream = BackgroundStream(client, ticket_of(info))
        try:
            batches = [stream.microbatch() for _ in range(10)]
            assert batches[-1].range.end == 99
            stream.assert_silent(0.5)
            chain.mine(1)
            following = stream.microbatch()
            assert (following.range.start, following.range.end) == (100, 100)
            assert following.range.prev_hash == batches[-1].range.hash
            _assert_canonical(following, chain)
            stream.assert_silent(0.3)
            chain.mine(12)
            more = [stream.microbatch(), stream.microbatch()]
            assert [(b.range.start, b.range.end) for b in more] == [(101, 110), (111, 112)]
        finally:
            stream.close()
        _assert_contiguous([*batches, following, *more])
        oracle = chain.canonical_table("logs")
        destination = Destination()
        for batch in [*batches, following, *more]:
            destination.apply(batch)
        assert_same_rows(destination.table(oracle.schema), oracle, "logs")


def test_stream_on_an_empty_chain_sends_nothing_until_the_first_block() -> None:
    with DevServer(port=0, seed=1, initial_blocks=0, max_interval=10) as srv:
        with connect(srv.url) as client:
            info = flight_info(client, "SELECT * FROM eth_firehose.blocks" + STREAM)
            stream = BackgroundStream(client, ticket_of(info))
            try:
                stream.assert_silent(0.5)  # not even the schema
                srv.chain.mine(3)
                batch = stream.microbatch()
            finally:
                stream.close()
        assert (batch.range.start, batch.range.end) == (0, 2)
        assert batch.range.prev_hash == "0x" + "00" * 32
        assert_same_rows(batch.table(), srv.chain.canonical_table("blocks"), "blocks")


def test_large_results_are_split_at_rows_per_message_with_the_same_metadata() -> None:
    with DevServer(
        port=0, seed=1, initial_blocks=100, max_interval=50, rows_per_message=100
    ) as srv:
        oracle = srv.chain.canonical_table("logs")
        with (
            connect(srv.url) as client,
            open_stream(client, "SELECT * FROM eth_firehose.logs" + STREAM) as reader,
        ):
            batches = read_until_end(reader, 99)
    assert [(b.range.start, b.range.end) for b in batches] == [(0, 49), (50, 99)]
    for batch in batches:
        assert len(batch.messages) > 1
        assert all(0 < message.num_rows <= 100 for message in batch.messages)
        # read_microbatch checked the metadata; here byte-for-byte as well
        raw = {message.raw_metadata for message in batch.messages}
        assert len(raw) == 1
        assert_same_rows(
            batch.table(), rows_of_blocks(oracle, batch.range.start, batch.range.end), "logs"
        )


def test_microbatch_without_rows_is_only_a_marker(server: DevServer) -> None:
    sql = "SELECT * FROM eth_firehose.transactions WHERE gas_limit = 0" + STREAM
    with connect(server.url) as client, open_stream(client, sql) as reader:
        batches = read_microbatches(reader, 10)
    assert [(b.range.start, b.range.end) for b in batches] == _expected_ranges(0, 99, 10)
    assert all(batch.messages == [] for batch in batches)
    _assert_contiguous(batches)


def test_projection_and_filter_stream_the_matching_rows(server: DevServer) -> None:
    sql = (
        "SELECT block_num, log_index, address FROM eth_firehose.logs WHERE topic1 IS NULL" + STREAM
    )
    logs = server.chain.canonical_table("logs")
    oracle = logs.filter(pc.is_null(logs["topic1"]))
    assert 0 < oracle.num_rows < logs.num_rows
    with connect(server.url) as client, open_stream(client, sql) as reader:
        batches = read_until_end(reader, 99)
    got = [row for batch in batches for row in batch.table().to_pylist()]
    expected = oracle.select(["block_num", "log_index", "address"]).to_pylist()
    assert sorted(got, key=_log_key) == sorted(expected, key=_log_key)


def _log_key(row: dict[str, Any]) -> tuple[int, int]:
    return row["block_num"], row["log_index"]


def test_two_streams_are_independent(server: DevServer) -> None:
    with connect(server.url) as client:
        sql = "SELECT * FROM eth_firehose.blocks" + STREAM
        with open_stream(client, sql) as first, open_stream(client, sql) as second:
            a = read_microbatches(first, 3)
            b = read_microbatches(second, 10)
            a += read_microbatches(first, 7)
    assert [x.range for x in a] == [x.range for x in b]
