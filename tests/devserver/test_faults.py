"""Fault injection: failing calls, cut streams, latency with keep-alives, hanging calls."""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.flight as flight
import pytest
from flightclient import (
    STREAM,
    Destination,
    Message,
    Microbatch,
    assert_same_rows,
    call_options,
    connect,
    flight_info,
    messages_table,
    open_stream,
    read_message,
    read_microbatch,
    read_until_end,
    resume_header,
    run_batch,
    ticket_of,
)

from amp.devserver import DevServer

# status name -> what the bare pyarrow client raises (RESOURCE_EXHAUSTED has no Flight class)
STATUS_ERRORS: dict[str, tuple[type[Exception], str]] = {
    "UNAVAILABLE": (flight.FlightUnavailableError, "unavailable"),
    "RESOURCE_EXHAUSTED": (pa.ArrowInvalid, "resource exhausted"),
    "INTERNAL": (flight.FlightInternalError, "internal"),
    "DEADLINE_EXCEEDED": (flight.FlightTimedOutError, "deadline exceeded"),
    "UNAUTHENTICATED": (flight.FlightUnauthenticatedError, "unauthenticated"),
    "PERMISSION_DENIED": (flight.FlightUnauthorizedError, "permission denied"),
}

COUNT_BLOCKS = "SELECT count(*) AS n FROM eth_firehose.blocks"


@pytest.fixture
def server() -> Iterator[DevServer]:
    with DevServer(port=0, seed=1, initial_blocks=100, max_interval=10, rows_per_message=100) as s:
        yield s


def _count(client: flight.FlightClient, ticket: flight.Ticket) -> int:
    return client.do_get(ticket, call_options()).read_all()["n"].to_pylist()[0]


@pytest.mark.parametrize("status", sorted(STATUS_ERRORS))
@pytest.mark.parametrize("times", [1, 3])
def test_get_flight_info_fails_exactly_times_then_succeeds(
    server: DevServer, status: str, times: int
) -> None:
    error, words = STATUS_ERRORS[status]
    server.faults.fail_next("get_flight_info", status, times=times)
    with connect(server.url) as client:
        for _ in range(times):
            with pytest.raises(error, match=words):
                flight_info(client, COUNT_BLOCKS)
        info = flight_info(client, COUNT_BLOCKS)
        assert _count(client, ticket_of(info)) == 100


@pytest.mark.parametrize("status", sorted(STATUS_ERRORS))
@pytest.mark.parametrize("times", [1, 2])
def test_do_get_fails_exactly_times_then_succeeds(
    server: DevServer, status: str, times: int
) -> None:
    error, words = STATUS_ERRORS[status]
    with connect(server.url) as client:
        ticket = ticket_of(flight_info(client, COUNT_BLOCKS))
        server.faults.fail_next("do_get", status, times=times)
        flight_info(client, COUNT_BLOCKS)  # a DoGet fault leaves GetFlightInfo alone
        for _ in range(times):
            with pytest.raises(error, match=words):
                _count(client, ticket)
        assert _count(client, ticket) == 100


def test_faults_of_one_method_leave_the_other_alone(server: DevServer) -> None:
    with connect(server.url) as client:
        server.faults.fail_next("do_get", "UNAVAILABLE", times=1)
        info = flight_info(client, COUNT_BLOCKS)  # not failed
        with pytest.raises(flight.FlightUnavailableError):
            _count(client, ticket_of(info))
        server.faults.fail_next("get_flight_info", "INTERNAL", times=1)
        assert _count(client, ticket_of(info)) == 100  # not failed
        with pytest.raises(flight.FlightInternalError):
            flight_info(client, COUNT_BLOCKS)


def test_armed_failures_are_used_in_order(server: DevServer) -> None:
    server.faults.fail_next("get_flight_info", "UNAVAILABLE", times=2)
    server.faults.fail_next("get_flight_info", "PERMISSION_DENIED", times=1)
    server.faults.fail_next("get_flight_info", "internal", times=1, message="custom words")
    with connect(server.url) as client:
        for _ in range(2):
            with pytest.raises(flight.FlightUnavailableError):
                flight_info(client, COUNT_BLOCKS)
        with pytest.raises(flight.FlightUnauthorizedError):
            flight_info(client, COUNT_BLOCKS)
        with pytest.raises(flight.FlightInternalError, match="custom words"):
            flight_info(client, COUNT_BLOCKS)
        flight_info(client, COUNT_BLOCKS)


