"""The Iceberg loader's state store (``DocumentStateStore`` over table properties,
snapshot summaries and namespace properties): read your own writes inside a unit, nothing
left by a rollback, everything seen by a new loader (a new process) after the commit,
workers' checkpoints side by side, ranges forgotten by a reorg, plans in the namespace.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
from iceberg_support import Lake, checkpoints

from amp.loaders.base import LoadMode
from amp.loaders.iceberg.loader import IcebergLoader
from amp.loaders.iceberg.state import PLAN_SUFFIX
from amp.loop.parallel_plan import PLAN_SUFFIX as LOOP_PLAN_SUFFIX
from amp.streaming.types import BlockRange

T0 = datetime(2026, 1, 1, tzinfo=UTC)
SCHEMA = pa.schema([pa.field("_block_num", pa.uint64()), pa.field("v", pa.string())])


def opened(lake: Lake, connection: str = "st") -> IcebergLoader:
    loader = IcebergLoader(lake.config(), connection)
    loader.connect()
    loader.prepare_table("t", SCHEMA, LoadMode.APPEND, "_block_num")
    return loader


def checkpoint(end: int, worker: int = 0) -> dict[str, Any]:
    return {"version": 1, "ranges": [{"network": "eth", "start": 0, "end": end}], "worker": worker}


def test_read_your_writes_rollback_and_a_new_loader(lake: Lake) -> None:
    loader = opened(lake)
    store = loader.state_store("amp_")
    loader.begin()
    store.save_checkpoint("st", "t", 0, checkpoint(5), T0)
    store.mark_processed("st", "t", BlockRange("eth", 0, 5, hash="0x05"), T0, None)
    assert store.load_checkpoint("st", "t", 0) == checkpoint(5)
    assert len(store.overlapping_ranges("st", "t", BlockRange("eth", 3, 9))) == 1
    loader.rollback()
    assert store.load_checkpoint("st", "t", 0) is None
    assert store.overlapping_ranges("st", "t", BlockRange("eth", 3, 9)) == []
    assert checkpoints(lake.table("t")) == {}

    loader.begin()
    store.save_checkpoint("st", "t", 0, checkpoint(5), T0)
    store.mark_processed("st", "t", BlockRange("eth", 0, 5, hash="0x05"), T0, None)
    store.mark_processed("st", "t", BlockRange("eth", 6, 9, hash="0x09"), T0, None)
    loader.commit()
    loader.close()

    fresh = opened(lake)
    again = fresh.state_store("amp_")
    assert again.load_checkpoint("st", "t", 0) == checkpoint(5)
    assert {
        (r.start, r.end) for r in again.overlapping_ranges("st", "t", BlockRange("eth", 0, 99))
    } == {
        (0, 5),
        (6, 9),
    }
    # A reorg from block 7 forgets the ranges reaching it, in its own commit.
    fresh.begin()
    assert again.forget_ranges_from("st", "t", "eth", 7) == 1
    fresh.commit()
    assert [
        (r.start, r.end) for r in again.overlapping_ranges("st", "t", BlockRange("eth", 0, 99))
    ] == [(0, 5)]
    assert again.count_ranges("t") == {"st": 1}
    fresh.close()


def test_workers_checkpoints_side_by_side(lake: Lake) -> None:
    """Two workers' loaders, each with the metadata it read before the other committed:
    the second commit loses the race, is rebuilt, and keeps the first one's checkpoint."""
    first, second = opened(lake, "par"), opened(lake, "par")
    for worker, loader in ((0, first), (1, second)):
        loader.begin()
        loader.state_store("amp_").save_checkpoint(
            "par", "t", worker, checkpoint(10 + worker, worker), T0
        )
    first.commit()
    second.commit()
    stored = checkpoints(lake.table("t"))
    assert stored == {0: checkpoint(10), 1: checkpoint(11, 1)}
    listed = first.state_store("amp_").list_checkpoints("par", "t")
    assert [(c.worker_id, c.data["ranges"][0]["end"]) for c in listed] == [(0, 10), (1, 11)]
    first.close()
    second.close()


def test_a_plan_lives_in_the_namespace(lake: Lake) -> None:
    assert PLAN_SUFFIX == LOOP_PLAN_SUFFIX
    loader = IcebergLoader(lake.config(), "plan")
    loader.connect()  # no table yet: a plan is stored before any worker prepares it
    store = loader.state_store("amp_")
    plan = {"partitions": [[0, 0, 99]], "timestamp": T0.isoformat()}
    loader.begin()
    store.save_checkpoint("plan", "t" + PLAN_SUFFIX, 0, plan, T0)
    loader.commit()
    assert store.load_checkpoint("plan", "t" + PLAN_SUFFIX, 0) == plan
    assert [c.table for c in store.list_checkpoints("plan", None)] == ["t" + PLAN_SUFFIX]
    loader.begin()
    assert store.delete_checkpoint("plan", "t" + PLAN_SUFFIX, None) == 1
    loader.commit()
    assert store.load_checkpoint("plan", "t" + PLAN_SUFFIX, 0) is None
    loader.close()
