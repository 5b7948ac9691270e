"""Exactly once when the submitting process dies: ``amp load --parallel 3 --executor
<scheduler>`` is SIGKILLed at random moments while blocks and reorgs arrive, and started
again each time; its partitions run as tasks on a Dask cluster of worker processes, its
live worker in the submitting process.

A killed submitter leaves its tasks running on the cluster. The next start takes the
load over (a new run token in the scheduler): the old tasks stop at their next
microbatch boundary and release their streams, the new ones wait for those streams, then
resume from the checkpoints. Deep reorgs below the hand-off block make the live worker
wait for the partitions on the cluster and take their blocks over. A final run
(in-process, on the same cluster) finishes the load; the destination must then equal
the canonical chain, with the stored plan and one checkpoint per worker.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from amp.devserver import DevServer
from clusterkit import DaskCluster
from crashkit import ParallelCrash, busy_chain_server
from kit import PG_URL, SqlDestination, assert_table_equals_chain, checkpoint_ends, stored_plan

CONNECTION = "crash_dask"
MIN_BLOCK = 100
REORG_BUFFER = 10


@pytest.fixture
def hybrid_chain() -> Iterator[DevServer]:
    with busy_chain_server(initial_blocks=4_000, max_interval=50) as server:
        yield server


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_submitter_killed_and_restarted_ends_exact(
    hybrid_chain: DevServer, cluster: DaskCluster, postgres: SqlDestination
) -> None:
    chain = hybrid_chain.chain
    table = postgres.new_table("crash_dask")
    flags = ["--parallel", "3", "--min-block", str(MIN_BLOCK)]
    flags += ["--reorg-buffer", str(REORG_BUFFER), "--executor", cluster.address]
    lowest_handoff = chain.head - REORG_BUFFER
    crash = ParallelCrash(
        hybrid_chain, PG_URL, table, CONNECTION, flags, "postgresql",
        postgres.loader_config(),
        read_plan=lambda: stored_plan(postgres, table),
        read_ends=lambda: dict(checkpoint_ends(postgres, table)),
        window=2.5,
    )  # fmt: skip
    lines = crash.hybrid(lowest_handoff, seed=61)
    submitted = [line for line in lines if "to the Dask scheduler at" in line]
    assert len(submitted) >= 3, "the killed loads did not run their partitions on the cluster"
    assert_table_equals_chain(postgres, table, chain, blocks=(MIN_BLOCK, chain.head))
