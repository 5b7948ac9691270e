"""Exactly once through crashes, into Iceberg: ``amp load --to iceberg://<dir>`` is killed
with SIGKILL 20 times at random moments while new blocks and reorgs arrive, and started
again each time. Afterwards the table (read with pyiceberg) must hold every canonical row
exactly once and no row of a forked block, and the catch-up must resume after the
checkpoint the killed loads committed.
"""

from __future__ import annotations

import pytest
from iceberg_support import Lake, assert_exact, checkpoint_end, checkpoints

from crashkit import (
    RANGE_COLUMNS,
    RANGE_QUERY,
    assert_range_keyed_exactly_once,
    busy_chain_server,
    catch_up,
    crash_and_restart_amp_load,
    range_keyed_chain_server,
    reorgs_handled,
)
from kit import block_range
from kit.chain import arrow_rows


def _committed_past(lake: Lake, block: int) -> bool:
    """Whether a killed load has committed past ``block`` (False before the table or its
    first checkpoint exists)."""
    if not lake.catalog().table_exists(("amp", "logs")):
        return False
    found = checkpoints(lake.table("logs"))
    return 0 in found and int(found[0]["ranges"][-1]["end"]) > block


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_iceberg_exactly_once_through_sigkills(lake: Lake) -> None:
    with busy_chain_server(300, max_interval=50, txs_per_block=20) as server:
        initial_head = server.chain.head
        lines = crash_and_restart_amp_load(
            server, lake.url, "logs", "crashed", seed=23,
            until=lambda: _committed_past(lake, initial_head),
        )  # fmt: skip
        resumed_from = checkpoint_end(lake.table("logs"))
        assert resumed_from > initial_head, "the killed loads never reached the growing head"
        assert reorgs_handled(lines), "no killed load handled a reorg"
        driven = catch_up(server, "crashed", "iceberg", lake.config(), "logs")
        first = driven.results[0]
        if first.metadata["operation"] != "reorg":
            assert block_range(first)["start"] == resumed_from + 1, "the catch-up started over"
        assert len(server.chain.reorgs) >= 5, "the run should have seen reorgs"
        table = lake.table("logs")
        assert_exact(table, server.chain)
        assert checkpoint_end(table) == server.chain.head


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_iceberg_range_keyed_rows_exactly_once_through_sigkills(lake: Lake) -> None:
    """A query without a block column: rows carry their microbatch's range
    (``_amp_block_start``, ``_amp_block_end``) and a reorg deletes whole microbatches."""
    with range_keyed_chain_server() as server:
        lines = crash_and_restart_amp_load(
            server, lake.url, "logs", "crashed", seed=37, query=RANGE_QUERY
        )
        catch_up(server, "crashed", "iceberg", lake.config(), "logs", RANGE_QUERY)
        stored = lake.table("logs").scan().to_arrow()
        rows = arrow_rows(stored, (*RANGE_COLUMNS, "_amp_block_start", "_amp_block_end"))
        assert_range_keyed_exactly_once(rows, server.chain, lines, "iceberg logs")
