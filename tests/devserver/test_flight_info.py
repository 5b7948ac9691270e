"""Protocol §1: GetFlightInfo, the streaming switch (SQL and ``amp-stream``), other RPCs."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.flight as flight
import pytest
from flightclient import (
    STREAM,
    call_options,
    descriptor,
    flight_info,
    read_message,
    read_microbatch,
    ticket_of,
)

from amp.devserver import DevServer
from amp.devserver.datagen import TABLE_SCHEMAS


@pytest.mark.parametrize("table", sorted(TABLE_SCHEMAS))
@pytest.mark.parametrize("suffix", ["", STREAM], ids=["batch", "stream"])
def test_flight_info_has_schema_one_ticket_no_location_and_unknown_totals(
    client: flight.FlightClient, table: str, suffix: str
) -> None:
    info = flight_info(client, f"SELECT * FROM eth_firehose.{table}{suffix}")
    assert info.schema.equals(TABLE_SCHEMAS[table])
    assert len(info.endpoints) == 1
    endpoint = info.endpoints[0]
    assert endpoint.ticket.ticket  # opaque, but present
    assert list(endpoint.locations) == []
    assert info.total_records == -1
    assert info.total_bytes == -1


def test_flight_info_schema_is_the_query_output_schema(client: flight.FlightClient) -> None:
    info = flight_info(client, "SELECT block_num, hash AS h, 1 AS one FROM eth_firehose.blocks")
    assert info.schema.names == ["block_num", "h", "one"]
    assert info.schema.field("block_num").type == pa.uint64()
    assert info.schema.field("h").type == pa.binary(32)
    assert info.schema.field("one").type == pa.int64()


def _is_streaming(
    srv: DevServer, client: flight.FlightClient, sql: str, headers: dict[str, str]
) -> bool:
    """Run the query: a batch query ends after its first (only) complete marker; a streaming
    one goes on with the next microbatch once a block is mined."""
    head = srv.chain.head
    info = flight_info(client, sql, headers)
    reader = client.do_get(ticket_of(info), call_options())
    try:
        first = read_microbatch(lambda: read_message(reader))
        assert (first.range.start, first.range.end) == (srv.chain.first_block, head)
        srv.chain.mine(1)
        following = read_message(reader)
        if following is None:
            return False
        assert following.range.start == head + 1
        return True
    finally:
        reader.cancel()


@pytest.mark.parametrize("value", ["true", "TRUE", "True", "1", " true "])
def test_amp_stream_header_forces_streaming_on(
    amp_devserver: DevServer, client: flight.FlightClient, value: str
) -> None:
    sql = "SELECT * FROM eth_firehose.blocks"
    assert _is_streaming(amp_devserver, client, sql, {"amp-stream": value})


@pytest.mark.parametrize("value", ["false", "FALSE", "False", "0"])
def test_amp_stream_header_forces_streaming_off(
    amp_devserver: DevServer, client: flight.FlightClient, value: str
) -> None:
    sql = "SELECT * FROM eth_firehose.blocks" + STREAM
    assert not _is_streaming(amp_devserver, client, sql, {"amp-stream": value})


@pytest.mark.parametrize("value", ["yes", "on", "2", "", "truthy"])
@pytest.mark.parametrize("settings", [True, False], ids=["settings", "no-settings"])
def test_other_amp_stream_values_fall_back_to_sql_detection(
    amp_devserver: DevServer, client: flight.FlightClient, value: str, settings: bool
) -> None:
    sql = "SELECT * FROM eth_firehose.blocks" + (STREAM if settings else "")
    assert _is_streaming(amp_devserver, client, sql, {"amp-stream": value}) is settings


@pytest.mark.parametrize(
    ("suffix", "streaming"),
    [
        (" SETTINGS stream = true", True),
        (" settings STREAM = TRUE", True),
        (" SETTINGS stream=true", True),
        (" SETTINGS stream = true;", True),
        (" SETTINGS stream = 1", False),
        (" SETTINGS stream = 'true'", False),
        (" SETTINGS stream = false", False),
        ("", False),
    ],
)
def test_streaming_detection_from_sql(
    amp_devserver: DevServer, client: flight.FlightClient, suffix: str, streaming: bool
) -> None:
    sql = "SELECT * FROM eth_firehose.blocks" + suffix
    assert _is_streaming(amp_devserver, client, sql, {}) is streaming


def test_settings_inside_a_string_literal_is_not_a_settings_clause(
    amp_devserver: DevServer, client: flight.FlightClient
) -> None:
    sql = "SELECT * FROM eth_firehose.blocks WHERE 'SETTINGS stream = true' <> ''"
    assert not _is_streaming(amp_devserver, client, sql, {})


def test_amp_stream_on_do_get_is_ignored(
    amp_devserver: DevServer, client: flight.FlightClient
) -> None:
    """Headers are read on GetFlightInfo only: a batch ticket stays batch."""
    info = flight_info(client, "SELECT * FROM eth_firehose.blocks")
    reader = client.do_get(ticket_of(info), call_options({"amp-stream": "true"}))
    try:
        read_microbatch(lambda: read_message(reader))
        amp_devserver.chain.mine(1)
        assert read_message(reader) is None
    finally:
        reader.cancel()


def test_list_flights_is_unimplemented(client: flight.FlightClient) -> None:
    with pytest.raises(pa.ArrowNotImplementedError):
        list(client.list_flights(options=call_options()))


def test_get_schema_is_unimplemented(client: flight.FlightClient) -> None:
    with pytest.raises(pa.ArrowNotImplementedError):
        client.get_schema(descriptor("SELECT 1"), call_options())


def test_do_action_and_list_actions_are_unimplemented(client: flight.FlightClient) -> None:
    with pytest.raises(pa.ArrowNotImplementedError):
        list(client.do_action(flight.Action("anything", b""), call_options()))
    with pytest.raises(pa.ArrowNotImplementedError):
        client.list_actions(call_options())


def test_handshake_is_unimplemented(client: flight.FlightClient) -> None:
    with pytest.raises(pa.ArrowNotImplementedError):
        client.authenticate_basic_token("user", "password", call_options())


def test_do_put_is_unimplemented(client: flight.FlightClient) -> None:
    schema = pa.schema([("x", pa.int64())])
    with pytest.raises(pa.ArrowNotImplementedError):
        writer, _ = client.do_put(descriptor("SELECT 1"), schema, call_options())
        writer.write_table(pa.table({"x": [1]}))
        writer.close()


def test_do_exchange_is_unimplemented(client: flight.FlightClient) -> None:
    with pytest.raises(pa.ArrowNotImplementedError):
        writer, _ = client.do_exchange(descriptor("SELECT 1"), call_options())
        writer.close()


def test_server_serves_after_unimplemented_calls(client: flight.FlightClient) -> None:
    with pytest.raises(pa.ArrowNotImplementedError):
        list(client.list_flights(options=call_options()))
    info = flight_info(client, "SELECT count(*) AS n FROM eth_firehose.blocks")
    assert client.do_get(ticket_of(info), call_options()).read_all()["n"].to_pylist() == [100]
