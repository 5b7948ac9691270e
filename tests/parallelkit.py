"""Driving a parallel streaming load (``parallel_config=``) from its own results, for
every destination's suite.

A hybrid load (``max_block=None``) never ends: its live worker streams for ever. The
chain is changed each time the live worker has caught up with the head (a stable state:
the dev server sends nothing until the chain changes), and the load is closed once it
caught up after the last change. No sleeps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from amp.client import LoadResult, LoadRun
from amp.devserver.chain import SimulatedChain
from amp.streaming.parallel import ParallelConfig
from amp.streaming.types import hex_hash

ChainChange = Callable[[SimulatedChain], object]
# A runaway load (reloading the same blocks for ever) fails instead of hanging.
MAX_RESULTS = 5_000


def split(workers: int, first: int, last: int | None, **extra: Any) -> ParallelConfig:
    """``workers`` workers over blocks ``first..last`` of ``eth_firehose.blocks`` (the
    table every suite's chain partitions by); ``last=None`` streams live after H."""
    return ParallelConfig(
        num_workers=workers,
        table_name="eth_firehose.blocks",
        min_block=first,
        max_block=last,
        **extra,
    )


def around_handoff() -> list[ChainChange]:
    """New blocks, a reorg above the hand-off block H (depth 8 with H = head - 20), one
    that reaches below it (depth 30: the live worker waits for the backfill, then
    reloads from the fork), new blocks again."""
    return [
        lambda chain: chain.mine(7),
        lambda chain: (chain.reorg(8), chain.mine(2)),
        lambda chain: (chain.reorg(30), chain.mine(1)),
        lambda chain: chain.mine(3),
    ]


def live_caught_up(result: LoadResult, chain: SimulatedChain, live_worker: int) -> bool:
    """A microbatch of the live worker that ends at the current canonical head."""
    if result.metadata.get("operation") != "load" or result.metadata["worker_id"] != live_worker:
        return False
    end = result.metadata["block_ranges"][-1]
    head = chain.head
    return end["end"] == head and end["hash"] == hex_hash(chain.canonical_hash(head))


def drive_hybrid(
    run: LoadRun, chain: SimulatedChain, live_worker: int, changes: Sequence[ChainChange]
) -> list[LoadResult]:
    """Iterate ``run`` (every result must succeed), applying the next change each time
    the live worker caught up; close it once it caught up after the last one."""
    remaining = list(changes)
    seen: list[LoadResult] = []
    try:
        for result in run:
            assert result.success, result.error
            seen.append(result)
            if live_caught_up(result, chain, live_worker):
                if not remaining:
                    return seen
                remaining.pop(0)(chain)
            assert len(seen) < MAX_RESULTS, "the load does not catch up"
    finally:
        run.close()
    raise AssertionError("the hybrid load ended by itself")


def first_live_block(results: Sequence[LoadResult], live_worker: int) -> int:
    """The first block the live worker loaded."""
    first = next(
        r
        for r in results
        if r.metadata["worker_id"] == live_worker and r.metadata.get("operation") == "load"
    )
    return int(first.metadata["block_ranges"][0]["start"])


def reorgs_of(results: Sequence[LoadResult], worker: int) -> list[int]:
    """The first invalidated block of each reorg a worker handled."""
    return [
        int(r.metadata["invalidated_range"]["start"])
        for r in results
        if r.metadata["worker_id"] == worker and r.metadata.get("operation") == "reorg"
    ]
