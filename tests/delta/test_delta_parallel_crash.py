"""Exactly once into Delta through crashes of a parallel load: the hybrid case of
``tests/crash/test_crash_parallel.py`` with ``amp load --parallel 3 --to deltalake:///…``,
from block 0, so the table must hold the whole chain. Workers commit concurrently to one
table, each SIGKILL leaves at most unreferenced files, and each restart resumes every
partition from the checkpoint its commits carry."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from delta_support import TABLE, assert_exact, delta_config

from amp.devserver import DevServer
from amp.loaders.delta.loader import DeltaLakeLoader
from crashkit import ParallelCrash, busy_chain_server, checkpoint_readers
from kit import unique

REORG_BUFFER = 10
PREFIX = "amp_"


@pytest.fixture
def busy_chain() -> Iterator[DevServer]:
    """A backfill of 6,000 blocks of ~45 logs, so that kills land in it (each within 3 s
    of the start: a parallel load's first grouped commits come after about a second)."""
    with busy_chain_server(6_000, max_interval=50) as server:
        yield server


@pytest.mark.slow
def test_delta_hybrid_parallel_load_exactly_once_through_sigkills(
    busy_chain: DevServer, tmp_path: Path
) -> None:
    connection = unique("dpc")

    def read(table: str, worker: int) -> dict[str, Any] | None:
        loader = DeltaLakeLoader(delta_config(tmp_path), connection_name="reader")
        try:
            return loader.state_store(PREFIX).load_checkpoint(connection, table, worker)
        finally:
            loader.close()

    read_plan, read_ends = checkpoint_readers(read, TABLE)

    crash = ParallelCrash(
        busy_chain,
        f"deltalake://{tmp_path}",
        TABLE,
        connection,
        ["--parallel", "3", "--reorg-buffer", str(REORG_BUFFER)],
        "deltalake",
        delta_config(tmp_path),
        read_plan,
        read_ends,
        window=3.0,
    )
    crash.hybrid(busy_chain.chain.head - REORG_BUFFER, seed=53)
    assert_exact(tmp_path, busy_chain.chain)
