"""A PostgreSQL role or database that does not exist is a permanent error: the load stops
in well under a second with the server's own message, instead of retrying for a minute.

The test PostgreSQL uses trust authentication, so a wrong password cannot be produced
for real here; the SQLSTATE of such a failure (28P01) is covered by the classifier test
in tests/resilience/test_resilience_pg_connect.py.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from oracle import pg_config

from amp.client import Client, LoadResult
from amp.devserver import DevServer
from amp.errors import DestinationError, FatalLoadError

pytestmark = pytest.mark.timeout(30)

QUERY = "SELECT block_num, hash FROM eth_firehose.blocks"


@pytest.fixture(scope="module")
def server() -> Iterator[DevServer]:
    with DevServer(port=0, seed=3, initial_blocks=5) as srv:
        yield srv


@pytest.mark.parametrize(
    ("override", "server_message"),
    [
        ({"user": "amp_no_such_role"}, 'role "amp_no_such_role" does not exist'),
        ({"database": "amp_no_such_db"}, 'database "amp_no_such_db" does not exist'),
    ],
    ids=["role", "database"],
)
@pytest.mark.parametrize("stream", [False, True], ids=["batch", "stream"])
def test_missing_role_or_database_fails_at_once_with_the_server_message(
    server: DevServer, postgres: str, override: dict[str, str], server_message: str, stream: bool
) -> None:
    client = Client(server.url)
    try:
        client.configure_connection("pg", "postgresql", pg_config(**override))
        results: list[LoadResult] = []
        started = time.monotonic()
        with pytest.raises(FatalLoadError) as raised:
            results.extend(client.sql(QUERY).load("pg", "amp_never_created", stream=stream))
        elapsed = time.monotonic() - started
    finally:
        client.close()
    assert elapsed < 1.0, f"a permanent connection error took {elapsed:.1f} s to stop the load"
    message = str(raised.value)
    assert message.startswith("FATAL: Permanent error"), message
    assert server_message in message, message
    cause = raised.value.__cause__
    assert isinstance(cause, DestinationError), repr(cause)
    assert cause.sqlstate in ("28000", "3D000"), cause.sqlstate
