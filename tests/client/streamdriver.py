"""Drive a streaming load from its own results: change the chain each time the load has
caught up with the head, stop once it caught up after the last change. No sleeps: the
dev server sends nothing until the chain changes, so "caught up" is a stable state.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from oracle import canonical_count

from amp.client import LoadResult, LoadRun
from amp.devserver.chain import SimulatedChain
from amp.streaming.types import hex_hash

# A runaway stream (reloading the same data forever) fails instead of hanging.
MAX_RESULTS = 2_000


def block_range(result: LoadResult) -> dict[str, Any]:
    """The single block range of a streaming load result."""
    ranges = result.metadata.get("block_ranges")
    assert isinstance(ranges, list) and len(ranges) == 1, f"bad block_ranges: {result.metadata}"
    return ranges[0]


def caught_up(result: LoadResult, chain: SimulatedChain) -> bool:
    """A committed microbatch that ends at the current canonical head."""
    if result.metadata.get("operation") != "load":
        return False
    end = block_range(result)
    head = chain.head
    return end["end"] == head and end["hash"] == hex_hash(chain.canonical_hash(head))


class Action:
    """A change of the chain, applied once the load has caught up."""

    def __call__(self, chain: SimulatedChain) -> None:
        raise NotImplementedError


@dataclass
class Mine(Action):
    count: int

    def __call__(self, chain: SimulatedChain) -> None:
        chain.mine(self.count)


@dataclass
class Reorg(Action):
    """A reorg of ``depth`` blocks, then ``mine`` new blocks, as one change of the chain.

    Records what the load must report: the fork height, the old head and how many rows
    of ``table`` the destination holds for the replaced blocks (``expected_deleted``).
    """

    depth: int
    mine: int = 0
    table: str = "logs"
    fork_height: int = -1
    old_head: int = -1
    new_head: int = -1
    expected_deleted: int = -1

    def __call__(self, chain: SimulatedChain) -> None:
        with chain.changed:  # one observation for the server: reorg and new blocks together
            self.old_head = chain.head
            self.fork_height = chain.head - self.depth + 1
            self.expected_deleted = canonical_count(
                chain, self.table, self.fork_height, self.old_head
            )
            chain.reorg(self.depth)
            if self.mine:
                chain.mine(self.mine)
            self.new_head = chain.head

    def expected_invalidated(self, max_interval: int) -> tuple[int, int]:
        """§3: ``[incoming.start, max(incoming.end, last.end)]``."""
        incoming_end = min(self.new_head, self.fork_height + max_interval - 1)
        return self.fork_height, max(incoming_end, self.old_head)


@dataclass
class Driven:
    results: list[LoadResult] = field(default_factory=list)

    @property
    def loads(self) -> list[LoadResult]:
        return [r for r in self.results if r.metadata.get("operation") == "load"]

    @property
    def reorgs(self) -> list[LoadResult]:
        return [r for r in self.results if r.metadata.get("operation") == "reorg"]

    def ranges(self) -> list[tuple[int, int]]:
        return [(block_range(r)["start"], block_range(r)["end"]) for r in self.loads]


def assert_load_matches_chain(result: LoadResult, chain: SimulatedChain, table: str) -> None:
    """A committed microbatch of a block-numbered query: its range is canonical now and it
    loaded exactly the canonical rows of its blocks. (The chain only changes once the load
    has caught up, so "now" is the moment the server produced the microbatch.)"""
    numbers = block_range(result)
    assert numbers["hash"] == hex_hash(chain.canonical_hash(numbers["end"])), (
        f"range {numbers['start']}..{numbers['end']} ends at a block that is not canonical"
    )
    expected = canonical_count(chain, table, numbers["start"], numbers["end"])
    assert result.rows_loaded == expected, (
        f"microbatch {numbers['start']}..{numbers['end']}: loaded {result.rows_loaded} rows, "
        f"the chain has {expected}"
    )


def drive(
    run: LoadRun,
    chain: SimulatedChain,
    actions: Sequence[Action | Callable[[SimulatedChain], None]] = (),
    on_result: Callable[[LoadResult], None] | None = None,
    table: str | None = None,
) -> Driven:
    """Iterate ``run``; each time it has caught up, apply the next action; return once it
    has caught up after the last one. Closes ``run`` whatever happens.

    With ``table`` (the chain table a block-numbered query reads), every load result is
    checked against the chain (``assert_load_matches_chain``)."""
    driven = Driven()
    remaining = deque(actions)
    try:
        for result in run:
            driven.results.append(result)
            assert result.success, f"the load reported a failure: {result.error}"
            if table is not None and result.metadata.get("operation") == "load":
                assert_load_matches_chain(result, chain, table)
            if on_result is not None:
                on_result(result)
            if caught_up(result, chain):
                if not remaining:
                    return driven
                remaining.popleft()(chain)
            assert len(driven.results) < MAX_RESULTS, (
                f"{MAX_RESULTS} results without catching up; last ranges: {driven.ranges()[-5:]}"
            )
    finally:
        run.close()
    raise AssertionError(
        f"the streaming load ended by itself after {len(driven.results)} results "
        f"(ranges {driven.ranges()[-5:]}); a streaming load only ends when stopped"
    )


def assert_reorgs_reported(driven: Driven, reorgs: Sequence[Reorg], max_interval: int) -> None:
    """One 'reorg' result per reorg, in order, with the §3 invalidated range and the rows
    the destination held for the replaced blocks as rows_deleted."""
    reported = driven.reorgs
    assert len(reported) == len(reorgs), (
        f"{len(reorgs)} reorgs made, {len(reported)} reported: {[r.metadata for r in reported]}"
    )
    for made, result in zip(reorgs, reported, strict=True):
        invalidated = result.metadata["invalidated_range"]
        start, end = made.expected_invalidated(max_interval)
        assert (invalidated["start"], invalidated["end"]) == (start, end), (
            f"reorg of depth {made.depth} at head {made.old_head} (+{made.mine} mined): "
            f"expected invalidated {start}..{end}, got {invalidated}"
        )
        assert invalidated["network"] == "mainnet"
        assert result.metadata["rows_deleted"] == made.expected_deleted, (
            f"reorg of depth {made.depth} at head {made.old_head}: the destination held "
            f"{made.expected_deleted} rows of blocks {made.fork_height}..{made.old_head}, "
            f"rows_deleted says {result.metadata['rows_deleted']}"
        )
        assert result.rows_loaded == 0
