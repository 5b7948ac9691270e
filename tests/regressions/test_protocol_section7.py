"""Regression tests for the older client's defects listed in the protocol's §7, one each.

Each test loads from the dev server into DuckDB and checks the outcome the defect broke.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import duckdb
import pyarrow.flight as flight
import pytest

from amp.client import Client
from amp.devserver import DevServer
from amp.errors import FatalLoadError
from amp.streaming.resilience import ErrorClassifier
from kit import (
    LOGS_QUERY,
    Action,
    Driven,
    Reorg,
    SqlDestination,
    assert_table_equals_chain,
    drive,
    operation,
)


def _client(server: DevServer, database: Path, **extra: object) -> Client:
    client = Client(server.url)
    config: dict[str, object] = {
        "database": str(database),
        "resilience": {"retry": {"initial_backoff_ms": 1, "max_backoff_ms": 5}},
        "commit_grouping": {"enabled": False},
        **extra,
    }
    client.configure_connection("regression", "duckdb", config)
    return client


def _until_head(server: DevServer, client: Client, actions: Sequence[Action] = ()) -> Driven:
    run = client.sql(LOGS_QUERY).load("regression", "logs", stream=True)
    return drive(run, server.chain, actions)


def _assert_equals_chain(server: DevServer, database: Path) -> None:
    assert_table_equals_chain(SqlDestination("duckdb", duckdb_path=database), "logs", server.chain)


def test_resume_sends_the_checkpoint_so_the_stream_continues_after_it(tmp_path: Path) -> None:
    """§7: it never sent amp-resume, so a resume restarted from the beginning."""
    database = tmp_path / "r.duckdb"
    with DevServer(port=0, initial_blocks=120, max_interval=50) as server:
        client = _client(server, database, checkpoint={"enabled": True})
        last = _until_head(server, client).results[-1]
        client.close()
        server.chain.mine(3)
        client = _client(server, database, checkpoint={"enabled": True})
        first = _until_head(server, client).results[0]
        client.close()
        assert (
            first.metadata["block_ranges"][0]["start"]
            == last.metadata["block_ranges"][0]["end"] + 1
        )
        _assert_equals_chain(server, database)


def test_every_message_of_a_microbatch_with_a_repeated_range_is_kept(tmp_path: Path) -> None:
    """§7: it dropped every message after the first of a microbatch whose range repeated."""
    database = tmp_path / "r.duckdb"
    with DevServer(port=0, initial_blocks=200, max_interval=100, rows_per_message=50) as server:
        client = _client(server, database)
        results = _until_head(server, client).results
        client.close()
        assert all(r.rows_loaded > 50 for r in results)  # many messages per microbatch
        _assert_equals_chain(server, database)


def test_the_microbatch_after_a_reorg_is_loaded(tmp_path: Path) -> None:
    """§7: after a reorg it discarded the batch that followed the reorg-triggering batch."""
    database = tmp_path / "r.duckdb"
    with DevServer(port=0, initial_blocks=100, max_interval=10) as server:
        client = _client(server, database)
        driven = _until_head(server, client, [Reorg(3, mine=2)])
        client.close()
        operations = [operation(result) for result in driven.results]
        assert operations[operations.index("reorg") + 1] == "load"
        _assert_equals_chain(server, database)


@pytest.mark.parametrize(
    "query",
    [LOGS_QUERY, f"{LOGS_QUERY} SETTINGS stream = true", f"{LOGS_QUERY} -- trailing comment"],
)
def test_settings_stream_is_never_added_twice(query: str) -> None:
    """§7: it appended SETTINGS stream = true even when the query already had it."""
    with DevServer(port=0, initial_blocks=10) as server:
        client = Client(server.url)
        sql, header = client.sql(query)._streaming_sql()
        client.close()
    assert sql.upper().count("SETTINGS") == 1
    assert header is None


def test_classification_uses_codes_and_whole_tokens() -> None:
    """§7: it classified errors by substring (block 1429 looked like a 429)."""
    assert not ErrorClassifier.classify("failed to load block 1429").rate_limited
    assert not ErrorClassifier.is_transient("failed to load block 1429")
    assert ErrorClassifier.is_transient(flight.FlightUnavailableError("connection reset"))
    assert ErrorClassifier.classify("HTTP 429 Too Many Requests").rate_limited


def test_a_dropped_stream_is_reconnected_and_resumed(tmp_path: Path) -> None:
    """§7: a dropped server stream was not reconnected; only writes were retried."""
    database = tmp_path / "r.duckdb"
    with DevServer(port=0, initial_blocks=300, max_interval=100, rows_per_message=200) as server:
        server.faults.cut_stream_after(messages=4, times=2)
        client = _client(server, database)
        _until_head(server, client)
        client.close()
        _assert_equals_chain(server, database)


def test_the_circuit_breaker_exists_and_the_idempotency_mode_key_works(tmp_path: Path) -> None:
    """§7: its documented circuit breaker did not exist; its idempotency mode key crashed."""
    database = tmp_path / "r.duckdb"
    with DevServer(port=0, initial_blocks=50) as server:
        server.faults.fail_next("get_flight_info", "UNAVAILABLE", times=10)
        client = _client(
            server,
            database,
            idempotency={"enabled": True, "mode": "auto"},
            resilience={
                "retry": {"max_retries": 3, "initial_backoff_ms": 1, "max_backoff_ms": 2},
                "circuit_breaker": {"failure_threshold": 2, "timeout_ms": 5_000},
            },
        )
        with pytest.raises(FatalLoadError):
            _until_head(server, client)
        assert client.server_edge("regression").breaker.is_open()  # the server's edge
        assert not client._get_loader("regression").circuit_breaker.is_open()
        client.close()


def test_processed_ranges_carry_the_end_hash_and_commit_with_the_rows(tmp_path: Path) -> None:
    """§7: tracking committed data and marker separately and matched ranges without the
    hash (a reorged range looked already processed)."""
    database = tmp_path / "r.duckdb"
    with DevServer(port=0, initial_blocks=30, max_interval=10) as server:
        client = _client(server, database, idempotency={"enabled": True})
        _until_head(server, client)
        client.close()
        server.chain.reorg(5)  # same numbers 25..29, new hashes
        client = _client(server, database, idempotency={"enabled": True})
        operations = [operation(r) for r in _until_head(server, client).results]
        client.close()
        assert "load" in operations  # the reorged range was loaded, not skipped
        _assert_equals_chain(server, database)
        with duckdb.connect(str(database), read_only=True) as conn:
            hashes = conn.execute("SELECT end_hash FROM amp_processed_ranges").fetchall()
        assert hashes and all(h[0].startswith("0x") for h in hashes)
