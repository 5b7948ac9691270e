"""Streaming loads into Iceberg through reorgs: the table read back with pyiceberg ends
with exactly the canonical rows; each unit is one catalog commit whose snapshot summary
carries its checkpoint; a reorg is one delete-with-row-filter commit carrying the new
checkpoint; a restart resumes after the checkpoint, also after snapshot expiry.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from iceberg_support import Lake, assert_exact, checkpoint_end, checkpoints, visible_snapshots

from amp.devserver import DevServer
from amp.loaders.iceberg.state import SUMMARY_CHECKPOINT, SUMMARY_PROCESSED
from kit import Action, Mine, Reorg, assert_reorgs_reported, load_to_head

SEED = 1
MAX_INTERVAL = 10
FEATURES = {"checkpoint": {"enabled": True}, "idempotency": {"enabled": True}}

SCENARIOS: dict[str, Callable[[], list[Action]]] = {
    "depth-1": lambda: [Reorg(1), Mine(4), Reorg(1), Mine(2), Reorg(1)],
    "depth-4": lambda: [Reorg(4), Mine(3), Reorg(4), Mine(1), Reorg(4)],
    # 25 blocks span three microbatches of 10, the first of them only partly.
    "deeper-than-a-microbatch": lambda: [Reorg(25), Mine(6), Reorg(25)],
}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_streaming_load_through_reorgs_is_exact(scenario: str, lake: Lake) -> None:
    actions = SCENARIOS[scenario]()
    with DevServer(port=0, seed=SEED, initial_blocks=60, max_interval=MAX_INTERVAL) as server:
        driven = load_to_head(server, "conn", "iceberg", lake.config(**FEATURES), "logs", actions)
        reorgs = [action for action in actions if isinstance(action, Reorg)]
        assert_reorgs_reported(driven, reorgs)
        assert any(reorg.rows_replaced > 0 for reorg in reorgs), "no reorg replaced any row"
        table = lake.table("logs")
        assert_exact(table, server.chain)
        assert checkpoint_end(table) == server.chain.head


def test_each_unit_is_one_commit_and_a_reorg_one_delete_commit(lake: Lake) -> None:
    """Every snapshot amp made is a unit's (or a reorg's) commit: the unit's last snapshot
    carries its checkpoint and processed ranges in its summary; the reorg's commit
    deletes exactly the replaced rows and records the reorg checkpoint."""
    reorg = Reorg(4)
    with DevServer(port=0, seed=SEED, initial_blocks=60, max_interval=MAX_INTERVAL) as server:
        driven = load_to_head(server, "conn", "iceberg", lake.config(**FEATURES), "logs", [reorg])
        table = lake.table("logs")
        snapshots = table.snapshots()
        carrying = [s for s in snapshots if s.summary and s.summary.get(SUMMARY_CHECKPOINT)]
        # Units group microbatches while catching up: at most one commit per result, and
        # every snapshot is a unit's checkpoint-carrying append or a delete in its commit.
        assert 2 <= len(carrying) <= len(driven.loads()) + len(driven.reorgs())
        current = table.current_snapshot()
        assert current is not None and current.snapshot_id == carrying[-1].snapshot_id
        others = [s for s in snapshots if s not in carrying]
        assert all(
            s.summary and s.summary.operation.value in ("delete", "overwrite") for s in others
        )
        reorg_commits = [
            s
            for s in carrying
            if any(
                document and document["is_reorg"]
                for _, document in json.loads(s.summary.get(SUMMARY_CHECKPOINT) or "[]")
            )
        ]
        assert len(reorg_commits) == 1, [s.summary for s in carrying]
        reorg_snapshot = reorg_commits[0]
        assert int(reorg_snapshot.summary.get("added-records") or 0) == 0
        # Its parent is the delete of the replaced rows, in the same catalog commit
        # (copy-on-write: a file holding other rows too is rewritten without them).
        parent = table.snapshot_by_id(reorg_snapshot.parent_snapshot_id)
        assert parent is not None and parent.summary is not None
        removed = int(parent.summary.get("deleted-records") or 0)
        rewritten = int(parent.summary.get("added-records") or 0)
        assert removed - rewritten == reorg.rows_replaced
        # No reader ever saw a snapshot without its unit's checkpoint: every catalog
        # commit's current snapshot is a checkpoint-carrying one (a table with none yet
        # before the first).
        ids = {s.snapshot_id for s in carrying}
        versions = visible_snapshots(table)
        assert len(versions) >= len(carrying), versions
        never = [v for v in versions if v is not None and v not in ids]
        assert not never, f"catalog commits left snapshots without a checkpoint: {never}"
        assert_exact(table, server.chain)
        loads = [s for s in carrying if s.summary.get(SUMMARY_PROCESSED)]
        assert loads, "no snapshot carries processed ranges"


def test_restart_resumes_after_the_checkpoint_also_after_snapshot_expiry(lake: Lake) -> None:
    config = lake.config(**FEATURES)
    with DevServer(port=0, seed=SEED, initial_blocks=60, max_interval=MAX_INTERVAL) as server:
        load_to_head(server, "conn", "iceberg", config, "logs")
        first_end = checkpoint_end(lake.table("logs"))
        # Expire every snapshot but the current one: the checkpoint is a table property.
        table = lake.table("logs")
        table.maintenance.expire_snapshots().older_than(
            datetime.now(UTC) + timedelta(minutes=1)
        ).commit()
        table = lake.table("logs")
        assert len(table.snapshots()) == 1
        assert checkpoints(table), "snapshot expiry removed the checkpoint"
        server.chain.mine(12)
        again = load_to_head(server, "conn", "iceberg", config, "logs", [Reorg(3)])
        assert again.ranges()[0][0] == first_end + 1, f"did not resume: {again.ranges()}"
        assert_exact(lake.table("logs"), server.chain)


def test_a_replayed_range_already_committed_is_skipped(lake: Lake) -> None:
    """Idempotency: without a checkpoint (only processed ranges), a second load of the
    same blocks skips every microbatch it finds committed, and the table stays exact."""
    config = lake.config(idempotency={"enabled": True})
    with DevServer(port=0, seed=SEED, initial_blocks=40, max_interval=MAX_INTERVAL) as server:
        load_to_head(server, "conn", "iceberg", config, "logs")
        rows = assert_exact(lake.table("logs"), server.chain)
        again = load_to_head(server, "conn", "iceberg", config, "logs")
        assert again.of("skip_duplicate"), "nothing was skipped"
        assert not again.loads(), f"ranges loaded again: {again.ranges()}"
        assert assert_exact(lake.table("logs"), server.chain) == rows


def test_old_snapshots_are_expired_in_the_units_commits(lake: Lake) -> None:
    """``max_snapshots=10``: every commit expires the oldest snapshots beyond ten; the
    checkpoint (a property) survives them, a restart resumes after it, reorgs stay
    exact, and every unit committed without commit grouping still left one snapshot."""
    config = lake.config(max_snapshots=10, commit_grouping={"enabled": False}, **FEATURES)
    actions: list[Action] = [Reorg(4), Mine(5), Reorg(12)]
    with DevServer(port=0, seed=SEED, initial_blocks=80, max_interval=5) as server:
        driven = load_to_head(server, "conn", "iceberg", config, "logs", actions)
        assert len(driven.loads()) > 20, "the test needs more commits than max_snapshots"
        table = lake.table("logs")
        assert len(table.snapshots()) <= 10, len(table.snapshots())
        assert_exact(table, server.chain)
        first_end = checkpoint_end(table)
        server.chain.mine(7)
        again = load_to_head(server, "conn", "iceberg", config, "logs", [Reorg(2)])
        assert again.ranges()[0][0] == first_end + 1, f"did not resume: {again.ranges()}"
        table = lake.table("logs")
        assert len(table.snapshots()) <= 10
        assert_exact(table, server.chain)


def test_a_partitioned_table_through_reorgs(lake: Lake) -> None:
    """``partition_spec`` by block (identity: the other transforms need pyiceberg-core,
    not installed here): the table is created partitioned, every data file holds one
    block, and reorgs (a delete by row filter that drops whole files of the replaced
    blocks) leave it exact."""
    spec = [{"column": "_block_num", "transform": "identity", "name": "blocks"}]
    config = lake.config(partition_spec=spec, **FEATURES)
    actions: list[Action] = [Reorg(4), Mine(3), Reorg(25)]
    with DevServer(port=0, seed=SEED, initial_blocks=60, max_interval=MAX_INTERVAL) as server:
        driven = load_to_head(server, "conn", "iceberg", config, "logs", actions)
        assert_reorgs_reported(driven, [a for a in actions if isinstance(a, Reorg)])
        table = lake.table("logs")
        fields = table.spec().fields
        assert [(f.name, str(f.transform)) for f in fields] == [("blocks", "identity")]
        files = table.inspect.files().to_pylist()
        assert files and all(
            row["readable_metrics"]["_block_num"]["lower_bound"]
            == row["readable_metrics"]["_block_num"]["upper_bound"]
            for row in files
        ), "a data file spans two partitions"
        assert_exact(table, server.chain)
