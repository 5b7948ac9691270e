"""Exactly once into Iceberg through crashes of a parallel load: the hybrid case of
``tests/crash/test_crash_parallel.py`` with ``amp load --parallel 3 --to iceberg://<dir>``,
from block 0, so the table must hold the whole chain. Workers commit concurrently to one
table (a commit that lost the catalog's race is built again on the latest metadata), each
SIGKILL leaves at most unreferenced files, and each restart resumes every partition from
the checkpoint its table property holds; the plan lives in the namespace's properties."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from iceberg_support import Lake, assert_exact

from amp.devserver import DevServer
from amp.loaders.iceberg.loader import IcebergLoader
from crashkit import ParallelCrash, busy_chain_server, checkpoint_readers
from kit import unique

REORG_BUFFER = 10
PREFIX = "amp_"
TABLE = "logs"


@pytest.fixture
def busy_chain() -> Iterator[DevServer]:
    """A backfill of 6,000 blocks of ~45 logs, so that kills land in it (each within 3 s
    of the start: a parallel load's first grouped commits come after about a second)."""
    with busy_chain_server(6_000, max_interval=50) as server:
        yield server


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_iceberg_hybrid_parallel_load_exactly_once_through_sigkills(
    busy_chain: DevServer, lake: Lake
) -> None:
    connection = unique("ipc")

    def read(table: str, worker: int) -> dict[str, Any] | None:
        """Through a new loader (as a new process would): the plan from the namespace's
        properties, a worker's checkpoint from the table's properties."""
        loader = IcebergLoader(lake.config(), connection_name="reader")
        loader.connect()
        try:
            return loader.state_store(PREFIX).load_checkpoint(connection, table, worker)
        finally:
            loader.close()

    read_plan, read_ends = checkpoint_readers(read, TABLE)

    crash = ParallelCrash(
        busy_chain,
        lake.url,
        TABLE,
        connection,
        ["--parallel", "3", "--reorg-buffer", str(REORG_BUFFER)],
        "iceberg",
        lake.config(),
        read_plan,
        read_ends,
        window=3.0,
    )
    crash.hybrid(busy_chain.chain.head - REORG_BUFFER, seed=53)
    assert_exact(lake.table(TABLE), busy_chain.chain)
