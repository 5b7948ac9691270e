"""Exactly once into Redis through crashes of a parallel load: the hybrid case of
``tests/crash/test_crash_parallel.py`` with ``amp load --parallel 3 --to redis://…``
(the hash structure), from block 0, so that Redis must hold the whole chain.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from redis_support import Names, assert_exact, redis_config

from amp.devserver import DevServer
from crashkit import ParallelCrash, busy_chain_server
from kit import REDIS_DB, REDIS_HOST, REDIS_PORT

REORG_BUFFER = 10


@pytest.fixture
def busy_chain() -> Iterator[DevServer]:
    """A backfill of 3,000 blocks of 10 logs: a few kills long into Redis (with kills
    within 2.5 s of the start, as its grouped commits take longer than the SQL ones)."""
    with busy_chain_server(3_000, max_interval=50, txs_per_block=10) as server:
        yield server


def _document(client: redis.Redis, key: str) -> dict[str, Any] | None:
    raw = client.get(key)
    return json.loads(raw) if raw is not None else None


@pytest.mark.slow
def test_redis_hybrid_parallel_load_exactly_once_through_sigkills(
    busy_chain: DevServer, redis_client: redis.Redis, names: Names
) -> None:
    stem = f"amp_checkpoint:{names.connection}:{names.table}"

    def read_plan() -> dict[str, Any] | None:
        return _document(redis_client, f"{stem}/parallel-plan:0")

    def read_ends() -> dict[int, int]:
        plan = read_plan()
        assert plan is not None
        documents = {n: _document(redis_client, f"{stem}:{n}") for n, _, _ in plan["partitions"]}
        return {n: int(d["ranges"][-1]["end"]) for n, d in documents.items() if d is not None}

    crash = ParallelCrash(
        busy_chain,
        f"redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_DB}",
        names.table,
        names.connection,
        ["--parallel", "3", "--reorg-buffer", str(REORG_BUFFER)],
        "redis",
        redis_config(),
        read_plan,
        read_ends,
        window=2.5,
    )
    crash.hybrid(busy_chain.chain.head - REORG_BUFFER, seed=53)
    assert_exact(redis_client, names.table, "hash", busy_chain.chain)
