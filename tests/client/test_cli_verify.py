"""``amp verify`` (issue 12) as a real subprocess: a table loaded exactly from the dev
server is equal; faults planted in it with SQL (a deleted row, a duplicated row, a row of
a forked block) are each found with exact counts in the right block range, in PostgreSQL
and DuckDB; a block range that leaves them out is equal again; a table of many comparison
ranges is drilled into; a destination verify cannot read exits 2 naming the ones it can.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from oracle import Destination

from amp.devserver import DevServer
from amp.devserver.chain import SimulatedChain
from ampcli import amp
from kit import PG_URL, canonical_count, load_to_head
from kit.sql import quote

pytestmark = pytest.mark.timeout(240)

QUERY = "SELECT * FROM eth_firehose.logs"
FORKED_HASH = b"\xee" * 32


def _url(destination: Destination) -> str:
    if destination.kind == "postgresql":
        return PG_URL
    return f"duckdb://{destination.duckdb_path}"


def _loaded(server: DevServer, destination: Destination) -> str:
    """A new table holding exactly the canonical logs up to the head (checkpointed load)."""
    table = destination.new_table("verify")
    config = {**destination.config, "checkpoint": {"enabled": True}}
    load_to_head(server, "verify", destination.kind, config, table)
    return table


def _verify(
    server: DevServer, destination: Destination, table: str, *extra: str, query: str = QUERY
) -> tuple[int, dict[str, Any]]:
    """Exit code and JSON report of ``amp verify --format json``."""
    args = ("--server", server.url, "--query", query, "--to", _url(destination))
    with amp("verify", *args, "--table", table, "--format", "json", *extra) as process:
        code, output = process.finish(timeout=180)
    reports = [line for line in output.splitlines() if line.startswith("{")]
    assert len(reports) == 1, f"exit {code}, no single JSON report:\n{output}"
    return code, json.loads(reports[0])


def _log_at(chain: SimulatedChain, block: int) -> tuple[int, int]:
    """(block, log_index) of the first canonical log in ``block`` or the next block with logs."""
    logs = chain.canonical_table("logs").select(["_block_num", "log_index"]).to_pylist()
    return min((row["_block_num"], row["log_index"]) for row in logs if row["_block_num"] >= block)


_ROW = 'WHERE "_block_num" = %s AND log_index = %s'


def _delete(destination: Destination, table: str, log: tuple[int, int]) -> None:
    destination.execute(f"DELETE FROM {quote(table)} {_ROW}", log)


def _duplicate(destination: Destination, table: str, log: tuple[int, int]) -> None:
    destination.execute(f"INSERT INTO {quote(table)} SELECT * FROM {quote(table)} {_ROW}", log)


def _fork(destination: Destination, table: str, log: tuple[int, int]) -> None:
    """A copy of the log as a forked block would have it: another block hash."""
    columns = destination.columns(table)
    values = ", ".join("%s" if name == "block_hash" else quote(name) for name in columns)
    names = ", ".join(map(quote, columns))
    destination.execute(
        f"INSERT INTO {quote(table)} ({names}) SELECT {values} FROM {quote(table)} {_ROW}",
        (FORKED_HASH, *log),
    )


def _span(chain: SimulatedChain, first: int, last: int, held: int, **found: int) -> dict[str, int]:
    expected = canonical_count(chain, first, last)
    counts = {"missing_rows": 0, "duplicate_rows": 0, "extra_rows": 0, **found}
    return {
        "first_block": first,
        "last_block": last,
        "server_rows": expected,
        "destination_rows": expected + held,
        **counts,
    }


def test_verify_finds_each_planted_fault_in_its_range(destination: Destination) -> None:
    with DevServer(port=0, seed=12, initial_blocks=120) as server:
        chain = server.chain
        table = _loaded(server, destination)
        total = canonical_count(chain, 0, chain.head)

        code, report = _verify(server, destination, table)
        assert code == 0, report
        assert report["equal"] is True
        assert report["server_rows"] == report["destination_rows"] == total
        assert (report["missing_rows"], report["duplicate_rows"], report["extra_rows"]) == (
            0,
            0,
            0,
        )
        assert report["ranges"] == []
        assert report["block_column"] == "_block_num"
        assert {"block_hash", "log_index", "data", "timestamp"} <= set(report["columns"])

        deleted, duplicated, forked = _log_at(chain, 20), _log_at(chain, 60), _log_at(chain, 100)
        _delete(destination, table, deleted)
        _duplicate(destination, table, duplicated)
        _fork(destination, table, forked)

        code, report = _verify(server, destination, table)
        assert code == 1, report
        assert report["equal"] is False
        assert (report["missing_rows"], report["duplicate_rows"], report["extra_rows"]) == (
            1,
            1,
            1,
        )
        assert report["ranges"] == [
            _span(chain, deleted[0], deleted[0], -1, missing_rows=1),
            _span(chain, duplicated[0], duplicated[0], 1, duplicate_rows=1),
            _span(chain, forked[0], forked[0], 1, extra_rows=1),
        ]
        assert report["server_rows"] == total and report["destination_rows"] == total + 1

        # Only the duplicated row's block range: that fault alone.
        code, report = _verify(
            server,
            destination,
            table,
            "--from-block",
            str(deleted[0] + 1),
            "--to-block",
            str(forked[0] - 1),
        )
        assert code == 1, report
        assert (report["missing_rows"], report["duplicate_rows"], report["extra_rows"]) == (
            0,
            1,
            0,
        )
        assert report["ranges"] == [_span(chain, duplicated[0], duplicated[0], 1, duplicate_rows=1)]

        # Blocks before the first fault, and after the last: equal.
        for bounds in (("--to-block", str(deleted[0] - 1)), ("--from-block", str(forked[0] + 1))):
            code, report = _verify(server, destination, table, *bounds)
            assert code == 0, (bounds, report)
            assert report["equal"] is True and report["ranges"] == []


def test_verify_drills_into_many_ranges(pg_destination: Destination) -> None:
    """Far more rows than one comparison range holds (``--range-rows 40``): the walk takes
    many windows, and adjacent faulty blocks come out as one range; the query may end in a
    ``;`` and a comment."""
    destination = pg_destination
    with DevServer(port=0, seed=21, initial_blocks=400) as server:
        chain = server.chain
        table = _loaded(server, destination)
        total = canonical_count(chain, 0, chain.head)
        query = QUERY + "; -- every log"

        code, report = _verify(server, destination, table, "--range-rows", "40", query=query)
        assert code == 0, report
        assert report["server_rows"] == report["destination_rows"] == total
        assert report["windows"] >= total // (40 * 8), report["windows"]

        first = _log_at(chain, 200)
        second = _log_at(chain, first[0] + 1)
        assert second[0] == first[0] + 1, "the chain has a block without logs here; pick another"
        _delete(destination, table, first)
        _fork(destination, table, second)
        _duplicate(destination, table, _log_at(chain, 390))

        code, report = _verify(server, destination, table, "--range-rows", "40", query=query)
        assert code == 1, report
        held = canonical_count(chain, first[0], second[0])
        duplicated = _log_at(chain, 390)[0]
        assert report["ranges"] == [
            {
                "first_block": first[0],
                "last_block": second[0],
                "server_rows": held,
                "destination_rows": held,
                "missing_rows": 1,
                "duplicate_rows": 0,
                "extra_rows": 1,
            },
            _span(chain, duplicated, duplicated, 1, duplicate_rows=1),
        ]
        assert report["windows"] > 10


def test_verify_refuses_a_destination_it_cannot_read() -> None:
    with (
        DevServer(port=0, seed=1, initial_blocks=5) as server,
        amp(
            "verify",
            "--server",
            server.url,
            "--query",
            QUERY,
            "--to",
            "redis://127.0.0.1:6379/9",
            "--table",
            "logs",
        ) as process,
    ):
        code, output = process.finish(timeout=60)
    assert code == 2, output
    assert "postgresql, duckdb, deltalake and iceberg" in output, output
    assert "redis is not supported" in output, output
