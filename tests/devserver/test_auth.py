"""Bearer-token auth of a dev server started with ``auth_token``."""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow.flight as flight
import pytest
from flightclient import STREAM, call_options, connect, flight_info, read_microbatches, ticket_of

from amp.devserver import DevServer

SQL = "SELECT count(*) AS n FROM eth_firehose.blocks"
GOOD = {"authorization": "Bearer s3cret"}
BAD_HEADERS = [
    {},
    {"authorization": "Bearer wrong"},
    {"authorization": "s3cret"},
    {"authorization": "Basic s3cret"},
    {"authorization": "Bearer s3cret2"},
    {"x-api-key": "s3cret"},
]


@pytest.fixture
def server() -> Iterator[DevServer]:
    with DevServer(port=0, initial_blocks=10, auth_token="s3cret") as srv:
        yield srv


@pytest.mark.parametrize("headers", BAD_HEADERS)
def test_get_flight_info_without_the_token_is_unauthenticated(
    server: DevServer, headers: dict[str, str]
) -> None:
    with connect(server.url) as client, pytest.raises(flight.FlightUnauthenticatedError):
        flight_info(client, SQL, headers)


@pytest.mark.parametrize("headers", BAD_HEADERS)
def test_do_get_without_the_token_is_unauthenticated(
    server: DevServer, headers: dict[str, str]
) -> None:
    with connect(server.url) as client:
        ticket = ticket_of(flight_info(client, SQL, GOOD))
        with pytest.raises(flight.FlightUnauthenticatedError):
            client.do_get(ticket, call_options(headers)).read_all()
        # the same ticket with the token works
        table = client.do_get(ticket, call_options(GOOD)).read_all()
    assert table["n"].to_pylist() == [10]


def test_bearer_token_is_accepted_for_batch_and_streaming(server: DevServer) -> None:
    with connect(server.url) as client:
        info = flight_info(client, SQL, GOOD)
        assert client.do_get(ticket_of(info), call_options(GOOD)).read_all()["n"].to_pylist() == [
            10
        ]
        info = flight_info(client, "SELECT * FROM eth_firehose.logs" + STREAM, GOOD)
        reader = client.do_get(ticket_of(info), call_options(GOOD))
        try:
            (batch,) = read_microbatches(reader, 1)
        finally:
            reader.cancel()
    assert (batch.range.start, batch.range.end) == (0, 9)


def test_server_without_token_ignores_the_authorization_header() -> None:
    with DevServer(port=0, initial_blocks=10) as srv, connect(srv.url) as client:
        info = flight_info(client, SQL, {"authorization": "Bearer anything"})
        assert client.do_get(ticket_of(info), call_options()).read_all()["n"].to_pylist() == [10]
