"""The resilience guide's Quick Start "Basic Usage" sample, run as written except for the
server URL, host/port/database, the table name and the query's dataset qualifier (the dev
server's tables are ``eth_firehose.<table>``), plus a ``break`` once caught up."""

from __future__ import annotations

import re

import pytest
from oracle import Destination

from amp.devserver import DevServer
from kit import PG_HOST, PG_PORT, assert_table_equals_chain, caught_up
from kit.services import PG_DATABASE

pytestmark = pytest.mark.timeout(60)


def test_quick_start_basic_usage(
    pg_destination: Destination, capsys: pytest.CaptureFixture[str]
) -> None:
    destination_table = pg_destination.new_table("blocks")
    with DevServer(port=0, seed=1, initial_blocks=300, max_interval=100) as srv:
        # ---- the guide's sample, from here ----
        from amp.client import Client

        client = Client(srv.url)

        # Configure loader - resilience is automatic
        client.configure_connection(
            name="my_postgres",
            loader="postgresql",
            config={
                "host": PG_HOST,
                "port": PG_PORT,
                "database": PG_DATABASE,
                "user": "postgres",
                "password": "password",
            },
        )

        # Stream data - automatic retry, circuit breaker, and rate limiting
        results = client.sql("SELECT * FROM eth_firehose.blocks SETTINGS stream = true").load(
            connection="my_postgres", destination=destination_table, stream=True
        )

        for result in results:
            if result.success:
                print(f"Loaded {result.rows_loaded:,} rows")
            else:
                # Resilience handles retries automatically
                # This only occurs after exhausting all retries
                print(f"Failed after retries: {result.error}")
            # ---- to here; the test stops the endless stream once it caught up ----
            if caught_up(result, srv.chain):
                break
        results.close()
        client.close()

        assert_table_equals_chain(pg_destination, destination_table, srv.chain, "blocks")

    lines = capsys.readouterr().out.splitlines()
    assert lines == ["Loaded 100 rows"] * 3, lines
    assert all(re.fullmatch(r"Loaded [\d,]+ rows", line) for line in lines)
