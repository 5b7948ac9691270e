"""Protocol §3: after a reorg the next microbatch starts at the first divergent height, and
applying the invalidation rule to what was streamed reproduces the canonical rows."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest
from flightclient import (
    STREAM,
    Destination,
    Microbatch,
    assert_same_rows,
    connect,
    hex_hash,
    open_stream,
    read_microbatches,
    read_until_end,
    rows_of_blocks,
)

from amp.devserver import DevServer
from amp.devserver.chain import SimulatedChain
from amp.devserver.datagen import TABLE_SCHEMAS


@pytest.fixture
def server() -> Iterator[DevServer]:
    with DevServer(port=0, seed=1, initial_blocks=100, max_interval=10) as srv:
        yield srv


def _assert_reorg_start(
    last: Microbatch, incoming: Microbatch, fork_height: int, chain: SimulatedChain
) -> None:
    assert incoming.range.start == fork_height
    assert incoming.range.start <= last.range.end
    assert incoming.range.prev_hash != last.range.hash
    assert incoming.range.prev_hash == hex_hash(chain.canonical_hash(fork_height - 1))
    assert incoming.range.hash == hex_hash(chain.canonical_hash(incoming.range.end))


def test_protocol_example_one_block_reorg_plus_one_new_block() -> None:
    """Ranges 0..0, 1..2, then a one-block reorg and one new block: 2..3."""
    with DevServer(port=0, seed=1, initial_blocks=1, max_interval=10) as srv:
        chain = srv.chain
        with (
            connect(srv.url) as client,
            open_stream(client, "SELECT * FROM eth_firehose.blocks" + STREAM) as reader,
        ):
            (first,) = read_microbatches(reader, 1)
            chain.mine(2)
            (second,) = read_microbatches(reader, 1)
            with chain.changed:  # both changes at once, as one observation of the chain
                chain.reorg(1)
                chain.mine(1)
            (third,) = read_microbatches(reader, 1)
        assert [(b.range.start, b.range.end) for b in (first, second, third)] == [
            (0, 0),
            (1, 2),
            (2, 3),
        ]
        assert second.range.prev_hash == first.range.hash
        _assert_reorg_start(second, third, 2, chain)
        destination = Destination()
        for batch in (first, second, third):
            destination.apply(batch)
        assert len(destination.reorgs) == 1
        oracle = chain.canonical_table("blocks")
        assert_same_rows(destination.table(oracle.schema), oracle, "blocks")


@pytest.mark.parametrize("depth", [1, 2, 10, 25])
def test_reorg_restarts_at_the_first_divergent_height(server: DevServer, depth: int) -> None:
    chain = server.chain
    oracle_before = chain.canonical_table("logs")
    with (
        connect(server.url) as client,
        open_stream(client, "SELECT * FROM eth_firehose.logs" + STREAM) as reader,
    ):
        before = read_until_end(reader, 99)
        chain.reorg(depth)
        after = read_until_end(reader, 99)
    fork_height = 100 - depth
    _assert_reorg_start(before[-1], after[0], fork_height, chain)
    assert after[0].range.end == min(99, fork_height + 9)
    for previous, following in itertools.pairwise(after):
        assert following.range.start == previous.range.end + 1
        assert following.range.prev_hash == previous.range.hash
    oracle = chain.canonical_table("logs")
    for batch in after:
        assert_same_rows(
            batch.table(), rows_of_blocks(oracle, batch.range.start, batch.range.end), "logs"
        )
    destination = Destination()
    for batch in before + after:
        destination.apply(batch)
    assert len(destination.reorgs) == 1
    assert_same_rows(destination.table(oracle.schema), oracle, "logs")
    # the reorg did change the data the client had
    assert not rows_of_blocks(oracle_before, fork_height, 99).equals(
        rows_of_blocks(oracle, fork_height, 99)
    )


@pytest.mark.parametrize("table", sorted(TABLE_SCHEMAS))
def test_reorg_plus_new_blocks_reproduce_the_canonical_table(server: DevServer, table: str) -> None:
    chain = server.chain
    destination = Destination()
    with (
        connect(server.url) as client,
        open_stream(client, f"SELECT * FROM eth_firehose.{table}{STREAM}") as reader,
    ):
        for batch in read_until_end(reader, 99):
            destination.apply(batch)
        with chain.changed:
            chain.reorg(2)
            chain.mine(3)
        after = read_until_end(reader, 102)
        for batch in after:
            destination.apply(batch)
    assert (after[0].range.start, after[0].range.end) == (98, 102)
    assert after[0].range.prev_hash == hex_hash(chain.canonical_hash(97))
    assert len(destination.reorgs) == 1
    oracle = chain.canonical_table(table)
    assert_same_rows(destination.table(oracle.schema), oracle, table)


def test_successive_reorgs_and_mining(server: DevServer) -> None:
    chain = server.chain
    destination = Destination()
    with (
        connect(server.url) as client,
        open_stream(client, "SELECT * FROM eth_firehose.transactions" + STREAM) as reader,
    ):
        for batch in read_until_end(reader, 99):
            destination.apply(batch)
        chain.reorg(3)
        for batch in read_until_end(reader, 99):
            destination.apply(batch)
        chain.mine(4)
        for batch in read_until_end(reader, 103):
            destination.apply(batch)
        chain.reorg(6)
        for batch in read_until_end(reader, 103):
            destination.apply(batch)
    assert [incoming.start for _, incoming in destination.reorgs] == [97, 98]
    oracle = chain.canonical_table("transactions")
    assert_same_rows(destination.table(oracle.schema), oracle, "transactions")


def test_two_reorgs_before_the_next_microbatch_walk_back_to_the_common_ancestor(
    server: DevServer,
) -> None:
    """Block 99 was replaced twice (by a 3-deep then a 2-deep reorg): the stream restarts at
    97, the lowest height where its chain and the canonical one differ."""
    chain = server.chain
    destination = Destination()
    with (
        connect(server.url) as client,
        open_stream(client, "SELECT * FROM eth_firehose.blocks" + STREAM) as reader,
    ):
        for batch in read_until_end(reader, 99):
            destination.apply(batch)
        last = destination.last
        with chain.changed:
            chain.reorg(3)
            chain.reorg(2)
        after = read_until_end(reader, 99)
        for batch in after:
            destination.apply(batch)
    assert last is not None
    assert (after[0].range.start, after[0].range.end) == (97, 99)
    assert after[0].range.prev_hash == hex_hash(chain.canonical_hash(96))
    assert after[0].range.prev_hash != last.hash
    oracle = chain.canonical_table("blocks")
    assert_same_rows(destination.table(oracle.schema), oracle, "blocks")


def test_reorg_below_blocks_not_yet_streamed_is_invisible(server: DevServer) -> None:
    """A reorg of blocks the stream has not sent yet needs no invalidation: the stream just
    sends the canonical blocks when it gets there."""
    chain = server.chain
    destination = Destination()
    with (
        connect(server.url) as client,
        open_stream(client, "SELECT * FROM eth_firehose.logs" + STREAM) as reader,
    ):
        for batch in read_until_end(reader, 99):
            destination.apply(batch)
        with chain.changed:
            chain.mine(20)
            chain.reorg(5)  # replaces 115..119, never sent
        for batch in read_until_end(reader, 119):
            destination.apply(batch)
    assert destination.reorgs == []
    oracle = chain.canonical_table("logs")
    assert_same_rows(destination.table(oracle.schema), oracle, "logs")
