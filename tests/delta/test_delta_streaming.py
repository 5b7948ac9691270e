"""Streaming loads into Delta through reorgs of depth 1, 4 and deeper than a microbatch:
the table read back with delta-rs holds exactly the canonical rows, each reorg is one
delete commit reporting the rows it removed, and every unit is one commit."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from delta_support import (
    ROW_COLUMNS,
    TABLE,
    amp_commits,
    assert_exact,
    delta_config,
    read_table,
    read_with_duckdb,
)
from deltalake import DeltaTable

from amp.devserver import DevServer
from kit import Action, Mine, Reorg, assert_reorgs_reported, load_to_head, unique
from kit.chain import arrow_rows, assert_equals_canonical

SEED = 1
MAX_INTERVAL = 10

SCENARIOS: dict[str, Callable[[], list[Action]]] = {
    "depth-1": lambda: [Reorg(1), Mine(4), Reorg(1), Mine(2), Reorg(1)],
    "depth-4": lambda: [Reorg(4), Mine(3), Reorg(4, mine=2), Mine(1), Reorg(4)],
    # 25 blocks span three microbatches of 10, the first of them only partly.
    "deeper-than-a-microbatch": lambda: [Reorg(25), Mine(6), Reorg(25)],
}


@pytest.mark.parametrize("idempotency", [False, True], ids=["plain", "idempotent"])
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_streaming_load_through_reorgs_is_exact(
    scenario: str, idempotency: bool, tmp_path: Path
) -> None:
    config = delta_config(tmp_path, checkpoint=True, idempotency=idempotency)
    actions = SCENARIOS[scenario]()
    with DevServer(port=0, seed=SEED, initial_blocks=60, max_interval=MAX_INTERVAL) as server:
        driven = load_to_head(server, unique("dc"), "deltalake", config, TABLE, actions)
        reorgs = [action for action in actions if isinstance(action, Reorg)]
        assert_reorgs_reported(driven, reorgs)
        assert any(reorg.rows_replaced > 0 for reorg in reorgs), "no reorg replaced any row"
        assert_exact(tmp_path, server.chain)
        duckdb_rows = arrow_rows(read_with_duckdb(tmp_path), ROW_COLUMNS)
        assert_equals_canonical(duckdb_rows, server.chain, "logs", ROW_COLUMNS, 2, "DuckDB")

    # One commit per result that changed the table, each carrying amp's state.
    history = DeltaTable(f"{tmp_path}/{TABLE}").history()
    deletes = [h for h in history if h["operation"] == "DELETE"]
    assert len(deletes) == len(driven.reorgs()), "a reorg should be one delete commit"
    for commit in deletes:
        assert "amp" in commit, "a reorg's delete commit must carry the new checkpoint"
    assert len(amp_commits(tmp_path)) == len(history) - 1  # all but the CREATE


def test_reorg_commit_removes_exactly_the_replaced_rows(tmp_path: Path) -> None:
    """The delete commit's own metrics agree with the rows the chain replaced, and the
    rows of blocks before the fork are untouched."""
    config = delta_config(tmp_path, checkpoint=True)
    reorg = Reorg(25)
    with DevServer(port=0, seed=SEED, initial_blocks=60, max_interval=MAX_INTERVAL) as server:
        before: dict[str, object] = {}

        def snapshot(chain: object) -> None:
            before["rows"] = read_table(tmp_path).num_rows
            reorg(chain)  # type: ignore[arg-type]

        load_to_head(server, unique("dc"), "deltalake", config, TABLE, [snapshot])
        history = DeltaTable(f"{tmp_path}/{TABLE}").history()
        (delete,) = [h for h in history if h["operation"] == "DELETE"]
        assert delete["operationMetrics"]["num_deleted_rows"] == reorg.rows_replaced
        assert reorg.rows_replaced > 0
        assert_exact(tmp_path, server.chain)


def test_a_replayed_range_already_committed_is_skipped(tmp_path: Path) -> None:
    """Idempotency without checkpoints: a second load from block 0 finds every range in
    the table's commits and skips it; the table gets no new rows and no data commit."""
    config = delta_config(tmp_path, idempotency=True)
    connection = unique("di")
    with DevServer(port=0, seed=SEED, initial_blocks=40, max_interval=MAX_INTERVAL) as server:
        first = load_to_head(server, connection, "deltalake", config, TABLE)
        assert first.loads(), "the first load loaded nothing"
        before = DeltaTable(f"{tmp_path}/{TABLE}")
        files, version = sorted(before.file_uris()), before.version()
        again = load_to_head(server, connection, "deltalake", config, TABLE)
        assert not again.loads(), f"ranges loaded again: {again.ranges()}"
        assert len(again.of("skip_duplicate")) == len(first.loads())
        after = DeltaTable(f"{tmp_path}/{TABLE}")
        assert sorted(after.file_uris()) == files, "a skipped range changed the data files"
        added = [h for h in after.history(after.version() - version) if h["operation"] != "WRITE"]
        assert not added, added
        assert_exact(tmp_path, server.chain)