def test_clear_disarms_everything(server: DevServer) -> None:
    server.faults.fail_next("get_flight_info", "UNAVAILABLE", times=5)
    server.faults.fail_next("do_get", "UNAVAILABLE", times=5)
    server.faults.cut_stream_after(messages=1)
    server.faults.set_latency(5.0)
    server.faults.clear()
    with connect(server.url) as client:
        _schema, messages = run_batch(client, "SELECT * FROM eth_firehose.blocks")
    assert messages[-1].complete
    assert sum(message.num_rows for message in messages) == 100


# -- cut streams --------------------------------------------------------------------------


def _read_until_error(reader: flight.FlightStreamReader) -> tuple[list[Message], Exception]:
    received: list[Message] = []
    while True:
        try:
            message = read_message(reader)
        except flight.FlightUnavailableError as exc:
            return received, exc
        assert message is not None, "the stream ended without the injected cut"
        received.append(message)


@pytest.mark.parametrize("messages", [1, 2, 5])
def test_cut_stream_after_k_messages_then_the_next_stream_is_whole(
    server: DevServer, messages: int
) -> None:
    """K FlightData messages (the schema counts) arrive, then UNAVAILABLE."""
    sql = "SELECT * FROM eth_firehose.logs"
    with connect(server.url) as client:
        info = flight_info(client, sql)
        server.faults.cut_stream_after(messages=messages)
        reader = client.do_get(ticket_of(info), call_options())
        try:
            assert reader.schema.equals(info.schema)  # message 1
            received, error = _read_until_error(reader)
        finally:
            reader.cancel()
        assert len(received) == messages - 1
        assert "connection reset" in str(error)
        schema, whole = run_batch(client, sql)
    assert whole[-1].complete
    assert len(whole) > messages
    assert_same_rows(messages_table(schema, whole), server.chain.canonical_table("logs"), "logs")


def test_cut_stream_after_zero_messages_sends_not_even_the_schema(server: DevServer) -> None:
    with connect(server.url) as client:
        info = flight_info(client, COUNT_BLOCKS)
        server.faults.cut_stream_after(messages=0)
        with pytest.raises(flight.FlightUnavailableError):
            client.do_get(ticket_of(info), call_options()).read_all()
        assert _count(client, ticket_of(info)) == 100


def test_cut_stream_after_applies_to_times_streams(server: DevServer) -> None:
    with connect(server.url) as client:
        info = flight_info(client, COUNT_BLOCKS)
        server.faults.cut_stream_after(messages=1, times=2)
        for _ in range(2):
            with pytest.raises(flight.FlightUnavailableError):
                _count(client, ticket_of(info))
        assert _count(client, ticket_of(info)) == 100


def test_cut_stream_is_recovered_by_resuming_after_the_last_complete_range(
    server: DevServer,
) -> None:
    """A stream dropped mid-microbatch: resume from the last ``ranges_complete`` range, drop
    the partial microbatch, and the destination equals the canonical table."""
    sql = "SELECT * FROM eth_firehose.logs" + STREAM
    destination = Destination()
    received = 0
    with connect(server.url) as client:
        server.faults.cut_stream_after(messages=13)
        with open_stream(client, sql) as reader:

            def read() -> Message | None:
                nonlocal received
                message = read_message(reader)
                received += 1
                return message

            complete: list[Microbatch] = []
            with pytest.raises(flight.FlightUnavailableError):
                while True:
                    complete.append(read_microbatch(read))
        # 13 messages: the schema, then more than the complete microbatches
        assert received == 12 > sum(len(batch.messages) + 1 for batch in complete)
        for batch in complete:
            destination.apply(batch)
        last = destination.last
        assert last is not None and last.hash is not None
        headers = {"amp-resume": resume_header(last.end, last.hash)}
        with open_stream(client, sql, headers) as reader:
            for batch in read_until_end(reader, 99):
                destination.apply(batch)
    oracle = server.chain.canonical_table("logs")
    assert_same_rows(destination.table(oracle.schema), oracle, "logs")


# -- latency and keep-alives ----------------------------------------------------------------


def test_latency_sends_zero_row_keepalives_with_the_microbatch_metadata() -> None:
    with DevServer(port=0, seed=1, initial_blocks=3, max_interval=10, keepalive_interval=0.05) as s:
        s.faults.set_latency(0.3)
        with (
            connect(s.url) as client,
            open_stream(client, "SELECT * FROM eth_firehose.blocks" + STREAM) as reader,
        ):
            batch = read_microbatch(lambda: read_message(reader))
    assert (batch.range.start, batch.range.end) == (0, 2)
    keepalives = [message for message in batch.messages if message.num_rows == 0]
    data = [message for message in batch.messages if message.num_rows > 0]
    assert 1 <= len(keepalives) <= 6  # 0.3 s of latency, at most one per 0.05 s
    assert batch.messages[0].num_rows == 0  # the keep-alives come while the data is late
    for message in keepalives:
        assert message.complete is False
        assert message.metadata == data[0].metadata
        assert message.batch.schema.equals(batch.marker.batch.schema)
    assert sum(message.num_rows for message in data) == 3


