"""Faults that bend a stream without an error status: a clean end, a repeated
``ranges_complete`` marker, a message on a second network, changed columns."""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa
import pytest
from flightclient import (
    STREAM,
    call_options,
    connect,
    flight_info,
    open_stream,
    read_all_messages,
    read_message,
    ticket_of,
)

from amp.devserver import DevServer

LOGS = "SELECT * FROM eth_firehose.logs"


@pytest.fixture
def server() -> Iterator[DevServer]:
    with DevServer(port=0, seed=1, initial_blocks=30, max_interval=10, rows_per_message=100) as s:
        yield s


def test_end_stream_after_ends_a_streaming_query_cleanly(server: DevServer) -> None:
    server.faults.end_stream_after(messages=3)
    with connect(server.url) as client, open_stream(client, LOGS + STREAM) as reader:
        received = [read_message(reader), read_message(reader)]
        assert read_message(reader) is None  # StopIteration: status OK, no error
    assert all(message is not None for message in received)
    with connect(server.url) as client, open_stream(client, LOGS + STREAM) as reader:
        assert read_message(reader) is not None  # consumed: the next stream is whole


def test_repeat_marker_next_sends_the_same_marker_twice(server: DevServer) -> None:
    server.faults.repeat_marker_next()
    with connect(server.url) as client, open_stream(client, LOGS + STREAM) as reader:
        messages = []
        while len([m for m in messages if m.complete]) < 3:
            message = read_message(reader)
            assert message is not None
            messages.append(message)
    markers = [m for m in messages if m.complete]
    assert markers[0].raw_metadata == markers[1].raw_metadata
    assert messages[messages.index(markers[0]) + 1] is markers[1]
    assert (markers[2].range.start, markers[2].range.end) == (10, 19)


def test_foreign_network_at_moves_one_message_to_another_network(server: DevServer) -> None:
    server.faults.foreign_network_at(message=2, network="sepolia")
    with connect(server.url) as client, open_stream(client, LOGS + STREAM) as reader:
        networks = [read_message(reader).range.network for _ in range(3)]  # type: ignore[union-attr]
    assert networks == ["mainnet", "sepolia", "mainnet"]


def test_column_changes_apply_to_do_get_only(server: DevServer) -> None:
    server.faults.reorder_columns_next()
    server.faults.change_columns_next(
        drop=("data",), add=("extra",), retype={"log_index": "string"}
    )
    with connect(server.url) as client:
        info = flight_info(client, LOGS)
        names = info.schema.names
        reversed_reader = client.do_get(ticket_of(info), call_options())
        assert reversed_reader.schema.names == names[::-1]
        rows = read_all_messages(reversed_reader)
        assert all(m.batch.schema.names == names[::-1] for m in rows)
        changed = client.do_get(ticket_of(info), call_options())
        expected = [n for n in names if n != "data"] + ["extra"]
        assert changed.schema.names == expected
        assert changed.schema.field("log_index").type == pa.string()
        assert flight_info(client, LOGS).schema.names == names
        assert client.do_get(ticket_of(info), call_options()).schema.names == names
