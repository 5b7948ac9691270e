"""One writer per stream on DuckDB (issue 9, defect 5).

In one process, two loaders of one file, table and worker: the second is refused (a
registry keyed by the file's real path). Across processes DuckDB lets one process write
a file: the second process stops with a clear error naming the holder's PID.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest
from ownership_support import load_command, refused, running_load, stop_gracefully

from amp.client import Client
from amp.devserver import DevServer
from amp.errors import StreamOwnedError
from crashkit import catch_up
from kit import LOGS_QUERY


@pytest.fixture
def chain() -> Iterator[DevServer]:
    with DevServer(port=0, seed=5, initial_blocks=60, max_interval=10) as server:
        yield server


def test_two_loaders_of_one_file_and_table_in_one_process(chain: DevServer, tmp_path: Path) -> None:
    database = str(tmp_path / "own.duckdb")
    client = Client(chain.url)
    try:
        client.configure_connection("first", "duckdb", {"database": database})
        # Another name, a path spelled differently: the same file and table all the same.
        client.configure_connection("second", "duckdb", {"database": f"{tmp_path}/./own.duckdb"})
        first = client.sql(LOGS_QUERY).load("first", "logs", stream=True)
        assert next(first).success
        second = client.sql(LOGS_QUERY).load("second", "logs", stream=True)
        refusal = next(second)
        assert not refusal.success
        assert refusal.error is not None and "already being loaded" in refusal.error
        assert "connection 'first'" in refusal.error  # the owner
        with pytest.raises(StreamOwnedError):
            next(second)
        other_table = client.sql(LOGS_QUERY).load("second", "logs_b", stream=True)
        assert next(other_table).success  # another table of the file is another stream
        other_table.close()
        first.close()  # releases the stream
        again = client.sql(LOGS_QUERY).load("second", "logs", stream=True)
        assert next(again).success
        again.close()
    finally:
        client.close()


def test_a_second_process_is_refused_naming_the_holder(chain: DevServer, tmp_path: Path) -> None:
    database = tmp_path / "own.duckdb"
    command = load_command(chain, f"duckdb:///{database}", "logs", "own")
    with running_load(command, "own") as first:
        second = refused(command)
        assert "is open in another process" in second.stderr
        assert f"PID {first.process.pid}" in second.stderr
        stop_gracefully(first)
    catch_up(chain, "own", "duckdb", {"database": str(database)}, "logs")
    with duckdb.connect(str(database)) as conn:
        total, distinct = conn.execute(
            "SELECT count(*), count(DISTINCT (block_num, log_index)) FROM logs"
        ).fetchone() or (0, 0)
    assert total == distinct == chain.chain.canonical_table("logs").num_rows
