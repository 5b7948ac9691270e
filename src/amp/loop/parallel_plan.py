"""The plan of a parallel load: its partitions and hand-off block, kept in the destination.

Why stored: a restart after a crash or a Ctrl-C must cut the blocks exactly as before,
or a partition's checkpoint would describe other blocks than its worker now loads. The
hand-off block H (head minus ``reorg_buffer`` at the first start) would move with the
head if it were computed again. The plan is one document in the checkpoint table,
under the table name ``<table>/parallel-plan`` (worker 0), written in its own
transaction before any worker starts; a restart with another ``ParallelConfig`` is
refused rather than mixing two plans' checkpoints.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from amp.errors import ConfigError
from amp.flight.seam import Transport
from amp.loop.blockhash import block_cursor, chain_head
from amp.streaming.checkpoint import CheckpointStore
from amp.streaming.parallel import ParallelConfig, Partition, plan_partitions
from amp.streaming.types import BlockRange

log = logging.getLogger("amp.parallel")

PLAN_VERSION = 1
PLAN_SUFFIX = "/parallel-plan"


@dataclass(frozen=True)
class Plan:
    """The partitions of a load; ``handoff`` is H when the load streams live after them."""

    config: dict[str, Any]
    partitions: tuple[Partition, ...]
    handoff: int | None
    # Block H as read when the plan was made: the live worker starts after it, so a
    # reorg of H at any later time (even while the load is stopped) shows as a reorg.
    handoff_cursor: BlockRange | None = None

    @property
    def live(self) -> Partition | None:
        last = self.partitions[-1] if self.partitions else None
        return last if last is not None and last.live else None

    @property
    def bounded(self) -> tuple[Partition, ...]:
        return tuple(p for p in self.partitions if not p.live)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": PLAN_VERSION,
            "kind": "parallel_plan",
            "config": self.config,
            "handoff": self.handoff,
            "handoff_cursor": (
                self.handoff_cursor.to_dict() if self.handoff_cursor is not None else None
            ),
            "partitions": [p.to_list() for p in self.partitions],
            # A checkpoint-shaped field so the guide's monitoring queries read it cleanly.
            "ranges": [],
            "timestamp": datetime.now(UTC).isoformat(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        if data.get("version") != PLAN_VERSION or data.get("kind") != "parallel_plan":
            raise ConfigError(
                f"the stored parallel plan has format {data.get('version')!r}, which this amp "
                "does not read; finish the load with the amp version that started it"
            )
        partitions = tuple(
            Partition(int(number), int(start), None if end is None else int(end))
            for number, start, end in data["partitions"]
        )
        handoff = data.get("handoff")
        cursor = data.get("handoff_cursor")
        return cls(
            dict(data["config"]),
            partitions,
            None if handoff is None else int(handoff),
            BlockRange.from_dict(cursor) if cursor is not None else None,
        )


def new_plan(config: ParallelConfig, transport: Transport) -> Plan:
    """Cut ``config``'s blocks; with ``max_block=None`` read the head to fix H."""
    if config.max_block is not None:
        partitions = plan_partitions(
            config.min_block, config.max_block, config.num_workers, config.partition_size
        )
        return Plan(config.describe(), tuple(partitions), None)
    head = chain_head(transport, config.table_name, config.block_column)
    handoff = config.min_block - 1 if head is None else head - config.reorg_buffer
    handoff = max(handoff, config.min_block - 1)
    partitions = plan_partitions(
        config.min_block, handoff, config.num_workers, config.partition_size
    )
    live = Partition(len(partitions), handoff + 1, None)
    cursor = block_cursor(transport, config.dataset, handoff) if handoff >= 0 else None
    log.info(
        "Parallel plan: head %s, hand-off block %d (reorg_buffer %d); %d partitions, then "
        "live from block %d",
        head,
        handoff,
        config.reorg_buffer,
        len(partitions),
        handoff + 1,
    )
    return Plan(config.describe(), (*partitions, live), handoff, cursor)


class PlanStore:
    """Reads and writes a table's plan in its checkpoint table (inside the caller's
    transaction)."""

    def __init__(self, checkpoints: CheckpointStore, table: str) -> None:
        self.checkpoints = checkpoints
        self.table = table
        self.key = f"{table}{PLAN_SUFFIX}"

    def load(self) -> Plan | None:
        state = self.checkpoints.state
        data = state.load_checkpoint(self.checkpoints.connection_name, self.key, 0)
        return Plan.from_dict(data) if data is not None else None

    def save(self, plan: Plan) -> None:
        state = self.checkpoints.state
        state.save_checkpoint(
            self.checkpoints.connection_name,
            self.key,
            0,
            plan.to_dict(),
            datetime.now(UTC),
            archive_previous=False,
        )

    def forget(self) -> None:
        self.checkpoints.delete(self.key, None)


def check_same(stored: Plan, config: ParallelConfig, table: str) -> None:
    """A restart must ask for the plan it continues."""
    wanted = config.describe()
    if stored.config == wanted:
        return
    changed = ", ".join(
        f"{key} {stored.config.get(key)!r} -> {value!r}"
        for key, value in wanted.items()
        if stored.config.get(key) != value
    )
    raise ConfigError(
        f"the destination {table!r} holds an unfinished parallel load with another plan "
        f"({changed}); its partitions' checkpoints belong to that plan. Rerun with the "
        "ParallelConfig it was started with to finish it, or load into a new table"
    )
