"""An operator's view of a destination's delivery state: list its checkpoints, reset a
stream so that its next load starts from the beginning.

Why through ``StateStore``: every destination keeps the same state its own way (SQL
tables, Redis keys, Kafka's state topic), and the store already knows how; these
operations read and delete through it, so ``amp checkpoints`` works for every loader
that keeps state, including one written elsewhere.

What a reset removes: the stream's resume state, that is its current checkpoints (every
worker), its processed ranges (the idempotency records) and its parallel plan (stored as
table ``<table>/parallel-plan``, worker 0). The checkpoint history (superseded
checkpoints kept for audit after reorgs) stays: it is an audit trail, not resume state.
The destination's rows stay too; the next load replaces them range by range.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from amp.loaders.base import DataLoader
from amp.loop.parallel_plan import PLAN_SUFFIX, Plan
from amp.streaming.checkpoint import CheckpointState
from amp.streaming.state import StateStore, StoredCheckpoint

CHECKPOINT = "checkpoint"
PLAN = "plan"


@dataclass(frozen=True)
class CheckpointRow:
    """One line of ``amp checkpoints list``: a worker's checkpoint, or a parallel plan
    (``kind`` 'plan', no range)."""

    kind: str
    connection: str
    table: str
    worker: int
    network: str | None
    start: int | None
    end: int | None
    hash: str | None
    is_reorg: bool
    timestamp: datetime | None

    def age_seconds(self, now: datetime) -> float | None:
        return None if self.timestamp is None else (now - self.timestamp).total_seconds()

    def to_json(self, now: datetime) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "connection": self.connection,
            "table": self.table,
            "worker": self.worker,
            "network": self.network,
            "range": None
            if self.start is None
            else {"start": self.start, "end": self.end, "hash": self.hash},
            "is_reorg": self.is_reorg,
            "timestamp": None if self.timestamp is None else self.timestamp.isoformat(),
            "age_seconds": self.age_seconds(now),
        }


def _row(stored: StoredCheckpoint) -> CheckpointRow:
    if stored.table.endswith(PLAN_SUFFIX):
        stamp = stored.data.get("timestamp")
        return CheckpointRow(
            PLAN,
            stored.connection,
            stored.table[: -len(PLAN_SUFFIX)],
            stored.worker_id,
            None,
            None,
            None,
            None,
            False,
            _aware(datetime.fromisoformat(stamp)) if isinstance(stamp, str) else None,
        )
    state = CheckpointState.from_dict(stored.data)
    last = state.last_range()
    return CheckpointRow(
        CHECKPOINT,
        stored.connection,
        stored.table,
        stored.worker_id,
        None if last is None else last.network,
        None if last is None else last.start,
        None if last is None else last.end,
        None if last is None else last.hash,
        state.is_reorg,
        state.timestamp,
    )


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def checkpoint_rows(
    store: StateStore,
    connection: str | None = None,
    table: str | None = None,
    plans: bool = False,
) -> list[CheckpointRow]:
    """The committed checkpoints (of ``connection``/``table`` when given); parallel
    plans only with ``plans``."""
    if table is None:
        stored = store.list_checkpoints(connection, None)
    else:
        stored = store.list_checkpoints(connection, table)
        if plans:
            stored += store.list_checkpoints(connection, table + PLAN_SUFFIX)
    rows = [_row(found) for found in stored if plans or not found.table.endswith(PLAN_SUFFIX)]
    return sorted(rows, key=lambda r: (r.connection, r.table, r.kind, r.worker))


@dataclass(frozen=True)
class StreamState:
    """The resume state of (``connection``, ``table``) that a reset deletes."""

    connection: str
    table: str
    workers: tuple[int, ...]  # the workers that have a checkpoint
    processed_ranges: int
    plan_workers: tuple[int, ...] | None  # the stored plan's partitions; None: no plan

    @property
    def empty(self) -> bool:
        return not self.workers and not self.processed_ranges and self.plan_workers is None

    def claimed_workers(self) -> list[int]:
        """Every worker a load of this stream may run as: claimed during a reset."""
        return sorted({0, *self.workers, *(self.plan_workers or ())})

    def describe(self) -> str:
        workers = ", ".join(map(str, self.workers))
        parts = [
            f"{len(self.workers)} checkpoint(s)" + (f" (workers {workers})" if workers else ""),
            f"{self.processed_ranges} processed range(s)",
            f"{0 if self.plan_workers is None else 1} parallel plan(s)",
        ]
        return f"connection {self.connection!r}, table {self.table!r}: " + ", ".join(parts)


def stream_states(store: StateStore, table: str, connection: str | None) -> list[StreamState]:
    """What a reset of ``table`` (of ``connection``, or of every connection that has
    state for it) would delete, per connection."""
    checkpoints = store.list_checkpoints(connection, table)
    plans = {
        stored.connection: stored.data
        for stored in store.list_checkpoints(connection, table + PLAN_SUFFIX)
    }
    ranges = store.count_ranges(table, connection)
    names: Iterable[str] = {*(c.connection for c in checkpoints), *plans, *ranges}
    states = []
    for name in sorted(names):
        plan = plans.get(name)
        states.append(
            StreamState(
                name,
                table,
                tuple(sorted(c.worker_id for c in checkpoints if c.connection == name)),
                ranges.get(name, 0),
                None
                if plan is None
                else tuple(p.worker_id for p in Plan.from_dict(plan).partitions),
            )
        )
    return states


def reset_stream(loader: DataLoader[Any], store: StateStore, state: StreamState) -> None:
    """Delete ``state`` through ``loader`` (a loader of ``state.connection``), holding
    each of the stream's workers' claims meanwhile: StreamOwnedError when a load holds
    one (where the destination can tell: PostgreSQL's advisory lock, Redis's lease,
    DuckDB's file lock).

    Two transactions: the checkpoints and processed ranges together, then the plan (a
    Kafka transaction covers one table's state records, and the plan is kept under its
    own table name). In this order a failure between them is harmless: a plan without
    checkpoints only fixes how the next parallel load cuts its blocks, from the start.
    """
    loader.ensure_connected()
    for worker in state.claimed_workers():
        loader.claim_stream(state.table, worker)
    try:
        _in_transaction(loader, lambda: _delete_stream(store, state))
        if state.plan_workers is not None:
            plan_table = state.table + PLAN_SUFFIX
            _in_transaction(
                loader, lambda: store.delete_checkpoint(state.connection, plan_table, None)
            )
    finally:
        loader.release_stream()


def _delete_stream(store: StateStore, state: StreamState) -> None:
    store.delete_checkpoint(state.connection, state.table, None)
    store.forget_ranges(state.connection, state.table)


def _in_transaction(loader: DataLoader[Any], work: Any) -> None:
    loader.begin()
    try:
        work()
        loader.commit()
    except BaseException:
        loader.rollback()
        raise
