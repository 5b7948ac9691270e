"""Protocol §4: resuming a stream after a cursor sent in the ``amp-resume`` header."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pyarrow.flight as flight
import pytest
from flightclient import (
    STREAM,
    BackgroundStream,
    Destination,
    assert_same_rows,
    call_options,
    connect,
    flight_info,
    hex_hash,
    open_stream,
    read_microbatches,
    read_until_end,
    resume_header,
    rows_of_blocks,
    run_batch,
    ticket_of,
)

from amp.devserver import DevServer
from amp.devserver.chain import SimulatedChain

LOGS = "SELECT * FROM eth_firehose.logs" + STREAM


@pytest.fixture
def server() -> Iterator[DevServer]:
    with DevServer(port=0, seed=1, initial_blocks=100, max_interval=10) as srv:
        yield srv


def test_canonical_cursor_resumes_at_the_next_block(server: DevServer) -> None:
    chain = server.chain
    cursor_hash = chain.canonical_hash(49)
    headers = {"amp-resume": resume_header(49, cursor_hash)}
    with connect(server.url) as client, open_stream(client, LOGS, headers) as reader:
        batches = read_until_end(reader, 99)
    assert [(b.range.start, b.range.end) for b in batches] == [
        (start, start + 9) for start in range(50, 100, 10)
    ]
    assert batches[0].range.prev_hash == hex_hash(cursor_hash)
    destination = Destination()
    for batch in batches:
        destination.apply(batch)
    oracle = chain.canonical_table("logs")
    assert_same_rows(destination.table(oracle.schema), rows_of_blocks(oracle, 50, 99), "logs")


def test_cursor_from_a_complete_marker_continues_a_stream_exactly(server: DevServer) -> None:
    """Stream, stop after some microbatches, resume from the last complete range: the union
    is the canonical table, without overlap or gap."""
    chain = server.chain
    destination = Destination()
    with connect(server.url) as client:
        with open_stream(client, LOGS) as reader:
            for batch in read_microbatches(reader, 4):
                destination.apply(batch)
        last = destination.last
        assert last is not None and last.hash is not None
        chain.mine(5)
        headers = {"amp-resume": resume_header(last.end, last.hash)}
        with open_stream(client, LOGS, headers) as reader:
            resumed = read_until_end(reader, 104)
    assert resumed[0].range.start == last.end + 1 == 40
    for batch in resumed:
        destination.apply(batch)
    assert destination.reorgs == []
    oracle = chain.canonical_table("logs")
    assert_same_rows(destination.table(oracle.schema), oracle, "logs")


def test_forked_cursor_restarts_at_the_first_divergent_height(server: DevServer) -> None:
    chain = server.chain
    forked_hash = chain.canonical_hash(97)
    chain.reorg(5)  # replaces 95..99
    assert chain.canonical_hash(97) != forked_hash
    headers = {"amp-resume": resume_header(97, forked_hash)}
    with connect(server.url) as client, open_stream(client, LOGS, headers) as reader:
        (batch,) = read_microbatches(reader, 1)
    assert (batch.range.start, batch.range.end) == (95, 99)
    assert batch.range.start <= 97
    assert batch.range.prev_hash == hex_hash(chain.canonical_hash(94))
    assert batch.range.hash == hex_hash(chain.canonical_hash(99))
    oracle = chain.canonical_table("logs")
    assert_same_rows(batch.table(), rows_of_blocks(oracle, 95, 99), "logs")


def test_cursor_forked_by_a_deep_reorg_restarts_below_it(server: DevServer) -> None:
    chain = server.chain
    forked_hash = chain.canonical_hash(90)
    chain.reorg(30)  # replaces 70..99
    chain.mine(2)
    headers = {"amp-resume": resume_header(90, forked_hash)}
    with connect(server.url) as client, open_stream(client, LOGS, headers) as reader:
        batches = read_until_end(reader, 101)
    assert batches[0].range.start == 70
    assert batches[0].range.prev_hash == hex_hash(chain.canonical_hash(69))
    destination = Destination()
    for batch in batches:
        destination.apply(batch)
    oracle = chain.canonical_table("logs")
    assert_same_rows(destination.table(oracle.schema), rows_of_blocks(oracle, 70, 101), "logs")


def test_unknown_hash_restarts_at_the_cursor_number_itself(server: DevServer) -> None:
    chain = server.chain
    headers = {"amp-resume": resume_header(50, b"\x11" * 32)}
    with connect(server.url) as client, open_stream(client, LOGS, headers) as reader:
        batches = read_until_end(reader, 99)
    assert (batches[0].range.start, batches[0].range.end) == (50, 59)
    assert batches[0].range.prev_hash == hex_hash(chain.canonical_hash(49))
    assert batches[-1].range.start == 90


def test_cursor_above_the_head_waits_until_the_block_exists(server: DevServer) -> None:
    chain = server.chain
    # The hash block 120 will have once mined: same seed, a longer chain, no reorgs.
    future_hash = SimulatedChain(seed=1, initial_blocks=130).canonical_hash(120)
    headers = {"amp-resume": resume_header(120, future_hash)}
    with connect(server.url) as client:
        info = flight_info(client, LOGS, headers)
        stream = BackgroundStream(client, ticket_of(info))
        try:
            stream.assert_silent(0.5)  # nothing, not even the schema
            chain.mine(21)  # block 120 exists, but 121 (the next to send) does not
            stream.assert_silent(0.3)
            chain.mine(5)
            batch = stream.microbatch()
        finally:
            stream.close()
    assert chain.canonical_hash(120) == future_hash
    assert (batch.range.start, batch.range.end) == (121, 125)
    assert batch.range.prev_hash == hex_hash(future_hash)


def test_cursor_above_the_head_sends_nothing_before_the_deadline(server: DevServer) -> None:
    headers = {"amp-resume": resume_header(150, b"\x22" * 32)}
    with connect(server.url) as client:
        info = flight_info(client, LOGS, headers)
        with pytest.raises(flight.FlightTimedOutError):
            reader = client.do_get(ticket_of(info), call_options(timeout=1.0))
            reader.read_chunk()


@pytest.mark.parametrize(
    "header", ["{not json", "", "null", "[1, 2]", '"mainnet"', '{"mainnet": 7}']
)
def test_malformed_cursor_is_ignored_and_the_stream_starts_at_the_first_block(
    server: DevServer, header: str
) -> None:
    with connect(server.url) as client, open_stream(client, LOGS, {"amp-resume": header}) as r:
        (batch,) = read_microbatches(r, 1)
    assert (batch.range.start, batch.range.end) == (0, 9)


def test_cursor_without_the_network_fails_the_stream_with_internal(server: DevServer) -> None:
    headers = {"amp-resume": resume_header(10, server.chain.canonical_hash(10), "sepolia")}
    with connect(server.url) as client:
        info = flight_info(client, LOGS, headers)
        with pytest.raises(
            flight.FlightInternalError, match="expected cursor for network 'mainnet'"
        ):
            reader = client.do_get(ticket_of(info), call_options())
            reader.read_all()
        # the server goes on serving
        _schema, messages = run_batch(client, "SELECT count(*) AS n FROM eth_firehose.blocks")
        assert messages[0].batch.to_pydict() == {"n": [100]}


def test_cursor_with_other_networks_uses_its_own(server: DevServer) -> None:
    chain = server.chain
    header = json.dumps(
        {
            "sepolia": {"number": 3, "hash": "0x" + "33" * 32},
            "mainnet": {"number": 79, "hash": hex_hash(chain.canonical_hash(79))},
        }
    )
    with connect(server.url) as client, open_stream(client, LOGS, {"amp-resume": header}) as r:
        (batch,) = read_microbatches(r, 1)
    assert (batch.range.start, batch.range.end) == (80, 89)


def test_resume_header_is_read_on_get_flight_info_only(server: DevServer) -> None:
    """Sent on DoGet alone, the cursor is ignored: the stream starts at the first block."""
    headers = {"amp-resume": resume_header(49, server.chain.canonical_hash(49))}
    with connect(server.url) as client:
        info = flight_info(client, LOGS)
        reader = client.do_get(ticket_of(info), call_options(headers))
        try:
            (batch,) = read_microbatches(reader, 1)
        finally:
            reader.cancel()
    assert batch.range.start == 0


def test_resume_header_does_not_apply_to_batch_queries(server: DevServer) -> None:
    headers = {"amp-resume": resume_header(49, server.chain.canonical_hash(49))}
    with connect(server.url) as client:
        _, messages = run_batch(client, "SELECT * FROM eth_firehose.blocks", headers)
    assert (messages[-1].ranges[0].start, messages[-1].ranges[0].end) == (0, 99)
    assert sum(message.num_rows for message in messages) == 100