def test_overwrite_replaces_the_table(tmp_path: Path) -> None:
    """mode='overwrite': the second load starts from an empty table (one overwrite
    commit), and ends with exactly the canonical rows."""
    with DevServer(port=0, seed=SEED, initial_blocks=40, max_interval=MAX_INTERVAL) as server:
        config = delta_config(tmp_path)
        load_to_head(server, unique("do"), "deltalake", config, TABLE)
        load_to_head(server, unique("do"), "deltalake", config, TABLE, mode="overwrite")
        assert_exact(tmp_path, server.chain)


def test_a_partitioned_table_through_reorgs_is_exact(tmp_path: Path) -> None:
    """partition_by: the table is created partitioned (a directory per value), and
    reorgs delete only inside the partitions of the replaced blocks."""
    query = "SELECT *, CAST(block_num / 20 AS BIGINT) AS bucket FROM eth_firehose.logs"
    config = delta_config(tmp_path, checkpoint=True, partition_by=["bucket"])
    actions: list[Action] = [Reorg(4), Mine(3), Reorg(25)]
    with DevServer(port=0, seed=SEED, initial_blocks=60, max_interval=MAX_INTERVAL) as server:
        driven = load_to_head(
            server, unique("dp"), "deltalake", config, TABLE, actions, query=query
        )
        assert_reorgs_reported(driven, [a for a in actions if isinstance(a, Reorg)])
        assert_exact(tmp_path, server.chain)
    table = DeltaTable(f"{tmp_path}/{TABLE}")
    assert table.metadata().partition_columns == ["bucket"]
    buckets = {int(p["bucket"]) for p in table.partitions()}
    assert buckets == set(range(0, max(buckets) + 1)) and len(buckets) > 2


def test_compact_every_keeps_the_file_count_down(tmp_path: Path) -> None:
    """compact_every=3 with commit grouping off: the load compacts as it goes, so the
    table ends with far fewer files than commits, and the rows stay exact (compaction
    commits carry no state and change no row)."""
    config = {
        **delta_config(tmp_path, checkpoint=True, compact_every=3),
        "commit_grouping": {"enabled": False},
    }
    with DevServer(port=0, seed=SEED, initial_blocks=80, max_interval=5) as server:
        driven = load_to_head(server, unique("dz"), "deltalake", config, TABLE, [Reorg(4)])
        assert_exact(tmp_path, server.chain)
    table = DeltaTable(f"{tmp_path}/{TABLE}")
    history = table.history()
    compactions = [h for h in history if h["operation"] == "OPTIMIZE"]
    assert compactions, "no compaction ran"
    assert all("amp" not in h for h in compactions)
    assert len(table.file_uris()) < len(driven.loads()) / 2, len(table.file_uris())
