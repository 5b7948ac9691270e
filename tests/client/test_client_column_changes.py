"""Rows are written by column name: columns in another order (between FlightInfo and
DoGet, or on a reconnect) land in the right columns; an added, removed or retyped
column stops the load with a FATAL naming it, and nothing of it is committed."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from oracle import Destination, connected

from amp.client import LoadResult
from amp.devserver import DevServer
from amp.errors import FatalLoadError
from kit import assert_table_equals_chain, canonical_count

pytestmark = pytest.mark.timeout(60)

QUERY = "SELECT * FROM eth_firehose.logs"
FAST_RETRIES = {"retry": {"initial_backoff_ms": 5, "max_backoff_ms": 20, "jitter": False}}


@pytest.fixture
def srv() -> Iterator[DevServer]:
    """200 blocks in microbatches of 50, 100 rows per data message."""
    with DevServer(port=0, seed=7, initial_blocks=200, max_interval=50, rows_per_message=100) as s:
        yield s


def _all_columns(srv: DevServer) -> list[str]:
    """Every logs column, the table key first (as the oracle compares)."""
    names = srv.chain.canonical_table("logs").schema.names
    key = ["block_num", "log_index"]
    return key + [name for name in names if name not in key]


def _load_to_head(
    srv: DevServer,
    destination: Destination,
    table: str,
    on_result: Callable[[LoadResult], None] = lambda result: None,
) -> tuple[list[LoadResult], BaseException | None]:
    """A streaming load until a microbatch ends at the head (or the load fails)."""
    destination.config["resilience"] = FAST_RETRIES
    results: list[LoadResult] = []
    error: BaseException | None = None
    with connected(srv, destination) as client:
        run = client.sql(QUERY).load("dest", table, stream=True)
        try:
            for result in run:
                results.append(result)
                on_result(result)
                ranges: list[dict[str, Any]] = result.metadata.get("block_ranges", [])
                if ranges and ranges[0]["end"] == srv.chain.head:
                    run.stop()
        except FatalLoadError as exc:
            error = exc
        finally:
            run.close()
    return results, error


def test_columns_reordered_between_flight_info_and_do_get(
    srv: DevServer, destination: Destination
) -> None:
    srv.faults.reorder_columns_next()
    table = destination.new_table("logs")

    _, error = _load_to_head(srv, destination, table)

    assert error is None, error
    columns = destination.columns(table)
    assert columns == srv.chain.canonical_table("logs").schema.names, columns
    assert_table_equals_chain(destination, table, srv.chain, "logs", _all_columns(srv))


def test_columns_reordered_on_reconnect(srv: DevServer, destination: Destination) -> None:
    """The first stream drops in microbatch 1; the reconnected stream sends its columns
    in reverse order."""
    first_rows = canonical_count(srv.chain, 0, 49)
    first_messages = -(-first_rows // 100) + 1  # its data messages and its marker
    srv.faults.cut_stream_after(messages=1 + first_messages + 2)  # schema first
    table = destination.new_table("logs")
    armed: list[int] = []

    def arm_after_first(result: LoadResult) -> None:
        if not armed:
            srv.faults.reorder_columns_next()  # taken by the reconnect's DoGet
            armed.append(1)

    results, error = _load_to_head(srv, destination, table, arm_after_first)

    assert error is None, error
    loads = [r.metadata["block_ranges"][0] for r in results if r.metadata["operation"] == "load"]
    assert [(r["start"], r["end"]) for r in loads] == [(0, 49), (50, 99), (100, 149), (150, 199)]
    assert armed, "the reconnect was never armed"
    assert_table_equals_chain(destination, table, srv.chain, "logs", _all_columns(srv))


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"drop": ("data",)}, "removed data"),
        ({"add": ("extra",)}, "added extra (int64)"),
        ({"retype": {"log_index": "string"}}, "retyped log_index (uint32 -> string)"),
        ({"drop": ("topic0",), "reverse": True}, "removed topic0"),
    ],
    ids=["removed", "added", "retyped", "removed-and-reordered"],
)
def test_changed_columns_are_fatal_and_name_the_column(
    srv: DevServer, destination: Destination, change: dict[str, Any], words: str
) -> None:
    srv.faults.change_columns_next(**change)
    table = destination.new_table("logs")

    results, error = _load_to_head(srv, destination, table)

    assert isinstance(error, FatalLoadError), f"expected a FatalLoadError, got {error!r}"
    message = str(error)
    assert message.startswith(
        f"FATAL: the columns of the query's rows changed while loading {table}"
    )
    assert words in message, message
    assert [r.metadata["operation"] for r in results] == ["fatal"]
    assert destination.count(table) == 0
