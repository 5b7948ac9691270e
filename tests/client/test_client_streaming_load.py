"""Streaming loads (``stream=True``) through new blocks and reorgs of every depth: the
destination ends up equal to the canonical chain, and each reorg is reported."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from oracle import Destination, connected
from streamdriver import checked

from amp.client import LoadResult
from amp.devserver import DevServer
from kit import (
    Action,
    Mine,
    Reorg,
    assert_reorgs_reported,
    assert_table_equals_chain,
    block_range,
    drive,
)

pytestmark = pytest.mark.timeout(60)

TABLES = ("logs", "transactions", "blocks")


def _assert_contiguous(ranges: list[tuple[int, int]], reorgs: list[Reorg]) -> None:
    """Loads follow each other block by block, except where a reorg sends them back."""
    forks = {r.fork_height for r in reorgs}
    for (_, prev_end), (start, _) in itertools.pairwise(ranges):
        assert start == prev_end + 1 or start in forks, f"unexpected range order: {ranges}"


@pytest.mark.parametrize("name", TABLES)
def test_stream_through_new_blocks_and_reorgs_of_depth_1_2_10(
    destination: Destination, name: str
) -> None:
    max_interval = 100
    reorgs = [
        Reorg(1, table=name),
        Reorg(2, mine=3, table=name),
        Reorg(10, table=name),
        Reorg(2, mine=40, table=name),
    ]
    actions: list[Action] = [Mine(5), reorgs[0], reorgs[1], Mine(20), reorgs[2], reorgs[3]]
    table = destination.new_table(name)
    # 64 rows per message: a microbatch arrives as many messages repeating its range.
    server = DevServer(
        port=0, seed=1, initial_blocks=300, max_interval=max_interval, rows_per_message=64
    )
    with server as srv, connected(srv, destination) as client:
        run = client.sql(f"SELECT * FROM eth_firehose.{name}").load("dest", table, stream=True)
        driven = drive(run, srv.chain, actions, on_result=checked(srv.chain, name))
        assert driven.ranges()[:3] == [(0, 99), (100, 199), (200, 299)]
        _assert_contiguous(driven.ranges(), reorgs)
        assert_reorgs_reported(driven, reorgs, max_interval)
        assert_table_equals_chain(destination, table, srv.chain, name)
        assert len(srv.chain.reorgs) == len(reorgs)


def test_stream_through_reorg_deeper_than_a_microbatch(destination: Destination) -> None:
    """max_interval 10, reorg(25): the invalidated blocks span three microbatches."""
    max_interval = 10
    reorgs = [Reorg(25), Reorg(25, mine=7), Reorg(12, mine=30)]
    actions: list[Action] = [reorgs[0], Mine(4), reorgs[1], reorgs[2]]
    table = destination.new_table("logs")
    with (
        DevServer(port=0, seed=1, initial_blocks=300, max_interval=max_interval) as srv,
        connected(srv, destination) as client,
    ):
        run = client.sql("SELECT * FROM eth_firehose.logs").load("dest", table, stream=True)
        driven = drive(run, srv.chain, actions, on_result=checked(srv.chain, "logs"))
        ranges = driven.ranges()
        assert ranges[:30] == [(start, start + 9) for start in range(0, 300, 10)]
        # After reorg(25) at head 299 the stream resumes at the fork, 275..284.
        assert ranges[30] == (275, 284), ranges[30:]
        _assert_contiguous(ranges, reorgs)
        assert_reorgs_reported(driven, reorgs, max_interval)
        assert_table_equals_chain(destination, table, srv.chain, "logs")


def test_reorg_while_the_stream_waits_at_the_head(destination: Destination) -> None:
    """No new block: the head itself is replaced while the stream waits; the next
    results are the reorg (invalidating exactly the replaced blocks) and their reload."""
    table = destination.new_table("logs")
    with (
        DevServer(port=0, seed=1, initial_blocks=300, max_interval=100) as srv,
        connected(srv, destination) as client,
    ):
        chain = srv.chain
        run = client.sql("SELECT * FROM eth_firehose.logs").load("dest", table, stream=True)
        reorg = Reorg(3)
        after: list[tuple[str, dict[str, Any]]] = []
        seen_reorg = False

        def record(result: LoadResult) -> None:
            nonlocal seen_reorg
            metadata = result.metadata
            if metadata["operation"] == "reorg":
                seen_reorg = True
            if seen_reorg:
                after.append((metadata["operation"], metadata))

        driven = drive(run, chain, [reorg], on_result=checked(chain, "logs", record))
        assert [operation for operation, _ in after] == ["reorg", "load"], after
        assert after[0][1]["invalidated_range"]["start"] == 297
        assert after[0][1]["invalidated_range"]["end"] == 299
        assert after[0][1]["rows_deleted"] == reorg.rows_replaced
        reloaded = block_range(driven.results[-1])
        assert (reloaded["start"], reloaded["end"]) == (297, 299)
        assert reloaded["prev_hash"] != reloaded["hash"]
        assert_table_equals_chain(destination, table, chain, "logs")


def test_stream_keeps_loading_after_a_reorg_that_spans_the_first_microbatch(
    destination: Destination,
) -> None:
    """A reorg reaching back into the very first microbatch (and to block 0's child)."""
    table = destination.new_table("blocks")
    reorgs = [Reorg(45, table="blocks", mine=2)]
    with (
        DevServer(port=0, seed=3, initial_blocks=50, max_interval=100) as srv,
        connected(srv, destination) as client,
    ):
        run = client.sql("SELECT * FROM eth_firehose.blocks").load("dest", table, stream=True)
        driven = drive(
            run, srv.chain, [Mine(1), *reorgs, Mine(1)], on_result=checked(srv.chain, "blocks")
        )
        assert_reorgs_reported(driven, reorgs, 100)
        assert_table_equals_chain(destination, table, srv.chain, "blocks")


def test_reorg_of_the_whole_chain(destination: Destination) -> None:
    """Every block replaced, block 0 included: the fork's parent is the zero hash."""
    table = destination.new_table("blocks")
    reorgs = [Reorg(40, table="blocks"), Reorg(41, table="blocks", mine=9)]
    with (
        DevServer(port=0, seed=5, initial_blocks=40, max_interval=100) as srv,
        connected(srv, destination) as client,
    ):
        run = client.sql("SELECT * FROM eth_firehose.blocks").load("dest", table, stream=True)
        driven = drive(
            run, srv.chain, [reorgs[0], Mine(1), reorgs[1]], on_result=checked(srv.chain, "blocks")
        )
        assert [r.fork_height for r in reorgs] == [0, 0]
        assert_reorgs_reported(driven, reorgs, 100)
        assert_table_equals_chain(destination, table, srv.chain, "blocks")


def test_connection_is_reusable_after_a_stream(destination: Destination) -> None:
    """Closing a streaming load closes its destination connection; the next loads on the
    same named connection reconnect and see the committed rows."""
    stream_table = destination.new_table("logs")
    batch_table = destination.new_table("blocks")
    with (
        DevServer(port=0, seed=1, initial_blocks=120, max_interval=50) as srv,
        connected(srv, destination) as client,
    ):
        query = "SELECT * FROM eth_firehose.logs"
        drive(client.sql(query).load("dest", stream_table, stream=True), srv.chain, [Reorg(2)])
        assert not client._get_loader("dest").connected
        list(client.sql("SELECT * FROM eth_firehose.blocks").load("dest", batch_table))
        assert_table_equals_chain(destination, batch_table, srv.chain, "blocks")
        run = client.sql(query).load("dest", stream_table, stream=True, mode="overwrite")
        drive(run, srv.chain, [Mine(3)], on_result=checked(srv.chain, "logs"))
        assert_table_equals_chain(destination, stream_table, srv.chain, "logs")
