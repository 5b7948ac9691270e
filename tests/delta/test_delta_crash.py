"""Exactly once through crashes, into Delta: ``amp load --to deltalake:///...`` is killed
with SIGKILL 20 times at random moments while new blocks and reorgs arrive, and
restarted each time. Afterwards the table, read with delta-rs, must hold every
canonical row exactly once and no row of a forked block; the checkpoint in the table's
commits ends at the head.

Why this is the Delta loader's proof: a unit's rows and its checkpoint are one commit,
so a kill before the commit's log entry leaves only unreferenced Parquet files, and a
kill after it leaves both.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from delta_support import TABLE, amp_commits, assert_exact, delta_config, read_table

from crashkit import (
    RANGE_COLUMNS,
    RANGE_QUERY,
    assert_range_keyed_exactly_once,
    busy_chain_server,
    catch_up,
    crash_and_restart_amp_load,
    range_keyed_chain_server,
)
from kit import block_range, unique
from kit.chain import arrow_rows


def _newest_end(table_path: Path, connection: str) -> int | None:
    """The end of worker 0's checkpoint as the table's newest amp commit carries it (None
    before the table or that checkpoint exists)."""
    if not (table_path / TABLE / "_delta_log").is_dir():
        return None
    commits = amp_commits(table_path)
    if not commits:
        return None
    for key, _, document in json.loads(commits[-1]["amp"])["checkpoints"]:
        if key[1] == "checkpoint" and key[2] == connection and key[4] == 0 and document:
            return int(document["ranges"][-1]["end"])
    return None


def checkpoint_end(table_path: Path, connection: str) -> int:
    end = _newest_end(table_path, connection)
    assert end is not None, "the killed loads left no checkpoint"
    return end


def _committed_past(table_path: Path, connection: str, block: int) -> bool:
    """Whether a killed load has committed past ``block``."""
    end = _newest_end(table_path, connection)
    return end is not None and end > block


@pytest.mark.slow
def test_delta_exactly_once_through_sigkills(tmp_path: Path) -> None:
    connection = unique("dk")
    with busy_chain_server(300, max_interval=50) as server:
        initial_head = server.chain.head
        lines = crash_and_restart_amp_load(
            server, f"deltalake://{tmp_path}", TABLE, connection, seed=17,
            until=lambda: _committed_past(tmp_path, connection, initial_head),
        )  # fmt: skip
        resumed_from = checkpoint_end(tmp_path, connection)
        assert resumed_from > initial_head, "the killed loads never reached the growing head"
        assert any("Reorg on" in line for line in lines), "no killed load handled a reorg"
        driven = catch_up(server, connection, "deltalake", delta_config(tmp_path), TABLE)
        first = driven.results[0]
        if first.metadata["operation"] != "reorg":
            assert block_range(first)["start"] == resumed_from + 1, "the catch-up started over"
        assert len(server.chain.reorgs) >= 5, "the run should have seen reorgs"
        assert_exact(tmp_path, server.chain)
        assert checkpoint_end(tmp_path, connection) == server.chain.head


@pytest.mark.slow
def test_delta_range_keyed_rows_exactly_once_through_sigkills(tmp_path: Path) -> None:
    """A query without a block column: rows carry their microbatch's range, and a reorg
    deletes whole microbatches by ``_amp_block_end``."""
    connection = unique("dk")
    with range_keyed_chain_server() as server:
        lines = crash_and_restart_amp_load(
            server, f"deltalake://{tmp_path}", TABLE, connection, seed=31, query=RANGE_QUERY
        )
        catch_up(server, connection, "deltalake", delta_config(tmp_path), TABLE, RANGE_QUERY)
        columns = (*RANGE_COLUMNS, "_amp_block_start", "_amp_block_end")
        rows = arrow_rows(read_table(tmp_path), columns)
        assert_range_keyed_exactly_once(rows, server.chain, lines, f"Delta {TABLE}")
