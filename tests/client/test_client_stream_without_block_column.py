"""A streaming query that selects no block-number column: amp keys each row by the range
of the microbatch that delivered it (``_amp_block_start``/``_amp_block_end``), so a reorg
inside a microbatch must remove and reload that whole microbatch. The destination must
hold the canonical ``(tx_hash, log_index, data)`` multiset exactly: no loss, no
duplicates."""

from __future__ import annotations

import pytest
from oracle import Destination, connected

from amp.devserver import DevServer
from amp.devserver.chain import SimulatedChain
from kit import Action, Mine, Reorg, canonical_count, drive
from kit.chain import arrow_rows, assert_rows_equal
from kit.sql import destination_rows

pytestmark = pytest.mark.timeout(60)

QUERY = "SELECT tx_hash, log_index, data FROM eth_firehose.logs"
COLUMNS = ("tx_hash", "log_index", "data")


def _assert_equals_canonical(destination: Destination, table: str, chain: SimulatedChain) -> None:
    canonical = chain.canonical_table("logs")
    expected = arrow_rows(canonical, COLUMNS)
    actual = destination_rows(destination, table, COLUMNS, canonical.schema)
    assert_rows_equal(actual, expected, COLUMNS, f"{destination.kind} table {table}")


def test_destination_adds_the_microbatch_range_columns(destination: Destination) -> None:
    table = destination.new_table("nocol")
    with (
        DevServer(port=0, seed=1, initial_blocks=250, max_interval=100) as srv,
        connected(srv, destination) as client,
    ):
        drive(client.sql(QUERY).load("dest", table, stream=True), srv.chain)
        assert destination.columns(table) == [*COLUMNS, "_amp_block_start", "_amp_block_end"]
        ranges = destination.query(
            f'SELECT DISTINCT "_amp_block_start", "_amp_block_end" FROM "{table}" ORDER BY 1'
        )
        assert [(int(a), int(b)) for a, b in ranges] == [(0, 99), (100, 199), (200, 249)]
        _assert_equals_canonical(destination, table, srv.chain)


def test_reorg_shallower_than_the_last_microbatch(destination: Destination) -> None:
    """Last microbatch 200..249, reorg(3): blocks 247..249 change, but rows only know
    their microbatch, so 200..249 is invalidated whole and streamed again."""
    table = destination.new_table("nocol")
    reorg = Reorg(3)
    with (
        DevServer(port=0, seed=1, initial_blocks=250, max_interval=100) as srv,
        connected(srv, destination) as client,
    ):
        chain = srv.chain
        expected_deleted = canonical_count(chain, 200, 249)
        driven = drive(client.sql(QUERY).load("dest", table, stream=True), chain, [reorg])
        (reported,) = driven.reorgs()
        invalidated = reported.metadata["invalidated_range"]
        assert (invalidated["start"], invalidated["end"]) == (200, 249), invalidated
        assert reported.metadata["rows_deleted"] == expected_deleted
        assert driven.ranges()[-1] == (200, 249)
        _assert_equals_canonical(destination, table, chain)


def test_stream_without_block_column_through_many_reorgs(destination: Destination) -> None:
    actions: list[Action] = [
        Reorg(3),
        Mine(7),
        Reorg(1),
        Reorg(2, mine=5),
        Mine(30),
        Reorg(10),
        Reorg(70, mine=3),
        Mine(1),
    ]
    table = destination.new_table("nocol")
    server = DevServer(port=0, seed=2, initial_blocks=250, max_interval=100, rows_per_message=50)
    with server as srv, connected(srv, destination) as client:
        driven = drive(client.sql(QUERY).load("dest", table, stream=True), srv.chain, actions)
        assert len(driven.reorgs()) == 5
        for result in driven.reorgs():
            assert result.metadata["rows_deleted"] >= 0
        _assert_equals_canonical(destination, table, srv.chain)


def test_stream_without_block_column_deep_reorg_small_microbatches(
    destination: Destination,
) -> None:
    """max_interval 10 and reorg(25): the invalidation reaches back three microbatches,
    the first one straddling the fork."""
    table = destination.new_table("nocol")
    with (
        DevServer(port=0, seed=1, initial_blocks=300, max_interval=10) as srv,
        connected(srv, destination) as client,
    ):
        chain = srv.chain
        expected_deleted = canonical_count(chain, 270, 299)
        driven = drive(
            client.sql(QUERY).load("dest", table, stream=True), chain, [Reorg(25), Reorg(4)]
        )
        first = driven.reorgs()[0].metadata
        assert (first["invalidated_range"]["start"], first["invalidated_range"]["end"]) == (
            270,
            299,
        )
        assert first["rows_deleted"] == expected_deleted
        _assert_equals_canonical(destination, table, chain)


def test_reorg_into_the_first_microbatch_restarts_from_scratch(destination: Destination) -> None:
    """The straddling microbatch is the first one (0..49): nothing committed remains, so
    the stream restarts without a resume cursor."""
    table = destination.new_table("nocol")
    with (
        DevServer(port=0, seed=1, initial_blocks=50, max_interval=100) as srv,
        connected(srv, destination) as client,
    ):
        chain = srv.chain
        expected_deleted = canonical_count(chain, 0, 49)
        driven = drive(client.sql(QUERY).load("dest", table, stream=True), chain, [Reorg(3)])
        (reported,) = driven.reorgs()
        invalidated = reported.metadata["invalidated_range"]
        assert (invalidated["start"], invalidated["end"]) == (0, 49), invalidated
        assert reported.metadata["rows_deleted"] == expected_deleted
        assert driven.ranges() == [(0, 49), (0, 49)]
        _assert_equals_canonical(destination, table, chain)


def test_overwrite_survives_the_stream_restart(destination: Destination) -> None:
    """``mode='overwrite'`` replaces the table once, at the start: the reconnect that a
    reorg inside a microbatch causes must not drop the rows committed before it."""
    table = destination.new_table("nocol")
    with (
        DevServer(port=0, seed=1, initial_blocks=250, max_interval=100) as srv,
        connected(srv, destination) as client,
    ):
        list(client.sql(QUERY).load("dest", table))  # stale rows, to be replaced
        list(client.sql(QUERY).load("dest", table))
        run = client.sql(QUERY).load("dest", table, stream=True, mode="overwrite")
        driven = drive(run, srv.chain, [Reorg(3), Mine(2)])
        assert driven.ranges() == [(0, 99), (100, 199), (200, 249), (200, 249), (250, 251)]
        _assert_equals_canonical(destination, table, srv.chain)