def test_no_keepalives_without_latency() -> None:
    with (
        DevServer(port=0, seed=1, initial_blocks=3, max_interval=10, keepalive_interval=0.05) as s,
        connect(s.url) as client,
        open_stream(client, "SELECT * FROM eth_firehose.blocks" + STREAM) as reader,
    ):
        batch = read_microbatch(lambda: read_message(reader))
    assert [message.num_rows for message in batch.messages] == [3]


def test_latency_does_not_change_the_rows(server: DevServer) -> None:
    server.faults.set_latency(0.05)
    with (
        connect(server.url) as client,
        open_stream(client, "SELECT * FROM eth_firehose.transactions" + STREAM) as reader,
    ):
        batches = read_until_end(reader, 29)
    server.faults.set_latency(0)
    destination = Destination()
    for batch in batches:
        destination.apply(batch)
    oracle = server.chain.canonical_table("transactions")
    expected = oracle.filter(pc.less_equal(oracle["block_num"], 29))
    assert_same_rows(destination.table(oracle.schema), expected, "transactions")


# -- hangs ------------------------------------------------------------------------------------


def test_hanging_get_flight_info_times_out_and_succeeds_after_release(server: DevServer) -> None:
    server.faults.hang_next("get_flight_info")
    with connect(server.url) as client:
        with pytest.raises(flight.FlightTimedOutError):
            flight_info(client, COUNT_BLOCKS, timeout=0.5)
        server.faults.release()
        assert _count(client, ticket_of(flight_info(client, COUNT_BLOCKS))) == 100


def test_hang_is_used_by_exactly_times_calls(server: DevServer) -> None:
    server.faults.hang_next("get_flight_info", times=2)
    with connect(server.url) as client:
        for _ in range(2):
            with pytest.raises(flight.FlightTimedOutError):
                flight_info(client, COUNT_BLOCKS, timeout=0.3)
        # no release: the armed hangs were used up
        assert _count(client, ticket_of(flight_info(client, COUNT_BLOCKS))) == 100


def test_hanging_do_get_times_out_and_succeeds_after_release(server: DevServer) -> None:
    with connect(server.url) as client:
        info = flight_info(client, COUNT_BLOCKS)
        server.faults.hang_next("do_get")
        with pytest.raises(flight.FlightTimedOutError):
            client.do_get(ticket_of(info), call_options(timeout=0.5)).read_all()
        server.faults.release()
        assert _count(client, ticket_of(info)) == 100


# -- bad arguments ----------------------------------------------------------------------------


def test_unknown_method_is_a_value_error_naming_the_methods(server: DevServer) -> None:
    for arm in (
        lambda: server.faults.fail_next("do_put", "UNAVAILABLE"),
        lambda: server.faults.hang_next("list_flights"),
    ):
        with pytest.raises(ValueError, match="get_flight_info") as raised:
            arm()
        assert "do_get" in str(raised.value)


def test_unknown_status_is_a_value_error_naming_the_statuses(server: DevServer) -> None:
    for status in ("NOPE", "OK"):
        with pytest.raises(ValueError, match="UNAVAILABLE") as raised:
            server.faults.fail_next("do_get", status)
        assert "RESOURCE_EXHAUSTED" in str(raised.value)


def test_bad_counts_are_value_errors(server: DevServer) -> None:
    with pytest.raises(ValueError, match="times must be >= 1"):
        server.faults.fail_next("do_get", "UNAVAILABLE", times=0)
    with pytest.raises(ValueError, match="messages must be >= 0"):
        server.faults.cut_stream_after(messages=-1)
    with pytest.raises(ValueError, match="times >= 1"):
        server.faults.cut_stream_after(messages=1, times=0)
    with pytest.raises(ValueError, match="latency must be >= 0"):
        server.faults.set_latency(-1)


def test_rejected_arguments_arm_nothing(server: DevServer) -> None:
    with pytest.raises(ValueError):
        server.faults.fail_next("do_get", "UNAVAILABLE", times=0)
    with pytest.raises(ValueError):
        server.faults.fail_next("nope", "UNAVAILABLE")
    with connect(server.url) as client:
        assert _count(client, ticket_of(flight_info(client, COUNT_BLOCKS))) == 100
