"""Exactly once through crashes of a parallel load (issue 10): ``amp load --parallel 3``
is killed with SIGKILL at random moments while new blocks and reorgs arrive, and
restarted each time; a final run (in-process) finishes it. Afterwards the destination
must hold every canonical row of the load's blocks exactly once, the stored plan and one
checkpoint per worker.

Besides the dev server's reorgs at the head, deeper reorgs (``DeepReorgs``) fork below
the first block of the worker at the head, now and then, while partitions still load
and after they are done: that worker waits for the partitions below and takes those
blocks over, across kills.

- Hybrid (no ``--max-block``): the partitions end at the hand-off block H (head minus a
  small ``--reorg-buffer``, fixed at the first start) and a live worker streams after
  it; the deep reorgs fork below H.
- Bounded (``--max-block`` past the initial head): the last partition starts below the
  initial head and follows it through its reorgs (the deep ones fork below its first
  block) until the chain reaches max_block, after the kills; the final run ends by
  itself with max_block included and nothing after it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from amp.devserver import DevServer
from crashkit import (
    TAKEN_OVER,
    ParallelCrash,
    busy_chain_server,
    deep_reorgs_during_backfill,
    reorgs_handled,
)
from kit import (
    PG_URL,
    SqlDestination,
    assert_table_equals_chain,
    checkpoint_ends,
    stored_plan,
)

CONNECTION = "crash_parallel"
MAX_INTERVAL = 50  # blocks per microbatch: a backfill of many commits
HYBRID_MIN_BLOCK = 100
REORG_BUFFER = 10
# The bounded load ends this many blocks after the initial head: more than arrive during
# the kills (20 a second), so that its last partition is still running at every kill;
# that partition starts BOUNDED_BELOW blocks below the initial head.
BOUNDED_AHEAD = 2_000
BOUNDED_BELOW = 200


@dataclass
class Case:
    """A destination of one test: read back as ``destination``, written through ``url``."""

    destination: SqlDestination
    url: str
    table: str

    def parallel(self, server: DevServer, flags: list[str]) -> ParallelCrash:
        return ParallelCrash(
            server, self.url, self.table, CONNECTION, flags,
            self.destination.kind, self.destination.loader_config(),
            read_plan=lambda: stored_plan(self.destination, self.table),
            read_ends=lambda: dict(checkpoint_ends(self.destination, self.table)),
        )  # fmt: skip


@pytest.fixture(params=["postgresql", "duckdb"])
def case(request: pytest.FixtureRequest, tmp_path: Path) -> Case:
    if request.param == "postgresql":
        postgres: SqlDestination = request.getfixturevalue("postgres")
        return Case(postgres, PG_URL, postgres.new_table("crash_par"))
    path = tmp_path / "crash.duckdb"
    return Case(SqlDestination("duckdb", duckdb_path=path), f"duckdb:///{path}", "crash_par")


@pytest.fixture
def hybrid_chain() -> Iterator[DevServer]:
    with busy_chain_server(initial_blocks=6_000, max_interval=MAX_INTERVAL) as server:
        yield server


@pytest.fixture
def bounded_chain() -> Iterator[DevServer]:
    """Fewer rows a block than the hybrid case's chain: the backfill below the last
    partition is two partitions of BOUNDED_AHEAD + BOUNDED_BELOW blocks."""
    with busy_chain_server(6_000, max_interval=MAX_INTERVAL, txs_per_block=15) as server:
        yield server


@pytest.mark.slow
def test_hybrid_parallel_load_exactly_once_through_sigkills(
    hybrid_chain: DevServer, case: Case
) -> None:
    chain = hybrid_chain.chain
    flags = ["--parallel", "3", "--min-block", str(HYBRID_MIN_BLOCK)]
    flags += ["--reorg-buffer", str(REORG_BUFFER)]
    # H is the head minus REORG_BUFFER when the first load plans, so at least this:
    lowest_handoff = chain.head - REORG_BUFFER
    crash = case.parallel(hybrid_chain, flags)
    crash.hybrid(lowest_handoff, seed=37)
    blocks = (HYBRID_MIN_BLOCK, chain.head)
    assert_table_equals_chain(case.destination, case.table, chain, blocks=blocks)


@pytest.mark.slow
def test_bounded_parallel_load_exactly_once_through_sigkills(
    bounded_chain: DevServer, case: Case
) -> None:
    chain = bounded_chain.chain
    size = BOUNDED_AHEAD + BOUNDED_BELOW  # blocks per partition
    max_block = chain.head + BOUNDED_AHEAD
    min_block = max_block - 3 * size + 1
    seam = max_block - size + 1  # the first block of the last partition
    flags = ["--parallel", "3", "--min-block", str(min_block), "--max-block", str(max_block)]
    crash = case.parallel(bounded_chain, flags)
    lines, seen = crash.crash((seam - 20, seam - 1), seed=43)
    assert all(2 in unfinished for _, unfinished in seen), f"partition 2 finished: {seen}"
    below = [(made, [n for n in unfinished if n != 2]) for made, unfinished in seen]
    assert deep_reorgs_during_backfill(below), f"no deep reorg during the backfill: {seen}"
    assert not below[-1][1], f"the killed loads never finished the backfill: {seen}"
    taken_over = [
        line for line in lines if f"partition 2 (blocks {seam}..{max_block}){TAKEN_OVER}" in line
    ]
    assert taken_over, "the last partition never took over blocks below its first"
    assert reorgs_handled(lines), "the last partition never handled a reorg"

    assert crash.finish() == [2]
    plan = crash.assert_plan_and_checkpoints()
    assert plan["handoff"] is None
    assert [p[1:] for p in plan["partitions"]][-1] == [seam, max_block]
    assert len(chain.reorgs) >= 5, "the run should have seen reorgs"
    assert chain.head > max_block
    assert_table_equals_chain(case.destination, case.table, chain, blocks=(min_block, max_block))
